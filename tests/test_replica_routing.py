"""Replicas of one model behind the real gateway, over loopback: prefix-aware routing, the load
bound, health (out of rotation, probed back in) and the start-up model check.

The replicas are the controllable test upstream (real HTTP servers) because these tests need
to see which replica got which request and to make one fail on cue; the real llama.cpp
server is routed to in ``bench/prefix_routing.py`` and checked in
``test_prompt_cache_accounting.py``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reprise.components import build_components
from reprise.config import Settings
from reprise.testing.upstream import (
    FakeUpstreamState,
    ServerThread,
    build_app,
    start_fake_upstream,
)
from reprise.upstream.prefix import PrefixIndex, block_hashes, prompt_text
from reprise.upstream.replicas import ReplicaMismatch
from tests_support.gateway import running_gateway, sse_events, stream_text

CONTEXT = " ".join(f"Clause {i}: the tenant shall keep the premises in good repair."
                   for i in range(40))


@pytest.fixture()
def replicas() -> Iterator[list[tuple[str, FakeUpstreamState]]]:
    servers = [start_fake_upstream() for _ in range(2)]
    yield [(server.url + "/v1", state) for server, state in servers]
    for server, _ in servers:
        server.stop()


def _conversation(name: str, turns: int) -> list[list[dict[str, Any]]]:
    """The request bodies' messages of a conversation, each turn repeating the earlier ones."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"Conversation {name}. Contract:\n{CONTEXT}"}]
    out = []
    for t in range(turns):
        messages = [*messages, {"role": "user", "content": f"{name} question {t}?"}]
        out.append(messages)
        messages = [*messages, {"role": "assistant", "content": f"{name} answer {t}."}]
    return out


def _served_by(states: list[FakeUpstreamState], marker: str) -> list[int]:
    """Which replica (index) got each request whose system prompt names ``marker``."""
    found: list[tuple[float, int]] = []
    for i, state in enumerate(states):
        for n, body in enumerate(state.requests):
            if marker in body["messages"][0]["content"]:
                found.append((n, i))
    return [i for _, i in found]


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _chat(c: httpx.Client, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return c.post("/v1/chat/completions",
                  json={"model": "fake-model", "messages": messages, **extra})


def test_prefix_routing_keeps_each_conversation_on_one_replica(
        tmp_path: Path, replicas: list[tuple[str, FakeUpstreamState]]) -> None:
    urls = [u for u, _ in replicas]
    states = [s for _, s in replicas]
    convs = {name: _conversation(name, 4) for name in ("alpha", "beta", "gamma")}
    with running_gateway(urls[0], tmp_path, upstream_replicas=urls) as (base, comp):
        with httpx.Client(base_url=base, timeout=30) as c:
            for turn in range(4):
                for turns in convs.values():
                    r = _chat(c, turns[turn], stream=turn % 2 == 1)
                    assert r.status_code == 200, r.text
            calls = [s.calls for s in states]
            again = _chat(c, convs["alpha"][2])
            assert again.headers["X-Reprise-Cache"] == "exact"
            assert [s.calls for s in states] == calls  # hits never reach a replica
            metrics = c.get("/metrics").text
    for name in convs:
        served = _served_by(states, f"Conversation {name}.")
        assert len(served) == 4 and len(set(served)) == 1, (name, served)
    assert all(s.calls for s in states), "both replicas must get conversations"
    # Turns 2-4 of each conversation were routed by their prefix: 9 of the 12 requests.
    assert _metric(metrics, "reprise_upstream_routed_total", reason="prefix") == 9
    assert comp.router is not None and comp.router.failovers == 0


def test_round_robin_scatters_a_conversation(
        tmp_path: Path, replicas: list[tuple[str, FakeUpstreamState]]) -> None:
    """The baseline the benchmark compares with: the same conversation lands everywhere."""
    urls = [u for u, _ in replicas]
    states = [s for _, s in replicas]
    with running_gateway(urls[0], tmp_path, upstream_replicas=urls,
                         upstream_routing="round_robin") as (base, _):
        with httpx.Client(base_url=base, timeout=30) as c:
            for messages in _conversation("delta", 4):
                assert _chat(c, messages).status_code == 200
    assert sorted(set(_served_by(states, "Conversation delta."))) == [0, 1]


async def test_a_hot_prefix_spills_over_to_the_least_busy_replica(
        tmp_path: Path, replicas: list[tuple[str, FakeUpstreamState]]) -> None:
    urls = [u for u, _ in replicas]
    states = [s for _, s in replicas]
    for state in states:
        state.latency = 0.4
    system = {"role": "system", "content": f"Shared document:\n{CONTEXT}"}
    with running_gateway(urls[0], tmp_path, upstream_replicas=urls,
                         upstream_route_max_imbalance=1) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            rs = await asyncio.gather(*(
                c.post("/v1/chat/completions", json={"model": "fake-model", "messages": [
                    system, {"role": "user", "content": f"question {i} about it?"}]})
                for i in range(8)))
            metrics = (await c.get("/metrics")).text
    assert [r.status_code for r in rs] == [200] * 8
    assert all(s.calls >= 2 for s in states), [s.calls for s in states]
    assert _metric(metrics, "reprise_upstream_routed_total", reason="balance") >= 1
    assert _metric(metrics, "reprise_upstream_routed_total", reason="prefix") >= 1


async def test_replicas_serving_different_models_are_refused_at_start_up(
        tmp_path: Path) -> None:
    a, _ = start_fake_upstream(FakeUpstreamState(models=["llama3-8b"]))
    b, _ = start_fake_upstream(FakeUpstreamState(models=["qwen2-7b"]))
    try:
        urls = [a.url + "/v1", b.url + "/v1"]
        comp = build_components(Settings(upstream_replicas=urls, data_dir=tmp_path,
                                         semantic_enabled=False, store="memory"))
        with pytest.raises(ReplicaMismatch) as err:
            await comp.astart()
        message = str(err.value)
        assert urls[0] in message and urls[1] in message
        assert "llama3-8b" in message and "qwen2-7b" in message
        await comp.aclose()
    finally:
        a.stop()
        b.stop()


class Switchable:
    """A replica that answers 503 or hangs while told to, and serves normally otherwise."""

    def __init__(self) -> None:
        self.mode = "ok"  # ok | fail | hang
        self.failed_calls = 0
        self.state = FakeUpstreamState()
        inner = build_app(self.state)

        async def chat(request: Request) -> Response:
            if self.mode == "fail":
                self.failed_calls += 1
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if self.mode == "hang":
                self.failed_calls += 1
                await asyncio.sleep(30)
            return await inner.router.routes[0].endpoint(request)  # type: ignore[attr-defined, no-any-return]

        async def models(request: Request) -> Response:
            if self.mode != "ok":
                return JSONResponse({"error": {"message": "down"}}, status_code=503)
            return await inner.router.routes[1].endpoint(request)  # type: ignore[attr-defined, no-any-return]

        self.server = ServerThread(Starlette(routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models)])).start()
        self.url = self.server.url + "/v1"


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_a_failing_replica_leaves_rotation_and_is_probed_back(
        tmp_path: Path, replicas: list[tuple[str, FakeUpstreamState]], mode: str) -> None:
    flaky = Switchable()
    healthy_url, healthy = replicas[0]
    try:
        with running_gateway(flaky.url, tmp_path, upstream_replicas=[flaky.url, healthy_url],
                             upstream_routing="round_robin", upstream_cooldown_seconds=0.5,
                             upstream_read_timeout=1.0) as (base, comp):
            flaky.mode = mode
            with httpx.Client(base_url=base, timeout=30) as c:
                for i in range(6):
                    r = _chat(c, [{"role": "user", "content": f"during outage {i}"}],
                              stream=i % 2 == 0)
                    assert r.status_code == 200, r.text
                    if i % 2 == 0:
                        assert sse_events(r.text)[-1] == "[DONE]"
                        assert stream_text(sse_events(r.text)).startswith("Answer #")
                # Tried once, then out of rotation: the other requests never reached it.
                assert flaky.failed_calls == 1
                assert healthy.calls == 6
                metrics = c.get("/metrics").text
                assert _metric(metrics, "reprise_upstream_replica_up",
                               replica=flaky.url) == 0
                flaky.mode = "ok"
                deadline = time.monotonic() + 10
                while not comp.router.replicas[0].up:  # probed in the background
                    assert time.monotonic() < deadline, "the replica was not probed back in"
                    time.sleep(0.1)
                before = flaky.state.calls
                for i in range(4):
                    assert _chat(c, [{"role": "user", "content": f"after {i}"}]
                                 ).status_code == 200
                assert flaky.state.calls - before == 2  # round robin again over both
                assert _metric(c.get("/metrics").text, "reprise_upstream_replica_up",
                               replica=flaky.url) == 1
    finally:
        flaky.server.stop()


def test_an_unreachable_replica_costs_no_request(
        tmp_path: Path, replicas: list[tuple[str, FakeUpstreamState]]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    url, state = replicas[0]
    with running_gateway(url, tmp_path, upstream_replicas=[dead, url]) as (base, comp):
        assert comp.router.replicas[0].up is False  # found at start-up: no models listed
        with httpx.Client(base_url=base, timeout=30) as c:
            for i in range(4):
                assert _chat(c, [{"role": "user", "content": f"q{i}"}]).status_code == 200
    assert state.calls == 4


def test_replica_list_accepts_commas_and_json() -> None:
    want = ["http://a:8080/v1", "http://b:8080/v1"]
    assert Settings(upstream_replicas="http://a:8080/v1/, http://b:8080/v1"
                    ).upstream_replicas == want
    assert Settings(upstream_replicas='["http://a:8080/v1", "http://b:8080/v1/"]'
                    ).upstream_replicas == want


def test_block_hashes_share_exactly_the_shared_prefix() -> None:
    turn1 = {"messages": [{"role": "system", "content": CONTEXT},
                          {"role": "user", "content": "first question?"}]}
    turn2 = {"messages": [*turn1["messages"], {"role": "assistant", "content": "An answer."},
                          {"role": "user", "content": "second? " * 30}]}
    other = {"messages": [{"role": "system", "content": "Other. " + CONTEXT}]}
    h1, h2, h3 = (block_hashes(prompt_text(b)) for b in (turn1, turn2, other))
    assert h2[:len(h1)] == h1 and len(h2) > len(h1)
    assert not set(h3) & set(h1)  # a different first block changes every later hash
    index = PrefixIndex(capacity=len(h1) + 2)
    index.add(h1)
    assert index.match(h2) == len(h1)
    assert index.match(h3) == 0
    index.add(h3)  # least recently used blocks (turn1's first) are dropped
    assert len(index) == len(h1) + 2 and index.match(h1) == 0


@pytest.mark.parametrize("case", ["resumed", "diverged", "sampled"])
def test_a_stream_cut_by_a_dying_replica(
        tmp_path: Path, replicas: list[tuple[str, FakeUpstreamState]], case: str) -> None:
    """Greedy requests are finished on another replica, which must repeat what was already
    sent; a different answer or a sampled request is not spliced: the cut reaches the client
    and nothing is cached."""
    (dying_url, dying), (other_url, other) = replicas
    dying.cut_streams = True
    if case == "diverged":
        other.calls = 5  # its answer will say "Answer #6", the cut one said "Answer #1"
    body: dict[str, Any] = {"model": "fake-model", "stream": True, "messages": [
        {"role": "user", "content": "a question with a somewhat longer answer to cut"}]}
    if case != "sampled":
        body["temperature"] = 0
    with running_gateway(dying_url, tmp_path, upstream_replicas=[dying_url, other_url],
                         upstream_routing="round_robin") as (base, comp):
        with httpx.Client(base_url=base, timeout=30) as c:
            first = c.post("/v1/chat/completions", json=body)
            again = c.post("/v1/chat/completions", json={**body, "stream": False})
    events = sse_events(first.text)
    assert dying.calls == 1
    if case == "resumed":
        assert events[-1] == "[DONE]"
        want = "Answer #1 to: a question with a somewhat longer answer to cut"
        assert stream_text(events) == want  # nothing repeated, nothing missing
        assert len({e["id"] for e in events if isinstance(e, dict)}) == 1
        assert comp.router.resumed == 1
        assert again.headers["X-Reprise-Cache"] == "exact"
        assert again.json()["choices"][0]["message"]["content"] == want
    else:
        assert "[DONE]" not in events
        assert comp.router.resumed == (1 if case == "diverged" else 0)
        assert again.headers["X-Reprise-Cache"] == "miss"  # the cut answer was not stored


def test_a_preamble_every_prompt_shares_does_not_steer(
        tmp_path: Path, replicas: list[tuple[str, FakeUpstreamState]]) -> None:
    """RAG instructions or a company-wide system prompt are on every replica already: only a
    prefix covering at least half the prompt (REPRISE_UPSTREAM_ROUTE_MIN_MATCH) routes."""
    urls = [u for u, _ in replicas]
    preamble = "Answer from the sources below and cite them. " * 8
    docs = {name: " ".join(f"{name} passage {i} about its own subject." for i in range(60))
            for name in ("pumps", "leases")}

    def ask_about(c: httpx.Client, doc: str, q: str) -> None:
        r = _chat(c, [{"role": "system", "content": f"{preamble}\nSources:\n{docs[doc]}"},
                      {"role": "user", "content": q}])
        assert r.status_code == 200, r.text

    with running_gateway(urls[0], tmp_path, upstream_replicas=urls) as (base, _):
        with httpx.Client(base_url=base, timeout=30) as c:
            ask_about(c, "pumps", "first?")
            ask_about(c, "leases", "first?")  # shares only the preamble with the pumps one
            metrics = c.get("/metrics").text
            assert _metric(metrics, "reprise_upstream_routed_total", reason="prefix") == 0
            ask_about(c, "leases", "second?")
            metrics = c.get("/metrics").text
    assert _metric(metrics, "reprise_upstream_routed_total", reason="prefix") == 1
    assert _metric(metrics, "reprise_upstream_routed_total", reason="least_busy") == 2
