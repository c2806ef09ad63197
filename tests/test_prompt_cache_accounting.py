"""Prompt tokens the model server reused, read from each provider's report into one figure.

The provider formats are taken from their documented responses (OpenAI, DeepSeek, Anthropic
and llama.cpp's ``llama-server`` cannot run here; llama-server is not what the project
builds), so the gateway tests serve them from a small real HTTP server over loopback. The
real llama.cpp server Reprise runs (llama-cpp-python's) is checked as it is: it reports no
figure, which must stay "unreported", not become 0.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from reprise.testing.upstream import ServerThread
from reprise.upstream.accounting import normalise, reused_prompt_tokens
from tests_support.gateway import running_gateway, sse_events

OPENAI = {"usage": {"prompt_tokens": 1200, "completion_tokens": 10, "total_tokens": 1210,
                    "prompt_tokens_details": {"cached_tokens": 1024}}}
DEEPSEEK = {"usage": {"prompt_tokens": 900, "completion_tokens": 5, "total_tokens": 905,
                      "prompt_cache_hit_tokens": 768, "prompt_cache_miss_tokens": 132}}
ANTHROPIC = {"usage": {"prompt_tokens": 500, "completion_tokens": 3, "total_tokens": 503,
                       "cache_read_input_tokens": 448, "cache_creation_input_tokens": 0}}
LLAMA_SERVER = {"usage": {"prompt_tokens": 1550, "completion_tokens": 8, "total_tokens": 1558},
                "timings": {"cache_n": 1536, "prompt_n": 14, "predicted_n": 8}}
LLAMA_SERVER_STREAM_END = {"timings": {"cache_n": 256, "prompt_n": 40, "predicted_n": 6}}
PLAIN = {"usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}}


@pytest.mark.parametrize(("payload", "reused"), [
    (OPENAI, 1024), (DEEPSEEK, 768), (ANTHROPIC, 448), (LLAMA_SERVER, 1536),
    (LLAMA_SERVER_STREAM_END, 256), (PLAIN, None), ({}, None),
])
def test_every_provider_report_becomes_cached_tokens(payload: dict[str, Any],
                                                     reused: int | None) -> None:
    got = copy.deepcopy(payload)
    assert normalise(got) == reused
    if reused is None:
        assert got == payload  # "not reported" is left as it came, not turned into 0
        return
    assert got["usage"]["prompt_tokens_details"]["cached_tokens"] == reused
    assert reused_prompt_tokens(got["usage"]) == reused
    for key, value in payload.get("usage", {}).items():
        if key != "prompt_tokens_details":
            assert got["usage"][key] == value  # the provider's own fields stay


def test_llama_server_timings_alone_give_a_whole_usage() -> None:
    got = copy.deepcopy(LLAMA_SERVER_STREAM_END)
    normalise(got)
    assert got["usage"] == {"prompt_tokens": 296, "completion_tokens": 6,
                            "total_tokens": 302, "prompt_tokens_details": {"cached_tokens": 256}}


@pytest.fixture()
def llama_server_like() -> Iterator[str]:
    """Answers like llama.cpp's llama-server: ``timings`` beside usage, none when streaming."""

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        base = {"id": "chatcmpl-ls", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            return JSONResponse({**base, "object": "chat.completion", "choices": [{
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Reused most of it."}}],
                **copy.deepcopy(LLAMA_SERVER)})

        async def events() -> AsyncIterator[bytes]:
            chunk = {**base, "object": "chat.completion.chunk"}
            for delta, finish in (({"role": "assistant", "content": "Reused"}, None),
                                  ({"content": " it."}, None), ({}, "stop")):
                extra = LLAMA_SERVER_STREAM_END if finish else {}
                yield b"data: " + orjson.dumps({**chunk, "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish}], **extra}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model"}]})

    server = ServerThread(Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models)])).start()
    yield server.url + "/v1"
    server.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_gateway_reports_the_reuse_in_usage_and_metrics(tmp_path: Path,
                                                        llama_server_like: str) -> None:
    with running_gateway(llama_server_like, tmp_path) as (base, _):
        with httpx.Client(base_url=base, timeout=30) as c:
            body = {"model": "fake-model",
                    "messages": [{"role": "user", "content": "long document question"}]}
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 1536
            s = c.post("/v1/chat/completions", json={
                **body, "messages": [{"role": "user", "content": "another one"}],
                "stream": True, "stream_options": {"include_usage": True}})
            usage = [e["usage"] for e in sse_events(s.text)
                     if isinstance(e, dict) and e.get("usage")]
            assert usage and usage[-1]["prompt_tokens_details"]["cached_tokens"] == 256
            # A hit is Reprise's own reuse: every prompt token, whatever the model reused.
            hit = c.post("/v1/chat/completions", json=body)
            assert hit.headers["X-Reprise-Cache"] == "exact"
            assert hit.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 1550
            metrics = c.get("/metrics").text
    name = "reprise_upstream_prompt_tokens_total"
    assert _metric(metrics, name, kind="reused") == 1536 + 256
    assert _metric(metrics, name, kind="computed") == 14 + 40
    assert _metric(metrics, "reprise_upstream_answers_total", prompt_cache="reported") == 2


def test_embedded_llama_cpp_reports_no_reuse_and_queues_concurrent_streams(
        tmp_path: Path, llama_url: str) -> None:
    """The real llama.cpp server (llama-cpp-python): two streams at once both finish (its
    default would cut the first short with a bare [DONE]), and its answers carry no reuse
    figure, which the gateway counts as unreported instead of inventing one."""
    system = {"role": "system", "content": "You are terse. " * 40}

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway, timeout=300) as c:
            return list(await asyncio.gather(*(
                c.post("/v1/chat/completions", json={
                    "model": "default", "max_tokens": 12, "temperature": 0, "stream": True,
                    "messages": [system, {"role": "user", "content": f"Say {word}."}]})
                for word in ("yes", "no"))))

    with running_gateway(llama_url, tmp_path, upstream_model="smollm2-135m-instruct",
                         upstream_replicas=[llama_url]) as (gateway, _):
        responses = asyncio.run(both())
        for r in responses:
            assert r.status_code == 200, r.text
            events = sse_events(r.text)
            finishes = [ch.get("finish_reason") for e in events if isinstance(e, dict)
                        for ch in e.get("choices", []) if ch.get("finish_reason")]
            assert finishes and finishes[-1] in ("stop", "length"), events[-3:]
        with httpx.Client(base_url=gateway, timeout=300) as c:
            r = c.post("/v1/chat/completions", json={
                "model": "default", "max_tokens": 4, "temperature": 0,
                "messages": [system, {"role": "user", "content": "Say maybe."}]})
            assert r.status_code == 200, r.text
            usage = r.json()["usage"]
            assert usage["prompt_tokens"] > 0
            assert "cached_tokens" not in (usage.get("prompt_tokens_details") or {})
            metrics = c.get("/metrics").text
    assert _metric(metrics, "reprise_upstream_answers_total", prompt_cache="unreported") >= 1
    assert _metric(metrics, "reprise_upstream_answers_total", prompt_cache="reported") == 0
