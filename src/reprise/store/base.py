"""The one contract every cache store implements (memory, SQLite, Redis).

A store keeps complete answers (``CacheEntry``), addressed two ways:
* exactly, by ``(namespace, key)`` where ``key`` is the canonical request hash;
* approximately, by vector search restricted to one partition
  ``(namespace, fingerprint)``, so entries of other tenants, models, system prompts or
  conversation histories are never candidates.

All methods are async so the Redis store can do network I/O; the embedded stores run their
blocking work in a thread. Stores never decide *whether* to cache: ``cache.service`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import orjson


class StoreError(RuntimeError):
    """A store failed; callers on the request path catch it and fail open to upstream."""


class DimensionMismatch(StoreError):
    """The persisted index was built with vectors of another dimension."""


@dataclass(frozen=True, slots=True)
class EntryFeedback:
    """What users' votes taught about one entry (the rules live in ``cache.feedback``).

    Kept with the entry in its store so every replica applies the same verdicts, and kept
    small: two counters, a bar and two short tuples of 16-hex question digests. Immutable,
    so a vote produces a new value the store writes atomically (compare-and-set).
    """

    up: int = 0
    down: int = 0
    bar: float | None = None  # this entry's own similarity bar (None: only the global one)
    blocked: tuple[str, ...] = ()  # questions a user said this answer is wrong for
    confirmed: tuple[str, ...] = ()  # questions a user said this answer is right for
    bad: bool = False  # the answer is wrong for its own question
    # A directive, never persisted: the votes condemn the entry and the store deletes it
    # in the same atomic step as the update.
    evicted: bool = False

    @property
    def empty(self) -> bool:
        return self == EntryFeedback()

    def encode(self) -> str | None:
        """Compact JSON for the store (None when there is nothing to keep)."""
        if self.empty:
            return None
        data: dict[str, Any] = {"u": self.up, "d": self.down}
        if self.bar is not None:
            data["b"] = round(self.bar, 6)
        if self.blocked:
            data["x"] = list(self.blocked)
        if self.confirmed:
            data["c"] = list(self.confirmed)
        if self.bad:
            data["bad"] = 1
        return orjson.dumps(data).decode()

    @classmethod
    def decode(cls, raw: str | bytes | None) -> EntryFeedback:
        """The stored form back; absent or unreadable data reads as no feedback."""
        if not raw:
            return cls()
        try:
            data = orjson.loads(raw)
            bar = data.get("b")
            return cls(up=int(data.get("u", 0)), down=int(data.get("d", 0)),
                       bar=None if bar is None else float(bar),
                       blocked=tuple(str(h) for h in data.get("x", ())),
                       confirmed=tuple(str(h) for h in data.get("c", ())),
                       bad=bool(data.get("bad", 0)))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return cls()


FeedbackChange = Callable[[EntryFeedback], EntryFeedback]


@dataclass(slots=True)
class CacheEntry:
    """A complete, successful answer and what is needed to find and audit it."""

    key: str
    namespace: str
    fingerprint: str
    question: str
    response: bytes  # the ChatCompletion JSON (non-streaming form), orjson-encoded
    model: str = ""
    vector: np.ndarray | None = None  # unit-norm float32, or None when not semantic-eligible
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    hits: int = 0
    last_access: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    feedback: EntryFeedback = field(default_factory=EntryFeedback)  # users' votes

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    @property
    def size_bytes(self) -> int:
        vec = 0 if self.vector is None else int(self.vector.nbytes)
        return len(self.response) + len(self.question.encode()) + vec + 256


@dataclass(slots=True)
class ServedRecord:
    """One answer the gateway served from (or into) the cache, kept briefly so a user can
    vote on it by its response id: which entry, for which question, how it matched.

    ``entry_created`` pins the entry's version: a vote on an answer that was since replaced
    under the same key must not judge the new answer. Only the question's digest is kept.
    """

    response_id: str
    namespace: str
    key: str  # the entry's key (for a semantic hit: the matched entry, not the request)
    question_hash: str
    tier: str  # exact | semantic | miss (a fresh answer that was stored)
    similarity: float
    entry_created: float
    served_at: float
    expires_at: float
    vote: str | None = None  # up | down once someone voted with this id

    def expired(self, now: float | None = None) -> bool:
        return (now or time.time()) >= self.expires_at


@dataclass(slots=True)
class SearchHit:
    entry: CacheEntry
    similarity: float  # cosine similarity in [-1, 1]


@dataclass(slots=True)
class StoreStats:
    entries: int
    bytes: int
    hits: int
    namespaces: dict[str, int]
    backend: str
    vectors: int = 0
    errors: int = 0


@runtime_checkable
class Store(Protocol):
    """Cache storage. Implementations must pass ``tests/test_store_contract.py`` unchanged."""

    backend: str

    async def put(self, entry: CacheEntry) -> None:
        """Insert or replace ``entry`` (same namespace+key); evicts LRU entries past the bound."""

    async def get_exact(self, namespace: str, key: str) -> CacheEntry | None:
        """The live entry for ``key`` or None; expired entries are removed, not returned."""

    async def search(
        self, namespace: str, fingerprint: str, vector: np.ndarray, k: int
    ) -> list[SearchHit]:
        """Up to ``k`` live entries of the partition, most similar first."""

    async def record_hit(self, namespace: str, key: str) -> None:
        """Count a hit and refresh last access (this is what LRU eviction orders by)."""

    async def delete(self, namespace: str, key: str) -> bool:
        """Remove one entry (and its vector); True if it existed."""

    async def clear(self, namespace: str | None = None) -> int:
        """Remove every entry of ``namespace`` (all namespaces if None); returns the count."""

    async def list_entries(
        self, namespace: str | None = None, limit: int = 100, offset: int = 0, query: str = ""
    ) -> list[CacheEntry]:
        """Entries most recently used first; ``query`` filters by substring of the question."""

    async def stats(self, namespace: str | None = None) -> StoreStats:
        """Counts and sizes, for one namespace or all."""

    async def update_feedback(
        self, namespace: str, key: str, change: FeedbackChange, *,
        created_at: float | None = None,
    ) -> EntryFeedback | None:
        """Apply ``change`` to the entry's feedback atomically (concurrent votes from any
        replica are never lost) and return the new value; None when the live entry is gone
        or, with ``created_at``, was replaced by another version. When the new value says
        ``evicted`` the entry is deleted in the same atomic step. ``change`` may run more
        than once (optimistic retries), so it must be pure."""

    async def remember_served(self, record: ServedRecord) -> None:
        """Keep ``record`` until its ``expires_at`` (replacing one with the same id)."""

    async def get_served(self, namespace: str, response_id: str) -> ServedRecord | None:
        """The live record of a response served in ``namespace``, or None."""

    async def set_served_vote(self, namespace: str, response_id: str, vote: str,
                              expect: str | None) -> bool:
        """Set the record's vote if it is still ``expect`` (compare-and-set); False if the
        record is gone or another vote came first."""

    async def try_lock(self, name: str, ttl_seconds: float) -> bool:
        """Take a short cross-process lock (single-flight across replicas); False if held."""

    async def unlock(self, name: str) -> None:
        """Release a lock taken with ``try_lock`` (no-op if it expired)."""

    async def ping(self) -> bool:
        """True when the backend answers (health checks, fault recovery)."""

    async def close(self) -> None:
        """Flush and release resources."""


def unit(vector: np.ndarray | Sequence[float]) -> np.ndarray:
    """Float32 unit vector, so inner product == cosine everywhere."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v if n == 0.0 else v / n
