"""Bad input gets a clear error; failures are never cached; the cache fails open.

Uses the controllable test upstream for injected failures, cut streams and slow answers.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from reprise.testing.upstream import free_port
from tests_support.gateway import ask, running_gateway, sse_events


@pytest.fixture
def gw(fake_upstream: Any, tmp_path: Path) -> Any:
    url, state = fake_upstream
    with running_gateway(url, tmp_path, store="sqlite", upstream_read_timeout=2.0,
                         max_body_bytes=64 * 1024) as (base, comp):
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client, comp, state


def tag() -> str:
    return uuid.uuid4().hex[:8]


BAD = [
    ("malformed json", b'{"model": "fake-model", "messages": [', 400, "invalid_json"),
    ("not an object", b'["hello"]', 400, "invalid_json"),
    ("empty body", b"", 400, "invalid_json"),
    ("missing messages", b'{"model": "fake-model"}', 400, "missing_required_parameter"),
    ("empty messages", b'{"model": "fake-model", "messages": []}', 400, "invalid_value"),
    ("messages wrong type", b'{"model": "fake-model", "messages": "hi"}', 400, "invalid_value"),
    ("bad role", b'{"messages": [{"role": "robot", "content": "x"}]}', 400, "invalid_value"),
    ("temperature type", b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
     400, "invalid_value"),
    ("temperature range", b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}',
     400, "invalid_value"),
    ("unknown model", b'{"model": "gpt-99", "messages": [{"role": "user", "content": "x"}]}',
     404, "model_not_found"),
]


@pytest.mark.parametrize(("name", "raw", "status", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_input(gw: Any, name: str, raw: bytes, status: int, code: str) -> None:
    client, _comp, state = gw
    before = state.calls
    r = client.post("/v1/chat/completions", content=raw,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]
    assert state.calls == before, "a rejected request must not reach the upstream"


def test_oversized_body_is_413_and_not_forwarded(gw: Any) -> None:
    client, _comp, state = gw
    before = state.calls
    r = ask(client, "x" * 100_000)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    assert state.calls == before


@pytest.mark.parametrize("status", [500, 503])
def test_upstream_5xx_is_502_and_not_stored(gw: Any, status: int) -> None:
    client, _comp, _ = gw
    question = f"[fail:{status}] {tag()}"
    for _ in range(2):
        r = ask(client, question)
        assert r.status_code == 502
        assert "upstream" in r.json()["error"]["message"]
        assert r.headers.get("x-reprise-cache") is None


def test_upstream_4xx_passes_through_status(gw: Any) -> None:
    client, _, _ = gw
    r = ask(client, f"[fail:400] {tag()}")
    assert r.status_code == 400
    assert "rejected" in r.json()["error"]["message"]


def test_upstream_down_is_502(fake_upstream: Any, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with running_gateway(dead, tmp_path) as (base, _), httpx.Client(base_url=base) as client:
        r = ask(client, tag())
        assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
        s = ask(client, tag(), stream=True)
        assert s.status_code == 502


def test_upstream_timeout_is_504(gw: Any) -> None:
    client, _, _ = gw
    r = ask(client, f"[hang] {tag()}")
    assert r.status_code == 504
    assert "timed out" in r.json()["error"]["message"]


def test_cut_stream_is_reported_and_not_stored(gw: Any) -> None:
    client, _comp, _ = gw
    question = f"one two three four five six seven eight [cut] {tag()}"
    r = ask(client, question, stream=True)
    events = sse_events(r.text)
    assert "[DONE]" not in events
    assert "error" in events[-1]
    again = ask(client, question)
    assert again.headers["x-reprise-cache"] == "miss"  # the cut answer was not stored


def test_empty_answer_not_stored(gw: Any) -> None:
    client, _, _ = gw
    question = f"[empty] {tag()}"
    ask(client, question)
    assert ask(client, question).headers["x-reprise-cache"] == "miss"


def test_client_disconnect_mid_stream_not_stored(gw: Any) -> None:
    client, _comp, _state = gw
    question = "a b c d e f g h i j k l m n o p [drip:0.1] " + tag()
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "fake-model", "stream": True,
            "messages": [{"role": "user", "content": question}]}) as resp:
        for i, _line in enumerate(resp.iter_lines()):
            if i >= 4:
                break  # leave after the first chunks
    asyncio.run(asyncio.sleep(2.5))  # the rest of the answer would have arrived by now
    r = ask(client, question.replace("[drip:0.1]", "[drip:0.1]"))
    assert r.headers["x-reprise-cache"] == "miss"


def test_tool_call_stream_replay_matches(gw: Any) -> None:
    client, _, _ = gw
    question = f"weather in Lisbon? [tools] {tag()}"
    live = sse_events(ask(client, question, stream=True).text)
    replay_resp = ask(client, question, stream=True)
    assert replay_resp.headers["x-reprise-cache"] == "exact"
    replay = sse_events(replay_resp.text)

    def calls(events: list[Any]) -> tuple[list[Any], list[str]]:
        from reprise.serving.format import assemble

        chunks = [e for e in events if isinstance(e, dict)]
        done = assemble(chunks)
        return done["choices"][0]["message"]["tool_calls"], [
            c["finish_reason"] for c in done["choices"]]

    assert calls(live) == calls(replay)
    assert calls(replay)[1] == ["tool_calls"]
    assert replay[-1] == "[DONE]"


def test_text_stream_replay_matches(gw: Any) -> None:
    from tests_support.gateway import stream_text

    client, _, _ = gw
    question = f"Explain caching in detail please {tag()}"
    live = sse_events(ask(client, question, stream=True,
                          stream_options={"include_usage": True}).text)
    replay = sse_events(ask(client, question, stream=True,
                            stream_options={"include_usage": True}).text)
    assert stream_text(live) == stream_text(replay) != ""
    assert len([e for e in replay if isinstance(e, dict) and e["choices"]]) > 3  # streamed
    usage = [e for e in replay if isinstance(e, dict) and e.get("usage")]
    assert usage and usage[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    no_usage = sse_events(ask(client, question, stream=True).text)
    assert not [e for e in no_usage if isinstance(e, dict) and e.get("usage")]


def test_broken_sqlite_file_fails_open(fake_upstream: Any, tmp_path: Path) -> None:
    url, _ = fake_upstream
    (tmp_path / "cache.sqlite3").write_bytes(b"this is not a database" * 100)
    with running_gateway(url, tmp_path, store="sqlite") as (base, comp), \
            httpx.Client(base_url=base) as client:
        question = tag()
        for _ in range(2):
            r = ask(client, question)
            assert r.status_code == 200 and r.headers["x-reprise-cache"] == "miss"
        assert comp.cache.health.errors >= 2
        assert client.get("/healthz").json()["store"]["ok"] is False
        metrics = client.get("/metrics").text
        assert 'reprise_store_errors_total{op="get_exact"}' in metrics


def test_locked_sqlite_fails_open(fake_upstream: Any, tmp_path: Path) -> None:
    url, _ = fake_upstream
    with running_gateway(url, tmp_path, store="sqlite") as (base, comp), \
            httpx.Client(base_url=base) as client:
        ask(client, "warm up " + tag())
        locker = sqlite3.connect(tmp_path / "cache.sqlite3", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            question = tag()
            r = ask(client, question)
            assert r.status_code == 200
            assert comp.cache.health.errors >= 1
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # lock gone: caching works again without a restart
        ask(client, question)
        assert ask(client, question).headers["x-reprise-cache"] == "exact"


class _FailingEmbedder:
    """The real USE embedder, except that it raises for questions containing ``MARKER``
    (a test double for a remote embedding server that errors or sends NaN vectors, which
    ``normalize_rows`` turns into the same ``EmbedderError``)."""

    MARKER = "embedder-down"

    def __init__(self, real: Any) -> None:
        self._real, self.name, self.dim = real, real.name, real.dim

    def _check(self, texts: list[str]) -> None:
        from reprise.embed.base import EmbedderError

        if any(self.MARKER in t for t in texts):
            raise EmbedderError("embedding server returned 503")

    def embed_sync(self, texts: list[str], kind: Any = "query") -> Any:
        self._check(texts)
        return self._real.embed_sync(texts, kind)

    async def embed(self, texts: list[str], kind: Any = "query") -> Any:
        self._check(texts)
        return await self._real.embed(texts, kind)


def test_embedder_failure_keeps_the_exact_tier(fake_upstream: Any, tmp_path: Path,
                                               use_embedder: Any) -> None:
    """The semantic tier fails open, and the answer is still stored for exact hits."""
    url, state = fake_upstream
    with running_gateway(url, tmp_path, embedder=_FailingEmbedder(use_embedder),
                         store="sqlite", semantic_verifier=False) as (base, comp), \
            httpx.Client(base_url=base, timeout=30) as client:
        question = f"{_FailingEmbedder.MARKER} {tag()}: how do I rotate my API key?"
        before = state.calls
        first = ask(client, question)
        assert first.status_code == 200 and first.headers["x-reprise-cache"] == "miss"
        again = ask(client, question)
        assert again.status_code == 200 and again.headers["x-reprise-cache"] == "exact"
        assert again.json()["choices"] == first.json()["choices"]
        assert state.calls == before + 1
        # counted as the embedder's failure, not the store's
        assert comp.cache.embedder_health.errors >= 2 and comp.cache.health.errors == 0
        assert comp.cache.embedder_health.last_error.startswith("save: ")
        health = client.get("/healthz").json()
        assert health["embedder"]["errors"] >= 2 and health["store"]["errors"] == 0
        assert 'reprise_embedder_errors_total{op="lookup"}' in client.get("/metrics").text
        # the entry has no vector: nothing semantic can ever match it
        entries = asyncio.run(comp.cache.store.list_entries(query=_FailingEmbedder.MARKER))
        assert len(entries) == 1 and entries[0].vector is None
