"""Shared store on Redis Stack: every gateway replica sees the same cache and the same locks.

Layout under one ``prefix`` (so several stores can share a server):

* ``{p}:e:{len(ns)}:{ns}:{key}`` — one HASH per entry (the length prefix keeps ``ns``/``key``
  pairs unambiguous whatever characters they hold). Indexed by ``{p}:idx`` (RediSearch, HNSW
  cosine) with two TAG fields holding *digests*: ``tp`` of the partition (namespace,
  fingerprint) and ``tn`` of the namespace, so tag queries never need escaping and a search
  stays inside its partition.
* ``{p}:lru`` — ZSET entry key → last access (LRU order for eviction and listing).
* ``{p}:exp`` — ZSET entry key → expiry; Redis expires the hash itself (``PEXPIREAT``), this
  set only lets us keep the byte account right for entries that vanished that way.
* ``{p}:size`` HASH entry key → bytes, ``{p}:bytes`` — running total (the byte bound).
* ``{p}:lock:{name}`` — single-flight locks (``SET NX PX`` + token, released by a script).
* ``{p}:sv:{len(ns)}:{ns}:{id}`` — one small HASH per served response (what a vote by
  response id refers to), expiring with the feedback window; outside the ``{p}:e:`` prefix
  so the search index never sees it.

An entry's users' votes live in its hash (field ``fb``, compact JSON). A vote is a
compare-and-set: read ``fb``, compute the new value in Python (``cache.feedback``), and let a
script write it only if ``fb`` and the entry's version are unchanged (else read again), so
concurrent votes from any replicas are never lost; an evicting vote deletes the entry in
that same script.

Writes that touch several keys run as Lua scripts so a crash between steps cannot leave the
byte account or the LRU set inconsistent. Every Redis failure surfaces as ``StoreError`` so
the cache layer fails open; the client reconnects by itself, and a missing index (the server
restarted empty, or ``FLUSHALL``) is recreated and the command retried once.

Connection: any ``redis://`` or ``rediss://`` (TLS) URL with user/password; Redis Stack 7.x
or Redis 8 (search built in). A Redis Cluster (``redis+cluster://``, or detected by
``redis_conn.is_cluster``) splits all of the above into hash-tagged key groups
(``redis_layout``): every name below then reads ``{p}:{tag}:…``, each group has its own
index, LRU and byte bound (``max_bytes / groups``), and a command that meets a slot map in
motion (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) is retried once, then fails open.
The database must be 0: the search module refuses indexes in
other databases, so a ``/N`` suffix is rejected at start and ``prefix`` separates
deployments instead.

Lookup cost: one ``FT.SEARCH`` round trip per semantic lookup (the partition's size, which
picks the query plan, is cached briefly per replica); candidates come back without their
2 KB vectors (the similarity is the index's own cosine distance, printed to 12 digits).
HNSW defaults (M 16, EF_CONSTRUCTION 100, EF_RUNTIME 64) are measured in
``bench/results/redis.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

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
from reprise.store.redis_conn import LoopClient, plain_url
from reprise.store.redis_layout import KeyGroup, Layout

T = TypeVar("T")

# A slot map in motion (failover, resharding): the client patches its map from the reply,
# so one more try usually reaches the right node; a second failure fails open.
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError, SlotNotCoveredError)

# Removes one entry and its bookkeeping; shared by the scripts below, which bind the five
# bookkeeping keys first. ``sizes`` maps entry -> "<bytes> <partition digest>" (digest only for
# entries with a vector) so even an entry Redis already expired is accounted for exactly.
_DROP = """
local function drop(k)
  local s = redis.call('HGET', sizes, k)
  local existed = redis.call('DEL', k)
  redis.call('ZREM', lru, k)
  redis.call('ZREM', exp, k)
  if s then
    local size, part = string.match(s, '^(%d+) ?(%x*)$')
    redis.call('HDEL', sizes, k)
    redis.call('DECRBY', total, tonumber(size))
    if part ~= '' and redis.call('HINCRBY', parts, part, -1) <= 0 then
      redis.call('HDEL', parts, part)
    end
  end
  return existed
end
local function sweep(now)
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 128)
  for _, k in ipairs(gone) do drop(k) end
end
"""

# KEYS: entry, lru, exp, size, bytes, parts.
# ARGV: size, last_access, expire_ms|'', expires_at|'', max_bytes, now, partition|'',
#       field, value, ...
_PUT = (
    "local lru, exp, sizes, total, parts = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]"
    + _DROP
) + """
sweep(ARGV[6])
drop(KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
if ARGV[3] ~= '' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[4], KEYS[1])
end
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[4], KEYS[1], ARGV[1] .. ' ' .. ARGV[7])
  redis.call('HINCRBY', KEYS[6], ARGV[7], 1)
else
  redis.call('HSET', KEYS[4], KEYS[1], ARGV[1])
end
local total = redis.call('INCRBY', KEYS[5], ARGV[1])
local limit = tonumber(ARGV[5])
local evicted = 0
while total > limit do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 1)
  local victim = oldest[1]
  if victim == KEYS[1] then victim = oldest[2] end
  if not victim then break end
  drop(victim)
  evicted = evicted + 1
  total = tonumber(redis.call('GET', KEYS[5]) or '0')
end
return evicted
"""

# KEYS: lru, exp, size, bytes, parts; ARGV: now, entry keys... → how many of them existed.
_DELETE = (
    "local lru, exp, sizes, total, parts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]"
    + _DROP
) + """
sweep(ARGV[1])
local n = 0
for i = 2, #ARGV do n = n + drop(ARGV[i]) end
return n
"""

# KEYS: entry, lru; ARGV: now.
_HIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'h', 1)
redis.call('HSET', KEYS[1], 'a', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
return 1
"""

# KEYS: entry, lru, exp, size, bytes, parts. ARGV: now, expected fb ('' = none), new fb,
# evict ('1'/'0'), expected created_at. → -1 entry gone/replaced, 0 fb changed meanwhile,
# 1 written, 2 evicted.
_FEEDBACK = (
    "local lru, exp, sizes, total, parts = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]"
    + _DROP
) + """
if redis.call('HGET', KEYS[1], 'c') ~= ARGV[5] then return -1 end
local cur = redis.call('HGET', KEYS[1], 'fb') or ''
if cur ~= ARGV[2] then return 0 end
if ARGV[4] == '1' then
  drop(KEYS[1])
  return 2
end
redis.call('HSET', KEYS[1], 'fb', ARGV[3])
return 1
"""

# KEYS: served record. ARGV: new vote, expected vote ('' = none) → 1 set, 0 not.
_VOTE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'v') or ''
if cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1])
return 1
"""

# KEYS: served record. ARGV: expire at (ms), field, value, ... (replaces the record).
_SERVED = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_FIELDS = ("ns", "fp", "k", "q", "r", "m", "vec", "c", "x", "h", "a", "pt", "ct", "fb")
# What a search returns per candidate: everything but the 2 KB vector (the similarity comes
# from the index's own distance; the caller never needs the stored vector of a candidate).
# The feedback (``fb``) comes along: a candidate's votes decide whether it may be served.
_SEARCH_FIELDS = tuple(f for f in _FIELDS if f != "vec")
# How long a replica trusts its cached size of a non-empty partition: the size only picks
# the query plan (exact scan vs graph walk), so a stale value costs speed, never results.
_PART_SIZE_TTL = 2.0
# Compare-and-set rounds a vote gets before giving up (each loses only to another vote).
_CAS_ATTEMPTS = 32


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=12).hexdigest()


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _no_index(exc: ResponseError) -> bool:
    msg = str(exc).lower()
    return "no such index" in msg or "unknown index name" in msg


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    backend = "redis"

    def __init__(
        self,
        url: str,
        dim: int,
        max_bytes: int = 512 * 1024 * 1024,
        prefix: str = "reprise",
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 100,
        hnsw_ef_runtime: int = 64,
        exact_below: int = 4000,
        *,
        cluster: bool | None = None,
        groups: int = 16,
    ) -> None:
        db = int(parse_url(plain_url(url)[0]).get("db") or 0)
        if db != 0:
            # The search module refuses indexes outside db 0 ("Cannot create index on db !=
            # 0"); failing open on every write would hide that, so refuse to start instead.
            raise StoreError(
                f"REPRISE_REDIS_URL selects db {db}, but Redis search indexes only work in db"
                " 0: drop the /db suffix and set REPRISE_REDIS_PREFIX to keep deployments"
                " sharing one server apart"
            )
        self.url = url
        self.dim = dim
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.cluster = plain_url(url)[1] if cluster is None else cluster
        try:
            self.layout = Layout(prefix, max_bytes, cluster=self.cluster, groups=groups)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.hnsw = (hnsw_m, hnsw_ef_construction, hnsw_ef_runtime)
        self.exact_below = exact_below  # partitions up to this many vectors: exact search
        self._scripts: dict[str, Any] = {}
        self._conn = LoopClient(url, {
            "protocol": 3,  # map replies for FT.* commands
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            # Fail fast: the cache fails open, so waiting on a dead server only adds latency.
            "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        }, on_new=self._register_scripts, cluster=self.cluster)
        self._ready: set[str] = set()  # indexes known to exist (per group)
        self._tokens: dict[str, str] = {}
        self._errors = 0
        self._part_sizes: dict[str, tuple[int, float]] = {}  # digest -> (size, fetched at)

    # -- plumbing ----------------------------------------------------------------------------
    def _redis(self) -> Redis:
        """The client for the running event loop (see ``redis_conn``)."""
        return self._conn.get()

    def _register_scripts(self, client: Redis) -> None:
        self._scripts = {
            name: client.register_script(src)
            for name, src in (("put", _PUT), ("delete", _DELETE), ("hit", _HIT),
                              ("unlock", _UNLOCK), ("feedback", _FEEDBACK), ("vote", _VOTE),
                              ("served", _SERVED))
        }

    async def _run(self, op: Callable[[Redis], Awaitable[T]], *,
                   indexed: KeyGroup | None = None) -> T:
        """Run ``op``; map Redis failures to StoreError; recreate a vanished index once (the
        server restarted empty, or resharding moved the group to a shard without it); on a
        cluster, retry once when the slot map moved under the command."""
        try:
            client = self._redis()
            try:
                return await self._attempt(client, op, indexed)
            except _REDIRECTS:
                if not self.cluster:
                    raise
                await asyncio.sleep(0.05)
                return await self._attempt(client, op, indexed)
        except StoreError:
            self._errors += 1
            raise
        except (RedisError, OSError) as exc:
            self._errors += 1
            raise StoreError(f"redis store {self.prefix!r}: {exc}") from exc

    async def _attempt(self, client: Redis, op: Callable[[Redis], Awaitable[T]],
                       indexed: KeyGroup | None) -> T:
        if indexed is not None and indexed.index not in self._ready:
            await self._ensure_index(client, indexed)
        try:
            return await op(client)
        except ResponseError as exc:
            if indexed is None or not _no_index(exc):
                raise
            self._ready.discard(indexed.index)
            await self._ensure_index(client, indexed)
            return await op(client)

    async def _ft(self, client: Redis, group: KeyGroup, *args: Any) -> Any:
        """A search command, sent to the node that owns the group's slot on a cluster (a
        shard's index covers that shard's keys only; without a search coordinator the
        index name routes like a key)."""
        if not self.cluster:
            return await client.execute_command(*args)
        node = await self._node_of(client, group)
        return await client.execute_command(*args, target_nodes=node)

    @staticmethod
    async def _node_of(client: Any, group: KeyGroup) -> Any:
        """The primary that owns the group's slot (the client learns the slot map on its
        first command; ``initialize`` returns at once when it has one)."""
        await client.initialize()
        return client.get_node_from_key(group.index)

    async def _ensure_index(self, client: Redis, group: KeyGroup) -> None:
        """Create the index if missing; refuse one built for another vector dimension."""
        index = group.index
        try:
            info = await self._ft(client, group, "FT.INFO", index)
        except ResponseError as exc:
            if not _no_index(exc):
                raise
            m, ef_c, ef_r = self.hnsw
            try:
                await self._ft(
                    client, group,
                    "FT.CREATE", index, "ON", "HASH", "PREFIX", "1", group.entry_prefix,
                    "SCHEMA", "tp", "TAG", "tn", "TAG",
                    "vec", "VECTOR", "HNSW", "12", "TYPE", "FLOAT32", "DIM", str(self.dim),
                    "DISTANCE_METRIC", "COSINE", "M", str(m), "EF_CONSTRUCTION", str(ef_c),
                    "EF_RUNTIME", str(ef_r),
                )
            except ResponseError as exc2:
                if "already exists" not in str(exc2).lower():
                    raise
            info = await self._ft(client, group, "FT.INFO", index)
            await self._wait_indexed(client, group, info)
        dim = _index_dim(info)
        if dim is not None and dim != self.dim:
            raise DimensionMismatch(
                f"Redis index {index!r} holds {dim}-dim vectors but the embedder makes"
                f" {self.dim}-dim ones; clear the cache (`reprise cache clear`) or use another"
                " prefix"
            )
        self._ready.add(index)

    async def _wait_indexed(self, client: Redis, group: KeyGroup, info: Any,
                            limit_s: float = 5.0) -> None:
        """A new index backfills existing hashes in the background (after a restart or a
        FLUSHALL the entries written meanwhile); wait briefly so the retry can find them."""
        deadline = time.monotonic() + limit_s
        while _info_get(info, "indexing") not in (0, b"0", "0", None):
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.02)
            info = await self._ft(client, group, "FT.INFO", group.index)

    @staticmethod
    def _decode(raw: dict[Any, Any]) -> CacheEntry | None:
        f = {_s(k): v for k, v in raw.items()}
        if "k" not in f:
            return None
        vec = f.get("vec")
        expires = _s(f.get("x", b""))
        return CacheEntry(
            key=_s(f["k"]), namespace=_s(f["ns"]), fingerprint=_s(f["fp"]),
            question=_s(f.get("q", b"")), response=bytes(f.get("r", b"")),
            model=_s(f.get("m", b"")),
            vector=None if not vec else np.frombuffer(vec, dtype=np.float32).copy(),
            created_at=float(f.get("c", 0.0)), expires_at=float(expires) if expires else None,
            hits=int(f.get("h", 0)), last_access=float(f.get("a", 0.0)),
            prompt_tokens=int(f.get("pt", 0)), completion_tokens=int(f.get("ct", 0)),
            feedback=EntryFeedback.decode(f.get("fb")),
        )

    async def _drop(self, client: Redis, group: KeyGroup, keys: list[str]) -> int:
        """Delete entries of one group (the script binds that group's bookkeeping)."""
        if not keys:
            return 0
        return int(await self._scripts["delete"](keys=group.book_keys,
                                                 args=[time.time(), *keys]))

    # -- Store -------------------------------------------------------------------------------
    async def put(self, entry: CacheEntry) -> None:
        group = self.layout.group(entry.namespace)
        fields: list[Any] = [
            "ns", entry.namespace, "fp", entry.fingerprint, "k", entry.key,
            "q", entry.question, "r", entry.response, "m", entry.model,
            "c", repr(entry.created_at),
            "x", "" if entry.expires_at is None else repr(entry.expires_at),
            "h", entry.hits, "a", repr(entry.last_access or entry.created_at),
            "pt", entry.prompt_tokens, "ct", entry.completion_tokens,
            "s", entry.size_bytes, "tn", _digest(entry.namespace),
            "tp", _digest(entry.namespace, entry.fingerprint),
        ]
        fb = entry.feedback.encode()
        if fb is not None:
            fields += ["fb", fb]
        if entry.vector is not None:
            vec = np.asarray(entry.vector, dtype=np.float32).reshape(-1)
            if vec.shape[0] != self.dim:
                raise DimensionMismatch(f"vector has {vec.shape[0]} dims, store has {self.dim}")
            fields += ["vec", vec.tobytes(), "hv", 1]
        else:
            fields += ["hv", 0]
        expire_ms = "" if entry.expires_at is None else str(int(entry.expires_at * 1000))
        part = "" if entry.vector is None else _digest(entry.namespace, entry.fingerprint)
        args = [entry.size_bytes, repr(entry.last_access or entry.created_at), expire_ms,
                "" if entry.expires_at is None else repr(entry.expires_at),
                group.max_bytes, repr(time.time()), part, *fields]
        key = group.entry_key(entry.namespace, entry.key)

        async def op(client: Redis) -> None:
            await self._scripts["put"](keys=[key, *group.book_keys], args=args)

        # Creating the index on first write checks the dimension up front.
        await self._run(op, indexed=group if entry.vector is not None else None)

    async def get_exact(self, namespace: str, key: str) -> CacheEntry | None:
        group = self.layout.group(namespace)
        rkey = group.entry_key(namespace, key)

        async def op(client: Redis) -> CacheEntry | None:
            entry = self._decode(await client.hgetall(rkey))
            if entry is not None and entry.expired():
                await self._drop(client, group, [rkey])
                return None
            return entry

        return await self._run(op)

    async def search(
        self, namespace: str, fingerprint: str, vector: np.ndarray, k: int
    ) -> list[SearchHit]:
        if k <= 0:
            return []
        query_vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query_vec.shape[0] != self.dim:
            raise DimensionMismatch(f"query has {query_vec.shape[0]} dims, store has {self.dim}")
        part = _digest(namespace, fingerprint)
        blob = query_vec.tobytes()
        group = self.layout.group(namespace)

        async def op(client: Redis) -> Any:
            # Filtered KNN: RediSearch's own heuristic brute-forces the filter's matches even
            # when the partition is the whole index (linear time). Small partitions are best
            # brute-forced (exact); large ones walk the HNSW graph in batches, filtered.
            size = await self._partition_size(client, group, part)
            if size == 0:
                return {}
            if size <= self.exact_below:
                attrs = "HYBRID_POLICY ADHOC_BF"
            else:
                attrs = f"HYBRID_POLICY BATCHES EF_RUNTIME {self.hnsw[2]}"
            query = f"@tp:{{{part}}}=>[KNN $k @vec $b {attrs} AS dist]"
            return await self._ft(
                client, group, "FT.SEARCH", group.index, query,
                "PARAMS", "4", "k", str(k), "b", blob,
                "SORTBY", "dist", "RETURN", str(len(_SEARCH_FIELDS) + 1), "dist",
                *_SEARCH_FIELDS, "LIMIT", "0", str(k), "DIALECT", "2",
            )

        reply = await self._run(op, indexed=group)
        now = time.time()
        hits: list[SearchHit] = []
        for row in _info_get(reply, "results") or []:
            attrs = _info_get(row, "extra_attributes") or {}
            entry = self._decode(attrs)
            dist = _info_get(attrs, "dist")
            if entry is None or dist is None or entry.expired(now):
                continue
            # COSINE distance is 1 - cosine (printed with 17 significant digits).
            hits.append(SearchHit(entry, 1.0 - float(dist)))
        hits.sort(key=lambda h: -h.similarity)
        return hits

    async def _partition_size(self, client: Redis, group: KeyGroup, part: str) -> int:
        """Vectors in a partition, from a short local cache when it was non-empty (saves a
        round trip per lookup; an empty or unknown partition is always asked afresh, so an
        entry another replica just stored is found at once)."""
        cached = self._part_sizes.get(part)
        now = time.monotonic()
        if cached is not None and now - cached[1] < _PART_SIZE_TTL:
            return cached[0]
        size = int(await client.hget(group.parts, part) or 0)
        if size > 0:
            if len(self._part_sizes) > 10_000:
                self._part_sizes.clear()
            self._part_sizes[part] = (size, now)
        else:
            self._part_sizes.pop(part, None)
        return size

    async def record_hit(self, namespace: str, key: str) -> None:
        group = self.layout.group(namespace)
        rkey = group.entry_key(namespace, key)

        async def op(client: Redis) -> None:
            await self._scripts["hit"](keys=[rkey, group.lru], args=[repr(time.time())])

        await self._run(op)

    async def delete(self, namespace: str, key: str) -> bool:
        group = self.layout.group(namespace)
        rkey = group.entry_key(namespace, key)

        async def op(client: Redis) -> int:
            return await self._drop(client, group, [rkey])

        return bool(await self._run(op))

    def _groups(self, namespace: str | None) -> tuple[KeyGroup, ...]:
        return self.layout.groups if namespace is None else (self.layout.group(namespace),)

    async def _scan(self, client: Redis, group: KeyGroup, pattern: str) -> list[str]:
        """Every key matching ``pattern`` where the group lives (one node on a cluster)."""
        kwargs: dict[str, Any] = {}
        if self.cluster:
            kwargs["target_nodes"] = await self._node_of(client, group)
        return [_s(raw) async for raw in client.scan_iter(match=pattern, count=1000, **kwargs)]

    async def clear(self, namespace: str | None = None) -> int:
        """Scan the entry keys (not the index, so this also works when the index is missing
        or was built for another dimension). Clearing everything drops the index *first*:
        deleting a hash that is still indexed also unlinks it from the HNSW graph (~ms each
        at 100k entries), and a fresh index is how a dimension mismatch is resolved."""

        async def clear_group(client: Redis, group: KeyGroup) -> int:
            if namespace is None:
                self._ready.discard(group.index)
                try:
                    await self._ft(client, group, "FT.DROPINDEX", group.index)
                except ResponseError as exc:
                    if not _no_index(exc):
                        raise
            pattern = _glob_escape(group.ns_prefix(namespace) if namespace is not None
                                   else group.entry_prefix) + "*"
            removed = 0
            keys = await self._scan(client, group, pattern)
            for i in range(0, len(keys), 500):
                removed += await self._drop(client, group, keys[i:i + 500])
            if namespace is None:
                await client.delete(*group.book_keys)
            served = _glob_escape(group.served_prefix() if namespace is None else
                                  group.served_key(namespace, "")) + "*"
            keys = await self._scan(client, group, served)
            for i in range(0, len(keys), 500):
                await client.delete(*keys[i:i + 500])
            return removed

        total = 0
        for group in self._groups(namespace):
            async def op(client: Redis, g: KeyGroup = group) -> int:
                return await clear_group(client, g)

            total += await self._run(op)
        return total

    async def list_entries(
        self, namespace: str | None = None, limit: int = 100, offset: int = 0, query: str = ""
    ) -> list[CacheEntry]:
        """Most recently used first: each group's LRU set is read a page at a time and the
        groups are merged by last access (one group on a single server)."""
        groups = self._groups(namespace)
        ns_prefix = None if namespace is None else groups[0].ns_prefix(namespace)
        needle = query.lower()
        page = 256

        async def op(client: Redis) -> list[CacheEntry]:
            heads: list[deque[tuple[float, str]]] = [deque() for _ in groups]
            starts = [0] * len(groups)
            done = [False] * len(groups)

            async def refill(i: int) -> None:
                while not heads[i] and not done[i]:
                    rows = await client.zrevrange(groups[i].lru, starts[i],
                                                  starts[i] + page - 1, withscores=True)
                    starts[i] += page
                    done[i] = len(rows) < page
                    for member, score in rows:
                        key = _s(member)
                        if ns_prefix is None or key.startswith(ns_prefix):
                            heads[i].append((float(score), key))

            out: list[CacheEntry] = []
            skipped, now = 0, time.time()
            while len(out) < limit:
                for i in range(len(groups)):
                    await refill(i)
                batch: list[str] = []
                while len(batch) < 64:
                    live = [i for i in range(len(groups)) if heads[i]]
                    if not live:
                        break
                    i = max(live, key=lambda j: heads[j][0][0])
                    batch.append(heads[i].popleft()[1])
                    if not heads[i] and not done[i]:
                        break  # refill that group before merging further
                if not batch:
                    break
                pipe = client.pipeline(transaction=False)
                for k in batch:
                    pipe.hgetall(k)
                for raw in await pipe.execute():
                    entry = self._decode(raw)
                    if entry is None or entry.expired(now):
                        continue
                    if needle and needle not in entry.question.lower():
                        continue
                    if skipped < offset:
                        skipped += 1
                        continue
                    out.append(entry)
                    if len(out) >= limit:
                        break
            return out

        return await self._run(op)

    async def stats(self, namespace: str | None = None) -> StoreStats:
        """Counted by the search index of every group (FT.AGGREGATE grouped by namespace)."""
        namespaces: dict[str, int] = {}
        entries = size = hits = vectors = 0
        for group in self.layout.groups:
            async def op(client: Redis, g: KeyGroup = group) -> Any:
                return await self._ft(
                    client, g,
                    "FT.AGGREGATE", g.index, "*", "LOAD", "4", "@ns", "@h", "@s", "@hv",
                    "TIMEOUT", "30000", "GROUPBY", "1", "@ns",
                    "REDUCE", "COUNT", "0", "AS", "n", "REDUCE", "SUM", "1", "@h", "AS", "hits",
                    "REDUCE", "SUM", "1", "@s", "AS", "bytes", "REDUCE", "SUM", "1", "@hv",
                    "AS", "vecs", "DIALECT", "2",
                )

            reply = await self._run(op, indexed=group)
            for row in _info_get(reply, "results") or []:
                f = {_s(k): _s(v) for k, v in (_info_get(row, "extra_attributes") or {}).items()}
                ns, n = f.get("ns", ""), int(float(f.get("n", "0")))
                namespaces[ns] = namespaces.get(ns, 0) + n
                if namespace is None or ns == namespace:
                    entries += n
                    hits += int(float(f.get("hits", "0")))
                    size += int(float(f.get("bytes", "0")))
                    vectors += int(float(f.get("vecs", "0")))
        return StoreStats(entries, size, hits, namespaces, self.backend, vectors, self._errors)

    async def update_feedback(
        self, namespace: str, key: str, change: FeedbackChange, *,
        created_at: float | None = None,
    ) -> EntryFeedback | None:
        group = self.layout.group(namespace)
        rkey = group.entry_key(namespace, key)

        async def op(client: Redis) -> EntryFeedback | None:
            for _ in range(_CAS_ATTEMPTS):
                known, created, expires, raw = await client.hmget(rkey, ["k", "c", "x", "fb"])
                if known is None or created is None:
                    return None
                exp = _s(expires or b"")
                if (exp and float(exp) <= time.time()) or (
                        created_at is not None and float(created) != created_at):
                    return None
                new = change(EntryFeedback.decode(raw))
                status = int(await self._scripts["feedback"](
                    keys=[rkey, *group.book_keys],
                    args=[time.time(), _s(raw or b""), new.encode() or "",
                          "1" if new.evicted else "0", _s(created)]))
                if status == -1:
                    return None
                if status > 0:
                    return new
                await asyncio.sleep(0)  # another vote won the race: read it and retry
            raise StoreError(f"feedback on {key!r}: too many concurrent votes, retry")

        return await self._run(op)

    def _served_key(self, namespace: str, response_id: str) -> str:
        return self.layout.group(namespace).served_key(namespace, response_id)

    async def remember_served(self, record: ServedRecord) -> None:
        skey = self._served_key(record.namespace, record.response_id)
        mapping: dict[str | bytes, bytes | float | int | str] = {
            "k": record.key, "q": record.question_hash, "t": record.tier,
            "s": repr(record.similarity), "c": repr(record.entry_created),
            "at": repr(record.served_at), "x": repr(record.expires_at), "v": record.vote or "",
        }

        args: list[Any] = [max(1, int(record.expires_at * 1000))]
        for field, value in mapping.items():
            args += [field, value]

        async def op(client: Redis) -> None:
            await self._scripts["served"](keys=[skey], args=args)

        await self._run(op)

    async def get_served(self, namespace: str, response_id: str) -> ServedRecord | None:
        skey = self._served_key(namespace, response_id)

        async def op(client: Redis) -> ServedRecord | None:
            f = {_s(k): _s(v) for k, v in (await client.hgetall(skey)).items()}
            if "k" not in f or float(f.get("x", "0")) <= time.time():
                return None
            return ServedRecord(response_id=response_id, namespace=namespace, key=f["k"],
                                question_hash=f.get("q", ""), tier=f.get("t", ""),
                                similarity=float(f.get("s", "0")),
                                entry_created=float(f.get("c", "0")),
                                served_at=float(f.get("at", "0")), expires_at=float(f["x"]),
                                vote=f.get("v") or None)

        return await self._run(op)

    async def set_served_vote(self, namespace: str, response_id: str, vote: str,
                              expect: str | None) -> bool:
        skey = self._served_key(namespace, response_id)

        async def op(client: Redis) -> bool:
            return bool(await self._scripts["vote"](keys=[skey], args=[vote, expect or ""]))

        return await self._run(op)

    async def try_lock(self, name: str, ttl_seconds: float) -> bool:
        token = uuid.uuid4().hex
        lock_key = f"{self.prefix}:lock:{name}"

        async def op(client: Redis) -> bool:
            ms = max(1, int(ttl_seconds * 1000))
            return bool(await client.set(lock_key, token, nx=True, px=ms))

        taken = await self._run(op)
        if taken:
            self._tokens[name] = token
        return taken

    async def unlock(self, name: str) -> None:
        token = self._tokens.pop(name, None)
        if token is None:
            return
        lock_key = f"{self.prefix}:lock:{name}"

        async def op(client: Redis) -> None:
            await self._scripts["unlock"](keys=[lock_key], args=[token])

        await self._run(op)

    async def ping(self) -> bool:
        try:
            return bool(await self._run(lambda client: client.ping()))
        except StoreError:
            return False

    async def close(self) -> None:
        await self._conn.aclose()


def _info_get(info: Any, name: str) -> Any:
    """Field of a RESP3 map reply (keys arrive as bytes)."""
    if isinstance(info, dict):
        return info.get(name.encode(), info.get(name))
    return None


def _index_dim(info: Any) -> int | None:
    for attr in _info_get(info, "attributes") or []:
        if isinstance(attr, dict) and _s(_info_get(attr, "type") or "") == "VECTOR":
            dim = _info_get(attr, "dim")
            return None if dim is None else int(dim)
    return None
