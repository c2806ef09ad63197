"""The chunk index on Redis Stack, shared by every gateway replica.

Layout under ``prefix`` (``cd`` = digest of the collection key, so keys and TAG values need
no escaping whatever the namespace or collection name holds):

* ``{p}:c:{cd}:{doc_id}:{ordinal}`` — one HASH per chunk: ``coll`` (TAG ``cd``), ``doc``,
  ``ord``, ``page``, ``text``, ``terms`` (search terms, space separated) and ``vec``
  (float32). The RediSearch index ``{p}:idx`` covers them: an HNSW cosine vector field
  plus the ``coll`` TAG, so a KNN query stays inside one collection.
* ``{p}:docs:{cd}`` — HASH doc id → number of chunks (how a delete finds every key).
* ``{p}:meta:{cd}`` — HASH with ``version`` (bumped by every add/delete, never reset, so a
  deleted and re-created collection never matches an old cached BM25 index) and ``chunks``.

Writes of one document go in one ``MULTI`` transaction: readers see all of its chunks or
none. BM25 is computed in-process by ``bm25s`` from the stored terms, built once per
collection version per replica (:class:`~reprise.rag.bm25.Bm25Cache`); Redis's own BM25
scorer is not used because its tokenizer would split Chinese differently from the
questions. Every Redis failure surfaces as :class:`IndexUnavailable` (HTTP 503).

On a Redis Cluster the keys above move under hash-tagged groups (``{p}:{tag}:c:…``,
``{p}:{tag}:docs:{cd}``, ``{p}:{tag}:meta:{cd}``, one index ``{p}:{tag}:idx`` per group;
``store.redis_layout``): a collection belongs to one group, so one document's ``MULTI``
and a collection's KNN query each run on one shard. An index missing where its group now
lives (resharding moved the group) is recreated there and backfills from the moved keys.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from reprise.rag.bm25 import Bm25Cache, Bm25Index
from reprise.rag.chunk_index import IndexUnavailable, StoredChunk, chunk_id, chunk_terms
from reprise.rag.documents import Chunk
from reprise.rag.errors import RagError
from reprise.store.redis_conn import LoopClient, plain_url
from reprise.store.redis_layout import group_number, tagged_bases

T = TypeVar("T")
_FETCH = ("doc", "ord", "page", "text", "vec")


def _digest(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _get(reply: Any, name: str) -> Any:
    if isinstance(reply, dict):
        return reply.get(name.encode(), reply.get(name))
    return None


class RedisChunkIndex:
    def __init__(self, url: str, dim: int, *, prefix: str = "reprise:rag",
                 exact_below: int = 4000, hnsw_m: int = 16, hnsw_ef_construction: int = 200,
                 hnsw_ef_runtime: int = 128, bm25_collections: int = 32,
                 socket_timeout: float = 10.0, cluster: bool | None = None,
                 groups: int = 16) -> None:
        self.url = url
        self.dim = dim
        self.prefix = prefix
        self.exact_below = exact_below  # collections up to this many chunks: exact KNN
        self.hnsw = (hnsw_m, hnsw_ef_construction, hnsw_ef_runtime)
        self.socket_timeout = socket_timeout
        self.cluster = plain_url(url)[1] if cluster is None else cluster
        try:
            self._bases = tagged_bases(prefix, groups) if self.cluster else (prefix,)
        except ValueError as exc:
            raise RagError(400, str(exc), "redis_prefix") from exc
        self.bm25 = Bm25Cache(bm25_collections)
        self._conn = LoopClient(url, {"protocol": 3, "socket_timeout": socket_timeout,
                                      "socket_connect_timeout": 2.0}, cluster=self.cluster)
        self._ready: set[str] = set()  # index names known to exist

    def _base(self, cd: str) -> str:
        """Where a collection's keys live (its group's tagged prefix on a cluster)."""
        if len(self._bases) == 1:
            return self._bases[0]
        return self._bases[group_number(cd, len(self._bases))]

    @property
    def index_name(self) -> str:
        """The single server's index (on a cluster each group has its own)."""
        return f"{self._bases[0]}:idx"

    # -- plumbing -----------------------------------------------------------------------------
    def _redis(self) -> Redis:
        """A client for the running loop (asyncio connections are bound to their loop)."""
        return self._conn.get()

    async def _run(self, op: Callable[[Redis], Awaitable[T]], cd: str | None = None) -> T:
        """Run ``op`` with the index of ``cd``'s group in place (created when missing)."""
        base = self._bases[0] if cd is None else self._base(cd)
        try:
            client = self._redis()
            if base not in self._ready:
                await self._ensure_index(client, base)
            try:
                return await op(client)
            except ResponseError as exc:
                if "no such index" not in str(exc).lower():
                    raise
                # The server restarted empty, or the group moved to another shard.
                self._ready.discard(base)
                await self._ensure_index(client, base)
                return await op(client)
        except (RedisError, OSError) as exc:
            raise IndexUnavailable(f"document index on Redis is unavailable: {exc}") from exc

    async def _ft(self, client: Redis, base: str, *args: Any) -> Any:
        """A search command, sent on a cluster to the shard owning the group's slot."""
        if not self.cluster:
            return await client.execute_command(*args)
        cluster: Any = client
        await cluster.initialize()
        node = cluster.get_node_from_key(f"{base}:idx")
        return await client.execute_command(*args, target_nodes=node)

    async def _ensure_index(self, client: Redis, base: str) -> None:
        """Create the index if missing; refuse one built for another vector dimension."""
        index = f"{base}:idx"
        try:
            info = await self._ft(client, base, "FT.INFO", index)
            for attr in _get(info, "attributes") or []:
                dim = _get(attr, "dim")
                if dim is not None and int(dim) != self.dim:
                    raise RagError(
                        409, f"the document index {index!r} holds {int(dim)}-dim "
                        f"vectors but the embedder makes {self.dim}-dim ones: re-ingest the "
                        "documents under another REPRISE_REDIS_PREFIX", "index_dimension")
        except ResponseError as exc:
            if "unknown index" not in str(exc).lower() and "no such index" not in str(exc).lower():
                raise
            m, ef_c, ef_r = self.hnsw
            try:
                await self._ft(
                    client, base,
                    "FT.CREATE", index, "ON", "HASH", "PREFIX", "1", f"{base}:c:",
                    "SCHEMA", "coll", "TAG", "vec", "VECTOR", "HNSW", "12", "TYPE", "FLOAT32",
                    "DIM", str(self.dim), "DISTANCE_METRIC", "COSINE", "M", str(m),
                    "EF_CONSTRUCTION", str(ef_c), "EF_RUNTIME", str(ef_r))
            except ResponseError as exc2:
                if "already exists" not in str(exc2).lower():
                    raise
        self._ready.add(base)

    def _chunk_key(self, cd: str, cid: str) -> str:
        return f"{self._base(cd)}:c:{cd}:{cid}"

    def _docs_key(self, cd: str) -> str:
        return f"{self._base(cd)}:docs:{cd}"

    def _meta_key(self, cd: str) -> str:
        return f"{self._base(cd)}:meta:{cd}"

    # -- writes -------------------------------------------------------------------------------
    async def add(self, key: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(chunks), -1)
        if len(chunks) and vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have {vectors.shape[1]} dims, the index has {self.dim}")
        if not chunks:
            return
        terms = await asyncio.to_thread(chunk_terms, chunks)
        cd = _digest(key)
        per_doc: dict[str, int] = {}
        for c in chunks:
            per_doc[c.doc_id] = per_doc.get(c.doc_id, 0) + 1

        async def op(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                for c, v, t in zip(chunks, vectors, terms, strict=True):
                    pipe.hset(self._chunk_key(cd, chunk_id(c.doc_id, c.ordinal)), mapping={
                        "coll": cd, "doc": c.doc_id, "ord": c.ordinal, "page": c.page,
                        "text": c.text, "terms": " ".join(t), "vec": v.tobytes()})
                for doc_id, n in per_doc.items():
                    pipe.hincrby(self._docs_key(cd), doc_id, n)
                pipe.hincrby(self._meta_key(cd), "chunks", len(chunks))
                pipe.hincrby(self._meta_key(cd), "version", 1)
                await pipe.execute()

        await self._run(op, cd)

    async def _remove(self, key: str, doc_ids: list[str] | None) -> int:
        cd = _digest(key)

        async def op(client: Redis) -> int:
            counts = {_s(d): int(n) for d, n in (await client.hgetall(self._docs_key(cd))).items()}
            targets = counts if doc_ids is None else {d: counts[d] for d in doc_ids if d in counts}
            keys: list[str] = [self._chunk_key(cd, chunk_id(d, i))
                               for d, n in targets.items() for i in range(n)]
            async with client.pipeline(transaction=True) as pipe:
                for i in range(0, len(keys), 1000):
                    pipe.delete(*keys[i:i + 1000])
                if targets:
                    pipe.hdel(self._docs_key(cd), *targets)
                pipe.hincrby(self._meta_key(cd), "chunks", -len(keys))
                pipe.hincrby(self._meta_key(cd), "version", 1)
                await pipe.execute()
            return len(keys)

        return await self._run(op, cd)

    async def delete_document(self, key: str, doc_id: str) -> int:
        return await self._remove(key, [doc_id])

    async def delete_collection(self, key: str) -> int:
        removed = await self._remove(key, None)
        self.bm25.drop(key)
        return removed

    # -- reads --------------------------------------------------------------------------------
    async def _meta(self, key: str) -> tuple[int, int]:
        cd = _digest(key)

        async def op(client: Redis) -> tuple[int, int]:
            version, chunks = await client.hmget(self._meta_key(cd), ["version", "chunks"])
            return int(version or 0), int(chunks or 0)

        return await self._run(op, cd)

    async def count(self, key: str) -> int:
        return (await self._meta(key))[1]

    async def version(self, key: str) -> int:
        return (await self._meta(key))[0]

    async def dense_search(self, key: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has {q.shape[0]} dims, the index has {self.dim}")
        size = await self.count(key)
        if size <= 0 or k <= 0:
            return []
        k = min(k, size)
        cd = _digest(key)
        # Small collections are brute-forced exactly; large ones walk the HNSW graph.
        policy = ("HYBRID_POLICY ADHOC_BF" if size <= self.exact_below
                  else f"HYBRID_POLICY BATCHES EF_RUNTIME {max(self.hnsw[2], k)}")
        query = f"@coll:{{{cd}}}=>[KNN $k @vec $b {policy} AS dist]"

        base = self._base(cd)

        async def op(client: Redis) -> Any:
            return await self._ft(
                client, base, "FT.SEARCH", f"{base}:idx", query, "PARAMS", "4", "k", str(k),
                "b", q.tobytes(), "SORTBY", "dist", "RETURN", "1", "dist",
                "LIMIT", "0", str(k), "DIALECT", "2")

        reply = await self._run(op, cd)
        head = f"{base}:c:{cd}:"
        out = []
        for row in _get(reply, "results") or []:
            rkey = _s(_get(row, "id"))
            dist = float(_s(_get(_get(row, "extra_attributes") or {}, "dist") or 1.0))
            out.append((rkey[len(head):], 1.0 - dist))
        return out

    async def _bm25_index(self, key: str) -> Bm25Index:
        version = await self.version(key)
        cd = _digest(key)

        async def load_rows(client: Redis) -> tuple[list[str], list[list[str]]]:
            counts = {_s(d): int(n) for d, n in (await client.hgetall(self._docs_key(cd))).items()}
            ids = [chunk_id(d, i) for d, n in sorted(counts.items()) for i in range(n)]
            terms: list[list[str]] = []
            for i in range(0, len(ids), 1000):
                async with client.pipeline(transaction=False) as pipe:
                    for cid in ids[i:i + 1000]:
                        pipe.hget(self._chunk_key(cd, cid), "terms")
                    terms.extend(_s(t or b"").split() for t in await pipe.execute())
            return ids, terms

        cached = self.bm25.peek(key, version)
        if cached is not None:
            return cached
        ids, terms = await self._run(load_rows, cd)
        return await asyncio.to_thread(self.bm25.get, key, version, lambda: (ids, terms))

    async def bm25_search(self, key: str, terms: Sequence[str], k: int) -> list[tuple[str, float]]:
        index = await self._bm25_index(key)
        return await asyncio.to_thread(index.search, list(terms), k)

    async def fetch(self, key: str, ids: Sequence[str]) -> dict[str, StoredChunk]:
        if not ids:
            return {}
        cd = _digest(key)

        async def op(client: Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for cid in ids:
                    pipe.hmget(self._chunk_key(cd, cid), list(_FETCH))
                return list(await pipe.execute())

        out: dict[str, StoredChunk] = {}
        for cid, row in zip(ids, await self._run(op, cd), strict=True):
            doc, ordinal, page, text, vec = row
            if doc is None or vec is None:
                continue  # deleted meanwhile
            out[cid] = StoredChunk(cid, _s(doc), int(ordinal), int(page), _s(text),
                                   np.frombuffer(vec, dtype=np.float32).copy())
        return out

    async def drop_all(self) -> None:
        """Removes the index and every key under the prefix (tests, ``reprise`` admin)."""

        async def op(client: Redis) -> None:
            for base in self._bases:
                try:
                    await self._ft(client, base, "FT.DROPINDEX", f"{base}:idx", "DD")
                except ResponseError as exc:
                    if "unknown index" not in str(exc).lower() and \
                            "no such index" not in str(exc).lower():
                        raise
                self._ready.discard(base)
            # A cluster client scans every primary.
            async for raw in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                await client.delete(raw)

        await self._run(op)
        self._ready.clear()

    async def aclose(self) -> None:
        await self._conn.aclose()
