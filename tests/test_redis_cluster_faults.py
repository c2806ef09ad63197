"""Faults of a real Redis Cluster under load: a primary killed, slots resharded.

Each test starts its own cluster (3 primaries + 3 replicas on loopback, from the Redis Stack
binaries) because it damages it. The gateway runs in-process with the real USE embedder;
the upstream is the controllable fake model server.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from redis.crc import key_slot

from fixtures_redis import start_cluster_or_skip
from reprise.services.redis_cluster import LocalCluster
from reprise.store.base import CacheEntry, StoreError, unit
from reprise.store.redis import RedisStore
from tests_support.gateway import running_gateway

pytestmark = pytest.mark.redis

DIM = 8
# Seconds after the cluster is whole by which the gateway's cluster client has refreshed
# its slot map and stores again (its error-triggered refreshes are at least 0.25 s apart).
RECOVERY_S = 3.0


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    cluster = start_cluster_or_skip(primaries=3, replicas=1)
    with cluster:
        yield cluster


@dataclass
class Outcome:
    index: int
    phase: str  # up | down (primary dead, no replica promoted yet) | back
    status: int
    tier: str
    text: str


def question(tag: str, i: int) -> str:
    return f"How do I rotate the signing key of service {tag}-{i}?"


async def _load_through_failover(base: str, cluster: LocalCluster, victim: Any, tag: str,
                                 headers: dict[str, str]) -> tuple[list[Outcome], float]:
    """Distinct questions, 3 at a time: kill ``victim`` after 30 answers, keep going until
    20 were sent after every slot has a running primary again. Returns the outcomes and the
    seconds from the kill to the cluster being whole again."""
    outcomes: list[Outcome] = []
    counter = itertools.count()
    phase = {"now": "up"}
    timing: dict[str, float] = {}
    thirty = asyncio.Event()

    def enough() -> bool:
        # 20 answers sent after the cluster was whole, over at least RECOVERY_S: the
        # client learns the new slot map at its next topology refresh (paced, see
        # RedisStore), and answers asked before that fail open, unstored.
        back = sum(o.phase == "back" for o in outcomes)
        return back >= 20 and time.monotonic() - timing.get("ok", time.monotonic()) \
            >= RECOVERY_S

    async def worker(client: httpx.AsyncClient) -> None:
        while not enough() and len(outcomes) < 5000:
            i = next(counter)
            sent_in = phase["now"]
            body = {"model": "fake-model",
                    "messages": [{"role": "user", "content": question(tag, i)}]}
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
            text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else ""
            outcomes.append(Outcome(i, sent_in, r.status_code,
                                    r.headers.get("x-reprise-cache", ""), text))
            if len(outcomes) >= 30:
                thirty.set()
            if sent_in == "down":
                await asyncio.sleep(0.02)  # keep the outage phase to a bounded count

    async def chaos() -> None:
        await thirty.wait()
        timing["kill"] = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)
        phase["now"] = "down"
        await asyncio.to_thread(cluster.wait_ok, 90.0)
        timing["ok"] = time.monotonic()
        phase["now"] = "back"

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        # A task group: if one part fails, the others are cancelled, not left running.
        async with asyncio.TaskGroup() as tg:
            tg.create_task(chaos())
            for _ in range(3):
                tg.create_task(worker(client))
    return outcomes, timing["ok"] - timing["kill"]


def test_primary_killed_under_load_fails_open_and_recovers(
        own_cluster: LocalCluster, fake_upstream: Any, use_embedder: Any,
        tmp_path: Path) -> None:
    url, _ = fake_upstream
    tag = uuid.uuid4().hex[:6]
    ns = f"failover-{tag}"
    h = {"X-Reprise-Namespace": ns}
    with running_gateway(url, tmp_path / "gw", embedder=use_embedder, store="redis",
                         redis_url=own_cluster.url, redis_prefix=f"f{tag}",
                         single_flight_lock_seconds=5.0) as (base, comp):
        group = comp.cache.store.layout.group(ns)
        victim = own_cluster.owner_of(key_slot(group.index.encode()))
        outcomes, failover_s = asyncio.run(
            _load_through_failover(base, own_cluster, victim, tag, h))

        # 1. No request failed, before, during or after the failover.
        failed = [o for o in outcomes if o.status != 200 or not o.text.startswith("Answer #")]
        assert failed == [], f"requests failed: {failed[:3]}"
        phases = {p: sum(o.phase == p for o in outcomes) for p in ("up", "down", "back")}
        assert phases["up"] >= 30 and phases["down"] >= 1 and phases["back"] >= 20, phases
        assert failover_s < 30, f"failover took {failover_s:.1f}s"
        print(f"failover: {phases}, cluster whole again after {failover_s:.1f}s")
        # The replica of the killed primary now owns the group's slot.
        new_owner = own_cluster.owner_of(key_slot(group.index.encode()))
        assert new_owner.port != victim.port and new_owner.running

        with httpx.Client(base_url=base, timeout=30) as client:
            def again(o: Outcome) -> httpx.Response:
                return client.post("/v1/chat/completions", headers=h, json={
                    "model": "fake-model",
                    "messages": [{"role": "user", "content": question(tag, o.index)}]})

            # 2. Caching resumed without a restart: once the client refreshed its slot map
            #    (within RECOVERY_S of the cluster being whole), every answer is stored.
            #    The ones asked before that refresh failed open, unstored, and were served.
            back = [o for o in outcomes if o.phase == "back"][-10:]
            stored = 0
            for o in back:
                r = again(o)
                assert r.status_code == 200
                if r.headers["x-reprise-cache"] == "exact":
                    assert r.json()["choices"][0]["message"]["content"] == o.text
                    stored += 1
            assert stored >= len(back) - 1, f"stored after failover: {stored}/{len(back)}"

            # 3. What the primary had replicated before it died survived on its replica
            #    (replication is asynchronous: the last writes before the kill may be lost).
            up = [o for o in outcomes if o.phase == "up"]
            kept = 0
            for o in up:
                r = again(o)
                if r.headers["x-reprise-cache"] == "exact":
                    assert r.json()["choices"][0]["message"]["content"] == o.text
                    kept += 1
            assert kept >= len(up) - 5, f"kept through failover: {kept}/{len(up)}"

            # 4. The promoted replica's index serves semantic lookups.
            probe = back[-1]
            r = client.post("/v1/chat/completions", headers=h, json={
                "model": "fake-model", "messages": [{"role": "user", "content":
                                                     question(tag, probe.index).lower()}]})
            assert r.headers["x-reprise-cache"] == "semantic"
            assert r.json()["choices"][0]["message"]["content"] == probe.text


def _entry(ns: str, i: int, v: np.ndarray) -> CacheEntry:
    now = time.time()
    return CacheEntry(key=f"k{i}", namespace=ns, fingerprint="fp", question=f"q{i}",
                      response=f'{{"i":{i}}}'.encode(), model="m", vector=v, created_at=now,
                      expires_at=now + 3600)


async def test_resharding_under_load_moves_entries_and_rebuilds_the_index(
        own_cluster: LocalCluster) -> None:
    """`redis-cli --cluster reshard` moves the slots of a group (its entries, bookkeeping
    and index name) to another primary while lookups and writes run: nothing is served
    wrong, and afterwards every entry is found on its new shard by exact and by vector
    lookup (the index was rebuilt there from the moved hashes)."""
    prefix = f"r{uuid.uuid4().hex[:6]}"
    store = RedisStore(own_cluster.url, DIM, 1 << 26, prefix=prefix, groups=16)
    rng = np.random.default_rng(3)
    try:
        # Two namespaces of one group on the second primary (its first slots move).
        groups: dict[int, list[str]] = {}
        for i in range(2000):
            ns = f"tenant-{i}"
            slot = key_slot(store.layout.group(ns).index.encode())
            groups.setdefault(slot, []).append(ns)
        source = own_cluster.owner_of(6000)
        owned = sorted(s for s in groups if own_cluster.owner_of(s).port == source.port)
        slot = owned[0]
        namespaces = groups[slot][:2]
        first = _range_start(own_cluster, slot)
        target = next(n for n in own_cluster.primary_nodes() if n.port != source.port)
        vectors = {ns: [unit(r) for r in rng.normal(size=(150, DIM)).astype(np.float32)]
                   for ns in namespaces}
        known: dict[tuple[str, str], np.ndarray] = {}  # every vector ever written
        for ns in namespaces:
            for i, v in enumerate(vectors[ns]):
                await store.put(_entry(ns, i, v))
                known[(ns, f"k{i}")] = v

        wrong: list[str] = []
        counts = {"lookups": 0, "hits": 0, "others": 0, "misses": 0, "errors": 0,
                  "puts": 0, "put_errors": 0}
        written: list[tuple[str, int]] = []
        done = asyncio.Event()

        async def lookups() -> None:
            r = random.Random(5)
            while not done.is_set():
                ns = r.choice(namespaces)
                i = r.randrange(150)
                counts["lookups"] += 1
                try:
                    got = await store.get_exact(ns, f"k{i}")
                    hits = await store.search(ns, "fp", vectors[ns][i], 1)
                except StoreError:
                    counts["errors"] += 1
                    continue
                if got is not None and got.response != f'{{"i":{i}}}'.encode():
                    wrong.append(f"exact {ns} k{i} -> {got.response!r}")
                if not hits:
                    counts["misses"] += 1
                    continue
                # While its hash is in flight an entry may be missing from both indexes, and
                # the nearest *visible* entry comes back instead: right as long as it is of
                # this partition and its similarity is its own (the semantic tier then
                # judges it like any other candidate).
                top = hits[0]
                true = float(np.dot(known.get((top.entry.namespace, top.entry.key),
                                              np.zeros(DIM)), vectors[ns][i]))
                if top.entry.namespace != ns or abs(top.similarity - true) > 2e-3:
                    wrong.append(f"knn {ns} k{i} -> {top.entry.key} {top.similarity:.3f}")
                counts["hits" if top.entry.key == f"k{i}" else "others"] += 1

        async def writes() -> None:
            n = 1000
            while not done.is_set():
                ns = namespaces[n % 2]
                counts["puts"] += 1
                v = unit(rng.normal(size=DIM).astype(np.float32))
                known[(ns, f"k{n}")] = v
                try:
                    await store.put(_entry(ns, n, v))
                    written.append((ns, n))
                except StoreError:
                    counts["put_errors"] += 1
                n += 1
                await asyncio.sleep(0.005)

        async def reshard() -> None:
            await asyncio.to_thread(own_cluster.reshard, source, target, slot - first + 1)
            await asyncio.to_thread(own_cluster.wait_ok)
            done.set()

        # A task group: if the reshard fails, the load is cancelled, not left running.
        async with asyncio.TaskGroup() as tg:
            for part in (lookups(), lookups(), writes(), reshard()):
                tg.create_task(part)

        assert own_cluster.owner_of(slot).port == target.port
        assert wrong == [], wrong[:5]
        assert counts["lookups"] > 20 and counts["puts"] > 5, counts
        # Every entry is found where it now lives, exactly and by its vector.
        for ns in namespaces:
            for i, v in enumerate(vectors[ns]):
                got = await store.get_exact(ns, f"k{i}")
                assert got is not None and got.response == f'{{"i":{i}}}'.encode()
                hits = await store.search(ns, "fp", v, 1)
                assert hits and hits[0].entry.key == f"k{i}", (ns, i)
        for ns, n in written:  # every write that reported success is there
            assert await store.get_exact(ns, f"k{n}") is not None
        client = own_cluster.node_client(target)
        try:
            assert store.layout.group(namespaces[0]).index.encode() in \
                client.execute_command("FT._LIST")
        finally:
            client.close()
        stats = await store.stats()
        assert stats.entries == 300 + len(written)
        print(f"resharding: {counts}")
    finally:
        await store.clear()
        await store.close()


def _range_start(cluster: LocalCluster, slot: int) -> int:
    """First slot of the contiguous range that holds ``slot`` on its owner."""
    client = cluster.node_client(cluster.owner_of(slot))
    try:
        for row in client.execute_command("CLUSTER", "SLOTS"):
            if int(row[0]) <= slot <= int(row[1]):
                return int(row[0])
    finally:
        client.close()
    raise AssertionError(f"slot {slot} unowned")
