"""Exact tier through real HTTP: hit/miss/bypass, headers, cache-control, namespaces.

The upstream here is the controllable test server (``reprise.testing.upstream``): its answers
are numbered per call, so a cached answer is recognisable (same number) without timing.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests_support.gateway import ask, running_gateway, sse_events, stream_text


@pytest.fixture(params=["memory", "sqlite"])
def gw(request: pytest.FixtureRequest, fake_upstream: Any, tmp_path: Path) -> Any:
    url, _state = fake_upstream
    with running_gateway(url, tmp_path, store=request.param) as (base, comp):
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client, comp


def q() -> str:
    return f"What is {uuid.uuid4().hex[:8]}?"


def answer(resp: httpx.Response) -> str:
    return resp.json()["choices"][0]["message"]["content"]


def test_miss_then_exact_hit(gw: Any) -> None:
    client, comp = gw
    question = q()
    first = ask(client, question)
    assert first.status_code == 200
    assert first.headers["x-reprise-cache"] == "miss"
    second = ask(client, question)
    assert second.headers["x-reprise-cache"] == "exact"
    assert answer(second) == answer(first)
    assert int(second.headers["age"]) >= 0
    assert second.json()["reprise"]["cache"] == "exact"
    assert comp.store.backend in ("memory", "sqlite")


def test_hit_usage_marks_prompt_tokens_cached(gw: Any) -> None:
    client, _ = gw
    question = q()
    miss = ask(client, question).json()["usage"]
    assert miss["prompt_tokens_details"]["cached_tokens"] == 2  # upstream's own, passed through
    assert miss["prompt_cache_miss_tokens"] == miss["prompt_tokens"] - 2
    hit = ask(client, question).json()["usage"]
    assert hit["prompt_tokens_details"]["cached_tokens"] == hit["prompt_tokens"]
    assert hit["prompt_cache_hit_tokens"] == hit["prompt_tokens"]
    assert hit["prompt_cache_miss_tokens"] == 0
    assert hit["completion_tokens"] == miss["completion_tokens"]


def test_no_cache_refreshes_and_no_store_skips(gw: Any) -> None:
    client, _ = gw
    question = q()
    original = answer(ask(client, question))
    refreshed = ask(client, question, headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-reprise-cache"] == "bypass"
    assert answer(refreshed) != original
    # the refreshed answer replaced the stored one
    assert answer(ask(client, question)) == answer(refreshed)

    other = q()
    r = ask(client, other, headers={"Cache-Control": "no-store"})
    assert r.headers["x-reprise-cache"] == "bypass"
    assert ask(client, other).headers["x-reprise-cache"] == "miss"


def test_max_age(gw: Any) -> None:
    client, _ = gw
    question = q()
    ask(client, question)
    time.sleep(1.1)
    assert ask(client, question, headers={"Cache-Control": "max-age=60"}).headers[
        "x-reprise-cache"] == "exact"
    assert ask(client, question, headers={"Cache-Control": "max-age=0"}).headers[
        "x-reprise-cache"] == "miss"


def test_namespaces_are_isolated(gw: Any) -> None:
    client, _ = gw
    question = q()
    a = ask(client, question, headers={"X-Reprise-Namespace": "tenant-a"})
    b = ask(client, question, headers={"X-Reprise-Namespace": "tenant-b"})
    assert b.headers["x-reprise-cache"] == "miss"
    assert answer(a) != answer(b)
    assert ask(client, question, headers={"X-Reprise-Namespace": "tenant-a"}).headers[
        "x-reprise-cache"] == "exact"
    bad = ask(client, question, headers={"X-Reprise-Namespace": "../etc"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Reprise-Namespace"


def test_stream_and_json_share_one_entry(gw: Any) -> None:
    client, _ = gw
    question = q()
    streamed = ask(client, question, stream=True)
    assert streamed.headers["x-reprise-cache"] == "miss"
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    as_json = ask(client, question)
    assert as_json.headers["x-reprise-cache"] == "exact"
    assert answer(as_json) == stream_text(events)


def test_cache_admin_endpoints(gw: Any) -> None:
    client, _ = gw
    question = q()
    ask(client, question)
    ask(client, question)
    rows = client.get("/admin/cache", params={"q": question}).json()["data"]
    assert len(rows) == 1 and rows[0]["question"] == question and rows[0]["hits"] == 1
    key = rows[0]["key"]
    assert client.delete(f"/admin/cache/{key}").status_code == 200
    assert client.delete(f"/admin/cache/{key}").status_code == 404
    assert ask(client, question).headers["x-reprise-cache"] == "miss"
    stats = client.get("/admin/cache/stats").json()
    assert stats["entries"] >= 1
    cleared = client.post("/admin/cache/clear").json()
    assert cleared["cleared"] >= 1
    assert client.get("/admin/cache/stats").json()["entries"] == 0


def test_models_and_health(gw: Any) -> None:
    client, _ = gw
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "fake-model" in ids
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["store"]["ok"] is True
    # a model the upstream serves but the settings don't name is accepted
    r = client.post("/v1/chat/completions", json={
        "model": "other-model", "messages": [{"role": "user", "content": q()}]})
    assert r.status_code == 200


def test_sqlite_cache_survives_gateway_restart(fake_upstream: Any, tmp_path: Path) -> None:
    url, _ = fake_upstream
    question = q()
    with running_gateway(url, tmp_path, store="sqlite") as (base, _), \
            httpx.Client(base_url=base) as client:
        first = answer(ask(client, question))
    with running_gateway(url, tmp_path, store="sqlite") as (base, _), \
            httpx.Client(base_url=base) as client:
        again = ask(client, question)
        assert again.headers["x-reprise-cache"] == "exact"
        assert answer(again) == first
