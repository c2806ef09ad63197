"""Partitioned vector index shared by the embedded stores (memory, SQLite).

Semantic search never crosses a partition ``(namespace, fingerprint)``, so each partition
gets its own index instead of one global index with a filter (a filter over a global HNSW
graph degrades badly when the partition is a tiny fraction of it). Most partitions are small
(one per conversation context), so a partition is an exact numpy matrix until it holds
``hnsw_from`` vectors; then it becomes a *reduced graph with re-scoring*:

* an HNSW graph (usearch) over the vectors projected on their top ``REDUCED_DIM`` principal
  components (PCA fitted on the partition's vectors when the graph is built), stored as
  8-bit integers, L2 distance in the centred space (for unit vectors, L2 order = cosine
  order). A graph walk over a million vectors costs one memory miss per distance; 64-dim
  int8 vectors are one cache line each, and in 64 dims the graph needs far fewer steps for
  the same recall than in 512 (the discarded components mostly blur who is nearest).
* the graph proposes ``CANDIDATES`` rows (its keys are row numbers); they are re-scored
  with the full vectors, kept here as 16-bit integers with one scale per row (no store
  round trip), and the best ``k`` are returned with their cosine. Re-scoring makes the
  ranking exact among the candidates, so only a neighbour the 64-dim graph fails to
  propose at all can be missed. Why int16 and not float16 (the same 1 KiB per 512-dim
  vector): numpy converts float16 element by element, 140 us for 64 rows, the largest cost
  after the walk; int16 rows convert in ~8 us, and a per-row scale keeps ~15 bits for every
  component where float16 keeps 11 (cosines within ~1e-5 of float32 instead of ~1e-4).

Measured with ``bench/lookup_latency.py`` (vectors with the spectrum of real USE question
embeddings, one partition; see ``bench/results/lookup.md``). Against the previous full
512-dim int8 graph at 1M vectors: recall@1 0.805 -> 0.989, search p50 3.3 -> 1.0-1.9 ms,
build from the rows 1,506 -> 466 s; memory ~1.5 KB per vector instead of 0.8 KB (the
full-vector copy, float16 then and int16 now, is 1 KiB of it). 128 components kept more of
the real embeddings' geometry but needed twice the search breadth at 1M for lower recall
(0.946 at breadth 128); connectivity 8 lost recall and 32 was slower at 200k. On 20k real
USE embeddings of QQP questions (queries: the other question of each pair) the index
returns the exact scan's nearest entry for 99.7-99.9% of the queries whose nearest cosine
is >= 0.79 (at or below the default semantic threshold; 100% at >= 0.9; the old 512-dim
graph: 100%), 96-97% overall (near ties far below the threshold swap). Inverted lists
scanned contiguously (IVF) were tried for flatter latency at 1M and lost that agreement
on real paraphrases (94.8-99.5% probing 4-32 of 283 lists; ``bench/results/lookup.md``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from usearch.index import Index

Partition = tuple[str, str]
log = logging.getLogger(__name__)

HNSW_DTYPE = "i8"
HNSW_CONNECTIVITY = 16
HNSW_EXPANSION_ADD = 64
HNSW_EXPANSION_SEARCH = 64  # at 100k vectors; grows slowly with the partition (see _ef)
REDUCED_DIM = 64  # PCA components the graph is built on
CANDIDATES = 64  # graph proposals re-scored with the full vectors
PCA_SAMPLE = 20_000  # vectors the projection is fitted on (enough for 512x512 covariance)
# A graph partition is rebuilt (in the background) once it has retired as many vectors as
# it holds: usearch reuses a removed vector's slot but never repairs the links around it,
# and after replacing half of a 20k partition 25 times the true neighbour was the top hit
# for only 97.6-98.9% of queries (100% when built in one go).
REBUILD_AFTER = 1.0  # retired vectors per live vector
REBUILD_MIN = 1024  # ... and at least this many
SAVE_FORMAT = 4  # bumped when the saved layout changes: older files are rebuilt from rows


class PartitionIndex:
    """Vectors of one partition, addressed by integer labels.

    Rows ``_matrix[:n]`` hold the partition's vectors (float32 while exact; once a graph
    exists, int16 with the float32 row scales in ``_scales``; kept compact by moving the last
    row into a removed one); ``_rows`` maps a label to its row. In graph mode ``_hnsw``
    indexes the reduced vectors under their *row* numbers, not their labels: the graph's
    answer is then the rows to re-score, with no per-candidate label→row lookup (64 dict
    lookups cost ~0.09 ms at 1M entries, a cache miss each); a moved row is renamed in
    the graph.
    """

    def __init__(self, dim: int, hnsw_from: int = 2048,
                 reduced_dim: int | None = REDUCED_DIM) -> None:
        """``reduced_dim=None`` keeps every dimension (the projection is then a rotation):
        for callers that need many good neighbours rather than the nearest one, such as
        document retrieval's top 100, where 64 components of e5 vectors lost recall
        (SciFact train, dense weight 0.4: nDCG@10 0.726 -> 0.711)."""
        self.dim = dim
        self.hnsw_from = hnsw_from
        self.reduced_dim = dim if reduced_dim is None else min(reduced_dim, dim)
        self._matrix = np.zeros((16, dim), dtype=np.float32)
        self._labels = np.zeros(16, dtype=np.int64)
        self._scales = np.zeros(0, dtype=np.float32)  # graph mode: one per row of _matrix
        self._rows: dict[int, int] = {}
        self._hnsw: Index | None = None
        self._mean = np.zeros(dim, dtype=np.float32)
        self._proj = np.zeros((dim, 0), dtype=np.float32)  # dim x reduced, scale folded in
        self.expansion_search: int | None = None  # None: set by the partition's size
        self.retired = 0  # vectors removed or replaced since the graph was built
        self.build_threads = 0  # usearch threads for a graph build (0: all cores)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def is_hnsw(self) -> bool:
        return self._hnsw is not None

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(labels), self.dim)
        for label in labels:
            if int(label) in self._rows:
                self.remove(int(label))
        n = len(self._rows)
        need = n + len(labels)
        if need > len(self._labels):
            cap = max(need, 2 * len(self._labels))
            self._matrix = np.resize(self._matrix, (cap, self.dim))
            self._labels = np.resize(self._labels, cap)
            if self._hnsw is not None:
                self._scales = np.resize(self._scales, cap)
        if self._hnsw is not None:
            self._matrix[n:need], self._scales[n:need] = self._quantize(vectors)
        else:
            self._matrix[n:need] = vectors
        self._labels[n:need] = labels
        for i, label in enumerate(labels):
            self._rows[int(label)] = n + i
        if self._hnsw is not None:
            self._hnsw.add(np.arange(n, need), self._reduce(vectors))
        elif need >= self.hnsw_from:
            self._to_hnsw()

    def __contains__(self, label: int) -> bool:
        return label in self._rows

    def remove(self, label: int) -> bool:
        row = self._rows.pop(label, None)
        if row is None:
            return False
        if self._hnsw is not None:
            self._hnsw.remove(row)
            self.retired += 1
        last = len(self._rows)  # index of the last filled row after the pop
        if row != last:
            moved = int(self._labels[last])
            self._matrix[row] = self._matrix[last]
            self._labels[row] = moved
            if self._hnsw is not None:
                self._scales[row] = self._scales[last]
                self._hnsw.rename(last, row)
            self._rows[moved] = row
        return True

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Labels and cosine similarities (int16-exact in graph mode), best first."""
        n = len(self._rows)
        if n == 0 or k <= 0:
            return []
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self._hnsw is not None:
            want = min(n, max(k, CANDIDATES))
            ef = self.expansion_search or self._ef(n)
            if self._hnsw.expansion_search != ef:
                self._hnsw.expansion_search = ef  # type: ignore[misc]  # has a setter
            # einsum for the one-vector projection too (see the exact scan below)
            rows = self._hnsw.search(np.einsum("j,jk->k", q - self._mean, self._proj),
                                     want).keys.astype(np.int64)
            sims = np.einsum("ij,j->i", self._matrix[rows].astype(np.float32), q)
            sims *= self._scales[rows]
        else:
            rows = np.arange(n)
            # einsum, not ``@``: a BLAS matrix-vector product of this size is split over
            # threads, and on a busy machine one descheduled thread stalls the whole lookup
            # (measured p99 23-40 ms vs 4 ms at 2048 rows on the shared 2-core VM).
            sims = np.einsum("ij,j->i", self._matrix[:n], q)
        if k < len(sims):
            top = np.argpartition(-sims, k - 1)[:k]
            top = top[np.argsort(-sims[top])]
        else:
            top = np.argsort(-sims)
        return [(int(self._labels[rows[i]]), float(sims[i])) for i in top]

    @staticmethod
    def _ef(n: int) -> int:
        """Graph search breadth for a partition of ``n`` vectors: ``HNSW_EXPANSION_SEARCH``
        at 100k, growing as n^0.3 (x2 per decade), never below ``CANDIDATES``."""
        return max(CANDIDATES, round(HNSW_EXPANSION_SEARCH * (n / 100_000) ** 0.3))

    @staticmethod
    def _quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Int16 rows and their scales (row = int16 * scale), the largest component of each
        row at +-32767 so every row keeps full precision whatever its norm. A row with a NaN
        or infinity becomes zeros (similarity 0 to everything, never served) by design, not
        by whatever numpy's int16 cast makes of a non-finite value."""
        vectors = np.where(np.isfinite(vectors).all(axis=1, keepdims=True), vectors, 0.0)
        peak = np.abs(vectors).max(axis=1)
        scales = np.where(peak > 0, peak / 32767.0, 1.0).astype(np.float32)
        return np.rint(vectors / scales[:, None]).astype(np.int16), scales

    def _reduce(self, vectors: np.ndarray) -> np.ndarray:
        """Graph coordinates: centred, projected on the principal axes, scaled for int8."""
        return np.asarray((vectors - self._mean) @ self._proj, dtype=np.float32)

    def _fit(self, vectors: np.ndarray) -> None:
        """PCA of the partition's vectors (a sample), with the int8 scale folded into the
        projection so typical coordinates use the int8 range without clipping."""
        rng = np.random.default_rng(0)
        sample = vectors if len(vectors) <= PCA_SAMPLE else vectors[
            np.sort(rng.choice(len(vectors), PCA_SAMPLE, replace=False))]
        sample = np.asarray(sample, dtype=np.float64)
        mean = sample.mean(axis=0)
        eigval, eigvec = np.linalg.eigh(np.cov((sample - mean).T))
        axes = eigvec[:, np.argsort(-eigval)[: self.reduced_dim]]
        coords = (sample - mean) @ axes
        scale = 1.0 / max(float(np.abs(coords).max()) * 1.25, 1e-12)
        self._mean = mean.astype(np.float32)
        self._proj = (axes * scale).astype(np.float32)

    @staticmethod
    def _new_hnsw_for(ndim: int) -> Index:
        return Index(
            ndim=ndim, metric="l2sq", dtype=HNSW_DTYPE, connectivity=HNSW_CONNECTIVITY,
            expansion_add=HNSW_EXPANSION_ADD, expansion_search=HNSW_EXPANSION_SEARCH,
        )

    def _to_hnsw(self) -> None:
        n = len(self._rows)
        vectors = self._matrix[:n]
        self._fit(vectors)
        index = self._new_hnsw_for(self._proj.shape[1])
        index.add(np.arange(n), self._reduce(vectors), threads=self.build_threads)
        self._hnsw = index
        self.retired = 0
        self._matrix, self._scales = self._quantize(self._matrix)

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".vectors.npz")

    def save(self, path: Path) -> bool:
        """Persist a graph partition: the graph at ``path``, the int16 vectors, their scales
        and the projection beside it (small exact partitions are cheap to rebuild: not saved)."""
        if self._hnsw is None:
            return False
        self._hnsw.save(str(path))
        n = len(self._rows)
        with open(self._sidecar(path), "wb") as fh:
            np.savez(fh, format=np.array(SAVE_FORMAT), labels=self._labels[:n],
                     vectors=self._matrix[:n], scales=self._scales[:n], mean=self._mean,
                     proj=self._proj)
        return True

    @classmethod
    def load(cls, path: Path, dim: int, hnsw_from: int,
             reduced_dim: int | None = REDUCED_DIM) -> PartitionIndex:
        """Memory-load a saved partition. A file of another layout or dimension (vectors or
        graph), or a graph and vectors that disagree, is refused (``ValueError``) so the
        caller rebuilds the partition from its rows."""
        part = cls(dim, hnsw_from, reduced_dim)
        side = cls._sidecar(path)
        if not side.exists():
            raise ValueError(f"{path}: no saved vectors (older index layout)")
        with np.load(side) as z:
            if int(z["format"]) != SAVE_FORMAT:
                raise ValueError(f"{side}: saved in layout {int(z['format'])}")
            labels, vectors, scales = z["labels"], z["vectors"], z["scales"]
            mean, proj = z["mean"], z["proj"]
        index = Index.restore(str(path))
        if (index is None or vectors.ndim != 2 or vectors.shape[1] != dim
                or vectors.dtype != np.int16 or scales.shape != labels.shape
                or proj.shape != (dim, index.ndim) or index.ndim != part.reduced_dim
                or len(index) != len(labels)
                or not bool(np.all(index.contains(np.arange(len(labels)))))):
            raise ValueError(f"{path} is not a usable {dim}-dim index")
        part._hnsw = index
        part._matrix = np.ascontiguousarray(vectors, dtype=np.int16)
        part._scales = np.asarray(scales, dtype=np.float32).copy()
        part._labels = np.asarray(labels, dtype=np.int64).copy()
        part._rows = {int(label): i for i, label in enumerate(part._labels)}
        part._mean = np.asarray(mean, dtype=np.float32)
        part._proj = np.asarray(proj, dtype=np.float32)
        return part

    @property
    def worn(self) -> bool:
        """Whether enough of the graph has been replaced that a rebuild pays off."""
        return self._hnsw is not None and self.retired >= max(
            REBUILD_MIN, REBUILD_AFTER * len(self._rows))

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the labels, rows and row scales, for a rebuild outside the lock."""
        n = len(self._rows)
        return self._labels[:n].copy(), self._matrix[:n].copy(), self._scales[:n].copy()

    @classmethod
    def rebuilt(cls, dim: int, hnsw_from: int, reduced_dim: int | None,
                snap: tuple[np.ndarray, np.ndarray, np.ndarray],
                threads: int = 1) -> PartitionIndex:
        """A fresh partition (new projection, new graph) from a ``snapshot``."""
        labels, rows, scales = snap
        part = cls(dim, hnsw_from, reduced_dim)
        part.build_threads = threads
        part.add(labels, rows.astype(np.float32) * scales[:, None])
        return part

    def memory_bytes(self) -> int:
        graph = int(self._hnsw.memory_usage) if self._hnsw is not None else 0
        arrays = self._matrix.nbytes + self._labels.nbytes + self._scales.nbytes
        return graph + int(arrays) + 100 * len(self._rows)


class VectorIndex:
    """All partitions of one store; thread-safe (the SQLite store calls it from a worker).

    A worn graph partition (see ``PartitionIndex.worn``) is rebuilt by a background thread
    from a copy of its rows, while the old one keeps serving; writes that arrive meanwhile
    are logged and replayed onto the new partition before it replaces the old one, so no
    write is lost and no search waits for the build (one thread, not every core, so
    requests keep the other). The partition's memory doubles while it is rebuilt (~28 s for
    100k vectors on one core here). Measured on 20k vectors with the spectrum of USE
    embeddings, half replaced per round: the true neighbour stayed the top hit for
    99.8-100% of queries over 12 rounds, against 98.0-99.0% from round 5 on without rebuilds."""

    def __init__(self, dim: int, hnsw_from: int = 2048) -> None:
        self.dim = dim
        self.hnsw_from = hnsw_from
        self._parts: dict[Partition, PartitionIndex] = {}
        self._lock = threading.Lock()
        # partition being rebuilt -> writes since its snapshot: (label, vector or None=remove)
        self._pending: dict[Partition, list[tuple[int, np.ndarray | None]]] = {}
        self._builders: list[threading.Thread] = []

    def _after_write(self, part: Partition, label: int, vector: np.ndarray | None) -> None:
        """Under the lock, after every write: log it for a rebuild in progress, or start a
        rebuild when the write left the partition worn."""
        writes = self._pending.get(part)
        if writes is not None:
            writes.append((label, None if vector is None else vector.copy()))
            return
        index = self._parts.get(part)
        if index is not None and index.worn:
            self._pending[part] = []
            snap = index.snapshot()
            thread = threading.Thread(target=self._rebuild, args=(part, index, snap),
                                      name="reprise-index-rebuild", daemon=True)
            self._builders = [t for t in self._builders if t.is_alive()] + [thread]
            thread.start()

    def _rebuild(self, part: Partition, old: PartitionIndex,
                 snap: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        try:
            new = PartitionIndex.rebuilt(old.dim, old.hnsw_from, old.reduced_dim, snap)
        except Exception:  # the old partition keeps serving; the next write retries
            log.exception("rebuilding a worn vector index partition failed")
            with self._lock:
                self._pending.pop(part, None)
            return
        with self._lock:
            writes = self._pending.pop(part, [])
            if self._parts.get(part) is not old:
                return  # dropped or replaced (namespace cleared, reloaded) meanwhile
            for label, vector in writes:
                if vector is None:
                    new.remove(label)
                else:
                    new.add(np.array([label]), vector.reshape(1, -1))
            new.expansion_search = old.expansion_search
            new.build_threads = old.build_threads
            self._parts[part] = new

    def wait_rebuilds(self, timeout: float | None = None) -> None:
        """Block until background rebuilds started so far are done (tests, benchmarks)."""
        for thread in list(self._builders):
            thread.join(timeout)

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
            self._after_write(part, label, vector)

    def remove(self, part: Partition, label: int) -> None:
        with self._lock:
            index = self._parts.get(part)
            if index is not None:
                index.remove(label)
                if len(index) == 0:
                    del self._parts[part]
                    return
                self._after_write(part, label, None)

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
