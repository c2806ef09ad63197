"""Plain text and Markdown, plus the text clean-up every loader shares.

Clean-up is deliberately conservative because chunk text is shown to users as the citation:
NFC composition (PDFs often emit ``a`` + combining tilde, which would not match a search for
``ã``), compatibility folding of Latin ligatures only (``ﬁ`` → ``fi``; full NFKC would also
turn Chinese full-width punctuation ``，（）`` into ASCII and alter the quoted text), and
removal of invisible characters (soft hyphens, zero-width spaces, NUL).
"""

from __future__ import annotations

import codecs
import re
import unicodedata

from charset_normalizer import from_bytes

from reprise.rag.documents import MIME_MARKDOWN, MIME_TEXT, IngestError, LoadedDocument, Page

_LIGATURES = re.compile("[\ufb00-\ufb06]")  # ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ
_INVISIBLE = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff\x00]")
_SPACES = re.compile("[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*")
_CONTROL = re.compile("[\x01-\x08\x0b\x0e-\x1f\x7f]")


def normalize_text(text: str) -> str:
    """NFC, ligatures folded, invisible characters dropped, spaces and blank lines collapsed.

    Line breaks are kept (single ``\\n`` = line, blank line = paragraph) because the chunker
    uses them as boundaries. ``\\u3000`` (ideographic space) becomes an ASCII space.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = unicodedata.normalize("NFC", text)
    text = _LIGATURES.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub(" ", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


LEGACY_ENCODINGS = ("cp1252", "gb18030", "big5")
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes, filename: str) -> str:
    """Bytes → str: a BOM, else strict UTF-8, else the best guess of charset-normalizer.

    UTF-8 is tried first and strictly because a wrong guess is what produces mojibake. A
    legacy file fails UTF-8 and is then matched against the legacy encodings of our users'
    languages first (Windows-1252 for Portuguese/English, GB18030 and Big5 for Chinese):
    unrestricted detection reads short Portuguese text as Central European (``ação`` →
    ``açăo``). Only if none fits is every encoding considered.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as exc:
                raise IngestError("corrupt", f"{filename}: invalid {codec} text") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    best = from_bytes(data, cp_isolation=list(LEGACY_ENCODINGS)).best() or from_bytes(data).best()
    if best is None:
        raise IngestError("unsupported_type", f"{filename} is neither text nor a known format")
    return str(best)


def split_pages(text: str) -> list[Page]:
    """Form feeds are page breaks in plain text; without any, the whole file is page 1."""
    return [Page(i + 1, normalize_text(part)) for i, part in enumerate(text.split("\f"))]


def load_text(filename: str, data: bytes, sha256: str) -> LoadedDocument:
    text = decode_text(data, filename)
    return LoadedDocument(filename, MIME_TEXT, sha256, split_pages(text), None)


# --- Markdown: keep the words, drop the markup a reader never sees --------------------------
_MD_COMMENT = re.compile(r"<!--.*?-->", re.S)
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MD_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_MD_LINK_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*\S+.*$", re.M)
_MD_IMG_TAG_ALT = re.compile(r"<img\b[^>]*\balt=\"([^\"]*)\"[^>]*>", re.I)
_MD_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_MD_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_MD_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)


def markdown_to_text(md: str) -> str:
    """Markdown → readable text; fenced code is kept verbatim (it is often what users ask)."""
    out: list[str] = []
    last = 0
    for fence in _MD_FENCE.finditer(md):
        out.append(_strip_markup(md[last:fence.start()]))
        out.append(fence.group())
        last = fence.end()
    out.append(_strip_markup(md[last:]))
    return "".join(out)


def _strip_markup(md: str) -> str:
    md = _MD_COMMENT.sub("", md)
    md = _MD_IMG_TAG_ALT.sub(r"\1", md)
    md = _MD_TAG.sub("", md)
    # Images first: a badge is a link around an image, ``[![alt](img)](url)``.
    md = _MD_IMAGE.sub(r"\1", md)
    md = _MD_LINK.sub(r"\1", md)
    md = _MD_REF_LINK.sub(r"\1", md)
    md = _MD_LINK_DEF.sub("", md)
    md = _MD_HEADING.sub(r"\1", md)
    return _MD_EMPHASIS.sub(r"\2", md)


def markdown_title(md: str) -> str | None:
    match = re.search(r"^\s{0,3}#\s+(.+?)\s*#*\s*$", _MD_FENCE.sub("", md), re.M)
    return normalize_text(_strip_markup(match.group(1))) if match else None


def load_markdown(filename: str, data: bytes, sha256: str) -> LoadedDocument:
    md = decode_text(data, filename)
    return LoadedDocument(filename, MIME_MARKDOWN, sha256, split_pages(markdown_to_text(md)),
                          markdown_title(md))
