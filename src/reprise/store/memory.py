"""In-process store: bounded by bytes, LRU eviction, nothing persisted.

For tests, notebooks and single-process deployments that don't want a file. Operations are
pure in-memory and take microseconds, so they run on the event loop directly.

Records of served responses (for votes) are bounded by count (``max_served``, oldest
dropped first) as well as by their own expiry, so a busy process cannot grow without bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import OrderedDict

import numpy as np

from reprise.store.base import (
    CacheEntry,
    EntryFeedback,
    FeedbackChange,
    SearchHit,
    ServedRecord,
    StoreStats,
)
from reprise.store.vector_index import VectorIndex


class MemoryStore:
    backend = "memory"

    def __init__(self, dim: int, max_bytes: int = 256 * 1024 * 1024, hnsw_from: int = 2048,
                 max_served: int = 200_000):
        self.dim = dim
        self.max_bytes = max_bytes
        # (namespace, key) -> entry; order = least recently used first.
        self._entries: OrderedDict[tuple[str, str], CacheEntry] = OrderedDict()
        self._labels: dict[tuple[str, str], int] = {}
        self._by_label: dict[int, tuple[str, str]] = {}
        self._next_label = 1
        self._bytes = 0
        self._index = VectorIndex(dim, hnsw_from)
        self._locks: dict[str, float] = {}
        self._served: OrderedDict[tuple[str, str], ServedRecord] = OrderedDict()
        self.max_served = max_served
        # Votes read-modify-write an entry's feedback; callers on other threads (the
        # LangChain integration runs its own loop) must not interleave with that.
        self._feedback_lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------------
    def _remove(self, ident: tuple[str, str]) -> CacheEntry | None:
        entry = self._entries.pop(ident, None)
        if entry is None:
            return None
        self._bytes -= entry.size_bytes
        label = self._labels.pop(ident, None)
        if label is not None:
            self._by_label.pop(label, None)
            self._index.remove((entry.namespace, entry.fingerprint), label)
        return entry

    def _live(self, ident: tuple[str, str]) -> CacheEntry | None:
        entry = self._entries.get(ident)
        if entry is not None and entry.expired():
            self._remove(ident)
            return None
        return entry

    # -- Store -------------------------------------------------------------------------------
    async def put(self, entry: CacheEntry) -> None:
        ident = (entry.namespace, entry.key)
        self._remove(ident)
        if entry.last_access == 0.0:
            entry.last_access = entry.created_at
        self._entries[ident] = entry
        self._bytes += entry.size_bytes
        if entry.vector is not None:
            label = self._next_label
            self._next_label += 1
            self._labels[ident] = label
            self._by_label[label] = ident
            self._index.add((entry.namespace, entry.fingerprint), label, entry.vector)
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            self._remove(oldest)

    async def get_exact(self, namespace: str, key: str) -> CacheEntry | None:
        return self._live((namespace, key))

    async def search(
        self, namespace: str, fingerprint: str, vector: np.ndarray, k: int
    ) -> list[SearchHit]:
        out: list[SearchHit] = []
        for label, _sim in self._index.search((namespace, fingerprint), vector, k):
            ident = self._by_label.get(label)
            entry = None if ident is None else self._live(ident)
            if entry is not None and entry.vector is not None:
                out.append(SearchHit(entry, float(entry.vector @ vector)))
        out.sort(key=lambda h: -h.similarity)
        return out

    async def record_hit(self, namespace: str, key: str) -> None:
        ident = (namespace, key)
        entry = self._entries.get(ident)
        if entry is not None:
            entry.hits += 1
            entry.last_access = time.time()
            self._entries.move_to_end(ident)

    async def delete(self, namespace: str, key: str) -> bool:
        return self._remove((namespace, key)) is not None

    async def clear(self, namespace: str | None = None) -> int:
        idents = [i for i in self._entries if namespace is None or i[0] == namespace]
        for ident in idents:
            self._remove(ident)
        for served in [i for i in self._served if namespace is None or i[0] == namespace]:
            del self._served[served]
        return len(idents)

    async def list_entries(
        self, namespace: str | None = None, limit: int = 100, offset: int = 0, query: str = ""
    ) -> list[CacheEntry]:
        q = query.lower()
        rows = [
            e
            for (ns, _), e in reversed(self._entries.items())
            if (namespace is None or ns == namespace)
            and not e.expired()
            and (not q or q in e.question.lower())
        ]
        return rows[offset : offset + limit]

    async def stats(self, namespace: str | None = None) -> StoreStats:
        namespaces: dict[str, int] = {}
        hits = size = vectors = 0
        for (ns, _), e in self._entries.items():
            namespaces[ns] = namespaces.get(ns, 0) + 1
            if namespace is None or ns == namespace:
                hits += e.hits
                size += e.size_bytes
                vectors += e.vector is not None
        entries = sum(namespaces.values()) if namespace is None else namespaces.get(namespace, 0)
        return StoreStats(entries, size, hits, namespaces, self.backend, vectors)

    async def update_feedback(
        self, namespace: str, key: str, change: FeedbackChange, *,
        created_at: float | None = None,
    ) -> EntryFeedback | None:
        with self._feedback_lock:
            ident = (namespace, key)
            entry = self._live(ident)
            if entry is None or (created_at is not None and entry.created_at != created_at):
                return None
            new = change(entry.feedback)
            if new.evicted:
                self._remove(ident)
            else:
                entry.feedback = dataclasses.replace(new, evicted=False)
            return new

    async def remember_served(self, record: ServedRecord) -> None:
        ident = (record.namespace, record.response_id)
        self._served.pop(ident, None)
        self._served[ident] = dataclasses.replace(record)
        while len(self._served) > self.max_served:
            self._served.popitem(last=False)

    async def get_served(self, namespace: str, response_id: str) -> ServedRecord | None:
        ident = (namespace, response_id)
        record = self._served.get(ident)
        if record is None:
            return None
        if record.expired():
            del self._served[ident]
            return None
        return dataclasses.replace(record)

    async def set_served_vote(self, namespace: str, response_id: str, vote: str,
                              expect: str | None) -> bool:
        record = self._served.get((namespace, response_id))
        if record is None or record.expired() or record.vote != expect:
            return False
        record.vote = vote
        return True

    async def try_lock(self, name: str, ttl_seconds: float) -> bool:
        now = time.monotonic()
        if self._locks.get(name, 0.0) > now:
            return False
        self._locks[name] = now + ttl_seconds
        return True

    async def unlock(self, name: str) -> None:
        self._locks.pop(name, None)

    async def ping(self) -> bool:
        await asyncio.sleep(0)
        return True

    async def close(self) -> None:
        return None
