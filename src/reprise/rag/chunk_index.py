"""Where document chunks live: text, page, vector and search terms, per collection.

One contract (:class:`ChunkIndex`), two implementations chosen by ``Settings.store``:
:class:`SQLiteChunkIndex` (embedded, one file) here and ``RedisChunkIndex``
(``reprise.rag.chunk_index_redis``, shared by gateway replicas). Both keep per collection

* the dense index: each chunk's vector, searched by cosine similarity;
* the sparse index: each chunk's search terms (tokenized once, at ingestion), from which a
  BM25 index is built once per collection *version* and cached (never per query);
* a version counter bumped by every add or delete, so cached derived state is never stale.

A collection key is ``"{namespace}/{name}"``; a chunk id is ``"{doc_id}:{ordinal}"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from reprise.rag.bm25 import Bm25Cache, Bm25Index
from reprise.rag.documents import Chunk
from reprise.rag.errors import RagError
from reprise.rag.tokenize import tokenize
from reprise.store.vector_index import PartitionIndex

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as the index returns it, with its passage vector (for reranking)."""

    chunk_id: str
    doc_id: str
    ordinal: int
    page: int
    text: str
    vector: np.ndarray


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (``BEGIN IMMEDIATE``), so two writers never
    both read a collection version and bump it; rolled back on any error, so a failed
    ingestion leaves nothing half-written."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def chunk_id(doc_id: str, ordinal: int) -> str:
    return f"{doc_id}:{ordinal}"


def chunk_terms(chunks: Sequence[Chunk]) -> list[list[str]]:
    """Search terms of each chunk (CPU-bound: jieba and the stemmer; run off the loop)."""
    return [tokenize(c.text) for c in chunks]


class IndexUnavailable(RagError):
    """The chunk index cannot be read or written (store down, disk error)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message, "index_unavailable")


# Collections up to this many chunks are searched exactly (a matrix scan: ~2 ms per 10k
# e5 chunks on one core, small beside the ~50 ms of a retrieval). Retrieval ranks a top
# 100, and an approximate graph loses part of it: on SciFact test (10,758 chunks) the USE
# dense leg's recall@100 was 0.764 exact and 0.751 through the graph, hybrid nDCG@10
# 0.680 vs 0.665. Larger collections still get the graph, on every dimension
# (``reduced_dim=None``): the cache's 64-component graph, made for one nearest entry, cost
# more of a top 100 (SciFact train, dense weight 0.4: nDCG@10 0.726 -> 0.711).
EXACT_UP_TO = 50_000


@runtime_checkable
class ChunkIndex(Protocol):
    dim: int

    async def add(self, key: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Adds one document's chunks (all or nothing) and bumps the collection version."""

    async def delete_document(self, key: str, doc_id: str) -> int:
        """Removes a document's chunks; returns how many there were."""

    async def delete_collection(self, key: str) -> int:
        """Removes every chunk of the collection; returns how many there were."""

    async def count(self, key: str) -> int: ...

    async def version(self, key: str) -> int: ...

    async def dense_search(self, key: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Chunk ids and cosine similarities, best first."""

    async def bm25_search(self, key: str, terms: Sequence[str], k: int) -> list[tuple[str, float]]:
        """Chunk ids and BM25 scores, best first (only chunks sharing a term)."""

    async def fetch(self, key: str, ids: Sequence[str]) -> dict[str, StoredChunk]: ...

    async def aclose(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  coll TEXT NOT NULL, chunk_id TEXT NOT NULL, doc_id TEXT NOT NULL,
  ordinal INTEGER NOT NULL, page INTEGER NOT NULL, text TEXT NOT NULL,
  terms TEXT NOT NULL, vector BLOB NOT NULL,
  UNIQUE (coll, chunk_id));
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (coll, doc_id);
CREATE TABLE IF NOT EXISTS versions (coll TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS saved_indexes (coll TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""


class _Dense:
    """A loaded collection's vectors (exact below ``hnsw_from`` chunks, HNSW above)."""

    def __init__(self, version: int, index: PartitionIndex) -> None:
        self.version = version
        self.index = index


class SQLiteChunkIndex:
    """Chunks in one SQLite file; vector indexes loaded per collection on first search.

    SQLite holds the truth (text, terms, vectors). The dense index of a collection is built
    from its rows on first use and then updated in place by adds and deletes; an HNSW index
    (large collections) is saved beside the database on close, tagged with the collection
    version, and memory-loaded at the next start if the version still matches. All SQLite
    and index work runs on one worker thread, which also serialises writes.
    """

    def __init__(self, path: Path, dim: int, *, hnsw_from: int = EXACT_UP_TO,
                 bm25_collections: int = 32) -> None:
        self.path = Path(path)
        self.dim = dim
        self.hnsw_from = hnsw_from
        self.bm25 = Bm25Cache(bm25_collections)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reprise-chunks")
        self._db: sqlite3.Connection | None = None
        self._dense: dict[str, _Dense] = {}
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"chunk index {self.path.name}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _version(self, key: str) -> int:
        row = self._conn().execute("SELECT version FROM versions WHERE coll=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, key: str) -> int:
        db = self._conn()
        db.execute("INSERT INTO versions VALUES (?, 1) ON CONFLICT (coll) DO UPDATE SET"
                   " version = version + 1", (key,))
        return self._version(key)

    def _index_file(self, key: str) -> Path:
        digest = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
        return self.path.with_name(f"{self.path.stem}.{digest}.usearch")

    # -- writes -----------------------------------------------------------------------------
    def _add(self, key: str, chunks: Sequence[Chunk], vectors: np.ndarray,
             terms: list[list[str]]) -> None:
        db = self._conn()
        before = self._version(key)
        with _immediate(db):
            rows = []
            for c, v, t in zip(chunks, vectors, terms, strict=True):
                cur = db.execute(
                    "INSERT INTO chunks (coll, chunk_id, doc_id, ordinal, page, text, terms,"
                    " vector) VALUES (?,?,?,?,?,?,?,?)",
                    (key, chunk_id(c.doc_id, c.ordinal), c.doc_id, c.ordinal, c.page, c.text,
                     " ".join(t), np.asarray(v, dtype=np.float32).tobytes()))
                rows.append(int(cur.lastrowid or 0))
            after = self._bump(key)
        dense = self._dense.get(key)
        if dense is not None and dense.version == before and rows:
            dense.index.add(np.asarray(rows, dtype=np.int64), vectors)
            dense.version = after
        else:
            self._dense.pop(key, None)

    async def add(self, key: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(chunks), -1)
        if len(chunks) and vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have {vectors.shape[1]} dims, the index has {self.dim}")
        terms = await asyncio.to_thread(chunk_terms, chunks)
        await self._run(self._add, key, chunks, vectors, terms)

    def _delete(self, key: str, doc_id: str | None) -> int:
        db = self._conn()
        before = self._version(key)
        where, args = ("coll=?", (key,)) if doc_id is None else ("coll=? AND doc_id=?",
                                                                  (key, doc_id))
        with _immediate(db):
            rows = [r[0] for r in db.execute(f"SELECT id FROM chunks WHERE {where}", args)]
            db.execute(f"DELETE FROM chunks WHERE {where}", args)
            after = self._bump(key)
        dense = self._dense.get(key)
        if doc_id is not None and dense is not None and dense.version == before:
            for row in rows:
                dense.index.remove(int(row))
            dense.version = after
        else:
            self._dense.pop(key, None)
        if doc_id is None:
            self._index_file(key).unlink(missing_ok=True)
            self.bm25.drop(key)
        return len(rows)

    async def delete_document(self, key: str, doc_id: str) -> int:
        return await self._run(self._delete, key, doc_id)

    async def delete_collection(self, key: str) -> int:
        return await self._run(self._delete, key, None)

    # -- reads --------------------------------------------------------------------------------
    def _count(self, key: str) -> int:
        row = self._conn().execute("SELECT COUNT(*) FROM chunks WHERE coll=?", (key,)).fetchone()
        return int(row[0])

    async def count(self, key: str) -> int:
        return await self._run(self._count, key)

    async def version(self, key: str) -> int:
        return await self._run(self._version, key)

    def _load_dense(self, key: str) -> _Dense:
        version = self._version(key)
        dense = self._dense.get(key)
        if dense is not None and dense.version == version:
            return dense
        db = self._conn()
        saved = db.execute("SELECT version FROM saved_indexes WHERE coll=?", (key,)).fetchone()
        path = self._index_file(key)
        index: PartitionIndex | None = None
        if saved is not None and int(saved[0]) == version and path.exists():
            try:
                index = PartitionIndex.load(path, self.dim, self.hnsw_from, reduced_dim=None)
            except (OSError, RuntimeError, ValueError) as exc:  # a damaged file: rebuild
                log.warning("rebuilding the vector index of a collection: %s", exc)
        if index is None:
            index = PartitionIndex(self.dim, self.hnsw_from, reduced_dim=None)
            ids: list[int] = []
            blobs: list[bytes] = []
            for row_id, blob in db.execute("SELECT id, vector FROM chunks WHERE coll=?", (key,)):
                ids.append(int(row_id))
                blobs.append(blob)
            if ids:
                matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), -1)
                index.add(np.asarray(ids, dtype=np.int64), matrix)
        dense = self._dense[key] = _Dense(version, index)
        return dense

    def _dense_search(self, key: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        hits = self._load_dense(key).index.search(vector, k)
        if not hits:
            return []
        ids = self._ids_of([h[0] for h in hits])
        return [(ids[row], score) for row, score in hits if row in ids]

    def _ids_of(self, rows: list[int]) -> dict[int, str]:
        marks = ",".join("?" * len(rows))
        return {int(r): str(c) for r, c in self._conn().execute(
            f"SELECT id, chunk_id FROM chunks WHERE id IN ({marks})", rows)}

    async def dense_search(self, key: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has {q.shape[0]} dims, the index has {self.dim}")
        return await self._run(self._dense_search, key, q, k)

    def _bm25_rows(self, key: str) -> tuple[list[str], list[list[str]]]:
        rows = self._conn().execute("SELECT chunk_id, terms FROM chunks WHERE coll=? ORDER BY id",
                                    (key,)).fetchall()
        return [r[0] for r in rows], [r[1].split() for r in rows]

    def _bm25_index(self, key: str) -> Bm25Index:
        return self.bm25.get(key, self._version(key), lambda: self._bm25_rows(key))

    async def bm25_search(self, key: str, terms: Sequence[str], k: int) -> list[tuple[str, float]]:
        index = await self._run(self._bm25_index, key)
        # The build ran on the index thread; scoring is read-only and runs beside it.
        return await asyncio.to_thread(index.search, list(terms), k)

    def _fetch(self, key: str, ids: Sequence[str]) -> dict[str, StoredChunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._conn().execute(
            "SELECT chunk_id, doc_id, ordinal, page, text, vector FROM chunks WHERE coll=? AND"
            f" chunk_id IN ({marks})", (key, *ids)).fetchall()
        return {r[0]: StoredChunk(r[0], r[1], int(r[2]), int(r[3]), r[4],
                                  np.frombuffer(r[5], dtype=np.float32).copy()) for r in rows}

    async def fetch(self, key: str, ids: Sequence[str]) -> dict[str, StoredChunk]:
        return await self._run(self._fetch, key, list(ids))

    # -- lifecycle ------------------------------------------------------------------------------
    def _close(self) -> None:
        if self._db is None:
            return
        for key, dense in self._dense.items():
            path = self._index_file(key)
            try:
                if dense.version == self._version(key) and dense.index.save(path):
                    self._db.execute("INSERT OR REPLACE INTO saved_indexes VALUES (?, ?)",
                                     (key, dense.version))
            except (OSError, RuntimeError) as exc:
                log.warning("could not save a collection's vector index: %s", exc)
        self._dense.clear()
        self._db.close()
        self._db = None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._run(self._close)
        self._executor.shutdown(wait=True)
