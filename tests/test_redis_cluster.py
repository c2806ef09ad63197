"""The shared cache on a real Redis Cluster (3 primaries + 3 replicas on loopback).

The store contract, the chunk-index and catalog contracts already run on the session
cluster (``redis-cluster`` parameters); these tests cover what only a cluster has: keys of
a group on one slot, the search index on the shard that owns it, cluster detection, the
start-up refusals, the gateway, rate limits and single-flight on a cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from redis.crc import key_slot

from fixtures_redis import start_cluster_or_skip
from reprise.api.limits import RedisLimiter
from reprise.config import Settings
from reprise.services.redis_cluster import LocalCluster
from reprise.store.base import CacheEntry, StoreError, unit
from reprise.store.factory import make_store
from reprise.store.redis import RedisStore
from reprise.store.redis_conn import is_cluster
from reprise.store.redis_layout import SLOTS, Layout
from tests_support.gateway import ask, running_gateway

pytestmark = pytest.mark.redis

DIM = 8


def vec(*xs: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(xs)] = xs
    return unit(v)


def entry(key: str, ns: str, v: np.ndarray | None = None, body: bytes = b"{}") -> CacheEntry:
    now = time.time()
    return CacheEntry(key=key, namespace=ns, fingerprint="fp", question="q", response=body,
                      model="m", vector=v, created_at=now, expires_at=now + 600)


def node_keys(cluster: LocalCluster, pattern: str) -> dict[int, list[str]]:
    """Keys matching ``pattern`` on each running primary (by port)."""
    out: dict[int, list[str]] = {}
    for node in cluster.primary_nodes():
        client = cluster.node_client(node)
        try:
            out[node.port] = sorted(k.decode() for k in client.scan_iter(match=pattern))
        finally:
            client.close()
    return out


def test_group_tags_spread_over_the_slots() -> None:
    layout = Layout("reprise", 16 << 20, cluster=True, groups=16)
    slots = [key_slot(g.index.encode()) for g in layout.groups]
    # One group per 1/16 of the slot space: equal numbers of groups per primary when the
    # primaries hold equal contiguous ranges (what `redis-cli --cluster create` does).
    assert [s * 16 // SLOTS for s in slots] == list(range(16))
    for g in layout.groups:
        assert g.max_bytes == 1 << 20  # each group's share of the bound
        slot = key_slot(g.index.encode())
        for name in (*g.book_keys, g.entry_key("ns", "k"), g.served_key("ns", "r")):
            assert key_slot(name.encode()) == slot
    # The single-server layout is the historical one (existing caches keep their keys).
    single = Layout("reprise", 1 << 20, cluster=False, groups=16)
    assert [g.base for g in single.groups] == ["reprise"]
    assert single.group("x").entry_key("ns", "k") == "reprise:e:2:ns:k"


def test_braces_cannot_move_keys_between_slots() -> None:
    """A namespace never forms the tag (it follows it); a prefix with braces would, and is
    refused at start."""
    layout = Layout("reprise", 1 << 20, cluster=True, groups=16)
    for ns in ("{evil}", "a}{b", "{", "}{", "{g0.43}"):
        group = layout.group(ns)
        slot = key_slot(group.index.encode())
        assert key_slot(group.entry_key(ns, "{k}").encode()) == slot
        assert key_slot(group.served_key(ns, "{r}").encode()) == slot
    with pytest.raises(StoreError, match="brace"):
        RedisStore("redis+cluster://127.0.0.1:1", DIM, prefix="re{pri}se")
    with pytest.raises(StoreError, match="GROUPS"):
        RedisStore("redis+cluster://127.0.0.1:1", DIM, groups=0)


def test_cluster_is_detected_from_a_plain_url(redis_cluster: LocalCluster,
                                              redis_url: str) -> None:
    plain = redis_cluster.url.replace("redis+cluster://", "redis://")
    assert is_cluster(redis_cluster.url) and is_cluster(plain)
    assert not is_cluster(redis_url)  # the single session server
    store = make_store(Settings(store="redis", redis_url=plain,
                                redis_prefix=f"d{uuid.uuid4().hex[:6]}"), DIM)
    assert isinstance(store, RedisStore) and store.cluster


async def test_a_group_lives_on_one_shard_with_its_index(redis_cluster: LocalCluster) -> None:
    prefix = f"s{uuid.uuid4().hex[:6]}"
    store = RedisStore(redis_cluster.url, DIM, 1 << 24, prefix=prefix, groups=16)
    try:
        namespaces = [f"tenant-{i}" for i in range(40)]
        for i, ns in enumerate(namespaces):
            await store.put(entry(f"k{i}", ns, vec(1, i)))
        keys = node_keys(redis_cluster, f"{prefix}:*:e:*")
        assert sum(len(v) for v in keys.values()) == 40
        assert sum(1 for v in keys.values() if v) == 3  # the groups spread over all shards
        for ns in namespaces:
            group = store.layout.group(ns)
            owner = redis_cluster.owner_of(key_slot(group.index.encode()))
            assert group.entry_key(ns, f"k{namespaces.index(ns)}") in keys[owner.port]
            # The index of that group exists on that shard (no coordinator involved).
            client = redis_cluster.node_client(owner)
            try:
                assert group.index.encode() in client.execute_command("FT._LIST")
            finally:
                client.close()
        for i, ns in enumerate(namespaces):
            hits = await store.search(ns, "fp", vec(1, i), 3)
            assert [h.entry.key for h in hits] == [f"k{i}"]  # never another tenant's
        stats = await store.stats()
        assert stats.entries == 40 and len(stats.namespaces) == 40
        listed = await store.list_entries(None, limit=100)
        assert [e.key for e in listed] == [f"k{i}" for i in reversed(range(40))]
    finally:
        await store.clear()
        await store.close()


async def test_byte_bound_is_per_group(redis_cluster: LocalCluster) -> None:
    """Each group evicts its own least recently used entries past its share of the bound:
    a full group never evicts another group's entries."""
    prefix = f"b{uuid.uuid4().hex[:6]}"
    store = RedisStore(redis_cluster.url, DIM, 4 * 300_000, prefix=prefix, groups=4)
    try:
        groups = {store.layout.group(f"ns{i}").base: f"ns{i}" for i in range(40)}
        big, small = list(groups.values())[:2]
        await store.put(entry("keep", small, vec(1, 0), body=b"x" * 100_000))
        for i in range(6):
            await store.put(entry(f"k{i}", big, vec(1, i), body=b"x" * 100_000))
        assert await store.get_exact(small, "keep") is not None
        assert await store.get_exact(big, "k0") is None  # evicted in its own group
        assert await store.get_exact(big, "k5") is not None
        assert (await store.stats(big)).bytes <= 300_000
    finally:
        await store.clear()
        await store.close()


async def test_start_up_refuses_a_cluster_without_search(tmp_path: Path) -> None:
    from fixtures_redis import CACHE_DIR
    from reprise.services.redis_stack import RedisStackUnavailable, ensure_installed

    try:
        install = dataclasses.replace(ensure_installed(CACHE_DIR), modules=())
    except RedisStackUnavailable as exc:  # pragma: no cover - depends on the machine
        pytest.skip(str(exc))
    cluster = LocalCluster(install, tmp_path / "bare", primaries=3, replicas=0).start()
    with cluster:
        settings = Settings(store="redis", redis_url=cluster.url)
        with pytest.raises(StoreError) as err:
            make_store(settings, DIM)
        message = str(err.value)
        assert "no search module" in message
        assert any(f"127.0.0.1:{n.port}" in message for n in cluster.nodes)


def test_gateway_on_the_cluster(redis_cluster: LocalCluster, fake_upstream: Any,
                                use_embedder: Any, tmp_path: Path) -> None:
    """Miss, exact hit and semantic hit through the real gateway on the cluster, for
    tenants whose groups live on different shards."""
    url, _ = fake_upstream
    tag = uuid.uuid4().hex[:6]
    with running_gateway(url, tmp_path, embedder=use_embedder, store="redis",
                         redis_url=redis_cluster.url, redis_prefix=f"g{tag}") as (base, comp):
        layout = comp.cache.store.layout
        tenants: dict[int, str] = {}
        for i in range(200):
            ns = f"t{i}-{tag}"
            owner = redis_cluster.owner_of(key_slot(layout.group(ns).index.encode())).port
            tenants.setdefault(owner, ns)
        assert len(tenants) == 3
        with httpx.Client(base_url=base, timeout=60) as c:
            for ns in tenants.values():
                h = {"X-Reprise-Namespace": ns}
                q = f"How do I rotate the signing key of service {ns}?"
                first = ask(c, q, headers=h)
                assert first.headers["x-reprise-cache"] == "miss"
                again = ask(c, q, headers=h)
                assert again.headers["x-reprise-cache"] == "exact"
                near = ask(c, q.lower().rstrip("?"), headers=h)
                assert near.headers["x-reprise-cache"] == "semantic"
                text = first.json()["choices"][0]["message"]["content"]
                assert again.json()["choices"][0]["message"]["content"] == text
                assert near.json()["choices"][0]["message"]["content"] == text
            other = ask(c, f"How do I rotate the signing key of service {tenants[min(tenants)]}?",
                        headers={"X-Reprise-Namespace": f"nobody-{tag}"})
            assert other.headers["x-reprise-cache"] == "miss"  # never across tenants


async def test_single_flight_lock_and_limits_on_the_cluster(redis_cluster: LocalCluster) -> None:
    prefix = f"l{uuid.uuid4().hex[:6]}"
    a = RedisStore(redis_cluster.url, DIM, prefix=prefix)
    b = RedisStore(redis_cluster.url, DIM, prefix=prefix)
    try:
        names = [f"lock-{i}" for i in range(30)]  # spread over every shard
        assert all(await asyncio.gather(*(a.try_lock(n, 5.0) for n in names)))
        assert not any(await asyncio.gather(*(b.try_lock(n, 5.0) for n in names)))
        for n in names:
            await a.unlock(n)
        assert all(await asyncio.gather(*(b.try_lock(n, 5.0) for n in names)))
    finally:
        await a.close()
        await b.close()
    limiter = RedisLimiter(redis_cluster.url, prefix)
    other = RedisLimiter(redis_cluster.url.replace("redis+cluster://", "redis://"), prefix,
                         cluster=True)
    try:
        for who in ("k1", "k2", "k3"):
            assert await limiter.acquire(who, 2, 0, 0) == 0.0
            assert await other.acquire(who, 2, 0, 0) == 0.0  # one shared bucket
            assert 25.0 <= await limiter.acquire(who, 2, 0, 0) <= 30.0
        assert limiter.errors == 0 and other.errors == 0
    finally:
        await limiter.aclose()
        await other.aclose()


async def test_a_stale_slot_map_is_retried_once(tmp_path: Path) -> None:
    """A command sent with a slot map that no longer holds (the slot moved) meets MOVED;
    the store retries it once on the new owner instead of failing the lookup."""
    cluster = start_cluster_or_skip(primaries=3, replicas=0)
    with cluster:
        prefix = f"m{uuid.uuid4().hex[:6]}"
        store = RedisStore(cluster.url, DIM, 1 << 24, prefix=prefix, groups=16)
        try:
            ns = "moving"
            await store.put(entry("a", ns, vec(1, 0)))
            group = store.layout.group(ns)
            slot = key_slot(group.index.encode())
            source = cluster.owner_of(slot)
            target = next(n for n in cluster.primary_nodes() if n.port != source.port)
            await asyncio.to_thread(_move_slot, cluster, slot, source, target)
            errors = store._errors
            got = await store.get_exact(ns, "a")  # the client still points at `source`
            assert got is not None and got.key == "a"
            hits = await store.search(ns, "fp", vec(1, 0), 3)
            assert [h.entry.key for h in hits] == ["a"]  # the index is rebuilt on `target`
            assert store._errors == errors
        finally:
            await store.clear()
            await store.close()


def _move_slot(cluster: LocalCluster, slot: int, source: Any, target: Any) -> None:
    """Move one slot by hand, the steps `redis-cli --cluster reshard` takes for each slot."""
    src, dst = cluster.node_client(source), cluster.node_client(target)
    try:
        src_id, dst_id = cluster.node_id(source), cluster.node_id(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                                "KEYS", *keys)
        for node in cluster.primary_nodes():
            c = cluster.node_client(node)
            try:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            except redis.ResponseError:
                pass
            finally:
                c.close()
    finally:
        src.close()
        dst.close()
    cluster.wait_ok()


async def test_a_shard_without_primary_fails_open_and_the_others_serve() -> None:
    """A shard with no replica to promote: its groups' commands keep failing (connection
    refused, then slots not served), are retried once and surface as ``StoreError``, which
    the cache fails open on — quickly, not after a long hang — while groups on the other
    shards work as before."""
    cluster = start_cluster_or_skip(primaries=3, replicas=0)
    with cluster:
        store = RedisStore(cluster.url, DIM, 1 << 24, prefix=f"o{uuid.uuid4().hex[:6]}",
                           groups=16)
        try:
            by_owner: dict[int, str] = {}
            for i in range(200):
                ns = f"t{i}"
                slot = key_slot(store.layout.group(ns).index.encode())
                by_owner.setdefault(cluster.owner_of(slot).port, ns)
            assert len(by_owner) == 3
            for ns in by_owner.values():
                await store.put(entry("a", ns, vec(1, 0)))
            dead_port, dead_ns = next(iter(by_owner.items()))
            cluster.kill(next(n for n in cluster.nodes if n.port == dead_port))
            for _ in range(3):
                t = time.monotonic()
                with pytest.raises(StoreError):
                    await store.get_exact(dead_ns, "a")
                with pytest.raises(StoreError):
                    await store.search(dead_ns, "fp", vec(1, 0), 3)
                assert time.monotonic() - t < 10.0
            for port, ns in by_owner.items():
                if port == dead_port:
                    continue
                assert (await store.get_exact(ns, "a")) is not None
                assert [h.entry.key for h in await store.search(ns, "fp", vec(1, 0), 3)] \
                    == ["a"]
                await store.put(entry("b", ns, vec(0, 1)))
                assert (await store.get_exact(ns, "b")) is not None
        finally:
            await store.close()
