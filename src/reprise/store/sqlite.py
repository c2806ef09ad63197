"""Embedded default store: one SQLite file (WAL) that survives restarts.

SQLite is the source of truth for entries *and* their vectors. The vector index is derived
state: a partition's index is built lazily on its first search (from the rows of that
partition) and large HNSW partitions are saved beside the database on close, tagged with the
partition's generation, so a clean restart memory-loads them instead of rebuilding; after a
crash the generation differs and the index is rebuilt from the rows, never trusted stale.

Each entry carries its users' votes (``feedback``, compact JSON, NULL when none); a vote
is a read-modify-write inside one ``BEGIN IMMEDIATE`` transaction, so concurrent votes from
processes sharing the file serialise instead of overwriting each other. A database made
before that column existed gets it on open (``ALTER TABLE``; old rows read as no votes).
Records of served responses (``served``) let a vote name an answer by its response id;
they expire after the gateway's feedback window and are purged with expired entries.

All SQLite work runs on one dedicated thread (SQLite connections are thread-bound and the
event loop must not block); any sqlite3 error surfaces as ``StoreError`` so the cache layer
fails open to the upstream model.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from reprise.store.base import (
    CacheEntry,
    DimensionMismatch,
    EntryFeedback,
    FeedbackChange,
    SearchHit,
    ServedRecord,
    StoreError,
    StoreStats,
)
from reprise.store.vector_index import Partition, PartitionIndex, VectorIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  namespace TEXT NOT NULL,
  key TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  question TEXT NOT NULL,
  response BLOB NOT NULL,
  model TEXT NOT NULL DEFAULT '',
  vector BLOB,
  created_at REAL NOT NULL,
  expires_at REAL,
  hits INTEGER NOT NULL DEFAULT 0,
  last_access REAL NOT NULL,
  prompt_tokens INTEGER NOT NULL DEFAULT 0,
  completion_tokens INTEGER NOT NULL DEFAULT 0,
  size INTEGER NOT NULL,
  feedback TEXT,
  UNIQUE (namespace, key)
);
CREATE INDEX IF NOT EXISTS entries_partition ON entries (namespace, fingerprint);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_access);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS partitions (
  namespace TEXT NOT NULL, fingerprint TEXT NOT NULL, generation INTEGER NOT NULL,
  PRIMARY KEY (namespace, fingerprint)
);
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS served (
  namespace TEXT NOT NULL, id TEXT NOT NULL, key TEXT NOT NULL, qhash TEXT NOT NULL,
  tier TEXT NOT NULL, similarity REAL NOT NULL, entry_created REAL NOT NULL,
  served_at REAL NOT NULL, expires_at REAL NOT NULL, vote TEXT,
  PRIMARY KEY (namespace, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS served_expiry ON served (expires_at);
"""

_COLUMNS = (
    "id, namespace, key, fingerprint, question, response, model, vector, created_at, "
    "expires_at, hits, last_access, prompt_tokens, completion_tokens, feedback"
)
_SERVED_COLUMNS = (
    "id, namespace, key, qhash, tier, similarity, entry_created, served_at, expires_at, vote"
)



@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction taken up front (``BEGIN IMMEDIATE``: no reader can upgrade
    into a deadlock), committed when the block ends, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

class SQLiteStore:
    backend = "sqlite"

    def __init__(
        self,
        path: Path,
        dim: int,
        max_bytes: int = 512 * 1024 * 1024,
        hnsw_from: int = 2048,
        busy_timeout: float = 0.25,
    ) -> None:
        self.path = Path(path)
        self.dim = dim
        self.max_bytes = max_bytes
        self.busy_timeout = busy_timeout
        self.index_dir = self.path.with_suffix(".index")
        self._index = VectorIndex(dim, hnsw_from)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reprise-sqlite")
        self._db: sqlite3.Connection | None = None
        self._bytes = 0
        self._puts = 0
        self._served_writes = 0
        self._closed = False
        self._thread_lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except StoreError:
            raise
        except (sqlite3.Error, OSError, ValueError) as exc:
            # A broken connection is dropped so the next call reopens the file.
            self._db = None
            raise StoreError(f"sqlite store {self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._migrate(db)
            db.executescript(_SCHEMA)
            row = db.execute("SELECT v FROM meta WHERE k='dim'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('dim', ?)", (str(self.dim),))
            elif int(row[0]) != self.dim:
                raise DimensionMismatch(
                    f"{self.path} holds {row[0]}-dim vectors but the embedder makes {self.dim}-dim"
                    " ones; clear the cache (`reprise cache clear`) or use another data dir"
                )
            self._bytes = int(db.execute("SELECT COALESCE(SUM(size),0) FROM entries").fetchone()[0])
        except Exception:
            db.close()
            raise
        self._db = db
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring a database written by an older Reprise up to this schema."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
        if columns and "feedback" not in columns:
            db.execute("ALTER TABLE entries ADD COLUMN feedback TEXT")

    @staticmethod
    def _partition_file(part: Partition) -> str:
        return hashlib.sha1(f"{part[0]}\x00{part[1]}".encode()).hexdigest()

    def _row_to_entry(self, row: tuple[Any, ...]) -> CacheEntry:
        vec = None if row[7] is None else np.frombuffer(row[7], dtype=np.float32).copy()
        return CacheEntry(
            key=row[2], namespace=row[1], fingerprint=row[3], question=row[4],
            response=bytes(row[5]), model=row[6], vector=vec, created_at=row[8],
            expires_at=row[9], hits=row[10], last_access=row[11], prompt_tokens=row[12],
            completion_tokens=row[13], feedback=EntryFeedback.decode(row[14]),
        )

    def _bump(self, db: sqlite3.Connection, part: Partition) -> None:
        db.execute(
            "INSERT INTO partitions VALUES (?, ?, 1) ON CONFLICT(namespace, fingerprint)"
            " DO UPDATE SET generation = generation + 1",
            part,
        )

    def _delete_ids(self, db: sqlite3.Connection, rows: list[tuple[int, str, str, int]]) -> None:
        for ident, ns, fp, size in rows:
            db.execute("DELETE FROM entries WHERE id=?", (ident,))
            self._bytes -= size
            self._index.remove((ns, fp), ident)
            self._bump(db, (ns, fp))

    # -- blocking implementations (run on the store thread) -----------------------------
    def _put(self, e: CacheEntry) -> None:
        db = self._conn()
        vec = None
        if e.vector is not None:
            if e.vector.shape[-1] != self.dim:
                raise DimensionMismatch(
                    f"vector has {e.vector.shape[-1]} dims, store has {self.dim}")
            vec = np.asarray(e.vector, dtype=np.float32).tobytes()
        size = e.size_bytes
        with _immediate(db):
            old = db.execute(
                "SELECT id, namespace, fingerprint, size FROM entries WHERE namespace=? AND key=?",
                (e.namespace, e.key),
            ).fetchall()
            self._delete_ids(db, old)
            cur = db.execute(
                "INSERT INTO entries (namespace, key, fingerprint, question, response, model,"
                " vector, created_at, expires_at, hits, last_access, prompt_tokens,"
                " completion_tokens, size, feedback) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (e.namespace, e.key, e.fingerprint, e.question, e.response, e.model, vec,
                 e.created_at, e.expires_at, e.hits, e.last_access or e.created_at,
                 e.prompt_tokens, e.completion_tokens, size, e.feedback.encode()),
            )
            self._bump(db, (e.namespace, e.fingerprint))
        self._bytes += size
        ident = int(cur.lastrowid or 0)
        part = (e.namespace, e.fingerprint)
        # Only keep a loaded partition in step; unloaded ones are built from rows on demand.
        if e.vector is not None and self._index.has_partition(part):
            self._index.add(part, ident, np.asarray(e.vector, dtype=np.float32))
        self._puts += 1
        if self._puts % 512 == 0:
            self._purge_expired(db)
        if self._bytes > self.max_bytes:
            self._evict(db)

    def _evict(self, db: sqlite3.Connection) -> None:
        """Drop least-recently-used entries until 90% of the bound (hysteresis)."""
        target = int(self.max_bytes * 0.9)
        while self._bytes > target:
            rows = db.execute(
                "SELECT id, namespace, fingerprint, size FROM entries ORDER BY last_access LIMIT 64"
            ).fetchall()
            if len(rows) <= 1:
                break
            victims, freed = [], 0
            for row in rows[:-1]:
                if self._bytes - freed <= target:
                    break
                victims.append(row)
                freed += row[3]
            db.execute("BEGIN IMMEDIATE")
            self._delete_ids(db, victims)
            db.execute("COMMIT")

    def _purge_expired(self, db: sqlite3.Connection) -> int:
        db.execute("DELETE FROM served WHERE expires_at <= ?", (time.time(),))
        rows = db.execute(
            "SELECT id, namespace, fingerprint, size FROM entries WHERE expires_at <= ?",
            (time.time(),),
        ).fetchall()
        if rows:
            db.execute("BEGIN IMMEDIATE")
            self._delete_ids(db, rows)
            db.execute("COMMIT")
        return len(rows)

    def _get(self, namespace: str, key: str) -> CacheEntry | None:
        db = self._conn()
        row = db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE namespace=? AND key=?", (namespace, key)
        ).fetchone()
        if row is None:
            return None
        entry = self._row_to_entry(row)
        if entry.expired():
            db.execute("BEGIN IMMEDIATE")
            self._delete_ids(db, [(row[0], row[1], row[3], entry.size_bytes)])
            db.execute("COMMIT")
            return None
        return entry

    def _load_partition(self, db: sqlite3.Connection, part: Partition) -> None:
        gen_row = db.execute(
            "SELECT generation FROM partitions WHERE namespace=? AND fingerprint=?", part
        ).fetchone()
        generation = 0 if gen_row is None else int(gen_row[0])
        stem = self.index_dir / self._partition_file(part)
        saved_gen = stem.with_suffix(".gen")
        if generation and saved_gen.exists() and saved_gen.read_text().strip() == str(generation):
            try:
                index = PartitionIndex.load(stem.with_suffix(".usearch"), self.dim,
                                            self._index.hnsw_from)
                self._index.set_partition(part, index)
                return
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("rebuilding vector index of a partition: %s", exc)
        rows = db.execute(
            "SELECT id, vector FROM entries WHERE namespace=? AND fingerprint=?"
            " AND vector IS NOT NULL",
            part,
        ).fetchall()
        index = PartitionIndex(self.dim, self._index.hnsw_from)
        if rows:
            labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
            index.add(labels, vecs.reshape(len(rows), self.dim))
        self._index.set_partition(part, index)

    def _search(
        self, namespace: str, fingerprint: str, vector: np.ndarray, k: int
    ) -> list[SearchHit]:
        db = self._conn()
        part = (namespace, fingerprint)
        if not self._index.has_partition(part):
            self._load_partition(db, part)
        found = self._index.search(part, vector, k)
        if not found:
            return []
        marks = ",".join("?" * len(found))
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE id IN ({marks})", [i for i, _ in found]
        ).fetchall()
        now = time.time()
        hits: list[SearchHit] = []
        for row in rows:
            entry = self._row_to_entry(row)
            if entry.expired(now) or entry.vector is None:
                continue
            hits.append(SearchHit(entry, float(entry.vector @ vector)))
        hits.sort(key=lambda h: -h.similarity)
        return hits

    def _record_hit(self, namespace: str, key: str) -> None:
        self._conn().execute(
            "UPDATE entries SET hits = hits + 1, last_access = ? WHERE namespace=? AND key=?",
            (time.time(), namespace, key),
        )

    def _delete(self, namespace: str, key: str) -> bool:
        db = self._conn()
        rows = db.execute(
            "SELECT id, namespace, fingerprint, size FROM entries WHERE namespace=? AND key=?",
            (namespace, key),
        ).fetchall()
        if not rows:
            return False
        db.execute("BEGIN IMMEDIATE")
        self._delete_ids(db, rows)
        db.execute("COMMIT")
        return True

    def _clear(self, namespace: str | None) -> int:
        db = self._conn()
        where, args = ("", ()) if namespace is None else (" WHERE namespace=?", (namespace,))
        db.execute("BEGIN IMMEDIATE")
        n = db.execute(f"SELECT COUNT(*) FROM entries{where}", args).fetchone()[0]
        db.execute(f"DELETE FROM entries{where}", args)
        db.execute(f"DELETE FROM partitions{where}", args)
        db.execute(f"DELETE FROM served{where}", args)
        db.execute("COMMIT")
        self._index.drop_namespace(namespace)
        self._bytes = int(db.execute("SELECT COALESCE(SUM(size),0) FROM entries").fetchone()[0])
        return int(n)

    def _list(self, namespace: str | None, limit: int, offset: int, query: str) -> list[CacheEntry]:
        db = self._conn()
        clauses: list[str] = ["(expires_at IS NULL OR expires_at > ?)"]
        args: list[object] = [time.time()]
        if namespace is not None:
            clauses.append("namespace = ?")
            args.append(namespace)
        if query:
            clauses.append("instr(lower(question), ?) > 0")
            args.append(query.lower())
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE {' AND '.join(clauses)}"
            " ORDER BY last_access DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [self._row_to_entry(r) for r in rows]

    def _stats(self, namespace: str | None) -> StoreStats:
        db = self._conn()
        per_ns = dict(db.execute("SELECT namespace, COUNT(*) FROM entries GROUP BY namespace"))
        where, args = ("", ()) if namespace is None else (" WHERE namespace=?", (namespace,))
        n, size, hits, vectors = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size),0), COALESCE(SUM(hits),0),"
            f" COUNT(vector) FROM entries{where}",
            args,
        ).fetchone()
        return StoreStats(int(n), int(size), int(hits), per_ns, self.backend, int(vectors))

    def _update_feedback(self, namespace: str, key: str, change: FeedbackChange,
                         created_at: float | None) -> EntryFeedback | None:
        db = self._conn()
        with _immediate(db):
            row = db.execute(
                "SELECT id, fingerprint, size, created_at, expires_at, feedback FROM entries"
                " WHERE namespace=? AND key=?", (namespace, key),
            ).fetchone()
            gone = row is None or (row[4] is not None and row[4] <= time.time()) or (
                created_at is not None and row[3] != created_at)
            if gone:
                return None
            new = change(EntryFeedback.decode(row[5]))
            if new.evicted:
                self._delete_ids(db, [(row[0], namespace, row[1], row[2])])
            else:
                db.execute("UPDATE entries SET feedback=? WHERE id=?", (new.encode(), row[0]))
            return new

    def _remember_served(self, r: ServedRecord) -> None:
        db = self._conn()
        db.execute(
            f"INSERT OR REPLACE INTO served ({_SERVED_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (r.response_id, r.namespace, r.key, r.question_hash, r.tier, r.similarity,
             r.entry_created, r.served_at, r.expires_at, r.vote),
        )
        self._served_writes += 1
        if self._served_writes % 512 == 0:
            db.execute("DELETE FROM served WHERE expires_at <= ?", (time.time(),))

    def _get_served(self, namespace: str, response_id: str) -> ServedRecord | None:
        row = self._conn().execute(
            f"SELECT {_SERVED_COLUMNS} FROM served WHERE namespace=? AND id=? AND expires_at>?",
            (namespace, response_id, time.time()),
        ).fetchone()
        if row is None:
            return None
        return ServedRecord(response_id=row[0], namespace=row[1], key=row[2],
                            question_hash=row[3], tier=row[4], similarity=row[5],
                            entry_created=row[6], served_at=row[7], expires_at=row[8],
                            vote=row[9])

    def _set_served_vote(self, namespace: str, response_id: str, vote: str,
                         expect: str | None) -> bool:
        cur = self._conn().execute(
            "UPDATE served SET vote=? WHERE namespace=? AND id=? AND expires_at>?"
            " AND vote IS ?", (vote, namespace, response_id, time.time(), expect),
        )
        return cur.rowcount == 1

    def _try_lock(self, name: str, ttl: float) -> bool:
        db = self._conn()
        now = time.time()
        with _immediate(db):
            row = db.execute("SELECT until FROM locks WHERE name=?", (name,)).fetchone()
            if row is not None and row[0] > now:
                return False
            db.execute("INSERT OR REPLACE INTO locks VALUES (?, ?)", (name, now + ttl))
            return True

    def _unlock(self, name: str) -> None:
        self._conn().execute("DELETE FROM locks WHERE name=?", (name,))

    def _close(self) -> None:
        if self._db is None:
            return
        db = self._db
        self.index_dir.mkdir(parents=True, exist_ok=True)
        for part, index in self._index.items():
            if not index.is_hnsw:
                continue
            row = db.execute(
                "SELECT generation FROM partitions WHERE namespace=? AND fingerprint=?", part
            ).fetchone()
            if row is None:
                continue
            stem = self.index_dir / self._partition_file(part)
            if index.save(stem.with_suffix(".usearch")):
                stem.with_suffix(".gen").write_text(str(row[0]))
        db.close()
        self._db = None

    # -- Store ---------------------------------------------------------------------------------
    async def put(self, entry: CacheEntry) -> None:
        await self._run(self._put, entry)

    async def get_exact(self, namespace: str, key: str) -> CacheEntry | None:
        return await self._run(self._get, namespace, key)

    async def search(
        self, namespace: str, fingerprint: str, vector: np.ndarray, k: int
    ) -> list[SearchHit]:
        return await self._run(self._search, namespace, fingerprint, vector, k)

    async def record_hit(self, namespace: str, key: str) -> None:
        await self._run(self._record_hit, namespace, key)

    async def delete(self, namespace: str, key: str) -> bool:
        return await self._run(self._delete, namespace, key)

    async def clear(self, namespace: str | None = None) -> int:
        return await self._run(self._clear, namespace)

    async def list_entries(
        self, namespace: str | None = None, limit: int = 100, offset: int = 0, query: str = ""
    ) -> list[CacheEntry]:
        return await self._run(self._list, namespace, limit, offset, query)

    async def stats(self, namespace: str | None = None) -> StoreStats:
        return await self._run(self._stats, namespace)

    async def update_feedback(
        self, namespace: str, key: str, change: FeedbackChange, *,
        created_at: float | None = None,
    ) -> EntryFeedback | None:
        return await self._run(self._update_feedback, namespace, key, change, created_at)

    async def remember_served(self, record: ServedRecord) -> None:
        await self._run(self._remember_served, record)

    async def get_served(self, namespace: str, response_id: str) -> ServedRecord | None:
        return await self._run(self._get_served, namespace, response_id)

    async def set_served_vote(self, namespace: str, response_id: str, vote: str,
                              expect: str | None) -> bool:
        return await self._run(self._set_served_vote, namespace, response_id, vote, expect)

    async def try_lock(self, name: str, ttl_seconds: float) -> bool:
        return await self._run(self._try_lock, name, ttl_seconds)

    async def unlock(self, name: str) -> None:
        await self._run(self._unlock, name)

    async def ping(self) -> bool:
        try:
            await self._run(lambda: self._conn().execute("SELECT 1").fetchone())
            return True
        except StoreError:
            return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=True)
