"""Failover across model servers, through the real gateway over loopback.

The "broken primary" servers here are real HTTP servers that answer 503, or a port where
nothing listens; the fallback is the controllable test upstream.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from reprise.testing.upstream import ServerThread, start_fake_upstream
from tests_support.gateway import ask, running_gateway, sse_events, stream_text


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # closed again: connections are refused


@pytest.fixture()
def always_503() -> Iterator[tuple[str, list[int]]]:
    hits: list[int] = []

    async def chat(request: Request) -> JSONResponse:
        hits.append(1)
        return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)

    async def reject(request: Request) -> JSONResponse:
        return JSONResponse({"error": {"message": "bad"}}, status_code=400)

    server = ServerThread(Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", reject, methods=["GET"]),
    ])).start()
    yield server.url + "/v1", hits
    server.stop()


@pytest.fixture()
def fallback() -> Iterator[tuple[str, Any]]:
    server, state = start_fake_upstream()
    yield server.url + "/v1", state
    server.stop()


def test_unreachable_primary_fails_over_and_caches(tmp_path: Path,
                                                  fallback: tuple[str, Any]) -> None:
    url, state = fallback
    with running_gateway(_dead_url(), tmp_path, upstream_fallbacks=[{"url": url}]) as (base, comp):
        with httpx.Client(base_url=base, timeout=30) as c:
            r1 = ask(c, "failover question one")
            assert r1.status_code == 200, r1.text
            assert r1.headers["X-Reprise-Cache"] == "miss"
            r2 = ask(c, "failover question one")
            assert r2.headers["X-Reprise-Cache"] == "exact"
            assert r2.json()["choices"][0]["message"]["content"] == \
                r1.json()["choices"][0]["message"]["content"]
    assert state.calls == 1
    assert comp.upstream.failovers >= 1


def test_5xx_before_first_token_fails_over_when_streaming(
        tmp_path: Path, always_503: tuple[str, list[int]], fallback: tuple[str, Any]) -> None:
    bad_url, bad_hits = always_503
    url, state = fallback
    fb = [{"url": url, "model": "other-model"}]
    with running_gateway(bad_url, tmp_path, upstream_fallbacks=fb,
                         upstream_cooldown_seconds=60) as (base, _):
        with httpx.Client(base_url=base, timeout=30) as c:
            r = ask(c, "stream me", stream=True)
            assert r.status_code == 200
            events = sse_events(r.text)
            assert events[-1] == "[DONE]"
            assert "stream me" in stream_text(events)
            # The fallback got the model name configured for it.
            assert state.requests[-1]["model"] == "other-model"
            # During the cool-down the broken server is not asked again.
            assert ask(c, "second question").status_code == 200
    assert len(bad_hits) == 1


def test_request_rejected_by_the_server_is_not_retried(tmp_path: Path,
                                                      fallback: tuple[str, Any]) -> None:
    url, _ = fallback
    other, other_state = start_fake_upstream()
    try:
        fb = [{"url": other.url + "/v1"}]
        with running_gateway(url, tmp_path, upstream_fallbacks=fb) as (base, _):
            with httpx.Client(base_url=base, timeout=30) as c:
                r = ask(c, "please [fail:422]")
                assert r.status_code == 422
                assert r.json()["error"]["message"]
        assert other_state.calls == 0
    finally:
        other.stop()


def test_all_servers_down_is_a_clear_502(tmp_path: Path) -> None:
    with running_gateway(_dead_url(), tmp_path,
                         upstream_fallbacks=[{"url": _dead_url()}]) as (base, _):
        with httpx.Client(base_url=base, timeout=30) as c:
            r = ask(c, "anyone there?")
            assert r.status_code == 502
            assert "unreachable" in r.json()["error"]["message"]
            assert ask(c, "anyone there?").headers.get("X-Reprise-Cache") != "exact"
