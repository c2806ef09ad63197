"""Loading real documents into pages of text, and refusing bad uploads with a clear code.

The sample documents live outside the package in ``<project>/../shared/data/documents``
(see its README for what each one contains); bad inputs are built here, in the test.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from reprise.rag.documents import (
    MIME_DOCX,
    MIME_HTML,
    MIME_MARKDOWN,
    MIME_PDF,
    MIME_TEXT,
    IngestError,
    LoadedDocument,
)
from reprise.rag.ingest import load_document
from reprise.rag.loaders.docx import check_zip
from reprise.rag.loaders.text import normalize_text

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "documents"
LIMIT = 50 * 1024 * 1024

needs_docs = pytest.mark.skipif(
    not DOCS.is_dir(), reason=f"sample documents not found at {DOCS} (shared data is absent)")


def load(rel: str) -> LoadedDocument:
    path = DOCS / rel
    return load_document(path.name, path.read_bytes(), max_bytes=LIMIT)


def flat(text: str) -> str:
    """Whitespace-insensitive view: PDF line wraps are not part of what we assert."""
    return " ".join(text.split())


def page_of(doc: LoadedDocument, phrase: str) -> list[int]:
    return [p.number for p in doc.pages if phrase in flat(p.text)]


def code_of(filename: str, data: bytes, max_bytes: int = LIMIT) -> str:
    with pytest.raises(IngestError) as info:
        load_document(filename, data, max_bytes=max_bytes)
    assert info.value.message, "every refusal carries a human-readable message"
    assert filename in info.value.message
    return info.value.code


# --- real documents ---------------------------------------------------------------------------
@needs_docs
def test_portuguese_gazette_pages_accents_and_ligatures() -> None:
    doc = load("pdf/pt_diario_oficial_pratania_2020-10-26.pdf")
    assert doc.mime == MIME_PDF and len(doc.pages) == 8
    assert [p.number for p in doc.pages] == list(range(1, 9))
    assert doc.title == "Diário Oficial Eletrônico 136"
    # The ligature ``ﬁ`` of the PDF is folded, accents are intact (no mojibake).
    assert "Diário Oficial do Município de Pratânia/SP" in doc.pages[0].text
    assert "\ufb01" not in doc.text and "\ufffd" not in doc.text
    assert not re.search("Ã[\u0080-\u00bf]|â€", doc.text)  # UTF-8 read as Latin-1
    assert "EXONERAÇÃO" in doc.text and "atribuições" in doc.text
    assert page_of(doc, "DECRETO Nº 56 DE 26 DE OUTUBRO DE") == [2]
    assert page_of(doc, "REPARTIÇÕES PÚBLICAS") == [2]
    assert page_of(doc, "Art. 4º. Este Decreto entra em vigor") == [3]
    assert page_of(doc, "CONCESSÃO DE LICENÇA PATERNIDADE") == [6]
    assert page_of(doc, "MASTER CONSTRUÇÕES E SERVIÇOS DE LIMPEZA") == [7]
    assert page_of(doc, "Jornalista Responsável") == [8]


@needs_docs
def test_multi_page_pdf_page_numbers() -> None:
    doc = load("pdf/docling_multi_page.pdf")
    assert len(doc.pages) == 5
    assert page_of(doc, "Patented in 1868 by Christopher Latham Sholes") == [1]
    assert page_of(doc, "Google Docs (2006)") == [2]
    assert page_of(doc, "Specialized Word Processing Tools") == [3]
    assert page_of(doc, "This accessibility paved the way for self-") == [4]
    assert page_of(doc, "reflects humanity’s broader technological progress") == [5]


@needs_docs
def test_three_column_pdf_keeps_columns_apart() -> None:
    doc = load("pdf/federal-register-2020-17221.pdf")
    assert len(doc.pages) == 15
    # Sentences that wrap inside one column come out whole, not interleaved with the next.
    assert page_of(doc, "SUMMARY: The FAA proposes to supersede Airworthiness Directive (AD) "
                        "2018–23–51, which applies to all The Boeing Company Model 737–8") == [1]
    assert page_of(doc, "Preliminary KNKT.18.10.35.04 Aircraft Accident Investigation Report") \
        == [2]
    assert page_of(doc, "Note 2 to paragraph (i): The MEL provisions specified in figure 10") \
        == [14]
    assert page_of(doc, "(3) AMOCs approved previously for AD 2018–23–51") == [15]


@needs_docs
def test_table_pdf_rows_are_readable() -> None:
    doc = load("pdf/nics-background-checks-2015-11.pdf")
    text = doc.pages[0].text
    assert "NICS Firearm Background Checks" in text
    # Cells that pypdf runs together ("02,2481,135") come out separated.
    assert ("Florida 15,907 50,796 28,981 2,268 1,957 121 8 9 0 2,248 1,135 2 40 5 0 36 19 0 0 "
            "0 0 103,532") in text
    rows = [line for line in text.splitlines() if re.match(r"[A-Z][A-Za-z .]+ [\d, ]+$", line)]
    whole = [r for r in rows
             if len(re.sub(r"^[A-Za-z .]+? (?=\d)", "", r).split()) == 22]
    assert len(rows) >= 50 and len(whole) >= 0.95 * len(rows)


@needs_docs
def test_docx_paragraphs_tables_and_rendered_page_breaks() -> None:
    doc = load("docx/word_sample.docx")
    assert doc.mime == MIME_DOCX
    assert len(doc.pages) == 2  # Word recorded one page break when it last rendered the file
    assert page_of(doc, "Figure 1: This is a cute duckling") == [1]
    assert page_of(doc, "Berries | Blueberry, Strawberry, Cranberry | 150") == [2]
    assert page_of(doc, "| Food | Calories per portion") == [2]
    tables = load("docx/word_tables.docx")
    text = tables.pages[0].text
    assert "Header 0.0 | Header 0.1 | Header 0.2 | Header 0.3" in text
    # A horizontally merged cell is written once, not once per column it spans.
    assert "Cell 1.0 | Merged Cell 1.1 1.2 | Cell 1.3" in text
    assert "Cell 3.0 | Merged Cell 3.1 4.1 | Cell 3.2" in text
    assert "Cell 8.4" in text


@needs_docs
def test_html_main_text_without_navigation_or_scripts() -> None:
    doc = load("html/wiki_duck.html")
    text = doc.text
    assert doc.mime == MIME_HTML and doc.title == "Duck - Wikipedia" and len(doc.pages) == 1
    assert "Duck is the common name for numerous species of waterfowl" in text
    assert "Family: | Anatidae" in text  # infobox table rows stay readable
    for boilerplate in ("Jump to content", "Main page", "Contribute", "Donate",
                        "Create account", "Privacy policy", "Toggle the table of contents",
                        "document.cookie", "function(", "RLCONF", "[edit]", "Personal tools"):
        assert boilerplate not in text, boilerplate


@needs_docs
def test_chinese_markdown_intact() -> None:
    doc = load("md/zh_personal_information_protection_law_2021.md")
    assert doc.mime == MIME_MARKDOWN and doc.title == "中华人民共和国个人信息保护法"
    text = doc.text
    assert text.count("个人信息") > 100
    assert "第一条 为了保护个人信息权益，规范个人信息处理活动" in text  # full-width ， kept
    assert "第七十四条 本法自2021年11月1日起施行。" in text
    assert "INFO END" not in text and "##" not in text and "\ufffd" not in text


@needs_docs
def test_portuguese_markdown_without_markup() -> None:
    doc = load("md/pt_querido_diario_toolbox_README.md")
    assert doc.title == "Toolbox"
    text = doc.text
    assert "uma biblioteca com o ferramental para que a comunidade possa fazer suas próprias" \
        in flat(text)
    assert "conversão de diferentes formatos de arquivo para texto puro" in flat(text)
    assert "img.shields.io" not in text and "<p" not in text and "](" not in text


@needs_docs
def test_same_bytes_same_sha256_whatever_the_name() -> None:
    data = (DOCS / "docx/word_tables.docx").read_bytes()
    a = load_document("a.docx", data, max_bytes=LIMIT)
    b = load_document("renamed copy.docx", data, max_bytes=LIMIT)
    assert a.sha256 == b.sha256 == hashlib.sha256(data).hexdigest()
    other = load("docx/word_sample.docx")
    assert other.sha256 != a.sha256


@needs_docs
def test_type_comes_from_the_bytes_not_the_name() -> None:
    data = (DOCS / "pdf/docling_multi_page.pdf").read_bytes()
    doc = load_document("notes.txt", data, max_bytes=LIMIT)
    assert doc.mime == MIME_PDF and len(doc.pages) == 5


# --- text decoding and normalisation -----------------------------------------------------------
def test_legacy_encodings_are_decoded_without_mojibake() -> None:
    pt = "Publicação oficial: a autorização e a licitação do município de Pratânia. " * 3
    assert load_document("a.txt", pt.encode("cp1252"), max_bytes=LIMIT).text == pt.strip()
    zh = "个人信息处理者应当对其个人信息处理活动负责，并采取必要措施保障所处理的个人信息的安全。"
    assert load_document("b.txt", zh.encode("gb18030"), max_bytes=LIMIT).text == zh
    assert load_document("c.txt", zh.encode("utf-16"), max_bytes=LIMIT).text == zh
    doc = load_document("d.txt", b"\xef\xbb\xbfol\xc3\xa1\fpage two", max_bytes=LIMIT)
    assert doc.mime == MIME_TEXT and [p.text for p in doc.pages] == ["olá", "page two"]


def test_normalize_folds_ligatures_but_keeps_cjk_punctuation() -> None:
    assert normalize_text("Diário O\ufb01cial e\ufb00ect") == "Diário Oficial effect"
    assert normalize_text("Pratа\u0303nia") == "Pratа̃nia".replace("а̃", "а̃")  # NFC no-op
    assert normalize_text("Prata\u0302nia") == "Pratânia"  # decomposed accent composed
    assert normalize_text("个人信息，（一）：！？") == "个人信息，（一）：！？"
    assert normalize_text("soft\u00adhyphen zero\u200bwidth") == "softhyphen zerowidth"
    assert normalize_text("a  \t b\r\n\r\n\r\n c") == "a b\n\nc"


# --- bad input -----------------------------------------------------------------------------------
def _blank_pdf(**encrypt: str) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    if encrypt:
        writer.encrypt(**encrypt)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def test_encrypted_pdf_is_refused() -> None:
    data = _blank_pdf(user_password="secret", owner_password="owner")
    assert PdfReader(io.BytesIO(data)).is_encrypted
    assert code_of("locked.pdf", data) == "encrypted_pdf"


@needs_docs
def test_pdf_encrypted_with_an_empty_user_password_opens() -> None:
    reader = PdfReader(DOCS / "pdf/docling_multi_page.pdf")
    writer = PdfWriter()
    writer.append(reader)
    writer.encrypt(user_password="", owner_password="owner-only", algorithm="AES-128")
    buf = io.BytesIO()
    writer.write(buf)
    doc = load_document("permissions-only.pdf", buf.getvalue(), max_bytes=LIMIT)
    assert page_of(doc, "Patented in 1868 by Christopher Latham Sholes") == [1]


def test_pdf_without_text_layer_is_no_text() -> None:
    assert code_of("scan.pdf", _blank_pdf()) == "no_text"


@needs_docs
def test_truncated_pdf_is_corrupt() -> None:
    data = (DOCS / "pdf/docling_multi_page.pdf").read_bytes()
    assert code_of("cut.pdf", data[: len(data) // 2]) == "corrupt"
    assert code_of("header-only.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<") == "corrupt"


@pytest.mark.parametrize("header", [b"MZ\x90\x00\x03\x00\x00\x00", b"\x7fELF\x02\x01\x01\x00"])
def test_executable_renamed_pdf_is_unsupported(header: bytes) -> None:
    assert code_of("invoice.pdf", header + bytes(range(256)) * 8) == "unsupported_type"


def test_other_binary_and_mislabelled_files_are_unsupported() -> None:
    assert code_of("photo.txt", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64) == "unsupported_type"
    assert code_of("data.bin", b"\x01\x02\x00\x00\x07" * 50) == "unsupported_type"
    assert code_of("report.pdf", b"just some text, not a PDF") == "unsupported_type"


def test_empty_files_are_empty() -> None:
    assert code_of("empty.txt", b"") == "empty"
    assert code_of("blank.md", b"  \n\t\r\n ") == "empty"
    assert code_of("empty.pdf", b"") == "empty"


def test_upload_over_the_limit_is_too_large() -> None:
    assert code_of("big.txt", b"word " * 1000, max_bytes=4999) == "too_large"
    assert load_document("ok.txt", b"word " * 1000, max_bytes=5000).pages[0].text


def _docx_like(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_docx_zip_bomb_is_refused_before_inflating() -> None:
    bomb = _docx_like({"[Content_Types].xml": b"<Types/>",
                       "word/document.xml": b"\x00" * (64 * 1024 * 1024)})
    assert len(bomb) < 200 * 1024  # tiny upload, 64 MiB inflated
    assert code_of("bomb.docx", bomb) == "zip_bomb"
    # The total-size limit holds even for entries that compress like ordinary XML.
    plain = _docx_like({"word/document.xml": bytes(range(256)) * 4096})
    with pytest.raises(IngestError) as info:
        check_zip("big.docx", plain, max_uncompressed=512 * 1024)
    assert info.value.code == "zip_bomb"


def test_damaged_or_foreign_zip_files() -> None:
    assert code_of("broken.docx", b"PK\x03\x04" + b"\x00garbage" * 20) == "corrupt"
    xlsx = _docx_like({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"})
    assert code_of("sheet.docx", xlsx) == "unsupported_type"
    fake = _docx_like({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<not docx"})
    assert code_of("fake.docx", fake) == "corrupt"
