"""Pages → token-bounded chunks that keep their page number and overlap their neighbours.

A chunk never spans two pages: each citation then points to exactly one page the user can
open. Inside a page the text is cut at the coarsest boundary that fits the budget —
paragraph, then sentence (``. ! ?`` followed by a space, or Chinese ``。！？；`` which need
none), then line, then clause (``, ; :`` and ``，、：``), and only as a last resort between
tokens — and the pieces are packed greedily into chunks of at most ``chunk_tokens``.
Consecutive chunks of a page share up to ``overlap`` tokens, starting at a sentence boundary
when one is close, so a fact cut by a chunk border is still whole in one of them.

``Chunk.text`` is always an exact slice of the page text, so a citation can be located and
highlighted in the page it came from.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from reprise.rag.documents import Chunk, LoadedDocument
from reprise.rag.tokens import count_tokens, split_spans, tail_start

_CLOSERS = "\"'”’»)\\]」』）》"
_NO_START = set(".,;:!?)]}。，；：！？、）》」』”’")  # closes the previous sentence or clause
_LEVELS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\n\s*\n"),  # paragraphs
    re.compile(  # sentences; the closing quote or bracket stays with its sentence
        rf"(?<=[.!?…])\s+|(?<=[.!?…][{_CLOSERS}])\s+"
        rf"|(?<=[。！？；])(?![{_CLOSERS}])\s*"
        rf"|(?<=[。！？；][{_CLOSERS}])\s*"
    ),
    re.compile(r"\n"),  # lines
    re.compile(r"(?<=[,;:，、：])\s*"),  # clauses
)


class _Unit(NamedTuple):
    start: int
    end: int
    cost: int


def chunk_document(doc: LoadedDocument, doc_id: str, *, chunk_tokens: int = 256,
                   overlap: int = 48) -> list[Chunk]:
    """Chunks of every page in order; ``ordinal`` counts across the whole document."""
    if chunk_tokens < 2:
        raise ValueError("chunk_tokens must be at least 2")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError("overlap must be at least 0 and smaller than chunk_tokens")
    chunks: list[Chunk] = []
    for page in doc.pages:
        for start, end in chunk_spans(page.text, chunk_tokens, overlap):
            text = page.text[start:end]
            chunks.append(Chunk(doc_id, len(chunks), page.number, text, count_tokens(text)))
    return chunks


def chunk_spans(text: str, chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` slices of ``text``, each at most ``chunk_tokens``, in order."""
    spans: list[tuple[int, int]] = []
    current: list[_Unit] = []
    used = 0
    # Units leave room for the overlap, so a chunk of full-size units still gets one.
    for unit in _units(text, 0, len(text), chunk_tokens - overlap, 0):
        if current and used + unit.cost > chunk_tokens:
            spans.append((current[0].start, current[-1].end))
            budget = min(overlap, chunk_tokens - unit.cost, used // 2)
            current = _overlap(text, current, budget)
            used = sum(u.cost for u in current)
        current.append(unit)
        used += unit.cost
    if current:
        spans.append((current[0].start, current[-1].end))
    return spans


def _units(text: str, start: int, end: int, limit: int, level: int) -> list[_Unit]:
    """The coarsest pieces of ``text[start:end]`` (whitespace trimmed) costing ``<= limit``."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start >= end:
        return []
    cost = count_tokens(text[start:end])
    if cost <= limit:
        return [_Unit(start, end, cost)]
    if level == len(_LEVELS):  # no boundary left: cut between tokens
        return [u for s, e in split_spans(text[start:end], limit, offset=start)
                for u in _units(text, s, e, limit, level)]
    out: list[_Unit] = []
    cursor = start
    for sep in _LEVELS[level].finditer(text, start, end):
        if sep.start() > cursor:
            out.extend(_units(text, cursor, sep.start(), limit, level + 1))
            cursor = sep.end()
        cursor = max(cursor, sep.end())
    out.extend(_units(text, cursor, end, limit, level + 1))
    return out


def _overlap(text: str, current: list[_Unit], budget: int) -> list[_Unit]:
    """The tail of the finished chunk that opens the next one (at most ``budget`` tokens).

    It starts after the coarsest boundary (paragraph, sentence, line, clause) inside the
    budget that still keeps a third of it, else at the token boundary that fills it, so the
    overlap reads as whole sentences whenever the sentences are short enough.
    """
    if budget <= 0:
        return []
    start, end = current[0].start, current[-1].end
    tail = start + tail_start(text[start:end], budget)
    if tail >= end:
        return []
    chosen = tail
    for pattern in _LEVELS:
        boundary = next((m.end() for m in pattern.finditer(text, tail - 1, end)
                         if tail <= m.end() < end), None)
        if boundary is not None and count_tokens(text[boundary:end]) >= budget // 3:
            chosen = boundary
            break
    while chosen < end and (text[chosen].isspace() or text[chosen] in _NO_START):
        chosen += 1
    return [_Unit(chosen, end, count_tokens(text[chosen:end]))]
