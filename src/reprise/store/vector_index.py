"""Partitioned vector index shared by the embedded stores (memory, SQLite).

Semantic search never crosses a partition ``(namespace, fingerprint)``, so each partition
gets its own index instead of one global index with a filter (a filter over a global HNSW
graph degrades badly when the partition is a tiny fraction of it). Most partitions are small
(one per conversation context), so a partition is an exact numpy matrix until it holds
``hnsw_from`` vectors, then it is moved to an HNSW graph (usearch) so lookup time stays flat
as it grows to millions.

HNSW settings (measured by ``bench/lookup_latency.py`` on vectors with the spectrum of real
USE question embeddings, 100k in one partition): 8-bit scalar quantisation (``i8``) halves
memory against ``f16`` and searches faster on CPUs without native half floats, with the same
recall; callers rank by the exact cosine of the stored float32 vectors anyway, so the
quantised distance only chooses the candidates. ``connectivity`` 16 with ``expansion_add``
64 builds twice as fast as 128 for no measurable recall loss; ``expansion_search`` is the
recall/latency knob.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from usearch.index import Index

Partition = tuple[str, str]

HNSW_DTYPE = "i8"
HNSW_CONNECTIVITY = 16
HNSW_EXPANSION_ADD = 64
HNSW_EXPANSION_SEARCH = 96


class PartitionIndex:
    """Vectors of one partition, addressed by integer labels."""

    def __init__(self, dim: int, hnsw_from: int = 2048) -> None:
        self.dim = dim
        self.hnsw_from = hnsw_from
        self._matrix = np.zeros((16, dim), dtype=np.float32)
        self._labels = np.zeros(16, dtype=np.int64)
        self._rows: dict[int, int] = {}
        self._hnsw: Index | None = None

    def __len__(self) -> int:
        return len(self._hnsw) if self._hnsw is not None else len(self._rows)

    @property
    def is_hnsw(self) -> bool:
        return self._hnsw is not None

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(labels), self.dim)
        for label in labels:
            if int(label) in self:
                self.remove(int(label))
        if self._hnsw is not None:
            self._hnsw.add(labels, vectors)
            return
        n = len(self._rows)
        need = n + len(labels)
        if need > len(self._labels):
            cap = max(need, 2 * len(self._labels))
            self._matrix = np.resize(self._matrix, (cap, self.dim))
            self._labels = np.resize(self._labels, cap)
        self._matrix[n:need] = vectors
        self._labels[n:need] = labels
        for i, label in enumerate(labels):
            self._rows[int(label)] = n + i
        if need >= self.hnsw_from:
            self._to_hnsw()

    def __contains__(self, label: int) -> bool:
        if self._hnsw is not None:
            return bool(self._hnsw.contains(label))
        return label in self._rows

    def remove(self, label: int) -> bool:
        if self._hnsw is not None:
            return bool(self._hnsw.remove(label))
        row = self._rows.pop(label, None)
        if row is None:
            return False
        last = len(self._rows)  # index of the last filled row after the pop
        if row != last:
            moved = int(self._labels[last])
            self._matrix[row] = self._matrix[last]
            self._labels[row] = moved
            self._rows[moved] = row
        return True

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Labels and cosine similarities, best first."""
        if len(self) == 0 or k <= 0:
            return []
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self._hnsw is not None:
            matches = self._hnsw.search(q, min(k, len(self._hnsw)))
            return [
                (int(key), 1.0 - float(dist))
                for key, dist in zip(matches.keys, matches.distances, strict=True)
            ]
        n = len(self._rows)
        # einsum, not ``@``: a BLAS matrix-vector product of this size is split over
        # threads, and on a busy machine one descheduled thread stalls the whole lookup
        # (measured p99 23-40 ms vs 4 ms at 2048 rows on the shared 2-core VM).
        sims = np.einsum("ij,j->i", self._matrix[:n], q)
        if k < n:
            top = np.argpartition(-sims, k - 1)[:k]
            top = top[np.argsort(-sims[top])]
        else:
            top = np.argsort(-sims)
        return [(int(self._labels[i]), float(sims[i])) for i in top]

    @staticmethod
    def _new_hnsw_for(dim: int) -> Index:
        return Index(
            ndim=dim, metric="cos", dtype=HNSW_DTYPE, connectivity=HNSW_CONNECTIVITY,
            expansion_add=HNSW_EXPANSION_ADD, expansion_search=HNSW_EXPANSION_SEARCH,
        )

    def _new_hnsw(self) -> Index:
        return self._new_hnsw_for(self.dim)

    def _to_hnsw(self) -> None:
        n = len(self._rows)
        index = self._new_hnsw()
        index.add(self._labels[:n].copy(), self._matrix[:n].copy())
        self._hnsw = index
        self._matrix = np.zeros((0, self.dim), dtype=np.float32)
        self._labels = np.zeros(0, dtype=np.int64)
        self._rows = {}

    def save(self, path: Path) -> bool:
        """Persist an HNSW partition (small exact ones are cheap to rebuild: not saved)."""
        if self._hnsw is None:
            return False
        self._hnsw.save(str(path))
        return True

    @classmethod
    def load(cls, path: Path, dim: int, hnsw_from: int) -> PartitionIndex:
        """Memory-load a saved partition. ``Index.restore`` takes the file's own settings
        (a file saved by an older version with another dtype still loads); a file for
        another dimension is refused so the caller rebuilds from its rows."""
        part = cls(dim, hnsw_from)
        index = Index.restore(str(path))
        if index is None or index.ndim != dim:
            raise ValueError(f"{path} is not a usable {dim}-dim index")
        index.expansion_search = HNSW_EXPANSION_SEARCH  # type: ignore[misc]  # has a setter
        part._hnsw = index
        part._matrix = np.zeros((0, dim), dtype=np.float32)
        part._labels = np.zeros(0, dtype=np.int64)
        return part

    def memory_bytes(self) -> int:
        if self._hnsw is not None:
            return int(self._hnsw.memory_usage)
        return int(self._matrix.nbytes + self._labels.nbytes) + 100 * len(self._rows)


class VectorIndex:
    """All partitions of one store; thread-safe (the SQLite store calls it from a worker)."""

    def __init__(self, dim: int, hnsw_from: int = 2048) -> None:
        self.dim = dim
        self.hnsw_from = hnsw_from
        self._parts: dict[Partition, PartitionIndex] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._parts.values())

    def has_partition(self, part: Partition) -> bool:
        with self._lock:
            return part in self._parts

    def set_partition(self, part: Partition, index: PartitionIndex) -> None:
        with self._lock:
            self._parts[part] = index

    def partition(self, part: Partition) -> PartitionIndex | None:
        with self._lock:
            return self._parts.get(part)

    def add(self, part: Partition, label: int, vector: np.ndarray) -> None:
        with self._lock:
            index = self._parts.get(part)
            if index is None:
                index = self._parts[part] = PartitionIndex(self.dim, self.hnsw_from)
            index.add(np.array([label]), vector.reshape(1, -1))

    def remove(self, part: Partition, label: int) -> None:
        with self._lock:
            index = self._parts.get(part)
            if index is not None:
                index.remove(label)
                if len(index) == 0:
                    del self._parts[part]

    def search(self, part: Partition, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        with self._lock:
            index = self._parts.get(part)
            return [] if index is None else index.search(vector, k)

    def drop_namespace(self, namespace: str | None) -> None:
        with self._lock:
            for part in [p for p in self._parts if namespace is None or p[0] == namespace]:
                del self._parts[part]

    def items(self) -> list[tuple[Partition, PartitionIndex]]:
        with self._lock:
            return list(self._parts.items())

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(p.memory_bytes() for p in self._parts.values())
