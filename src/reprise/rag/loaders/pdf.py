"""PDF → one :class:`Page` per PDF page, numbered as a PDF viewer shows them.

Two engines, each for what it does best (measured on the sample documents, see
``bench/results/ingest.md``):

* pypdf opens the file: it tells damaged and truncated files apart, decrypts files whose
  user password is empty and refuses the others, and reads the title. Its text extraction is
  kept only as a per-page fallback: it re-parses every font's ToUnicode map on every page
  (about 1 s per page on the Pratânia gazette, 9.6 s for 8 pages) and runs the cells of
  tables drawn without rulings together (``02,2481,135``: 9 of 56 state rows of
  ``nics-background-checks-2015-11.pdf`` came out as 22 separate cells).
* pdfplumber (pdfminer) extracts the text, caching fonts per document (0.9 s for the same
  gazette). Pages are read in content-stream order (``use_text_flow``), which keeps the three
  columns of the Federal Register apart; a page that looks like a data table is read again
  by coordinates instead, which gets 55 of 56 NICS rows right.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import pdfplumber
from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

from reprise.rag.documents import MIME_PDF, IngestError, LoadedDocument, Page
from reprise.rag.loaders.text import normalize_text

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"\d[\d,.]*")
TABLE_MIN_NUMBERS_PER_LINE = 6
TABLE_MIN_LINES = 8
TABLE_MIN_SHARE = 0.3


def load_pdf(filename: str, data: bytes, sha256: str) -> LoadedDocument:
    reader, password = _open(filename, data)
    try:
        page_count = len(reader.pages)
    except Exception as exc:
        raise IngestError("corrupt", f"{filename}: the PDF's page tree is damaged ({exc})") from exc
    if page_count == 0:
        raise IngestError("empty", f"{filename} is a PDF without pages")
    texts = _extract(data, password, reader, page_count)
    if all(t is None for t in texts):
        raise IngestError("corrupt", f"{filename}: no page of this PDF could be read")
    pages = [Page(i + 1, normalize_text(t or "")) for i, t in enumerate(texts)]
    if not any(p.text for p in pages):
        raise IngestError(
            "no_text", f"{filename} has no text layer (a scanned or image-only PDF?); "
            "OCR is not supported, export the PDF with text or upload the text itself")
    return LoadedDocument(filename, MIME_PDF, sha256, pages, _title(reader))


def _extract(data: bytes, password: str | None, reader: PdfReader,
             page_count: int) -> list[str | None]:
    """Text of every page (``None`` where neither engine could read it)."""
    texts: list[str | None] = [None] * page_count
    try:
        with pdfplumber.open(io.BytesIO(data), password=password or "") as pdf:
            for i, page in enumerate(pdf.pages[:page_count]):
                texts[i] = _plumber_page_text(page, i)
                page.close()  # drop the page's cached layout objects: bounded memory
    except Exception as exc:
        log.info("pdfplumber could not open a PDF, falling back to pypdf: %s", exc)
    for i, text in enumerate(texts):
        if text is None:
            texts[i] = _pypdf_page_text(reader, i)
    return texts


def _plumber_page_text(page: Any, index: int) -> str | None:
    try:
        text: str = page.extract_text(use_text_flow=True) or ""
        if looks_like_table(text):
            text = page.extract_text() or text
        return text
    except Exception as exc:
        log.info("pdfplumber could not read pdf page %d: %s", index + 1, exc)
        return None


def _pypdf_page_text(reader: PdfReader, index: int) -> str | None:
    try:
        return reader.pages[index].extract_text() or ""
    except Exception as exc:
        log.info("pypdf could not read pdf page %d: %s", index + 1, exc)
        return None


def _open(filename: str, data: bytes) -> tuple[PdfReader, str | None]:
    """Parse the file; an encrypted PDF opens only if its user password is empty."""
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
    except Exception as exc:
        raise IngestError("corrupt", f"{filename} is not a readable PDF "
                          f"(damaged or truncated: {exc})") from exc
    if not reader.is_encrypted:
        return reader, None
    try:
        if reader.decrypt(""):
            return reader, ""
    except (DependencyError, FileNotDecryptedError, PdfReadError, NotImplementedError):
        pass
    raise IngestError("encrypted_pdf", f"{filename} is password-protected; remove the password "
                      "(print to PDF or save without encryption) and upload it again")


def looks_like_table(text: str) -> bool:
    """A page of many number-dense lines: a data table, where pypdf runs cells together."""
    lines = [line for line in text.splitlines() if line.strip()]
    dense = sum(1 for line in lines if len(_NUMBER.findall(line)) >= TABLE_MIN_NUMBERS_PER_LINE)
    return dense >= TABLE_MIN_LINES and dense >= TABLE_MIN_SHARE * len(lines)


def _title(reader: PdfReader) -> str | None:
    try:
        meta: Any = reader.metadata
        title = meta.title if meta is not None else None
    except Exception:
        return None
    if isinstance(title, str) and title.strip():
        return normalize_text(title)
    return None
