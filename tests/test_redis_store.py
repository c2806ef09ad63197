"""Redis-specific behaviour of ``RedisStore`` against a real Redis Stack server.

The shared contract lives in ``test_store_contract.py``; this file covers what only a
network store has: index lifecycle, cross-replica locks and visibility, outages.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from fixtures_redis import CACHE_DIR, start_or_skip
from reprise.services.redis_stack import (
    RedisServer,
    RedisStackUnavailable,
    TlsFiles,
    free_port,
    server_for_url,
    start_server,
)
from reprise.store.base import CacheEntry, DimensionMismatch, StoreError, unit
from reprise.store.redis import RedisStore

pytestmark = pytest.mark.redis
DIM = 8


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal(dim))


def entry(key: str, seed: int, ns: str = "t", fp: str = "fp", **kw: object) -> CacheEntry:
    return CacheEntry(key=key, namespace=ns, fingerprint=fp, question=f"q {key}",
                      response=b'{"answer": "' + key.encode() + b'"}', vector=vec(seed), **kw)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, DIM, 1 << 20, prefix=prefix)
    yield s
    await s.clear()
    await s.close()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server this test may stop, restart and flush without disturbing others."""
    server = start_or_skip(tmp_path / "redis")
    with server:
        yield server


async def test_round_trip_and_replica_visibility(store: RedisStore, redis_url: str,
                                                 prefix: str) -> None:
    await store.put(entry("a", 1))
    other = RedisStore(redis_url, DIM, 1 << 20, prefix=prefix)  # a second gateway replica
    try:
        got = await other.get_exact("t", "a")
        assert got is not None and got.response == b'{"answer": "a"}'
        assert got.vector is not None and np.allclose(got.vector, vec(1))
        hits = await other.search("t", "fp", vec(1), 3)
        assert [h.entry.key for h in hits] == ["a"]
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    finally:
        await other.close()


async def test_namespace_and_key_with_separators_do_not_collide(store: RedisStore) -> None:
    await store.put(entry("b:c", 1, ns="a"))
    await store.put(entry("c", 2, ns="a:b"))
    first = await store.get_exact("a", "b:c")
    second = await store.get_exact("a:b", "c")
    assert first is not None and first.namespace == "a" and first.key == "b:c"
    assert second is not None and second.namespace == "a:b" and second.key == "c"
    assert await store.clear("a") == 1
    assert await store.get_exact("a:b", "c") is not None


async def test_partition_with_tag_special_characters(store: RedisStore) -> None:
    """Namespaces/fingerprints are free text; the TAG filter must still isolate them."""
    await store.put(entry("x", 1, ns="team-a,b {x}", fp="sys: you | are"))
    await store.put(entry("y", 1, ns="team-a", fp="sys: you"))
    hits = await store.search("team-a,b {x}", "sys: you | are", vec(1), 5)
    assert [h.entry.key for h in hits] == ["x"]


async def test_dimension_mismatch_is_a_clear_error(store: RedisStore, redis_url: str,
                                                   prefix: str) -> None:
    await store.put(entry("a", 1))
    wrong = RedisStore(redis_url, DIM * 2, 1 << 20, prefix=prefix)
    try:
        with pytest.raises(DimensionMismatch, match=f"{DIM}-dim"):
            await wrong.search("t", "fp", vec(1, DIM * 2), 1)
        # Clearing everything drops the old index, so the new dimension can take over.
        await wrong.clear()
        await wrong.put(CacheEntry(key="b", namespace="t", fingerprint="fp", question="q",
                                   response=b"{}", vector=vec(2, DIM * 2)))
        assert [h.entry.key for h in await wrong.search("t", "fp", vec(2, DIM * 2), 1)] == ["b"]
    finally:
        await wrong.clear()
        await wrong.close()


async def test_index_recreated_after_flushall(own_server: RedisServer) -> None:
    s = RedisStore(own_server.url, DIM, 1 << 20)
    try:
        await s.put(entry("a", 1))
        assert len(await s.search("t", "fp", vec(1), 1)) == 1
        redis.Redis.from_url(own_server.url).flushall()
        assert await s.search("t", "fp", vec(1), 1) == []  # recreated, empty, no error
        await s.put(entry("b", 2))
        assert [h.entry.key for h in await s.search("t", "fp", vec(2), 1)] == ["b"]
    finally:
        await s.close()


async def test_entries_written_while_index_missing_are_found(own_server: RedisServer) -> None:
    s = RedisStore(own_server.url, DIM, 1 << 20)
    try:
        await s.put(entry("a", 1))
        redis.Redis.from_url(own_server.url).execute_command("FT.DROPINDEX", "reprise:idx")
        await s.put(entry("b", 2))  # store still believes the index exists
        assert [h.entry.key for h in await s.search("t", "fp", vec(2), 1)] == ["b"]
    finally:
        await s.close()


async def test_store_error_while_down_and_recovery_after_restart(own_server: RedisServer) -> None:
    s = RedisStore(own_server.url, DIM, 1 << 20, connect_timeout=0.5, socket_timeout=0.5)
    try:
        await s.put(entry("a", 1))
        own_server.stop()
        assert await s.ping() is False
        for call in (s.put(entry("b", 2)), s.get_exact("t", "a"),
                     s.search("t", "fp", vec(1), 1), s.try_lock("x", 1.0), s.stats()):
            with pytest.raises(StoreError):
                await call
        own_server.restart()  # same port, comes back empty
        assert await s.ping() is True
        assert await s.get_exact("t", "a") is None
        await s.put(entry("c", 3))
        assert [h.entry.key for h in await s.search("t", "fp", vec(3), 1)] == ["c"]
        assert (await s.stats()).entries == 1
        assert (await s.stats()).errors >= 5
    finally:
        await s.close()


async def test_lock_is_exclusive_across_replicas_and_expires(store: RedisStore, redis_url: str,
                                                             prefix: str) -> None:
    other = RedisStore(redis_url, DIM, 1 << 20, prefix=prefix)
    try:
        assert await store.try_lock("q1", 0.3) is True
        assert await other.try_lock("q1", 0.3) is False
        await other.unlock("q1")  # not the holder: must not release it
        assert await other.try_lock("q1", 0.3) is False
        await asyncio.sleep(0.5)  # the holder "crashed": its lock expires by itself
        assert await other.try_lock("q1", 5.0) is True
        await store.unlock("q1")  # stale token of the expired lock: must not release other's
        assert await store.try_lock("q1", 5.0) is False
        await other.unlock("q1")
        assert await store.try_lock("q1", 5.0) is True
        await store.unlock("q1")
    finally:
        await other.close()


async def test_ttl_expiry_frees_bytes(store: RedisStore) -> None:
    await store.put(entry("short", 1, expires_at=time.time() + 0.3))
    await store.put(entry("long", 2))
    assert await store.get_exact("t", "short") is not None
    await asyncio.sleep(0.5)
    assert await store.get_exact("t", "short") is None
    assert [h.entry.key for h in await store.search("t", "fp", vec(1), 5)] == ["long"]
    await store.put(entry("more", 3))  # a write sweeps the expired entry's bookkeeping
    stats = await store.stats()
    assert stats.entries == 2
    total = int(redis.Redis.from_url(store.url).get(f"{store.prefix}:bytes") or 0)
    assert total == stats.bytes


async def test_lru_eviction_keeps_recently_hit(redis_url: str, prefix: str) -> None:
    one = entry("k0", 0).size_bytes
    s = RedisStore(redis_url, DIM, max_bytes=3 * one + one // 2, prefix=prefix)
    try:
        for i in range(3):
            await s.put(entry(f"k{i}", i))
        await s.record_hit("t", "k0")
        await s.put(entry("k3", 3))  # over the bound: the least recently used (k1) goes
        assert await s.get_exact("t", "k1") is None
        for key in ("k0", "k2", "k3"):
            assert await s.get_exact("t", key) is not None
        k0 = await s.get_exact("t", "k0")
        assert k0 is not None and k0.hits == 1
        stats = await s.stats()
        assert stats.entries == 3 and stats.bytes <= s.max_bytes
        assert (await s.list_entries())[0].key == "k3"
    finally:
        await s.clear()
        await s.close()


async def test_large_partition_uses_graph_and_counts_stay_exact(redis_url: str,
                                                                prefix: str) -> None:
    """Past ``exact_below`` the filtered HNSW path must still find the nearest neighbour and
    stay inside the partition; the per-partition counts follow deletes and clears."""
    s = RedisStore(redis_url, DIM, 1 << 24, prefix=prefix, exact_below=50)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for i in range(300):
            await s.put(entry(f"k{i}", i))
        await s.put(entry("near-twin", 7, fp="other"))  # same vector, other partition
        for probe in (0, 7, 299):
            hits = await s.search("t", "fp", vec(probe), 3)
            assert hits[0].entry.key == f"k{probe}" and len(hits) == 3
            assert all(h.entry.fingerprint == "fp" for h in hits)
        counts = r.hgetall(f"{prefix}:parts")
        assert sorted(int(v) for v in counts.values()) == [1, 300]
        await s.delete("t", "k7")
        assert [h.entry.key for h in await s.search("t", "fp", vec(7), 1)] != ["k7"]
        assert sorted(int(v) for v in r.hgetall(f"{prefix}:parts").values()) == [1, 299]
        assert await s.clear("t") == 300
        assert r.hgetall(f"{prefix}:parts") == {}
        assert int(r.get(f"{prefix}:bytes") or 0) == 0
    finally:
        r.close()
        await s.clear()
        await s.close()


async def test_password_url_and_wrong_password(tmp_path: Path) -> None:
    """A ``redis://:password@host:port/0`` URL (users bringing their own server) works; a
    wrong password is a store error (fail open), not a crash."""
    try:
        server = start_server(CACHE_DIR, data_dir=tmp_path / "redis", password="s3cr:t/")
    except RedisStackUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        assert ":s3cr%3At%2F@" in server.url
        s = RedisStore(server.url, DIM, 1 << 20)
        bad = RedisStore(server.url.replace("s3cr%3At%2F", "nope"), DIM, 1 << 20)
        try:
            await s.put(entry("a", 1))
            assert [h.entry.key for h in await s.search("t", "fp", vec(1), 1)] == ["a"]
            with pytest.raises(StoreError):
                await bad.get_exact("t", "a")
            assert await bad.ping() is False
        finally:
            await s.close()
            await bad.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return TlsFiles(cert, key, cert)


async def test_tls_url(tmp_path: Path, tls_files: TlsFiles) -> None:
    """``rediss://`` (TLS, server certificate verified against a CA file) works end to end."""
    try:
        server = start_server(CACHE_DIR, data_dir=tmp_path / "redis", tls=tls_files)
    except RedisStackUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        assert server.url.startswith("rediss://")
        s = RedisStore(server.url, DIM, 1 << 20)
        plain = RedisStore(server.url.replace("rediss://", "redis://").split("?")[0], DIM,
                           1 << 20, connect_timeout=0.5, socket_timeout=0.5)
        try:
            await s.put(entry("a", 1))
            assert [h.entry.key for h in await s.search("t", "fp", vec(1), 1)] == ["a"]
            assert await plain.ping() is False  # the port speaks TLS only
        finally:
            await s.close()
            await plain.close()


def test_db_other_than_zero_is_refused_with_a_clear_error(redis_url: str) -> None:
    with pytest.raises(StoreError, match="db 0"):
        RedisStore(redis_url.rsplit("/", 1)[0] + "/2", DIM)


def test_server_for_url_starts_persistent_server_once(tmp_path: Path) -> None:
    """What ``reprise up --store redis`` does: start the project's Redis Stack on the URL's
    own port with AOF when nothing answers there, reuse whatever answers otherwise."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        server = server_for_url(url, CACHE_DIR, tmp_path / "redis")
    except RedisStackUnavailable as exc:
        pytest.skip(str(exc))
    assert server is not None
    with server:
        assert server.url == url and server.appendonly
        r = redis.Redis.from_url(url)
        try:
            r.set("reprise-probe", "1")
            assert server_for_url(url, CACHE_DIR, tmp_path / "other") is None  # reused
            server.restart()
            assert r.get("reprise-probe") == b"1", "AOF kept the data over a restart"
        finally:
            r.close()
    with pytest.raises(RedisStackUnavailable, match="no Redis answers"):
        server_for_url(f"rediss://127.0.0.1:{free_port()}/0", CACHE_DIR, tmp_path / "x")
