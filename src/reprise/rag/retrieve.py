"""Hybrid retrieval: dense + BM25 candidates, fused, reranked, judged for relevance.

``search`` embeds the question (as an e5 *query*) and tokenizes it, asks both legs of the
chunk index for their best ``candidates`` concurrently, fuses the two lists, reads the best
``depth`` fused chunks back (text, page, passage vector), computes each one's exact cosine
to the question, and hands them to the reranker. The defaults were chosen on SciFact train,
full corpus, 809 claims (``bench/results/retrieval_tuning.md``): a convex combination with
dense weight 0.4 (BM25 0.6) beat the best RRF; 100 candidates per leg, the best 30
reranked (20 or 50 differed by < 0.002). A first tuning on a 984-document sub-corpus had
picked dense weight 0.6: with fewer competing documents the dense leg looked stronger.

``is_relevant`` decides whether a chunk may ground an answer at all: a question about
something the documents do not cover must get "not found" rather than an answer built
on the nearest unrelated text. It judges the query-passage cosine of the embedder (whose
scale is model-specific) together with the question's terms found in the chunk
(:class:`RelevanceGate`). The e5 gate was calibrated on SciFact train claims (their gold
chunk must pass: 94.7 % do) and QQP questions asked of SciFact (95 % must not); its effect
on SQuAD is reported in ``bench/results/retrieval.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from reprise.rag.chunk_index import ChunkIndex
from reprise.rag.fusion import convex, rrf
from reprise.rag.rerank import NoReranker, Reranker
from reprise.rag.results import Retrieved
from reprise.rag.tokenize import tokenize

__all__ = ["GATES", "HybridRetriever", "RelevanceGate", "Retrieved"]



@dataclass(frozen=True)
class RelevanceGate:
    """Whether a chunk is evidence for a question.

    Cosine alone cannot tell: e5 gives ~0.80 to an unrelated passage *in the same language*
    and ~0.83 to a relevant one. So a chunk counts if its cosine is ``strong`` on its own,
    or at least ``weak`` while it also holds a ``coverage`` share of the question's search
    terms (a question about cake recipes shares none with a municipal gazette).
    """

    strong: float
    weak: float
    coverage: float

    def __call__(self, r: Retrieved) -> bool:
        return r.similarity >= self.strong or (
            r.similarity >= self.weak and r.coverage >= self.coverage)


# Per embedder (cosine scales differ); calibrated on SciFact train, see module doc.
GATES: dict[str, RelevanceGate] = {
    "e5": RelevanceGate(strong=0.84, weak=0.82, coverage=0.5),
    # Not calibrated (no USE run over SciFact yet): USE cosines are lower and wider spread.
    "use": RelevanceGate(strong=0.55, weak=0.35, coverage=0.5),
}
OPEN_GATE = RelevanceGate(0.0, 0.0, 0.0)


def coverage(terms: Sequence[str], passage_terms: set[str]) -> float:
    """Share of the distinct query terms that occur in the passage."""
    distinct = set(terms)
    if not distinct:
        return 0.0
    return sum(1 for t in distinct if t in passage_terms) / len(distinct)


def set_coverage(terms: Sequence[str], results: Sequence[Retrieved]) -> None:
    """Fills ``coverage`` (tokenizes the chunks: run it off the event loop)."""
    for r in results:
        r.coverage = coverage(terms, set(tokenize(r.text)))


class HybridRetriever:
    def __init__(self, index: ChunkIndex, embedder: Any, reranker: Reranker | None = None, *,
                 candidates: int = 100, depth: int = 30,
                 fusion: Literal["rrf", "convex"] = "convex", rrf_k: int = 60,
                 dense_weight: float = 0.4, legs: tuple[str, ...] = ("dense", "bm25"),
                 min_similarity: float | None = None) -> None:
        self.index = index
        self.embedder = embedder
        self.reranker: Reranker = reranker or NoReranker()
        self.candidates = candidates
        self.depth = depth
        self.fusion = fusion
        self.rrf_k = rrf_k
        self.dense_weight = dense_weight
        self.legs = legs
        if min_similarity is not None and min_similarity > 0:  # an operator's override
            self.gate = RelevanceGate(min_similarity, min_similarity, 0.0)
        else:
            self.gate = GATES.get(getattr(embedder, "name", ""), OPEN_GATE)

    async def search(self, key: str, query: str, k: int) -> list[Retrieved]:
        if k <= 0 or not query.strip():
            return []
        qvec_task = self.embedder.embed([query], "query")
        terms_task = asyncio.to_thread(tokenize, query)
        qvecs, terms = await asyncio.gather(qvec_task, terms_task)
        qvec = np.asarray(qvecs, dtype=np.float32).reshape(-1)
        return await self.search_with(key, qvec, terms, query, k)

    async def search_with(self, key: str, qvec: np.ndarray, terms: list[str], query: str,
                          k: int) -> list[Retrieved]:
        """``search`` with the query already embedded and tokenized (benchmarks reuse them)."""
        n = max(self.candidates, k)
        dense_task = (self.index.dense_search(key, qvec, n) if "dense" in self.legs
                      else _nothing())
        bm25_task = (self.index.bm25_search(key, terms, n) if "bm25" in self.legs and terms
                     else _nothing())
        dense, sparse = await asyncio.gather(dense_task, bm25_task)
        lists = {"dense": dense, "bm25": sparse}
        if self.fusion == "convex":
            fused = convex(lists, {"dense": self.dense_weight, "bm25": 1 - self.dense_weight})
        else:
            fused = rrf(lists, self.rrf_k)
        best = sorted(fused.items(), key=lambda kv: -kv[1].score)[:k + self.depth]
        stored = await self.index.fetch(key, [cid for cid, _ in best])
        out: list[Retrieved] = []
        for cid, f in best:
            chunk = stored.get(cid)
            if chunk is None:  # deleted between the search and the read
                continue
            out.append(Retrieved(
                chunk.chunk_id, chunk.doc_id, chunk.page, chunk.text, f.score, f.legs,
                similarity=float(chunk.vector @ qvec), bm25=f.bm25 or 0.0, fused=f.score,
                vector=chunk.vector))
        head, tail = out[:self.depth], out[self.depth:]
        await asyncio.to_thread(set_coverage, terms, head)
        # Only the head is reranked; the tail keeps the fusion order, below every head item.
        head = await self.reranker.rerank(query, terms, head)
        if head and tail:
            floor = min(r.score for r in head)
            for i, r in enumerate(tail, 1):
                r.score = floor - i * 1e-6
        ranked = [*head, *tail][:k]
        await asyncio.to_thread(set_coverage, terms, ranked[len(head):])
        return ranked

    def is_relevant(self, result: Retrieved) -> bool:
        return self.gate(result)


async def _nothing() -> list[tuple[str, float]]:
    return []
