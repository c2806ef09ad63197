"""DOCX → paragraphs and tables in reading order, split into pages where Word broke them.

A DOCX has no fixed pages, but Word records where it last broke pages
(``w:lastRenderedPageBreak``) and authors insert explicit breaks; following both gives page
numbers that match what the user saw in Word. A document without them is page 1.

The archive is checked before python-docx inflates it: a DOCX is a zip, and a small upload
can expand to gigabytes (a "zip bomb"). Sizes come from the central directory, and Python's
zipfile stops inflating an entry at its declared size, so a lying header cannot get past.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

from docx import Document
from docx.oxml.ns import qn
from docx.table import Table

from reprise.rag.documents import MIME_DOCX, IngestError, LoadedDocument, Page
from reprise.rag.loaders.text import normalize_text

MAX_UNCOMPRESSED_BYTES = 256 * 1024 * 1024
MAX_COMPRESSION_RATIO = 100  # real DOCX files are 2-20x; zero-filled bombs are ~1000x
RATIO_CHECK_MIN_BYTES = 1024 * 1024  # tiny entries may compress well and are harmless
MAX_ENTRIES = 10_000

_T, _TAB, _BR, _CR = qn("w:t"), qn("w:tab"), qn("w:br"), qn("w:cr")
_RENDERED_BREAK, _BREAK_BEFORE = qn("w:lastRenderedPageBreak"), qn("w:pageBreakBefore")
_P, _TBL, _SDT, _SDT_CONTENT = qn("w:p"), qn("w:tbl"), qn("w:sdt"), qn("w:sdtContent")
_TYPE = qn("w:type")
_DRAWING, _PICT = qn("w:drawing"), qn("w:pict")


def check_zip(filename: str, data: bytes, *, max_uncompressed: int = MAX_UNCOMPRESSED_BYTES,
              max_ratio: float = MAX_COMPRESSION_RATIO) -> zipfile.ZipFile:
    """Open the archive, refusing bombs: too many entries, too big inflated, too compressed."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise IngestError("corrupt", f"{filename} is a damaged zip/DOCX archive") from exc
    total = sum(i.file_size for i in infos)
    packed = max(1, sum(i.compress_size for i in infos))
    bomb = f"{filename} looks like a zip bomb"
    if len(infos) > MAX_ENTRIES:
        raise IngestError("zip_bomb", f"{bomb}: {len(infos)} entries")
    if total > max_uncompressed:
        raise IngestError("zip_bomb", f"{bomb}: it inflates to {total} bytes "
                          f"(limit {max_uncompressed})")
    for info in infos:
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size >= RATIO_CHECK_MIN_BYTES and ratio > max_ratio:
            raise IngestError("zip_bomb", f"{bomb}: {info.filename} is compressed {ratio:.0f}:1")
    if total >= RATIO_CHECK_MIN_BYTES and total / packed > max_ratio:
        raise IngestError("zip_bomb", f"{bomb}: compressed {total / packed:.0f}:1")
    return archive


def load_docx(filename: str, data: bytes, sha256: str) -> LoadedDocument:
    with check_zip(filename, data) as archive:
        if "word/document.xml" not in archive.namelist():
            raise IngestError("unsupported_type", f"{filename} is a zip file but not a DOCX")
    try:
        document = Document(io.BytesIO(data))
    except Exception as exc:
        raise IngestError("corrupt", f"{filename} is a damaged DOCX ({exc})") from exc
    writer = _PageWriter()
    _walk(document.element.body, document, writer)
    pages = [Page(i + 1, normalize_text(text)) for i, text in enumerate(writer.pages())]
    title = (document.core_properties.title or "").strip() or None
    return LoadedDocument(filename, MIME_DOCX, sha256, pages, title)


class _PageWriter:
    """Collects text into pages; a break counts only if content came since the last one.

    Word puts a rendered-page-break marker right after an explicit page break: both mean the
    same break. A picture counts as content, so a page holding only an image keeps its number.
    """

    def __init__(self) -> None:
        self._pages: list[list[str]] = [[]]
        self._has_text = False

    def write(self, text: str) -> None:
        self._pages[-1].append(text)
        self._has_text = self._has_text or bool(text.strip())

    def mark_content(self) -> None:
        self._has_text = True

    def page_break(self) -> None:
        if self._has_text:
            self._pages.append([])
            self._has_text = False

    def pages(self) -> list[str]:
        return ["".join(p) for p in self._pages]


def _walk(container: Any, parent: Any, out: _PageWriter) -> None:
    """Body-level blocks in order: paragraphs, tables, and content controls around them."""
    for child in container.iterchildren():
        if child.tag == _P:
            _paragraph(child, out)
            out.write("\n")
        elif child.tag == _TBL:
            out.write(_table_text(Table(child, parent)) + "\n")
        elif child.tag == _SDT:
            content = child.find(_SDT_CONTENT)
            if content is not None:
                _walk(content, parent, out)


def _paragraph(p: Any, out: _PageWriter) -> None:
    """Runs' text with tabs and line breaks, and the page breaks inside the paragraph."""
    ppr = p.find(qn("w:pPr"))
    if ppr is not None and ppr.find(_BREAK_BEFORE) is not None:
        out.page_break()
    for el in p.iter(_T, _TAB, _BR, _CR, _RENDERED_BREAK, _DRAWING, _PICT):
        if el.tag in (_DRAWING, _PICT):
            out.mark_content()
        elif el.tag == _T:
            out.write(el.text or "")
        elif el.tag == _TAB:
            out.write("\t")
        elif el.tag == _CR or (el.tag == _BR and el.get(_TYPE) not in ("page", "column")):
            out.write("\n")
        elif el.tag == _RENDERED_BREAK or el.get(_TYPE) == "page":
            out.page_break()


def _table_text(table: Table) -> str:
    """One line per row, cells joined by `` | ``; a merged cell is written once per row."""
    lines: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # horizontally merged: python-docx repeats the cell
                continue
            previous = cell._tc
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)
