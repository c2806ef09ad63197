"""Semantic lookup: find a stored answer to a differently worded question, safely, and say why.

Stages, cheapest first, each able only to remove candidates (a wrong cached answer is worse
than a miss):

1. vector search inside the request's partition, kept above the cosine floor;
2. rule guards (numbers, entities, negation, antonyms, ordered arguments, language);
3. the entry's own record of user feedback (``reprise.cache.feedback``): a stored answer
   voted wrong for this question, or below the entry's raised bar, is not served;
4. the verifier (``reprise.cache.verifier``): identical questions and same-subject explain
   requests are accepted outright; the rest are read pairwise by the cross-encoder, which
   must reach the cutoff that goes with the floor.

The most similar surviving candidate is served. Every lookup, hit or miss, yields an
``Explanation``: the stored question that decided (or the nearest one), its similarity,
and the stage that decided with its numbers, for the response, the admin events and the UI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from reprise.cache.feedback import refusal
from reprise.cache.guards import run_guards
from reprise.cache.text import embedding_text
from reprise.cache.verifier import Verifier, language_group, sure_match
from reprise.embed.base import Embedder
from reprise.store.base import CacheEntry, SearchHit, Store

__all__ = ["Assessment", "Decision", "Explanation", "SemanticLookup", "SemanticMatch",
           "embedding_text"]

log = logging.getLogger(__name__)

Stage = Literal["ineligible", "empty", "floor", "guard", "feedback", "verifier", "rule",
                "policy"]


@dataclass(slots=True)
class SemanticMatch:
    entry: CacheEntry
    similarity: float
    score: float  # verifier probability that the two questions share an answer (1.0 = rule)


@dataclass(slots=True)
class Assessment:
    """One candidate after the guards, feedback and the verifier, before a floor is applied."""

    hit: SearchHit
    rejected: str | None  # guard or feedback reason, or None
    score: float  # verifier probability; 1.0 for a rule accept; 0.0 when rejected or unscored
    stage: Stage = "verifier"  # what decided: "guard", "feedback", "rule" or "verifier"
    group: str = "en"  # the incoming question's cutoff group (``verifier.language_group``)


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a lookup served what it served (or nothing)."""

    hit: bool
    stage: Stage
    reason: str
    nearest: str | None = None  # the candidate that decided, or the nearest one on a miss
    similarity: float | None = None
    score: float | None = None
    cutoff: float | None = None
    floor: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hit": self.hit, "stage": self.stage, "reason": self.reason}
        for name in ("nearest", "similarity", "score", "cutoff", "floor"):
            value = getattr(self, name)
            if value is not None:
                out[name] = round(value, 4) if isinstance(value, float) else value
        return out

    def overruled(self, stage: Stage, reason: str) -> Explanation:
        """The same candidate, not served after all (the request's max-age, votes)."""
        return dataclasses.replace(self, hit=False, stage=stage, reason=reason)

    def header(self) -> str:
        """Compact form for a response header (ASCII only: header values are latin-1)."""
        parts: list[str] = [self.stage]
        for name in ("similarity", "score", "cutoff", "floor"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value:.3f}")
        if self.stage in ("guard", "feedback"):
            parts.append("reason=" + self.reason.encode("ascii", "replace").decode()[:120])
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Decision:
    match: SemanticMatch | None
    explanation: Explanation


NOT_ELIGIBLE = Explanation(False, "ineligible", "not a question the semantic tier takes "
                           "(empty, no letters or digits, or longer than the limit)")


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

    def cutoff(self, threshold: float | None, group: str = "en") -> float:
        return self.verifier.cutoff_for(self.threshold if threshold is None else threshold,
                                        group)

    def _screen(self, question: str, group: str, hits: Sequence[SearchHit], floor: float
                ) -> tuple[list[Assessment], list[SearchHit]]:
        """Cheap stages: guards, feedback, rule accepts. Returns the decided candidates and
        those left for the cross-encoder (above ``floor``, most similar first)."""
        decided: list[Assessment] = []
        open_: list[SearchHit] = []
        for hit in sorted(hits, key=lambda h: -h.similarity):
            if hit.similarity < floor or not self.eligible(hit.entry.question):
                continue
            verdict = run_guards(question, hit.entry.question)
            if not verdict.ok:
                decided.append(Assessment(hit, verdict.reason, 0.0, "guard", group))
                continue
            refused = refusal(hit.entry, question, hit.similarity)
            if refused is not None:
                decided.append(Assessment(hit, refused, 0.0, "feedback", group))
                continue
            if sure_match(question, hit.entry.question):
                decided.append(Assessment(hit, None, 1.0, "rule", group))
                continue
            open_.append(hit)
        return decided, open_

    @staticmethod
    def _scored(group: str, open_: Sequence[SearchHit], probs: np.ndarray | None
                ) -> list[Assessment]:
        """Assessments from the verifier's probabilities; None (no model, or it failed)
        leaves every candidate unscored, and an unscored candidate is never served."""
        if probs is None:
            return [Assessment(h, None, 0.0, group=group) for h in open_]
        return [Assessment(h, None, float(p), group=group)
                for h, p in zip(open_, probs, strict=True)]

    def _score(self, question: str, group: str, open_: Sequence[SearchHit]
               ) -> list[Assessment]:
        if not open_:
            return []
        probs = None
        if self.verifier.available:
            try:
                probs = self.verifier.scores(question, [h.entry.question for h in open_])
            except Exception as exc:  # fail safe
                log.warning("cross-encoder failed, judging without it: %s", exc)
        return self._scored(group, open_, probs)

    async def _ascore(self, question: str, group: str, open_: Sequence[SearchHit]
                      ) -> list[Assessment]:
        """``_score`` on the request path: the pairs go to the verifier's batcher (shared
        with concurrent lookups) or a worker thread, never the event loop."""
        if not open_:
            return []
        probs = None
        if self.verifier.available:
            try:
                probs = await self.verifier.ascores(question,
                                                    [h.entry.question for h in open_])
            except Exception as exc:  # fail safe
                log.warning("cross-encoder failed, judging without it: %s", exc)
        return self._scored(group, open_, probs)

    def assess(self, question: str, hits: Sequence[SearchHit], floor: float
               ) -> list[Assessment]:
        """Every stage on every hit with similarity ≥ ``floor`` (benchmarks sweep the
        threshold over the result with ``choose``). Blocking."""
        group = language_group(question)
        decided, open_ = self._screen(question, group, hits, floor)
        return decided + self._score(question, group, open_)

    async def _assess_for(self, question: str, hits: Sequence[SearchHit], floor: float
                          ) -> list[Assessment]:
        """``assess`` for the request path, off the event loop, scoring only what can still
        change the answer: candidates more similar than the best rule accept, the most
        similar one first and the rest only when it fails (a hit usually costs one pair)."""
        group = language_group(question)
        decided, open_ = await asyncio.to_thread(self._screen, question, group, hits, floor)
        sure = [a.hit.similarity for a in decided if a.stage == "rule"]
        if sure:
            open_ = [h for h in open_ if h.similarity > max(sure)]
        if not open_:
            return decided
        first = await self._ascore(question, group, open_[:1])
        if first[0].score >= self.cutoff(floor, group) or len(open_) == 1:
            return decided + first
        rest = await self._ascore(question, group, open_[1:])
        return decided + first + rest

    def choose(self, assessed: Sequence[Assessment], threshold: float | None = None
               ) -> SemanticMatch | None:
        """The most similar accepted candidate, or None.

        Ranked by cosine, not by verifier score: the verifier separates same/different,
        and among several accepted candidates the closest wording is the safest answer;
        a rejected top hit still lets the next one win ("capital of Germany" stored next
        to "capital of France").
        """
        best = self._best(assessed, threshold)
        return None if best is None else SemanticMatch(best.hit.entry, best.hit.similarity,
                                                        best.score)

    def _best(self, assessed: Sequence[Assessment], threshold: float | None
              ) -> Assessment | None:
        floor = self.threshold if threshold is None else threshold
        best: Assessment | None = None
        for a in assessed:
            if (a.rejected is None and a.hit.similarity >= floor
                    and a.score >= self.cutoff(floor, a.group)):
                if best is None or (a.hit.similarity, a.score) > (best.hit.similarity,
                                                                   best.score):
                    best = a
        return best

    def explain(self, hits: Sequence[SearchHit], assessed: Sequence[Assessment],
                threshold: float | None = None) -> Explanation:
        """The verdict of a lookup: the served candidate's reasons on a hit, else those of
        the nearest candidate (the one a user would have expected to be served)."""
        floor = self.threshold if threshold is None else threshold
        best = self._best(assessed, threshold)
        if best is not None:
            cutoff = self.cutoff(floor, best.group)
            how = ("same question (rule)" if best.stage == "rule"
                   else f"verifier {best.score:.2f} >= cutoff {cutoff:.2f}")
            return Explanation(True, best.stage, how, best.hit.entry.question,
                               best.hit.similarity, best.score,
                               None if best.stage == "rule" else cutoff, floor)
        if not hits:
            return Explanation(False, "empty", "no stored question in this partition yet",
                               floor=floor)
        nearest = max(hits, key=lambda h: h.similarity)
        judged = next((a for a in assessed if a.hit is nearest), None)
        q, sim = nearest.entry.question, nearest.similarity
        if sim < floor or judged is None:
            return Explanation(False, "floor", f"similarity {sim:.2f} is below the floor "
                               f"{floor:.2f}", q, sim, floor=floor)
        if judged.rejected is not None:
            return Explanation(False, judged.stage, judged.rejected, q, sim, floor=floor)
        if not self.verifier.available:
            return Explanation(False, "verifier", "no verifier model: only identical "
                               "questions are served", q, sim, floor=floor)
        cutoff = self.cutoff(floor, judged.group)
        return Explanation(False, "verifier", f"verifier {judged.score:.2f} < cutoff "
                           f"{cutoff:.2f}: judged a different question", q, sim,
                           judged.score, cutoff, floor)

    async def find(
        self,
        namespace: str,
        fingerprint: str,
        question: str,
        vector: np.ndarray,
        threshold: float | None = None,
    ) -> Decision:
        """Best stored answer for ``question`` in the partition (or None), with its reasons."""
        if not self.eligible(question):
            return Decision(None, NOT_ELIGIBLE)
        floor = self.threshold if threshold is None else threshold
        hits = await self.store.search(namespace, fingerprint, vector, self.top_k)
        if floor >= 1.0:
            # Cosine cannot exceed 1, and questions equal after ``embedding_text`` embed to
            # the same vector: "1.0" asks for no semantic match at all (the exact tier
            # already serves identical requests), rather than a float-rounding lottery.
            nearest = max(hits, key=lambda h: h.similarity, default=None)
            return Decision(None, Explanation(
                False, "floor", "threshold 1.0 turns the semantic tier off for this request",
                None if nearest is None else nearest.entry.question,
                None if nearest is None else nearest.similarity, floor=floor))
        assessed = await self._assess_for(question, hits, floor)
        return Decision(self.choose(assessed, floor), self.explain(hits, assessed, floor))
