"""Redis Stack stopped and restarted under load: the gateway fails open and recovers.

A dedicated Redis Stack server (not the session one) backs a real gateway over loopback with
the real USE embedder; the upstream is the controllable fake model server. A bounded stream
of distinct questions runs at a fixed concurrency while the server is stopped after the
first third and started again (empty: it runs without persistence) after the second.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fixtures_redis import start_or_skip
from reprise.services.redis_stack import RedisServer
from tests_support.gateway import running_gateway

pytestmark = pytest.mark.redis

TOTAL, STOP_AFTER, START_AFTER, CONCURRENCY = 90, 30, 60, 3


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_or_skip(tmp_path / "redis")
    with server:
        yield server


@dataclass
class Outcome:
    index: int
    phase: str  # redis state when the request was sent: up | down | back
    status: int
    tier: str
    text: str


def question(tag: str, i: int) -> str:
    return f"How do I rotate the signing key of service {tag}-{i}?"


def paraphrase(tag: str, i: int) -> str:
    """Another exact key for the same question once normalised: a lookup that needs the
    vector index (and not the learned verifier's judgement of a looser paraphrase)."""
    return f"how do I rotate the signing key of service {tag}-{i}"


async def _stream(base: str, server: RedisServer, tag: str, headers: dict[str, str]) -> list[
        Outcome]:
    """Send TOTAL requests, CONCURRENCY at a time; stop and restart Redis along the way."""
    outcomes: list[Outcome] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(TOTAL):
        queue.put_nowait(i)
    phase = {"now": "up"}
    done = asyncio.Condition()

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            sent_in = phase["now"]
            body = {"model": "fake-model",
                    "messages": [{"role": "user", "content": question(tag, i)}]}
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
            text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else ""
            outcomes.append(Outcome(i, sent_in, r.status_code,
                                    r.headers.get("x-reprise-cache", ""), text))
            async with done:
                done.notify_all()

    async def chaos() -> None:
        async with done:
            await done.wait_for(lambda: len(outcomes) >= STOP_AFTER)
        await asyncio.to_thread(server.stop)
        phase["now"] = "down"
        async with done:
            await done.wait_for(lambda: len(outcomes) >= START_AFTER)
        phase["now"] = "starting"
        await asyncio.to_thread(server.start)
        phase["now"] = "back"

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(chaos(), *(worker(client) for _ in range(CONCURRENCY)))
    return outcomes


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}\{{[^}}]*\}} ([\d.e+]+)$",
                                                       text, re.M))


def test_redis_outage_under_load_fails_open_and_recovers(
        own_redis: RedisServer, fake_upstream: Any, use_embedder: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    url, _ = fake_upstream
    tag = uuid.uuid4().hex[:6]
    prefix = f"f{tag}"
    h = {"X-Reprise-Namespace": f"faults-{tag}"}
    caplog.set_level(logging.WARNING, logger="reprise")
    with running_gateway(url, tmp_path / "gw", embedder=use_embedder, store="redis",
                         redis_url=own_redis.url, redis_prefix=prefix,
                         single_flight_lock_seconds=5.0) as (base, comp):
        outcomes = asyncio.run(_stream(base, own_redis, tag, h))

        # 1. No request failed because of the cache, in any phase.
        assert len(outcomes) == TOTAL
        failed = [o for o in outcomes if o.status != 200 or not o.text.startswith("Answer #")]
        assert failed == [], f"requests failed: {failed[:3]}"
        phases = {p: sum(o.phase == p for o in outcomes) for p in ("up", "down", "back")}
        assert phases["down"] >= 10 and phases["back"] >= 10, phases

        # 2. The failures were counted and logged.
        with httpx.Client(base_url=base, timeout=30) as client:
            metrics = client.get("/metrics").text
            assert _metric(metrics, "reprise_store_errors_total") >= phases["down"]
            assert comp.cache.health.errors >= phases["down"]
            assert any("cache store" in r.getMessage() for r in caplog.records)

            # 3. Caching resumed without a restart: every answer whose request was sent after
            #    Redis came back is stored (the restarted server started empty).
            back = [o for o in outcomes if o.phase == "back"]
            stored = 0
            for o in back:
                r = client.post("/v1/chat/completions", headers=h, json={
                    "model": "fake-model",
                    "messages": [{"role": "user", "content": question(tag, o.index)}]})
                assert r.status_code == 200
                if r.headers["x-reprise-cache"] == "exact":
                    assert r.json()["choices"][0]["message"]["content"] == o.text
                    stored += 1
            # The one request in flight while the client reconnects may still see the old
            # connection fail (fail open, not stored); every later one must be stored.
            assert stored >= len(back) - 1, f"stored after recovery: {stored}/{len(back)}"
            stats = client.get("/admin/cache/stats", headers=h).json()
            assert stats["entries"] >= len(back)

            # 4. The index was recreated on the empty server: paraphrases hit semantically.
            probe = back[-1]
            r = client.post("/v1/chat/completions", headers=h, json={
                "model": "fake-model",
                "messages": [{"role": "user", "content": paraphrase(tag, probe.index)}]})
            assert r.headers["x-reprise-cache"] == "semantic"
            assert r.json()["choices"][0]["message"]["content"] == probe.text
        info = redis.Redis.from_url(own_redis.url).execute_command("FT._LIST")
        assert f"{prefix}:idx".encode() in info
