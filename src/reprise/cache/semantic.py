"""Semantic lookup: find a stored answer to a differently worded question, safely.

Three stages, cheapest first: vector search inside the request's partition (cosine floor),
rule guards (numbers, entities, negation, antonyms, language), then the learned verifier.
A wrong cached answer is worse than a miss, so every stage can only remove candidates.

Threshold and verifier combine like this: the threshold is the cosine floor, and the
verifier's cutoff moves with it (``Verifier.cutoff_for``). A caller who lowers the
threshold (``X-Reprise-Threshold``) gets more hits because both gates relax; the guards
apply at every threshold.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reprise.cache.guards import run_guards
from reprise.cache.verifier import Verifier, pair_features, same_question
from reprise.embed.base import Embedder
from reprise.store.base import CacheEntry, SearchHit, Store


_TRAILING = " \t\n?？.。!！;；:：…"


def embedding_text(question: str) -> str:
    """The form of a question that is embedded, for lookup and storage alike.

    USE is case- and punctuation-sensitive (a case-only difference scores cosine 0.90), so
    "How do I X?" and "how do i x" would look like different questions. Case, spacing
    and closing punctuation never change what a question asks, so they are removed before
    embedding; the guards and the verifier still see the original text. The stored vector
    and the query vector must both come from here, which ``SemanticLookup.embed`` ensures.
    """
    text = " ".join(unicodedata.normalize("NFKC", question).split()).casefold()
    return text.rstrip(_TRAILING) or text


@dataclass(slots=True)
class SemanticMatch:
    entry: CacheEntry
    similarity: float
    score: float  # verifier probability that the two questions share an answer


@dataclass(slots=True)
class Assessment:
    """One candidate after the guards and the verifier, before any threshold is applied."""

    hit: SearchHit
    rejected: str | None  # guard reason, or None when every guard passed
    score: float  # verifier probability (0.0 when a guard rejected it)
    long: bool = False  # judged with the verifier's long-group cutoff


class SemanticLookup:
    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        verifier: Verifier,
        *,
        threshold: float,
        top_k: int = 5,
        max_chars: int = 2000,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.verifier = verifier
        self.threshold = threshold
        self.top_k = top_k
        self.max_chars = max_chars

    def eligible(self, question: str) -> bool:
        """Whether a question may use (and feed) the semantic tier at all.

        Empty text, text longer than ``max_chars`` (a pasted document is not a question a
        paraphrase can match safely) and text without a letter or digit (an image
        placeholder, punctuation) bypass it.
        """
        stripped = question.strip()
        if not stripped or len(stripped) > self.max_chars:
            return False
        return any(ch.isalnum() for ch in stripped)

    async def embed(self, question: str) -> np.ndarray:
        """Unit vector of the question (the same vector is stored with a new answer).

        Computed from ``embedding_text(question)``, so lookup and storage agree.
        """
        vectors = await self.embedder.embed([embedding_text(question)], "query")
        return np.asarray(vectors[0], dtype=np.float32)

    def assess(self, question: str, hits: Sequence[SearchHit], floor: float) -> list[Assessment]:
        """Run guards and verifier on every hit with similarity ≥ ``floor`` (CPU work)."""
        out: list[Assessment] = []
        pending: list[tuple[SearchHit, np.ndarray]] = []
        for hit in hits:
            if hit.similarity < floor:
                continue
            verdict = run_guards(question, hit.entry.question)
            if not verdict.ok:
                out.append(Assessment(hit, verdict.reason, 0.0))
                continue
            if same_question(question, hit.entry.question):
                out.append(Assessment(hit, None, 1.0))
                continue
            pending.append((hit, pair_features(question, hit.entry.question, hit.similarity)))
        if pending:
            scores = self.verifier.predict(np.stack([f for _, f in pending]))
            out += [
                Assessment(h, None, float(s), self.verifier.is_long(question, h.entry.question))
                for (h, _), s in zip(pending, scores, strict=True)
            ]
        return out

    def choose(
        self, assessed: Sequence[Assessment], threshold: float | None = None
    ) -> SemanticMatch | None:
        """The most similar accepted candidate, or None.

        Ranked by cosine, not by verifier score: on the benchmark, ranking by score picked a
        wrong neighbour more often (the verifier separates same/different, it does not rank
        near-duplicates well), while a guard-rejected top hit still lets the next one win
        ("capital of Germany" stored next to "capital of France").
        """
        floor = self.threshold if threshold is None else threshold
        cutoffs = {False: self.verifier.cutoff_for(floor), True: self.verifier.cutoff_for(floor, True)}
        best: Assessment | None = None
        for a in assessed:
            if a.rejected is None and a.hit.similarity >= floor and a.score >= cutoffs[a.long]:
                if best is None or (a.hit.similarity, a.score) > (best.hit.similarity, best.score):
                    best = a
        if best is None:
            return None
        return SemanticMatch(best.hit.entry, best.hit.similarity, best.score)

    async def find(
        self,
        namespace: str,
        fingerprint: str,
        question: str,
        vector: np.ndarray,
        threshold: float | None = None,
    ) -> SemanticMatch | None:
        """Best stored answer for ``question`` in the partition, or None (a miss)."""
        if not self.eligible(question):
            return None
        floor = self.threshold if threshold is None else threshold
        if floor >= 1.0:
            # Cosine cannot exceed 1, and questions equal after ``embedding_text`` embed to
            # the same vector: "1.0" asks for no semantic match at all (the exact tier
            # already serves identical requests), rather than a float-rounding lottery.
            return None
        hits = await self.store.search(namespace, fingerprint, vector, self.top_k)
        hits = [h for h in hits if h.similarity >= floor and self.eligible(h.entry.question)]
        if not hits:
            return None
        assessed = await asyncio.to_thread(self.assess, question, hits, floor)
        return self.choose(assessed, floor)
