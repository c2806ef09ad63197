"""Collections, documents and ingestion jobs (the bookkeeping around the chunk index).

Kept in SQLite beside the chunk index. The collection ``version`` is bumped by every change
to its documents and is part of the cache key of answers built on the collection, so an
answer built on old text is never served again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
  namespace TEXT NOT NULL, name TEXT NOT NULL, created_at REAL NOT NULL,
  version INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS documents (
  id TEXT PRIMARY KEY, namespace TEXT NOT NULL, collection TEXT NOT NULL,
  filename TEXT NOT NULL, sha256 TEXT NOT NULL, mime TEXT NOT NULL, title TEXT,
  pages INTEGER NOT NULL, chunks INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS documents_coll ON documents (namespace, collection);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, namespace TEXT NOT NULL, body BLOB NOT NULL);
"""


@dataclass
class Collection:
    name: str
    created_at: float
    version: int
    documents: int = 0
    chunks: int = 0


@dataclass
class DocumentRecord:
    id: str
    collection: str
    filename: str
    sha256: str
    mime: str
    pages: int
    chunks: int
    created_at: float
    title: str | None = None


@dataclass
class FileProgress:
    filename: str
    state: str = "queued"  # queued | running | done | duplicate | failed
    document_id: str | None = None
    pages: int = 0
    chunks: int = 0
    error: dict[str, str] | None = None


@dataclass
class Job:
    id: str
    collection: str
    files: list[FileProgress]
    state: str = "queued"  # queued | running | done | partial | failed
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def pages_done(self) -> int:
        return sum(f.pages for f in self.files)

    @property
    def chunks_done(self) -> int:
        return sum(f.chunks for f in self.files)

    def finish(self) -> None:
        ok = [f for f in self.files if f.state in ("done", "duplicate")]
        self.state = "done" if len(ok) == len(self.files) else ("partial" if ok else "failed")
        self.finished_at = time.time()

    def view(self) -> dict[str, Any]:
        out = asdict(self)
        out["pages_done"], out["chunks_done"] = self.pages_done, self.chunks_done
        return out


class Catalog:
    """SQLite bookkeeping; every call runs on one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reprise-catalog")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    # -- collections -------------------------------------------------------------------------
    def _get_collection(self, ns: str, name: str) -> Collection | None:
        db = self._conn()
        row = db.execute("SELECT name, created_at, version FROM collections WHERE namespace=?"
                         " AND name=?", (ns, name)).fetchone()
        if row is None:
            return None
        docs, chunks = db.execute("SELECT COUNT(*), COALESCE(SUM(chunks),0) FROM documents"
                                  " WHERE namespace=? AND collection=?", (ns, name)).fetchone()
        return Collection(row[0], row[1], row[2], int(docs), int(chunks))

    async def get_collection(self, ns: str, name: str) -> Collection | None:
        return await self._run(self._get_collection, ns, name)

    def _create(self, ns: str, name: str) -> Collection | None:
        db = self._conn()
        cur = db.execute("INSERT OR IGNORE INTO collections VALUES (?, ?, ?, 0)",
                         (ns, name, time.time()))
        return self._get_collection(ns, name) if cur.rowcount else None

    async def create_collection(self, ns: str, name: str) -> Collection | None:
        """The new collection, or None if it already exists."""
        return await self._run(self._create, ns, name)

    def _list(self, ns: str) -> list[Collection]:
        names = [r[0] for r in self._conn().execute(
            "SELECT name FROM collections WHERE namespace=? ORDER BY name", (ns,))]
        return [c for n in names if (c := self._get_collection(ns, n)) is not None]

    async def list_collections(self, ns: str) -> list[Collection]:
        return await self._run(self._list, ns)

    def _drop(self, ns: str, name: str) -> list[str]:
        db = self._conn()
        ids = [r[0] for r in db.execute(
            "SELECT id FROM documents WHERE namespace=? AND collection=?", (ns, name))]
        db.execute("DELETE FROM documents WHERE namespace=? AND collection=?", (ns, name))
        db.execute("DELETE FROM collections WHERE namespace=? AND name=?", (ns, name))
        return ids

    async def delete_collection(self, ns: str, name: str) -> list[str]:
        """Removes the collection; returns the ids of the documents it held."""
        return await self._run(self._drop, ns, name)

    def _bump(self, ns: str, name: str) -> None:
        self._conn().execute("UPDATE collections SET version = version + 1 WHERE namespace=?"
                             " AND name=?", (ns, name))

    # -- documents ---------------------------------------------------------------------------
    def _add_doc(self, ns: str, rec: DocumentRecord) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (rec.id, ns, rec.collection, rec.filename, rec.sha256, rec.mime,
                        rec.title, rec.pages, rec.chunks, rec.created_at))
            self._bump(ns, rec.collection)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def add_document(self, ns: str, rec: DocumentRecord) -> None:
        await self._run(self._add_doc, ns, rec)

    def _find_sha(self, ns: str, coll: str, sha: str) -> DocumentRecord | None:
        row = self._conn().execute(
            "SELECT id, collection, filename, sha256, mime, pages, chunks, created_at, title"
            " FROM documents WHERE namespace=? AND collection=? AND sha256=?",
            (ns, coll, sha)).fetchone()
        return None if row is None else DocumentRecord(*row)

    async def find_by_sha(self, ns: str, coll: str, sha: str) -> DocumentRecord | None:
        return await self._run(self._find_sha, ns, coll, sha)

    def _docs(self, ns: str, coll: str) -> list[DocumentRecord]:
        rows = self._conn().execute(
            "SELECT id, collection, filename, sha256, mime, pages, chunks, created_at, title"
            " FROM documents WHERE namespace=? AND collection=? ORDER BY created_at",
            (ns, coll)).fetchall()
        return [DocumentRecord(*r) for r in rows]

    async def list_documents(self, ns: str, coll: str) -> list[DocumentRecord]:
        return await self._run(self._docs, ns, coll)

    def _del_doc(self, ns: str, coll: str, doc_id: str) -> bool:
        db = self._conn()
        cur = db.execute("DELETE FROM documents WHERE namespace=? AND collection=? AND id=?",
                         (ns, coll, doc_id))
        if cur.rowcount:
            self._bump(ns, coll)
        return bool(cur.rowcount)

    async def delete_document(self, ns: str, coll: str, doc_id: str) -> bool:
        return await self._run(self._del_doc, ns, coll, doc_id)

    # -- jobs --------------------------------------------------------------------------------------
    def _save_job(self, ns: str, job: Job) -> None:
        self._conn().execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)",
                             (job.id, ns, orjson.dumps(job.view())))

    async def save_job(self, ns: str, job: Job) -> None:
        await self._run(self._save_job, ns, job)

    def _get_job(self, ns: str, job_id: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT body FROM jobs WHERE id=? AND namespace=?",
                                   (job_id, ns)).fetchone()
        return None if row is None else orjson.loads(row[0])

    async def get_job(self, ns: str, job_id: str) -> dict[str, Any] | None:
        return await self._run(self._get_job, ns, job_id)

    @staticmethod
    def new_id(prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:20]}"

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(close)
        self._executor.shutdown(wait=True)
