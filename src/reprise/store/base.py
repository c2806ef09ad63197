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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class StoreError(RuntimeError):
    """A store failed; callers on the request path catch it and fail open to upstream."""


class DimensionMismatch(StoreError):
    """The persisted index was built with vectors of another dimension."""


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

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    @property
    def size_bytes(self) -> int:
        vec = 0 if self.vector is None else int(self.vector.nbytes)
        return len(self.response) + len(self.question.encode()) + vec + 256


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
