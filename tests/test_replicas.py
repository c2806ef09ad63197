"""Several gateway replicas (separate OS processes) sharing one real Redis Stack server.

Each replica is ``python -m reprise.cli serve`` with ``REPRISE_STORE=redis``: it has its own
interpreter, embedder, event loop and in-process single-flight registry, so anything they
share goes through Redis. The upstream is the controllable fake model server (it counts
calls and takes ``[slow:s]`` to hold a request open), running in this test process.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fixtures_redis import GatewayProcess, gateway_replicas
from tests_support.gateway import sse_events, stream_text

pytestmark = pytest.mark.redis

LOCK_SECONDS = 3.0


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"rep{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def replica_env(redis_server: Any, fake_upstream: Any, prefix: str) -> dict[str, str]:
    if not redis_server.running:
        redis_server.start()
    url, _ = fake_upstream
    return {
        "REPRISE_STORE": "redis",
        "REPRISE_REDIS_URL": redis_server.url,
        "REPRISE_REDIS_PREFIX": prefix,
        "REPRISE_UPSTREAM_URL": url,
        "REPRISE_UPSTREAM_MODEL": "fake-model",
        "REPRISE_EMBEDDER": "use",
        "REPRISE_SINGLE_FLIGHT_LOCK_SECONDS": str(LOCK_SECONDS),
    }


@pytest.fixture(scope="module")
def replicas(replica_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
             redis_server: Any, prefix: str) -> Iterator[list[GatewayProcess]]:
    with gateway_replicas(2, tmp_path_factory.mktemp("replicas"), replica_env) as reps:
        yield reps
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.execute_command("FT.DROPINDEX", f"{prefix}:idx")
    except redis.RedisError:
        pass
    finally:
        client.close()


def ns() -> dict[str, str]:
    return {"X-Reprise-Namespace": f"t{uuid.uuid4().hex[:10]}"}


def chat(base: str, text: str, headers: dict[str, str], **extra: Any) -> httpx.Response:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=180)


def content(r: httpx.Response) -> str:
    return str(r.json()["choices"][0]["message"]["content"])


def test_answer_stored_through_one_replica_hits_through_the_other(
        replicas: list[GatewayProcess], fake_upstream: Any) -> None:
    a, b = replicas
    _, state = fake_upstream
    h = ns()
    before = state.calls
    first = chat(a.url, "How do I reset my password?", h)
    assert first.status_code == 200 and first.headers["x-reprise-cache"] == "miss"

    exact = chat(b.url, "How do I reset my password?", h)
    assert exact.headers["x-reprise-cache"] == "exact"
    assert content(exact) == content(first)

    # Another exact key, the same question once normalised: found by vector search in
    # Redis (the verifier's learned part is not what this test is about).
    semantic = chat(b.url, "how do I reset my password", h, stream=True)
    assert semantic.headers["x-reprise-cache"] == "semantic"
    assert stream_text(sse_events(semantic.text)) == content(first)
    assert float(semantic.headers["x-reprise-similarity"]) > 0.99
    assert state.calls - before == 1, "B answered from A's entry, not from the model"

    # ... and the other way round: stored through B, found through A.
    other = chat(b.url, "How do I delete my account?", h)
    assert other.headers["x-reprise-cache"] == "miss"
    assert chat(a.url, "How do I delete my account?", h).headers["x-reprise-cache"] == "exact"
    back = chat(a.url, "how do I delete my account", h)
    assert back.headers["x-reprise-cache"] == "semantic" and content(back) == content(other)
    assert state.calls - before == 2

    # Hit counts recorded by either replica are visible from the other.
    listed = httpx.get(a.url + "/admin/cache", headers=h, timeout=10).json()["data"]
    hits = {e["question"]: e["hits"] for e in listed}
    assert hits["How do I reset my password?"] >= 1


def test_other_namespace_on_other_replica_misses(replicas: list[GatewayProcess]) -> None:
    a, b = replicas
    text = f"What is a replica set? {uuid.uuid4().hex[:6]}"
    assert chat(a.url, text, ns()).headers["x-reprise-cache"] == "miss"
    assert chat(b.url, text, ns()).headers["x-reprise-cache"] == "miss"


def test_single_flight_across_replicas(replicas: list[GatewayProcess],
                                       fake_upstream: Any) -> None:
    """N concurrent identical new questions, split over both replicas → one upstream call."""
    _, state = fake_upstream
    h = ns()
    question = f"[slow:1.0] Explain consensus in distributed systems ({uuid.uuid4().hex[:6]})"
    body = {"model": "fake-model", "messages": [{"role": "user", "content": question}]}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=180) as client:
            async def one(i: int) -> httpx.Response:
                base = replicas[i % 2].url
                return await client.post(base + "/v1/chat/completions", headers=h,
                                         json={**body, "stream": i % 3 == 0})

            return await asyncio.gather(*(one(i) for i in range(12)))

    before = state.calls
    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 12
    assert state.calls - before == 1
    answers = {content(r) for r in responses if not r.headers["content-type"].startswith(
        "text/event-stream")}
    assert len(answers) == 1 and next(iter(answers)).startswith("Answer #")
    answers_text = answers.pop()
    # The leader and its in-process followers report "miss"; requests that arrive while the
    # answer is being stored are exact hits, or semantic ones (identical text, similarity 1)
    # when their exact lookup ran just before the store and their vector search just after.
    tiers = [r.headers["x-reprise-cache"] for r in responses]
    assert tiers.count("miss") >= 1 and set(tiers) <= {"miss", "exact", "semantic"}
    streamed = {stream_text(sse_events(r.text)) for r in responses
                if r.headers["content-type"].startswith("text/event-stream")}
    assert streamed == {answers_text}
    # Both replicas served some of them (the test is about crossing processes).
    assert {r.url.port for r in responses} == {replicas[0].port, replicas[1].port}


def test_crashed_holder_lock_expires(replica_env: dict[str, str], replicas: list[GatewayProcess],
                                     tmp_path: Path, fake_upstream: Any, redis_server: Any,
                                     prefix: str) -> None:
    """A replica killed (SIGKILL) while it holds the single-flight lock does not block the
    question for good: the lock's TTL runs out and another replica asks the model itself."""
    _, state = fake_upstream
    victim = GatewayProcess("victim", tmp_path / "victim", replica_env).start().wait_ready()
    survivor = replicas[1]
    h = ns()
    question = f"[slow:2] What happens when a replica dies? {uuid.uuid4().hex[:6]}"
    r = redis.Redis.from_url(redis_server.url)
    pending = threading.Thread(target=_ask_and_ignore, args=(victim.url, question, h),
                               daemon=True)
    try:
        pending.start()
        deadline = time.monotonic() + 90
        while not any(_last_user(b) == question for b in list(state.requests)):
            assert time.monotonic() < deadline, "the victim never asked the model"
            time.sleep(0.02)
        locks = list(r.scan_iter(match=f"{prefix}:lock:*", count=1000))
        assert len(locks) == 1, "the victim holds the single-flight lock while it asks"
        victim.kill()
        assert r.pttl(locks[0]) > 0, "the dead holder's lock is still there, with a TTL"
        calls_before = state.calls

        answer = chat(survivor.url, question, h)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-reprise-cache"] == "miss"
        assert state.calls == calls_before + 1, "the survivor asked the model itself"
        assert r.exists(locks[0]) == 0, "the survivor released its own lock"
        again = chat(replicas[0].url, question, h)
        assert again.headers["x-reprise-cache"] == "exact"
        assert content(again) == content(answer)
    finally:
        victim.stop()
        pending.join(timeout=10)
        r.close()


def _last_user(body: dict[str, Any]) -> str:
    return str((body.get("messages") or [{}])[-1].get("content", ""))


def _ask_and_ignore(base: str, question: str, headers: dict[str, str]) -> None:
    """Send a request to a replica that is about to be killed; its failure is expected."""
    try:
        chat(base, question, headers)
    except httpx.HTTPError:
        pass
