"""Cache lookup (exact → semantic → miss) and storing of complete answers.

This layer never fails a request: any store or embedder error is logged, counted and
answered as a miss (fail open to the model), and a failed store is simply skipped.

Users' votes (``cache.feedback``) are honoured here too: an entry whose votes refuse it for
the asked question is not served, whichever tier found it, and every answer served from or
into the cache is remembered briefly (``remember_served``) so a vote can name it by id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson

from reprise.cache.feedback import question_hash, refusal
from reprise.cache.keys import RequestKeys
from reprise.store.base import CacheEntry, ServedRecord, Store

if TYPE_CHECKING:
    from reprise.cache.semantic import Explanation, SemanticLookup

log = logging.getLogger(__name__)

Tier = Literal["exact", "semantic", "miss", "bypass"]


@dataclass(slots=True)
class CachePolicy:
    """What one request allows the cache to do (from its headers)."""

    namespace: str
    lookup: bool = True  # Cache-Control: no-cache → False (refresh)
    store: bool = True  # Cache-Control: no-store → False
    max_age: float | None = None  # Cache-Control: max-age=N
    semantic: bool = True  # X-Reprise-Semantic: off → False
    threshold: float | None = None  # X-Reprise-Threshold


@dataclass(slots=True)
class LookupResult:
    tier: Tier
    entry: CacheEntry | None = None
    similarity: float | None = None
    vector: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Why the semantic tier served what it served, or nothing (None when it did not run).
    explanation: Explanation | None = None

    @property
    def hit(self) -> bool:
        return self.entry is not None

    @property
    def completion(self) -> dict[str, Any]:
        assert self.entry is not None
        data: dict[str, Any] = orjson.loads(self.entry.response)
        return data

    @property
    def age(self) -> int:
        return 0 if self.entry is None else max(0, int(time.time() - self.entry.created_at))


class ComponentHealth:
    """Counts one component's failures (the cache store, or the embedder); a callback lets
    metrics see them without a global. Kept per component so an operator reading
    ``/healthz`` or the metrics knows whether Redis or the embedding model is in trouble."""

    def __init__(self, component: str, consequence: str) -> None:
        self.component = component
        self.consequence = consequence
        self.errors = 0
        self.last_error = ""
        self.listeners: list[Any] = []

    def failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{op}: {exc}"
        log.warning("%s %s failed, %s: %s", self.component, op, self.consequence, exc)
        for listener in self.listeners:
            listener(op)


class CacheService:
    def __init__(
        self,
        store: Store,
        semantic: SemanticLookup | None,
        *,
        ttl_seconds: int,
        semantic_enabled: bool = True,
        served_ttl_seconds: int = 24 * 3600,
    ) -> None:
        self.store = store
        self.semantic = semantic
        self.ttl_seconds = ttl_seconds
        self.served_ttl_seconds = served_ttl_seconds
        # Lookups that found an entry its votes refuse, by tier; listeners feed /metrics.
        self.refusals: dict[str, int] = {"exact": 0, "semantic": 0}
        self.refusal_listeners: list[Any] = []
        self.semantic_enabled = semantic_enabled and semantic is not None
        self.health = ComponentHealth("cache store", "serving without cache")
        self.embedder_health = ComponentHealth("embedder", "serving without the semantic tier")
        self._background: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_hit(self, namespace: str, key: str) -> None:
        try:
            await self.store.record_hit(namespace, key)
        except Exception as exc:
            self.health.failed("record_hit", exc)

    def _fresh(self, entry: CacheEntry, policy: CachePolicy) -> bool:
        return policy.max_age is None or time.time() - entry.created_at <= policy.max_age

    def _refused(self, tier: str, entry: CacheEntry, question: str | None,
                 similarity: float) -> bool:
        """Whether users' votes forbid serving ``entry`` for this question (counted)."""
        reason = refusal(entry, question or "", similarity)
        if reason is None:
            return False
        self._count_refusal(tier, reason)
        return True

    def _count_refusal(self, tier: str, reason: str) -> None:
        self.refusals[tier] = self.refusals.get(tier, 0) + 1
        log.info("%s candidate not served: %s", tier, reason)
        for listener in self.refusal_listeners:
            listener(tier)

    def semantic_allowed(self, keys: RequestKeys, policy: CachePolicy) -> bool:
        return (
            self.semantic_enabled
            and policy.semantic
            and keys.question is not None
            and self.semantic is not None
            and self.semantic.eligible(keys.question)
        )

    async def lookup(self, keys: RequestKeys, policy: CachePolicy) -> LookupResult:
        if not policy.lookup:
            return LookupResult("bypass")
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            entry = await self.store.get_exact(policy.namespace, keys.key)
        except Exception as exc:
            self.health.failed("get_exact", exc)
            return LookupResult("miss", timings=timings)
        timings["exact_ms"] = (time.perf_counter() - t0) * 1000
        if entry is not None and self._fresh(entry, policy) and not self._refused(
                "exact", entry, keys.question, 1.0):
            self._spawn(self._record_hit(policy.namespace, keys.key))
            return LookupResult("exact", entry, 1.0, timings=timings)
        if not self.semantic_allowed(keys, policy):
            return LookupResult("miss", timings=timings)
        assert self.semantic is not None and keys.question is not None
        vector: np.ndarray | None = None
        try:
            t1 = time.perf_counter()
            vector = await self.semantic.embed(keys.question)
            timings["embed_ms"] = (time.perf_counter() - t1) * 1000
        except Exception as exc:
            self.embedder_health.failed("lookup", exc)
            return LookupResult("miss", timings=timings)
        try:
            t2 = time.perf_counter()
            decision = await self.semantic.find(
                policy.namespace, keys.fingerprint, keys.question, vector, policy.threshold
            )
            timings["semantic_ms"] = (time.perf_counter() - t2) * 1000
        except Exception as exc:
            self.health.failed("semantic_lookup", exc)
            return LookupResult("miss", vector=vector, timings=timings)
        # ``SemanticLookup`` skips refused candidates itself (so the next one may win); this
        # check keeps a refused entry from ever being served whatever the candidate choice.
        match, why = decision.match, decision.explanation
        if match is None and why.stage == "feedback":
            # The semantic tier skipped the nearest candidate for its votes: counted like
            # a refusal here, so the metric covers both places votes act.
            self._count_refusal("semantic", why.reason)
        if match is not None:
            fresh = self._fresh(match.entry, policy)
            if fresh and not self._refused("semantic", match.entry, keys.question,
                                           match.similarity):
                self._spawn(self._record_hit(policy.namespace, match.entry.key))
                return LookupResult("semantic", match.entry, match.similarity, vector,
                                    timings, why)
            why = (why.overruled("feedback", "refused by users' votes") if fresh
                   else why.overruled("policy", "older than the request's max-age"))
        return LookupResult("miss", vector=vector, timings=timings, explanation=why)

    async def save(
        self,
        keys: RequestKeys,
        policy: CachePolicy,
        completion: dict[str, Any],
        *,
        model: str,
        vector: np.ndarray | None = None,
    ) -> CacheEntry | None:
        """Store a complete answer; returns the stored entry, or None (logged) if it was
        not stored."""
        if not policy.store:
            return None
        semantic = self.semantic_allowed(keys, policy)
        if vector is None and semantic:
            assert self.semantic is not None and keys.question is not None
            try:
                vector = await self.semantic.embed(keys.question)
            except Exception as exc:
                # The embedder failing costs the entry its semantic tier, not the answer:
                # it is still stored for exact hits.
                self.embedder_health.failed("save", exc)
                semantic = False
        try:
            usage = completion.get("usage") or {}
            now = time.time()
            entry = CacheEntry(
                key=keys.key,
                namespace=policy.namespace,
                fingerprint=keys.fingerprint,
                question=keys.question or "",
                response=orjson.dumps(completion),
                model=model,
                vector=vector if semantic else None,
                created_at=now,
                expires_at=now + self.ttl_seconds if self.ttl_seconds > 0 else None,
                last_access=now,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
            await self.store.put(entry)
            return entry
        except Exception as exc:
            self.health.failed("put", exc)
            return None

    async def remember_served(self, response_id: str, namespace: str, entry: CacheEntry,
                              question: str | None, tier: str, similarity: float) -> None:
        """Remember that ``response_id`` served ``entry`` for ``question`` (for votes).

        Awaited on the request path (one small write), so a vote sent right after the
        answer, to any replica, finds it. A failure costs only the ability to vote on this
        answer: it is counted and the answer is still served.
        """
        if not response_id or self.served_ttl_seconds <= 0:
            return
        now = time.time()
        record = ServedRecord(
            response_id=response_id, namespace=namespace, key=entry.key,
            question_hash=question_hash(question or ""), tier=tier, similarity=similarity,
            entry_created=entry.created_at, served_at=now,
            expires_at=now + self.served_ttl_seconds,
        )
        try:
            await self.store.remember_served(record)
        except Exception as exc:
            self.health.failed("remember_served", exc)

    async def aclose(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
