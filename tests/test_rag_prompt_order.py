"""RAG prompts laid out for the model server's prompt cache: stable parts first, sources in
document order, so follow-up questions about the same documents share the longest prefix."""

from __future__ import annotations

from dataclasses import dataclass

from reprise.rag.answer import grounded_messages, pack_sources
from reprise.rag.tokens import count_tokens
from reprise.upstream.prefix import block_hashes, prompt_text


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    page: int
    text: str
    score: float


NAMES = {"d1": "manual.pdf", "d2": "contract.pdf"}
PASSAGES = {
    "d1:0": ("d1", 1, "The pump must be primed before its first start."),
    "d1:3": ("d1", 2, "Replace the seal every 2,000 hours of operation."),
    "d1:7": ("d1", 4, "The warranty covers parts for 24 months."),
    "d2:1": ("d2", 1, "The tenant pays the rent on the first working day."),
    "d2:12": ("d2", 3, "Either party may end the lease with 60 days' notice."),
}


def _chunks(order: list[str]) -> list[Chunk]:
    """The given chunks, best first (scores falling in list order)."""
    return [Chunk(cid, PASSAGES[cid][0], PASSAGES[cid][1], PASSAGES[cid][2], 1 - i / 10)
            for i, cid in enumerate(order)]


def test_sources_follow_document_order_whatever_the_scores() -> None:
    a_text, a_cites = pack_sources(_chunks(["d2:12", "d1:7", "d1:0", "d2:1"]), NAMES, 500,
                                   count_tokens)
    b_text, b_cites = pack_sources(_chunks(["d1:0", "d2:1", "d2:12", "d1:7"]), NAMES, 500,
                                   count_tokens)
    assert a_text == b_text
    # contract.pdf < manual.pdf by name; in a document, by page then position ("12" > "1").
    assert [c["chunk_id"] for c in a_cites] == ["d2:1", "d2:12", "d1:0", "d1:7"]
    assert [c["index"] for c in a_cites] == [1, 2, 3, 4]
    assert a_text.startswith("[1] (contract.pdf, page 1)\nThe tenant pays")
    # Numbering and citations agree, and each citation keeps its own retrieval score.
    assert "[3] (manual.pdf, page 1)\nThe pump must be primed" in a_text
    assert {c["chunk_id"]: c["score"] for c in a_cites}["d2:12"] == 1.0
    assert a_cites != b_cites  # same layout, different scores


def test_the_budget_still_keeps_the_best_chunks() -> None:
    order = ["d1:7", "d2:12", "d1:0", "d2:1", "d1:3"]
    budget = 1 + sum(count_tokens(f"[00] ({NAMES[PASSAGES[c][0]]}, page {PASSAGES[c][1]})\n"
                                  f"{PASSAGES[c][2]}\n") for c in ("d1:7", "d2:12"))
    text, cites = pack_sources(_chunks(order), NAMES, budget_tokens=budget,
                               count_tokens=count_tokens)
    assert {c["chunk_id"] for c in cites} == {"d1:7", "d2:12"}
    assert [c["chunk_id"] for c in cites] == ["d2:12", "d1:7"]  # written in document order
    assert "pump must be primed" not in text


def test_follow_up_questions_share_the_whole_sources_prefix() -> None:
    """Two questions retrieving the same chunks in different score orders send prompts
    identical up to the question; in score order they would part at the first source."""
    system = {"role": "system", "content": "You are the support desk of ACME."}
    prompts = []
    for question, order in (("How often is the seal replaced?", ["d1:3", "d1:0", "d1:7"]),
                            ("What does the warranty cover?", ["d1:7", "d1:3", "d1:0"])):
        sources, _ = pack_sources(_chunks(order), NAMES, 500, count_tokens)
        messages = grounded_messages([system, {"role": "user", "content": question}], sources)
        assert messages[0]["content"].startswith("You are the support desk of ACME.")
        prompts.append(prompt_text({"messages": messages}))
    first, second = (block_hashes(p) for p in prompts)
    shared = next(i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y)
    question_at = prompts[0].index("How often")
    assert shared == question_at // 64  # every whole block before the question is shared
