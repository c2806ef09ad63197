"""Each protocol's error shapes, failures, tools and cache controls, over real HTTP.

The upstream is the controllable test server (``reprise.testing.upstream``): a real model
cannot be made to fail mid-stream, answer with a tool call or be counted on demand. The
embedder is the real USE model; the clients are the real SDKs where an SDK exists.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reprise.api.auth import add_key
from tests_support.gateway import running_gateway


@pytest.fixture(scope="module")
def gw(fake_upstream: Any, use_embedder: Any, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[tuple[str, Any, Any]]:
    from reprise.embed.e5 import E5Embedder

    url, state = fake_upstream
    with running_gateway(url, tmp_path_factory.mktemp("proto-fail"), embedder=use_embedder,
                         rag_embedder=E5Embedder(), store="sqlite",
                         upstream_read_timeout=5.0) as (base, comp):
        yield base, comp, state


@pytest.fixture
def http(gw: tuple[str, Any, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw[0], timeout=60, headers={
            "X-Reprise-Namespace": f"f{uuid.uuid4().hex[:10]}"}) as client:
        yield client


def ollama_chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


def anthropic_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "max_tokens": 64,
            "messages": [{"role": "user", "content": text}], **extra}


def sse(text: str) -> list[tuple[str, Any]]:
    """(event name or "", parsed data) of each SSE message."""
    out = []
    for block in text.split("\n\n"):
        name, data = "", None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


# -- malformed input: each protocol's own shape --------------------------------------------------
@pytest.mark.parametrize(("path", "body"), [
    ("/api/chat", b"{oops"),
    ("/api/chat", b'{"model": "fake-model", "messages": "hi"}'),
    ("/api/generate", b'{"prompt": "no model"}'),
    ("/api/generate", b'{"model": "fake-model", "prompt": "x", "options": {"num_predict": "a"}}'),
    ("/api/embed", b'{"model": "m"}'),
])
def test_ollama_errors_are_ollama_shaped(http: httpx.Client, path: str, body: bytes) -> None:
    r = http.post(path, content=body)
    assert r.status_code == 400
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str)


@pytest.mark.parametrize(("body", "where"), [
    (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}', "max_tokens"),
    (b'{"model": "fake-model", "max_tokens": 5, "messages": []}', "messages"),
    (b'{"model": "fake-model", "max_tokens": 5, "messages": [{"role": "user", "content": '
     b'[{"type": "document", "source": {}}]}]}', "messages.0.content.0"),
    (b'{"model": "fake-model", "max_tokens": 5, "temperature": 1.5, '
     b'"messages": [{"role": "user", "content": "x"}]}', "temperature"),
])
def test_anthropic_errors_are_anthropic_shaped(gw: tuple[str, Any, Any], body: bytes,
                                               where: str) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=gw[0], api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as err:
        client.post("/v1/messages", cast_to=object, body=json.loads(body))
    error = err.value.body
    assert isinstance(error, dict) and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert where in error["error"]["message"]


def test_openai_surfaces_errors_are_openai_shaped(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "fake-model", "prompt": [1, 2, 3]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = http.post("/v1/responses", json={"model": "fake-model", "input": "x",
                                         "tools": [{"type": "web_search"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools.0"
    r = http.post("/v1/responses", json={"model": "gpt-9", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.post("/v1/completions", content=b"[]")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_oversized_body_is_413_in_each_shape(fake_upstream: Any, tmp_path: Path) -> None:
    big = "x" * 5000
    with running_gateway(fake_upstream[0], tmp_path, max_body_bytes=2048) as (base, _):
        a = httpx.post(f"{base}/api/chat", json=ollama_chat(big))
        b = httpx.post(f"{base}/v1/messages", json=anthropic_body(big))
        c = httpx.post(f"{base}/v1/responses", json={"input": big})
    assert a.status_code == b.status_code == c.status_code == 413
    assert "limit" in a.json()["error"]
    assert b.json()["error"]["type"] == "request_too_large"
    assert c.json()["error"]["code"] == "body_too_large"


# -- upstream failures: status before the stream, the protocol's error event after -----------
def test_upstream_failure_before_first_token_gets_an_http_status(http: httpx.Client) -> None:
    a = http.post("/api/chat", json=ollama_chat("[fail:503] down?"))
    b = http.post("/v1/messages", json=anthropic_body("[fail:503] down?", stream=True))
    c = http.post("/v1/responses", json={"model": "fake-model", "input": "[fail:503] down?",
                                         "stream": True})
    assert a.status_code == b.status_code == c.status_code == 502
    assert "503" in a.json()["error"]
    assert b.json()["error"]["type"] == "api_error"
    assert c.json()["error"]["code"] == "upstream_error"


@pytest.mark.parametrize("surface", ["ollama", "anthropic", "responses", "completions"])
def test_cut_stream_ends_with_the_protocol_error_and_is_not_stored(
        http: httpx.Client, gw: tuple[str, Any, Any], surface: str) -> None:
    comp = gw[1]
    q = f"[cut] tell me a story {uuid.uuid4().hex[:6]}"
    path, body = {
        "ollama": ("/api/chat", ollama_chat(q)),
        "anthropic": ("/v1/messages", anthropic_body(q, stream=True)),
        "responses": ("/v1/responses", {"model": "fake-model", "input": q, "stream": True}),
        "completions": ("/v1/completions", {"model": "fake-model", "prompt": q,
                                            "stream": True}),
    }[surface]
    before = comp.chat.upstream_calls
    r = http.post(path, json=body)
    assert r.status_code == 200  # the status line went out with the first token
    if surface == "ollama":
        last = json.loads(r.text.strip().splitlines()[-1])
        assert "error" in last and "done" not in last
    else:
        events = sse(r.text)
        name, data = events[-1]
        if surface == "completions":
            assert "error" in data
        else:
            assert name == "error"
            assert data["type"] == "error"
    again = http.post(path, json=body)
    assert comp.chat.upstream_calls == before + 2  # nothing partial was stored
    assert again.status_code == 200


# -- tools, images ------------------------------------------------------------------------------
def test_tool_calls_render_in_each_protocol(http: httpx.Client) -> None:
    tools_anthropic = [{"name": "get_weather", "description": "Weather in a city",
                        "input_schema": {"type": "object",
                                         "properties": {"city": {"type": "string"}}}}]
    m = http.post("/v1/messages", json=anthropic_body("[tools] weather in Paris?",
                                                      tools=tools_anthropic)).json()
    assert m["stop_reason"] == "tool_use"
    use = next(b for b in m["content"] if b["type"] == "tool_use")
    assert use["name"] and isinstance(use["input"], dict)
    streamed = sse(http.post("/v1/messages", json=anthropic_body(
        "[tools] weather in Paris?", tools=tools_anthropic, stream=True)).text)
    starts = [d["content_block"] for n, d in streamed if n == "content_block_start"]
    assert any(b["type"] == "tool_use" and b["name"] == use["name"] for b in starts)
    assert next(d for n, d in streamed if n == "message_delta")["delta"]["stop_reason"] == \
        "tool_use"

    tools_openai = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    o = http.post("/api/chat", json=ollama_chat("[tools] weather in Lisbon?", stream=False,
                                                tools=tools_openai)).json()
    call = o["message"]["tool_calls"][0]["function"]
    assert call["name"] and isinstance(call["arguments"], dict)

    r = http.post("/v1/responses", json={"model": "fake-model", "input": "[tools] weather?",
                                         "tools": [{"type": "function", "name": "get_weather",
                                                    "parameters": {"type": "object"}}]}).json()
    assert next(i for i in r["output"] if i["type"] == "function_call")["name"]


def test_tool_round_trip_reaches_upstream_as_openai_messages(
        http: httpx.Client, gw: tuple[str, Any, Any]) -> None:
    state = gw[2]
    http.post("/v1/messages", json={"model": "fake-model", "max_tokens": 32, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "...", "signature": "s"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "text", "text": "and tomorrow?"}]}]})
    sent = state.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                    "arguments": '{"city":"Paris"}'}
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}

    http.post("/api/chat", json=ollama_chat("x", stream=False, messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "rainy", "tool_name": "get_weather"}]))
    sent = state.requests[-1]["messages"]
    assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]


def test_images_bypass_the_semantic_tier(http: httpx.Client, gw: tuple[str, Any, Any]) -> None:
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAA"
           "BJRU5ErkJggg==")
    body = ollama_chat("What is in this picture?", stream=False)
    body["messages"][0]["images"] = [png]
    r = http.post("/api/chat", json=body)
    assert r.status_code == 200 and r.headers["x-reprise-cache"] == "miss"
    assert "x-reprise-lookup" not in r.headers  # the semantic tier did not run
    sent = gw[2].requests[-1]["messages"][0]["content"]
    assert sent[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert http.post("/api/chat", json=body).headers["x-reprise-cache"] == "exact"


# -- cache controls, namespaces, keys, limits, collections on every surface ------------------------
def test_cache_control_and_namespaces_apply_to_every_surface(
        http: httpx.Client, gw: tuple[str, Any, Any]) -> None:
    comp = gw[1]
    q = f"What is a namespace? {uuid.uuid4().hex[:6]}"
    before = comp.chat.upstream_calls
    http.post("/v1/messages", json=anthropic_body(q), headers={"Cache-Control": "no-store"})
    r = http.post("/v1/messages", json=anthropic_body(q))
    assert r.headers["x-reprise-cache"] == "miss"  # no-store stored nothing
    assert http.post("/v1/messages", json=anthropic_body(q)).headers["x-reprise-cache"] == \
        "exact"
    bypass = http.post("/api/generate", json={"model": "fake-model", "prompt": q,
                                              "stream": False, "options": {"num_predict": 64}},
                       headers={"Cache-Control": "no-cache"})
    assert bypass.headers["x-reprise-cache"] == "bypass"
    other = http.post("/v1/messages", json=anthropic_body(q),
                      headers={"X-Reprise-Namespace": f"o{uuid.uuid4().hex[:8]}"})
    assert other.headers["x-reprise-cache"] == "miss"
    assert comp.chat.upstream_calls == before + 4


def test_api_keys_and_rate_limits_in_each_shape(fake_upstream: Any, tmp_path: Path) -> None:
    import anthropic
    import ollama

    path = tmp_path / "keys.toml"
    raw, _ = add_key(path, "acme", "user", name="app", rpm=2)
    with running_gateway(fake_upstream[0], tmp_path, api_keys_file=path) as (base, _):
        good = anthropic.Anthropic(base_url=base, api_key=raw, max_retries=0)
        assert good.messages.create(**anthropic_body("hello keys")).content
        with pytest.raises(anthropic.AuthenticationError) as auth:
            anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0
                                ).messages.create(**anthropic_body("x"))
        assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        with pytest.raises(ollama.ResponseError) as no_key:
            ollama.Client(host=base).chat(model="fake-model",
                                          messages=[{"role": "user", "content": "x"}])
        assert no_key.value.status_code == 401
        keyed = ollama.Client(host=base, headers={"Authorization": f"Bearer {raw}"})
        keyed.chat(model="fake-model", messages=[{"role": "user", "content": "second"}])
        with pytest.raises(ollama.ResponseError) as limited:
            keyed.chat(model="fake-model", messages=[{"role": "user", "content": "third"}])
        assert limited.value.status_code == 429 and "rate limit" in limited.value.error


def test_document_collections_through_ollama_and_anthropic(
        http: httpx.Client, gw: tuple[str, Any, Any]) -> None:
    state = gw[2]
    missing = http.post("/api/chat", json=ollama_chat("What is Reprise?", stream=False),
                        headers={"X-Reprise-Collection": "nowhere"})
    assert missing.status_code == 404 and "nowhere" in missing.json()["error"]
    assert http.post("/v1/collections", json={"name": "handbook"}).status_code in (200, 201)
    doc = (b"# Handbook\n\nThe office opens at 08:30 on weekdays. Badges are collected at the "
           b"front desk on the ground floor.\n")
    r = http.post("/v1/collections/handbook/documents",
                  files=[("files", ("handbook.md", io.BytesIO(doc)))])
    job = r.json()["job_id"]
    deadline = time.monotonic() + 120
    while http.get(f"/v1/jobs/{job}").json()["state"] not in ("done", "partial", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    answer = http.post("/api/chat", json=ollama_chat("When does the office open?",
                                                     stream=False),
                       headers={"X-Reprise-Collection": "handbook"}).json()
    assert answer["citations"] and "08:30" in json.dumps(state.requests[-1]["messages"])
    m = http.post("/v1/messages", json=anthropic_body("When does the office open?",
                                                      collection="handbook")).json()
    assert m["citations"] and m["content"][0]["text"]


def test_concurrent_identical_questions_share_one_upstream_call_across_protocols(
        gw: tuple[str, Any, Any]) -> None:
    """Single-flight works on the canonical request, whichever protocol each caller used."""
    import asyncio

    comp = gw[1]
    q = f"[slow:0.6] What is single-flight? {uuid.uuid4().hex[:6]}"
    headers = {"X-Reprise-Namespace": f"s{uuid.uuid4().hex[:8]}"}

    async def burst() -> list[str]:
        async with httpx.AsyncClient(base_url=gw[0], timeout=30, headers=headers) as c:
            rs = await asyncio.gather(
                c.post("/v1/chat/completions", json={"model": "fake-model", "max_tokens": 64,
                                                     "messages": [{"role": "user",
                                                                   "content": q}]}),
                c.post("/api/chat", json=ollama_chat(q, stream=False,
                                                     options={"num_predict": 64})),
                c.post("/v1/messages", json=anthropic_body(q)),
                c.post("/v1/messages", json=anthropic_body(q, stream=True)),
                c.post("/v1/completions", json={"model": "fake-model", "prompt": q,
                                                "max_tokens": 64}))
        return [rs[0].json()["choices"][0]["message"]["content"],
                rs[1].json()["message"]["content"], rs[2].json()["content"][0]["text"],
                "".join(d["delta"]["text"] for n, d in sse(rs[3].text)
                        if n == "content_block_delta"),
                rs[4].json()["choices"][0]["text"]]

    before = comp.chat.upstream_calls
    texts = asyncio.run(burst())
    assert comp.chat.upstream_calls == before + 1
    assert len(set(texts)) == 1 and texts[0].startswith("Answer #")


def test_votes_accept_each_protocols_answer_id(http: httpx.Client) -> None:
    q = f"What is a vote? {uuid.uuid4().hex[:6]}"
    m = http.post("/v1/messages", json=anthropic_body(q)).json()
    assert m["id"].startswith("msg_")
    vote = http.post("/v1/feedback", json={"response_id": m["id"], "vote": "down"})
    assert vote.status_code == 200, vote.text
    assert http.post("/v1/messages", json=anthropic_body(q)).headers[
        "x-reprise-cache"] == "miss"  # a down on a fresh answer evicted it
    r = http.post("/v1/responses", json={"model": "fake-model", "input": q + "?"}).json()
    assert http.post("/v1/feedback", json={"response_id": r["id"], "vote": "up"}
                     ).status_code == 200
    o = http.post("/api/chat", json=ollama_chat(q + "!", stream=False))
    rid = o.headers["x-reprise-response-id"]
    assert http.post("/v1/feedback", json={"response_id": rid, "vote": "up"}).status_code == 200


def test_model_names_with_and_without_the_latest_tag_are_one_model(
        http: httpx.Client, gw: tuple[str, Any, Any]) -> None:
    q = f"Tags? {uuid.uuid4().hex[:6]}"
    a = http.post("/api/chat", json={**ollama_chat(q, stream=False), "model": "fake-model"})
    b = http.post("/api/chat", json={**ollama_chat(q, stream=False),
                                     "model": "fake-model:latest"})
    assert a.status_code == b.status_code == 200
    assert b.headers["x-reprise-cache"] == "exact"
    assert b.json()["model"] == "fake-model:latest"
    assert gw[2].requests[-1]["model"] == "fake-model"
    other = http.post("/api/chat", json={**ollama_chat(q, stream=False),
                                         "model": "fake-model:7b"})
    assert other.status_code == 404 and "REPRISE_MODEL_MAP" in other.json()["error"]


def test_serve_listens_on_a_second_port_for_ollama_apps(fake_upstream: Any,
                                                        tmp_path: Path) -> None:
    """``reprise serve`` with ``REPRISE_OLLAMA_PORT``: the same gateway on both ports, as a
    separate process; a second one asking for a taken Ollama port refuses to start."""
    import ollama

    from fixtures_redis import GatewayProcess
    from reprise.testing.upstream import free_port

    port = free_port()
    env = {"REPRISE_UPSTREAM_URL": fake_upstream[0], "REPRISE_UPSTREAM_MODEL": "fake-model",
           "REPRISE_SEMANTIC_ENABLED": "false", "REPRISE_OLLAMA_PORT": str(port)}
    gateway = GatewayProcess("ollama-port", tmp_path / "a", env).start()
    try:
        gateway.wait_ready()
        answer = ollama.Client(host=f"http://127.0.0.1:{port}").chat(
            model="fake-model", messages=[{"role": "user", "content": "on 11434?"}])
        assert answer.message.content
        assert httpx.get(f"{gateway.url}/api/version").status_code == 200
        clash = GatewayProcess("clash", tmp_path / "b", env).start()
        assert clash.proc is not None
        assert clash.proc.wait(timeout=120) != 0
        assert f"{port}" in clash.log_tail() and "Ollama port" in clash.log_tail()
    finally:
        gateway.stop()


def test_ollama_pull_and_anthropic_count_tokens(gw: tuple[str, Any, Any]) -> None:
    import anthropic
    import ollama

    client = ollama.Client(host=gw[0])
    assert client.pull("fake-model").status == "success"
    assert [p.status for p in client.pull("fake-model:latest", stream=True)] == ["success"]
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("llama-unknown")
    assert err.value.status_code == 404
    counter = anthropic.Anthropic(base_url=gw[0], api_key="unused").messages
    short = counter.count_tokens(model="fake-model", messages=[
        {"role": "user", "content": "hi"}]).input_tokens
    long = counter.count_tokens(model="fake-model", system="Be brief.", messages=[
        {"role": "user", "content": "Explain distributed systems in detail, please. " * 20}]
    ).input_tokens
    assert 0 < short < long
