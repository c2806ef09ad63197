"""The Store contract: every implementation (memory, SQLite, Redis) passes these unchanged."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import numpy as np
import pytest

from reprise.store.base import CacheEntry, EntryFeedback, ServedRecord, unit

DIM = 8


def vec(*xs: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(xs)] = xs
    return unit(v)


def entry(key: str, q: str = "q", *, ns: str = "ns", fp: str = "fp", v: np.ndarray | None = None,
          ttl: float | None = None, body: bytes = b'{"ok":1}') -> CacheEntry:
    now = time.time()
    return CacheEntry(key=key, namespace=ns, fingerprint=fp, question=q, response=body,
                      model="m", vector=v, created_at=now,
                      expires_at=None if ttl is None else now + ttl,
                      prompt_tokens=3, completion_tokens=4)


async def test_put_get_roundtrip(store: Any) -> None:
    await store.put(entry("k1", "hello", v=vec(1, 0), body=b'{"a":"\xc3\xa9"}'))
    got = await store.get_exact("ns", "k1")
    assert got is not None
    assert got.question == "hello" and got.response == b'{"a":"\xc3\xa9"}'
    assert got.model == "m" and got.prompt_tokens == 3 and got.completion_tokens == 4
    assert got.vector is not None and np.allclose(got.vector, vec(1, 0), atol=1e-3)
    assert await store.get_exact("ns", "nope") is None
    assert await store.get_exact("other", "k1") is None


async def test_put_replaces_same_key(store: Any) -> None:
    await store.put(entry("k", "old", v=vec(1, 0), body=b"1"))
    await store.put(entry("k", "new", v=vec(0, 1), body=b"2"))
    got = await store.get_exact("ns", "k")
    assert got is not None and got.response == b"2"
    hits = await store.search("ns", "fp", vec(1, 0), 5)
    assert [h.entry.key for h in hits] == ["k"]
    assert hits[0].similarity < 0.5  # the old vector is gone from the index
    assert (await store.stats()).entries == 1


async def test_search_orders_by_similarity_and_respects_k(store: Any) -> None:
    await store.put(entry("a", v=vec(1, 0)))
    await store.put(entry("b", v=vec(1, 1)))
    await store.put(entry("c", v=vec(0, 1)))
    hits = await store.search("ns", "fp", vec(1, 0.1), 2)
    assert [h.entry.key for h in hits] == ["a", "b"]
    assert hits[0].similarity == pytest.approx(float(vec(1, 0) @ vec(1, 0.1)), abs=2e-3)
    assert hits[0].similarity >= hits[1].similarity


async def test_search_never_crosses_partitions(store: Any) -> None:
    await store.put(entry("a", ns="t1", fp="f1", v=vec(1, 0)))
    await store.put(entry("b", ns="t2", fp="f1", v=vec(1, 0)))
    await store.put(entry("c", ns="t1", fp="f2", v=vec(1, 0)))
    for ns, fp, key in [("t1", "f1", "a"), ("t2", "f1", "b"), ("t1", "f2", "c")]:
        hits = await store.search(ns, fp, vec(1, 0), 10)
        assert [h.entry.key for h in hits] == [key]
    assert await store.search("t3", "f1", vec(1, 0), 10) == []


async def test_entries_without_vector_are_exact_only(store: Any) -> None:
    await store.put(entry("a", v=None))
    assert await store.get_exact("ns", "a") is not None
    assert await store.search("ns", "fp", vec(1, 0), 5) == []


async def test_ttl_expiry_hides_and_removes(store: Any) -> None:
    await store.put(entry("short", v=vec(1, 0), ttl=1.0))
    await store.put(entry("long", v=vec(0.9, 0.1), ttl=3600))
    assert await store.get_exact("ns", "short") is not None
    await asyncio.sleep(1.3)
    assert await store.get_exact("ns", "short") is None
    keys = [h.entry.key for h in await store.search("ns", "fp", vec(1, 0), 5)]
    assert keys == ["long"]
    assert [e.key for e in await store.list_entries("ns")] == ["long"]


async def test_delete_removes_entry_and_vector(store: Any) -> None:
    await store.put(entry("a", v=vec(1, 0)))
    await store.put(entry("b", v=vec(0, 1)))
    assert await store.delete("ns", "a") is True
    assert await store.delete("ns", "a") is False
    assert await store.get_exact("ns", "a") is None
    assert [h.entry.key for h in await store.search("ns", "fp", vec(1, 0), 5)] == ["b"]


async def test_clear_per_namespace(store: Any) -> None:
    for i in range(3):
        await store.put(entry(f"a{i}", ns="t1", v=vec(1, i)))
    await store.put(entry("b", ns="t2", v=vec(1, 0)))
    assert await store.clear("t1") == 3
    assert await store.search("t1", "fp", vec(1, 0), 5) == []
    assert await store.get_exact("t2", "b") is not None
    stats = await store.stats()
    assert stats.entries == 1 and stats.namespaces == {"t2": 1}
    assert await store.clear() == 1
    assert (await store.stats()).entries == 0


async def test_hits_and_last_access(store: Any) -> None:
    await store.put(entry("a", v=vec(1, 0)))
    before = (await store.get_exact("ns", "a")).last_access
    await asyncio.sleep(0.02)
    await store.record_hit("ns", "a")
    await store.record_hit("ns", "a")
    got = await store.get_exact("ns", "a")
    assert got.hits == 2 and got.last_access > before
    assert (await store.stats("ns")).hits == 2


async def test_lru_eviction_by_bytes(store: Any) -> None:
    body = b"x" * 100_000  # ~100 KB each; the fixture's bound is 1 MiB
    for i in range(8):
        await store.put(entry(f"k{i}", v=vec(1, i), body=body))
        await asyncio.sleep(0.01)
    await store.record_hit("ns", "k0")  # k0 becomes most recently used
    for i in range(8, 14):
        await store.put(entry(f"k{i}", v=vec(1, i), body=body))
        await asyncio.sleep(0.01)
    stats = await store.stats()
    assert stats.bytes <= 1 << 20
    assert await store.get_exact("ns", "k0") is not None, "recently used entry was evicted"
    assert await store.get_exact("ns", "k1") is None, "least recently used entry survived"
    assert await store.get_exact("ns", "k13") is not None
    found = {h.entry.key for h in await store.search("ns", "fp", vec(1, 1), 20)}
    assert "k1" not in found  # evicted entries leave the index too


async def test_list_entries_filter_and_order(store: Any) -> None:
    await store.put(entry("a", "What is Redis?"))
    await asyncio.sleep(0.01)
    await store.put(entry("b", "O que é SQLite?"))
    await asyncio.sleep(0.01)
    await store.put(entry("c", "什么是缓存", ns="other"))
    assert [e.key for e in await store.list_entries("ns")] == ["b", "a"]
    assert [e.key for e in await store.list_entries(None, query="sqlite")] == ["b"]
    assert [e.key for e in await store.list_entries(None, query="缓存")] == ["c"]
    assert len(await store.list_entries(None, limit=2)) == 2


async def test_lock_is_exclusive_and_expires(store: Any) -> None:
    assert await store.try_lock("L", 1.0) is True
    assert await store.try_lock("L", 1.0) is False
    await store.unlock("L")
    assert await store.try_lock("L", 0.3) is True
    await asyncio.sleep(0.5)
    assert await store.try_lock("L", 1.0) is True  # the crashed holder's lock expired
    await store.unlock("L")


async def test_many_vectors_one_partition_stays_exact(store: Any) -> None:
    """Past the exact→HNSW switch the nearest neighbour is still found."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3000, DIM)).astype(np.float32)
    for i, v in enumerate(vectors):
        await store.put(entry(f"k{i}", v=unit(v), body=b"{}"))
    for probe in (5, 1234, 2999):
        hits = await store.search("ns", "fp", unit(vectors[probe]), 3)
        assert hits and hits[0].entry.key == f"k{probe}"
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-2)


async def test_ping(store: Any) -> None:
    assert await store.ping() is True


async def test_names_with_separators_stay_distinct(store: Any) -> None:
    """Namespaces, keys and fingerprints are free text: characters that a key layout or a
    query syntax might treat specially (``:`` ``,`` ``|`` braces, spaces) must not merge or
    leak entries."""
    await store.put(entry("b:c", ns="a", fp="sys: x | y", v=vec(1, 0)))
    await store.put(entry("c", ns="a:b", fp="sys: x", v=vec(1, 0)))
    await store.put(entry("d", ns="t,{1}", fp="f", v=vec(1, 0)))
    assert (await store.get_exact("a", "b:c")).namespace == "a"
    assert (await store.get_exact("a:b", "c")).key == "c"
    assert await store.get_exact("a", "b:c:x") is None
    assert [h.entry.key for h in await store.search("a", "sys: x | y", vec(1, 0), 5)] == ["b:c"]
    assert [h.entry.key for h in await store.search("a:b", "sys: x", vec(1, 0), 5)] == ["c"]
    assert [h.entry.key for h in await store.search("t,{1}", "f", vec(1, 0), 5)] == ["d"]
    assert await store.search("t", "f", vec(1, 0), 5) == []
    assert await store.clear("a") == 1
    assert await store.get_exact("a:b", "c") is not None


# -- feedback (users' votes) and served-response records ------------------------------------


def _up(fb: EntryFeedback) -> EntryFeedback:
    return dataclasses.replace(fb, up=fb.up + 1)


def _block(digest: str, bar: float) -> Any:
    def change(fb: EntryFeedback) -> EntryFeedback:
        return dataclasses.replace(fb, down=fb.down + 1, blocked=(*fb.blocked, digest), bar=bar)
    return change


async def test_feedback_is_stored_with_the_entry(store: Any) -> None:
    await store.put(entry("a", "hello", v=vec(1, 0)))
    got = await store.get_exact("ns", "a")
    assert got.feedback == EntryFeedback()
    new = await store.update_feedback("ns", "a", _block("0123456789abcdef", 0.9))
    assert new.blocked == ("0123456789abcdef",) and new.down == 1
    await store.update_feedback("ns", "a", _up)
    want = EntryFeedback(up=1, down=1, bar=0.9, blocked=("0123456789abcdef",))
    assert (await store.get_exact("ns", "a")).feedback == want
    # Candidates of the semantic tier carry it (their votes decide whether they are served).
    hits = await store.search("ns", "fp", vec(1, 0), 5)
    assert [h.entry.feedback for h in hits] == [want]
    assert (await store.list_entries("ns"))[0].feedback == want
    await store.record_hit("ns", "a")  # other writes keep it
    assert (await store.get_exact("ns", "a")).feedback == want


async def test_feedback_on_a_missing_or_replaced_entry_changes_nothing(store: Any) -> None:
    assert await store.update_feedback("ns", "nope", _up) is None
    await store.put(entry("a", v=vec(1, 0)))
    version = (await store.get_exact("ns", "a")).created_at
    assert (await store.update_feedback("ns", "a", _up, created_at=version)).up == 1
    await asyncio.sleep(0.01)
    await store.put(entry("a", v=vec(1, 0), body=b'{"fresh":1}'))  # a new answer, same key
    # A vote on the old answer must not judge the new one; the new one starts clean.
    assert await store.update_feedback("ns", "a", _up, created_at=version) is None
    assert (await store.get_exact("ns", "a")).feedback == EntryFeedback()
    assert await store.update_feedback("other", "a", _up) is None


async def test_evicting_vote_deletes_the_entry_and_its_vector(store: Any) -> None:
    await store.put(entry("a", v=vec(1, 0)))
    await store.put(entry("b", v=vec(0.9, 0.1)))
    before = (await store.stats()).bytes
    new = await store.update_feedback(
        "ns", "a", lambda fb: dataclasses.replace(fb, down=fb.down + 1, bad=True, evicted=True))
    assert new is not None and new.evicted
    assert await store.get_exact("ns", "a") is None
    assert [h.entry.key for h in await store.search("ns", "fp", vec(1, 0), 5)] == ["b"]
    stats = await store.stats()
    assert stats.entries == 1 and stats.bytes < before
    assert await store.update_feedback("ns", "a", _up) is None


async def test_concurrent_votes_are_all_counted(store: Any) -> None:
    await store.put(entry("a", v=vec(1, 0)))
    results = await asyncio.gather(*(store.update_feedback("ns", "a", _up) for _ in range(25)))
    assert all(r is not None for r in results)
    assert (await store.get_exact("ns", "a")).feedback.up == 25
    assert sorted(r.up for r in results) == list(range(1, 26))  # each saw the one before


def served(rid: str, ns: str = "ns", key: str = "k", ttl: float = 60.0) -> ServedRecord:
    now = time.time()
    return ServedRecord(response_id=rid, namespace=ns, key=key, question_hash="ab" * 8,
                        tier="semantic", similarity=0.912345, entry_created=now - 5.25,
                        served_at=now, expires_at=now + ttl)


async def test_served_records_roundtrip_per_namespace(store: Any) -> None:
    rec = served("chatcmpl-1", key="b:c")
    await store.remember_served(rec)
    got = await store.get_served("ns", "chatcmpl-1")
    assert got == rec
    assert await store.get_served("other", "chatcmpl-1") is None  # never across tenants
    assert await store.get_served("ns", "chatcmpl-2") is None
    await store.remember_served(dataclasses.replace(rec, key="d"))  # same id: replaced
    assert (await store.get_served("ns", "chatcmpl-1")).key == "d"
    await store.remember_served(served("chatcmpl-1", ns="ns:x", key="other"))
    assert (await store.get_served("ns", "chatcmpl-1")).key == "d"
    assert (await store.get_served("ns:x", "chatcmpl-1")).key == "other"


async def test_served_records_expire(store: Any) -> None:
    await store.remember_served(served("short", ttl=0.5))
    await store.remember_served(served("long", ttl=60))
    assert await store.get_served("ns", "short") is not None
    await asyncio.sleep(0.7)
    assert await store.get_served("ns", "short") is None
    assert await store.set_served_vote("ns", "short", "down", None) is False
    assert await store.get_served("ns", "long") is not None


async def test_served_vote_is_compare_and_set(store: Any) -> None:
    await store.remember_served(served("r"))
    assert await store.set_served_vote("ns", "r", "up", None) is True
    assert await store.set_served_vote("ns", "r", "down", None) is False  # someone was first
    assert (await store.get_served("ns", "r")).vote == "up"
    assert await store.set_served_vote("ns", "r", "down", "up") is True
    assert (await store.get_served("ns", "r")).vote == "down"
    assert await store.set_served_vote("other", "r", "up", None) is False
    assert await store.set_served_vote("ns", "missing", "up", None) is False
    await store.remember_served(served("race"))
    won = await asyncio.gather(*(store.set_served_vote("ns", "race", "down", None)
                                 for _ in range(10)))
    assert sum(won) == 1


async def test_clear_forgets_served_records(store: Any) -> None:
    await store.remember_served(served("a", ns="t1"))
    await store.remember_served(served("b", ns="t2"))
    await store.clear("t1")
    assert await store.get_served("t1", "a") is None
    assert await store.get_served("t2", "b") is not None
    await store.clear()
    assert await store.get_served("t2", "b") is None
