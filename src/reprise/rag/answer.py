"""Grounded prompts: pack the best chunks into a token budget as numbered sources.

The model sees each source as ``[n] (file, page p)`` followed by its text and is told to cite
``[n]``; the same numbering is returned as structured citations so an app can show the page
each claim came from. The prompt is laid out for the model server's prompt cache: the stable
parts first (the app's system prompt, the instructions, then the sources in document order),
the conversation last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reprise.cache.guards import detect_language


class RetrievedLike(Protocol):
    chunk_id: str
    doc_id: str
    page: int
    text: str
    score: float


INSTRUCTIONS = (
    "Answer the user's question using only the numbered sources below. Cite the sources you "
    "use with their numbers in square brackets, like [1] or [2][3]. If the sources do not "
    "contain the answer, say that the documents do not contain it; do not invent facts. "
    "Answer in the language of the question."
)

NOT_FOUND = {
    "pt": "Não encontrei essa informação nos documentos da coleção “{name}”.",
    "zh": "在文档集“{name}”中没有找到相关信息。",
    "en": "I could not find this in the documents of the collection “{name}”.",
}


@dataclass(frozen=True)
class PackedContext:
    messages: list[dict[str, Any]]
    citations: list[dict[str, Any]]


def _document_order(chunk: RetrievedLike, name: str) -> tuple[str, str, int, int, str]:
    """Where a chunk sits in its collection: file name, document, page, position in it."""
    _, _, tail = chunk.chunk_id.rpartition(":")
    ordinal = int(tail) if tail.isdigit() else 0
    return (name, chunk.doc_id, chunk.page, ordinal, chunk.chunk_id)


def pack_sources(
    chunks: Sequence[RetrievedLike],
    filenames: dict[str, str],
    budget_tokens: int,
    count_tokens: Callable[[str], int],
) -> tuple[str, list[dict[str, Any]]]:
    """Sources text and citations: the best chunks that fit the budget, in document order.

    Chosen by score, but written in the order they sit in the collection (file, page,
    position) and numbered that way. Follow-up questions about the same documents usually
    retrieve much the same chunks in a different score order; in document order their
    prompts are identical up to where the chosen chunks differ, so the model server reuses
    the longest prefix from its prompt cache (``bench/prefix_routing.py`` measures it).
    """
    chosen: list[tuple[RetrievedLike, str, str]] = []  # chunk, file name, text kept
    used = 0
    for chunk in chunks:
        name = filenames.get(chunk.doc_id, chunk.doc_id)
        text = chunk.text.strip()
        cost = count_tokens(f"[00] ({name}, page {chunk.page})\n{text}\n")
        if used + cost > budget_tokens:
            if chosen:
                continue  # a smaller later chunk may still fit
            # Always give the model at least the best source, trimmed to the budget.
            keep = max(1, int(len(chunk.text) * budget_tokens / max(cost, 1)))
            text = chunk.text[:keep].strip()
            cost = count_tokens(f"[1] ({name}, page {chunk.page})\n{text}\n")
        chosen.append((chunk, name, text))
        used += cost
    chosen.sort(key=lambda c: _document_order(c[0], c[1]))
    parts: list[str] = []
    citations: list[dict[str, Any]] = []
    for index, (chunk, name, text) in enumerate(chosen, start=1):
        parts.append(f"[{index}] ({name}, page {chunk.page})\n{text}\n")
        citations.append({"index": index, "document_id": chunk.doc_id,
                          "document": name, "filename": name, "page": chunk.page,
                          "chunk_id": chunk.chunk_id, "text": chunk.text,
                          "score": round(float(chunk.score), 6)})
    return "\n".join(parts), citations


def grounded_messages(messages: list[dict[str, Any]], sources: str,
                      instructions: str | None = None) -> list[dict[str, Any]]:
    """The conversation with the sources added to (or as) the system message;
    ``instructions`` (e.g. written in the question's language) replace the English ones."""
    system = f"{instructions or INSTRUCTIONS}\n\nSources:\n{sources}"
    if messages and messages[0].get("role") in ("system", "developer") and isinstance(
            messages[0].get("content"), str):
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{system}"
        return [first, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def not_found_answer(question: str, collection: str) -> str:
    """An honest "not in the documents", in the question's language."""
    lang = detect_language(question)
    return NOT_FOUND.get(lang, NOT_FOUND["en"]).format(name=collection)
