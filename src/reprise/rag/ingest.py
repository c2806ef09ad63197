"""Uploaded bytes → :class:`LoadedDocument`, dispatched on what the bytes are.

The type comes from the file's magic bytes, never from its name: an executable renamed
``report.pdf`` must be refused, and a PDF saved as ``report.txt`` still read as a PDF. The
extension only chooses between the text formats (HTML, Markdown, plain text), which cannot
be told apart reliably by content and are equally harmless to parse.

Blocking and CPU-bound: callers on the event loop run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import PurePath

from reprise.rag.documents import IngestError, LoadedDocument
from reprise.rag.loaders.docx import load_docx
from reprise.rag.loaders.html import load_html
from reprise.rag.loaders.pdf import load_pdf
from reprise.rag.loaders.text import load_markdown, load_text

Loader = Callable[[str, bytes, str], LoadedDocument]

# Binary formats we recognise only to refuse them by name.
_REFUSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "a Windows executable"),
    (b"\x7fELF", "a Linux executable"),
    (b"\xcf\xfa\xed\xfe", "a macOS executable"),
    (b"\xce\xfa\xed\xfe", "a macOS executable"),
    (b"\xca\xfe\xba\xbe", "a macOS/Java binary"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office file (.doc/.xls/.ppt)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"{\\rtf", "an RTF document"),
)
_MARKDOWN_EXT = {".md", ".markdown", ".mdown", ".mkd"}
_HTML_EXT = {".html", ".htm", ".xhtml"}
_HTML_START = re.compile(
    rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.I | re.S)
SNIFF_BYTES = 1024  # a PDF header may follow up to 1 KB of junk, as readers accept


def sha256_hex(data: bytes) -> str:
    """Identity of an upload: the same bytes uploaded twice are detected as a duplicate."""
    return hashlib.sha256(data).hexdigest()


def sniff(filename: str, data: bytes) -> Loader:
    """The loader for these bytes, or an ``unsupported_type`` error saying what they are."""
    head = data[:SNIFF_BYTES]
    if b"%PDF-" in head:
        return load_pdf
    if head.startswith(b"PK\x03\x04"):
        return load_docx  # it checks the archive is a DOCX (and not a bomb) itself
    for magic, what in _REFUSED_MAGIC:
        if head.startswith(magic):
            raise IngestError("unsupported_type", f"{filename} is {what}, not a supported "
                              "document (PDF, DOCX, HTML, Markdown or text)")
    ext = PurePath(filename).suffix.lower()
    if ext in (".pdf", ".docx"):
        raise IngestError("unsupported_type", f"{filename} is named {ext} but is not a "
                          f"{ext[1:].upper()} file (its content does not start like one)")
    if _looks_binary(head):
        raise IngestError("unsupported_type", f"{filename} is a binary file of an unsupported "
                          "type (supported: PDF, DOCX, HTML, Markdown, text)")
    if ext in _HTML_EXT or (ext not in _MARKDOWN_EXT and _HTML_START.match(head)):
        return load_html
    if ext in _MARKDOWN_EXT:
        return load_markdown
    return load_text


def _looks_binary(head: bytes) -> bool:
    """NUL bytes outside UTF-16/32 text mean binary; a text file never contains them."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False
    return b"\x00" in head


def load_document(filename: str, data: bytes, *, max_bytes: int) -> LoadedDocument:
    """Read one uploaded file into pages of clean text, or raise :class:`IngestError`.

    Checks run cheapest first: size, emptiness, type by magic bytes, then the format's own
    checks (encryption, zip bomb, text layer) inside its loader.
    """
    if len(data) > max_bytes:
        raise IngestError("too_large", f"{filename} is {len(data)} bytes; the limit is "
                          f"{max_bytes} bytes")
    if not data.strip():
        raise IngestError("empty", f"{filename} is empty")
    loader = sniff(filename, data)
    doc = loader(filename, data, sha256_hex(data))
    if not any(page.text.strip() for page in doc.pages):
        raise IngestError("no_text", f"{filename} contains no text")
    return doc
