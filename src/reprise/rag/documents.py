"""The data that flows from ingestion to the index: pages of text, documents and chunks.

Page numbers travel with the text from the loader to every chunk, because a user must be
able to check each cited claim against the page it came from. All types are frozen so a
chunk that was embedded cannot drift from the text that is shown as its citation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIME_PDF = "application/pdf"
MIME_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
MIME_HTML = "text/html"
MIME_MARKDOWN = "text/markdown"
MIME_TEXT = "text/plain"


@dataclass(frozen=True)
class Page:
    """One page of extracted text; ``number`` is 1-based, as a reader would cite it."""

    number: int
    text: str


@dataclass(frozen=True)
class LoadedDocument:
    """A file turned into text; formats without real pages (HTML, Markdown) have page 1."""

    filename: str
    mime: str
    sha256: str  # of the uploaded bytes: the same bytes uploaded twice are the same document
    pages: list[Page] = field(default_factory=list)
    title: str | None = None

    @property
    def text(self) -> str:
        return "\n\n".join(p.text for p in self.pages)


@dataclass(frozen=True)
class Chunk:
    """A retrievable piece of one page; ``text`` is verbatim page text, used for citations."""

    doc_id: str
    ordinal: int  # position in the document, 0-based, over all pages
    page: int
    text: str
    tokens: int


class IngestError(Exception):
    """A file that cannot be ingested, with a machine ``code`` and a message for a human.

    Codes: ``empty``, ``too_large``, ``unsupported_type``, ``corrupt``, ``encrypted_pdf``,
    ``no_text``, ``zip_bomb``. The API shows both per file, so one bad file in an upload of
    many says exactly what is wrong with it while the others are ingested.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"IngestError({self.code!r}, {self.message!r})"
