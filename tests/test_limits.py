"""Limits: per-key rate limits (429 + Retry-After, in-process and shared through Redis),
messages count, max_tokens cap, body size, upstream timeout, graceful shutdown.

Real gateways over loopback (in-process, or ``reprise serve`` processes for the shutdown
test) in front of the controllable fake upstream, which can hang or drip a stream.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reprise.api.auth import add_key
from reprise.api.limits import LocalLimiter, RedisLimiter, estimate_tokens
from reprise.testing.upstream import free_port
from tests_support.gateway import running_gateway, sse_events, stream_text


def ask(c: httpx.Client, q: str, **extra: Any) -> httpx.Response:
    return c.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": q}], **extra})


def assert_429(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    retry = int(r.headers["retry-after"])
    assert retry >= 1
    return retry


def test_requests_per_minute_per_key(fake_upstream: Any, tmp_path: Path) -> None:
    url, _ = fake_upstream
    keys = tmp_path / "keys.toml"
    a, _ = add_key(keys, "a")
    b, _ = add_key(keys, "b")
    vip, _ = add_key(keys, "vip", rpm=100)
    with running_gateway(url, tmp_path, api_keys_file=keys, rate_limit_rpm=3) as (base, comp):
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {a}"}) as ca:
            for i in range(3):
                assert ask(ca, f"rpm question {i}").status_code == 200
            retry = assert_429(ask(ca, "one too many"))
            # One request per 20 s refills at 3/min: the wait is about that long.
            assert 1 <= retry <= 20
        # Other keys have their own buckets; a key's own rpm overrides the default.
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {b}"}) as cb:
            assert ask(cb, "b is not limited by a").status_code == 200
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {vip}"}) as cv:
            assert all(ask(cv, f"vip {i}").status_code == 200 for i in range(6))
        assert comp.metrics.rate_limited._value.get() == 1


def test_tokens_per_minute_counts_prompt_and_max_tokens(fake_upstream: Any,
                                                        tmp_path: Path) -> None:
    url, _ = fake_upstream
    with running_gateway(url, tmp_path, rate_limit_tpm=200) as (base, _):
        h = {"X-Reprise-Namespace": f"tpm{uuid.uuid4().hex[:6]}"}
        with httpx.Client(base_url=base, headers=h) as c:
            assert ask(c, "short question", max_tokens=150).status_code == 200
            retry = assert_429(ask(c, "another short question", max_tokens=150))
            # ~110 tokens missing at 200/min: about 33 s.
            assert 20 <= retry <= 60
            # A small request still fits in what is left.
            assert ask(c, "tiny", max_tokens=5).status_code == 200
        # Another namespace (open mode: the bucket is per namespace) is unaffected.
        with httpx.Client(base_url=base, headers={"X-Reprise-Namespace": "other"}) as c2:
            assert ask(c2, "short question", max_tokens=150).status_code == 200


def test_embeddings_are_rate_limited_too(use_embedder: Any, tmp_path: Path) -> None:
    """The shared /v1/embeddings router, served by the embeddings role's app."""
    from reprise.api.embeddings_app import create_embeddings_app
    from reprise.config import Settings
    from reprise.testing.upstream import ServerThread

    app = create_embeddings_app(Settings(data_dir=tmp_path, rate_limit_rpm=2),
                                embedder=use_embedder)
    server = ServerThread(app).start()
    try:
        with httpx.Client(base_url=server.url) as c:
            for _ in range(2):
                assert c.post("/v1/embeddings", json={"input": "hi"}).status_code == 200
            assert_429(c.post("/v1/embeddings", json={"input": "hi"}))
            m = c.get("/metrics").text
        assert "reprise_rate_limited_total 1.0" in m
    finally:
        server.stop()


@pytest.mark.redis
def test_replicas_share_one_limit_through_redis(fake_upstream: Any, redis_url: str,
                                                tmp_path: Path) -> None:
    url, _ = fake_upstream
    keys = tmp_path / "keys.toml"
    raw, _ = add_key(keys, "shared")
    common = {"store": "redis", "redis_url": redis_url, "api_keys_file": keys,
              "redis_prefix": f"rl{uuid.uuid4().hex[:8]}", "rate_limit_rpm": 4}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_gateway(url, tmp_path / "a", **common) as (base_a, _), \
            running_gateway(url, tmp_path / "b", **common) as (base_b, _):
        h = {"Authorization": f"Bearer {raw}"}
        with httpx.Client(base_url=base_a, headers=h) as ca, \
                httpx.Client(base_url=base_b, headers=h) as cb:
            statuses = [ask(c, f"shared limit {i}").status_code
                        for i, c in enumerate([ca, cb, ca, cb])]
            assert statuses == [200] * 4
            assert_429(ask(ca, "fifth on a"))
            assert_429(ask(cb, "fifth on b"))


@pytest.mark.redis
async def test_limiters_agree_and_redis_fails_open(redis_url: str) -> None:
    local = LocalLimiter()
    shared = RedisLimiter(redis_url, f"t{uuid.uuid4().hex[:8]}")
    try:
        for limiter in (local, shared):
            assert await limiter.acquire("k", 2, 0, 0) == 0.0
            assert await limiter.acquire("k", 2, 0, 0) == 0.0
            wait = await limiter.acquire("k", 2, 0, 0)
            assert 25.0 <= wait <= 30.0  # 1 request at 2/min
            # A request bigger than the whole minute's tokens waits for a full bucket only.
            assert await limiter.acquire("t", 0, 100, 500) == 0.0
            assert await limiter.acquire("t", 0, 100, 1) > 0.0
    finally:
        await shared.aclose()
    dead = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", "x")
    try:
        assert await dead.acquire("k", 1, 0, 0) == 0.0
        assert await dead.acquire("k", 1, 0, 0) == 0.0  # still admitted: fail open
        assert dead.errors == 2
    finally:
        await dead.aclose()


def test_estimate_tokens() -> None:
    msgs = [{"role": "user", "content": "x" * 400},
            {"role": "user", "content": [{"type": "text", "text": "y" * 40}]}]
    assert estimate_tokens(msgs, 100) == 110 + 8 + 100
    assert estimate_tokens([], None) == 0


def test_messages_count_and_max_tokens_cap(fake_upstream: Any, tmp_path: Path) -> None:
    url, _ = fake_upstream
    with running_gateway(url, tmp_path, max_messages=3, max_tokens_cap=100) as (base, _):
        with httpx.Client(base_url=base) as c:
            msgs = [{"role": "user", "content": f"m{i}"} for i in range(4)]
            r = c.post("/v1/chat/completions", json={"model": "fake-model", "messages": msgs})
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "too_many_messages"
            assert r.json()["error"]["param"] == "messages"
            assert c.post("/v1/chat/completions", json={
                "model": "fake-model", "messages": msgs[:3]}).status_code == 200
            for field in ("max_tokens", "max_completion_tokens"):
                r = ask(c, "cap", **{field: 101})
                assert r.status_code == 400, r.text
                assert r.json()["error"]["code"] == "max_tokens_too_large"
            assert ask(c, "cap ok", max_tokens=100).status_code == 200


def test_body_size_limit(fake_upstream: Any, tmp_path: Path) -> None:
    url, _ = fake_upstream
    with running_gateway(url, tmp_path, max_body_bytes=2000) as (base, _):
        with httpx.Client(base_url=base) as c:
            r = ask(c, "x" * 3000)
            assert r.status_code == 413
            assert r.json()["error"]["code"] == "body_too_large"

            def chunks() -> Any:  # no Content-Length: the limit holds while streaming in
                for _ in range(10):
                    yield b" " * 500

            r = c.post("/v1/chat/completions", content=chunks(),
                       headers={"Content-Type": "application/json"})
            assert r.status_code == 413
            assert ask(c, "x" * 1500).status_code == 200


def test_upstream_read_timeout_is_504(fake_upstream: Any, tmp_path: Path) -> None:
    url, _ = fake_upstream
    with running_gateway(url, tmp_path, upstream_read_timeout=0.5) as (base, _):
        with httpx.Client(base_url=base, timeout=30) as c:
            t0 = time.monotonic()
            r = ask(c, "never answers [hang]")
            assert r.status_code == 504
            assert r.json()["error"]["type"] == "upstream_timeout"
            assert time.monotonic() - t0 < 10


def _wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(port)


@contextlib.contextmanager
def gateway_process(upstream_url: str, tmp: Path,
                    grace_seconds: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``reprise serve`` as a real process (these tests signal it); killed if still alive."""
    port = free_port()
    env = {**os.environ, "REPRISE_UPSTREAM_URL": upstream_url,
           "REPRISE_UPSTREAM_MODEL": "fake-model", "REPRISE_DATA_DIR": str(tmp),
           "REPRISE_SEMANTIC_ENABLED": "false", "REPRISE_RAG_EMBEDDER": "use",
           "REPRISE_GRACEFUL_SHUTDOWN_SECONDS": str(grace_seconds),
           "REPRISE_LOG_LEVEL": "warning"}
    with open(tmp / "gw.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "reprise.cli", "serve", "--host",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            _wait_port(port)
            yield proc, f"http://127.0.0.1:{port}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_graceful_shutdown_finishes_streams_in_flight(fake_upstream: Any,
                                                      tmp_path: Path) -> None:
    """SIGTERM mid-stream: the stream still ends with [DONE], then the process exits."""
    url, _ = fake_upstream
    with gateway_process(url, tmp_path, grace_seconds=20) as (proc, base):
        httpx.get(base + "/healthz", timeout=30).raise_for_status()
        got: dict[str, Any] = {}
        first_chunk = threading.Event()

        def consume() -> None:
            body = {"model": "fake-model", "stream": True, "messages": [
                {"role": "user", "content": "one two three four five six [drip:0.4]"}]}
            text = ""
            with httpx.stream("POST", base + "/v1/chat/completions", json=body,
                              timeout=60) as r:
                got["status"] = r.status_code
                for line in r.iter_lines():
                    text += line + "\n"
                    if line.startswith("data: "):
                        first_chunk.set()
            got["text"] = text

        t = threading.Thread(target=consume)
        t.start()
        assert first_chunk.wait(30)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        events = sse_events(got["text"])
        assert got["status"] == 200 and events[-1] == "[DONE]"
        assert "one two three four five six" in stream_text(events)
        # uvicorn re-raises the signal once it has drained: a clean "killed by SIGTERM".
        assert proc.wait(30) in (0, -signal.SIGTERM)


def test_shutdown_does_not_wait_past_the_grace_period(fake_upstream: Any,
                                                      tmp_path: Path) -> None:
    url, _ = fake_upstream
    with gateway_process(url, tmp_path, grace_seconds=1) as (proc, base):

        def stuck() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(base + "/v1/chat/completions", timeout=60,
                           json={"model": "fake-model",
                                 "messages": [{"role": "user", "content": "stuck [hang]"}]})

        t = threading.Thread(target=stuck, daemon=True)
        t.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        waited = time.monotonic() - t0
        assert proc.poll() is not None and waited < 15
