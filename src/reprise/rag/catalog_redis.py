"""Collections, documents and jobs on Redis: what gateway replicas must agree on.

With ``store = "redis"`` every replica serves the same collections, so their bookkeeping
cannot stay in each replica's own SQLite file: a collection created through one replica
must exist for the next request, which may land on another, and the collection *version*
(part of the cache key of every answer built on it) must be one number for all of them.
Same methods and semantics as :class:`reprise.rag.catalog.Catalog`.

Layout under ``prefix`` (``nsd``/``cd`` = digests of the namespace and of
``namespace/name``, so names never need escaping):

* ``{p}:cat:c:{nsd}`` — HASH collection name → creation time;
* ``{p}:cat:v:{cd}`` — the version counter (INCR; never reset, even by a delete);
* ``{p}:cat:d:{cd}`` — HASH document id → the document record (JSON);
* ``{p}:cat:s:{cd}`` — HASH sha256 of the bytes → document id (duplicate uploads);
* ``{p}:cat:j:{nsd}:{job}`` — a job's progress (JSON), expiring after ``job_ttl`` seconds.

Changes to a collection's documents run in one ``MULTI`` with the version bump.

On a Redis Cluster the namespace's digest becomes a hash tag (``{p}:cat:{nsd}:c``,
``{p}:cat:{nsd}:v:{cd}`` …), so a namespace's collections and documents share one slot and
those ``MULTI`` blocks stay on one shard.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from reprise.rag.catalog import Catalog, Collection, DocumentRecord, Job
from reprise.rag.chunk_index import IndexUnavailable
from reprise.store.redis_conn import LoopClient, plain_url

T = TypeVar("T")


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=12).hexdigest()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisCatalog:
    new_id = staticmethod(Catalog.new_id)

    def __init__(self, url: str, *, prefix: str = "reprise:rag", job_ttl: int = 30 * 86400,
                 socket_timeout: float = 5.0, cluster: bool | None = None) -> None:
        self.url = url
        self.prefix = f"{prefix}:cat"
        self.cluster = plain_url(url)[1] if cluster is None else cluster
        self.job_ttl = job_ttl
        self.socket_timeout = socket_timeout
        self._conn = LoopClient(url, {"socket_timeout": socket_timeout,
                                      "socket_connect_timeout": 2.0}, cluster=self.cluster)

    async def _run(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await op(self._conn.get())
        except (RedisError, OSError) as exc:
            raise IndexUnavailable(f"document catalog on Redis is unavailable: {exc}") from exc

    def _colls(self, ns: str) -> str:
        if self.cluster:
            return f"{self.prefix}:{{{_digest(ns)}}}:c"
        return f"{self.prefix}:c:{_digest(ns)}"

    def _keys(self, ns: str, name: str) -> tuple[str, str, str]:
        cd = _digest(ns, name)
        p = f"{self.prefix}:{{{_digest(ns)}}}" if self.cluster else self.prefix
        return f"{p}:v:{cd}", f"{p}:d:{cd}", f"{p}:s:{cd}"

    # -- collections ------------------------------------------------------------------------
    async def _get(self, client: Redis, ns: str, name: str) -> Collection | None:
        created = await client.hget(self._colls(ns), name)
        if created is None:
            return None
        ver, docs, _ = self._keys(ns, name)
        version = int(await client.get(ver) or 0)
        records = [orjson.loads(v) for v in await client.hvals(docs)]
        return Collection(name, float(created), version, len(records),
                          sum(int(r["chunks"]) for r in records))

    async def get_collection(self, ns: str, name: str) -> Collection | None:
        return await self._run(lambda c: self._get(c, ns, name))

    async def create_collection(self, ns: str, name: str) -> Collection | None:
        async def op(client: Redis) -> Collection | None:
            if not await client.hsetnx(self._colls(ns), name, repr(time.time())):
                return None
            return await self._get(client, ns, name)

        return await self._run(op)

    async def list_collections(self, ns: str) -> list[Collection]:
        async def op(client: Redis) -> list[Collection]:
            names = sorted(_s(n) for n in await client.hkeys(self._colls(ns)))
            found = [await self._get(client, ns, n) for n in names]
            return [c for c in found if c is not None]

        return await self._run(op)

    async def delete_collection(self, ns: str, name: str) -> list[str]:
        ver, docs, shas = self._keys(ns, name)

        async def op(client: Redis) -> list[str]:
            ids = [_s(i) for i in await client.hkeys(docs)]
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._colls(ns), name)
                pipe.delete(docs, shas)
                pipe.incr(ver)
                await pipe.execute()
            return ids

        return await self._run(op)

    # -- documents ----------------------------------------------------------------------------
    async def add_document(self, ns: str, rec: DocumentRecord) -> None:
        ver, docs, shas = self._keys(ns, rec.collection)

        async def op(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(docs, rec.id, orjson.dumps(asdict(rec)))
                pipe.hset(shas, rec.sha256, rec.id)
                pipe.incr(ver)
                await pipe.execute()

        await self._run(op)

    async def find_by_sha(self, ns: str, coll: str, sha: str) -> DocumentRecord | None:
        _, docs, shas = self._keys(ns, coll)

        async def op(client: Redis) -> DocumentRecord | None:
            doc_id = await client.hget(shas, sha)
            raw = None if doc_id is None else await client.hget(docs, _s(doc_id))
            return None if raw is None else DocumentRecord(**orjson.loads(raw))

        return await self._run(op)

    async def list_documents(self, ns: str, coll: str) -> list[DocumentRecord]:
        _, docs, _ = self._keys(ns, coll)

        async def op(client: Redis) -> list[DocumentRecord]:
            recs = [DocumentRecord(**orjson.loads(v)) for v in await client.hvals(docs)]
            return sorted(recs, key=lambda r: (r.created_at, r.id))

        return await self._run(op)

    async def delete_document(self, ns: str, coll: str, doc_id: str) -> bool:
        ver, docs, shas = self._keys(ns, coll)

        async def op(client: Redis) -> bool:
            raw = await client.hget(docs, doc_id)
            if raw is None:
                return False
            rec = orjson.loads(raw)
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(docs, doc_id)
                pipe.hdel(shas, rec["sha256"])
                pipe.incr(ver)
                await pipe.execute()
            return True

        return await self._run(op)

    # -- jobs -----------------------------------------------------------------------------------
    async def save_job(self, ns: str, job: Job) -> None:
        key = f"{self.prefix}:j:{_digest(ns)}:{job.id}"
        await self._run(lambda c: c.set(key, orjson.dumps(job.view()), ex=self.job_ttl))

    async def get_job(self, ns: str, job_id: str) -> dict[str, Any] | None:
        key = f"{self.prefix}:j:{_digest(ns)}:{job_id}"
        raw = await self._run(lambda c: c.get(key))
        return None if raw is None else orjson.loads(raw)

    async def aclose(self) -> None:
        await self._conn.aclose()
