"""Observability: X-Request-Id, Prometheus metrics by route/status/tier, clean JSON logs.

Real gateways over loopback in front of the controllable fake upstream; the log test runs
``reprise serve`` as a process with its real logging setup and reads what it wrote.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures_redis import GatewayProcess
from reprise.api.auth import add_key
from reprise.observability.logs import JsonFormatter, RedactSecrets, redact
from reprise.rag.tokens import count_tokens
from reprise.store.redis import RedisStore
from reprise.testing.upstream import FakeUpstreamState, free_port, start_fake_upstream
from tests_support.gateway import running_gateway, sse_events


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[Any, float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def settled(c: httpx.Client) -> dict[Any, float]:
    """Metrics once no other request is in flight (a stream is counted when it ends, which
    can be a moment after the client has read its last byte)."""
    for _ in range(100):
        m = samples(c.get("/metrics").text)
        if value(m, "reprise_inflight_requests") == 1:  # the /metrics request itself
            return m
        time.sleep(0.05)
    raise AssertionError("requests still in flight")


def ask(c: httpx.Client, q: str, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", {})
    return c.post("/v1/chat/completions", headers=headers, json={
        "model": "fake-model", "messages": [{"role": "user", "content": q}], **extra})


@pytest.fixture(scope="module")
def gw(fake_upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    url, _ = fake_upstream
    with running_gateway(url, tmp_path_factory.mktemp("obs"),
                         price_prompt_per_mtok=1000.0) as (base, comp), \
            httpx.Client(base_url=base, timeout=30) as c:
        yield c, comp


def test_request_id_is_echoed_or_generated(gw: Any) -> None:
    c, _ = gw
    r = c.get("/v1/models", headers={"X-Request-Id": "client-abc.123"})
    assert r.headers["x-request-id"] == "client-abc.123"
    generated = {c.get("/v1/models").headers["x-request-id"] for _ in range(5)}
    assert len(generated) == 5 and all(len(g) == 32 for g in generated)
    # Unsafe ids (header injection, log forging, huge) are replaced, not echoed.
    for bad in ("a b", "x" * 200, "id\"}{"):
        rid = c.get("/v1/models", headers={"X-Request-Id": bad}).headers["x-request-id"]
        assert rid != bad and len(rid) == 32
    # On errors and streams too.
    assert c.get("/nope", headers={"X-Request-Id": "e1"}).headers["x-request-id"] == "e1"
    bad_json = c.post("/v1/chat/completions", content=b"{", headers={"X-Request-Id": "e2"})
    assert bad_json.status_code == 400 and bad_json.headers["x-request-id"] == "e2"
    s = ask(c, f"stream id {uuid.uuid4().hex}", stream=True, headers={"X-Request-Id": "s1"})
    assert s.headers["x-request-id"] == "s1" and sse_events(s.text)[-1] == "[DONE]"


def test_metrics_by_route_status_tier_and_savings(gw: Any) -> None:
    c, _ = gw
    before = settled(c)
    q = f"What is the warranty period of model {uuid.uuid4().hex[:6]}?"
    assert ask(c, q).headers["x-reprise-cache"] == "miss"
    assert ask(c, q).headers["x-reprise-cache"] == "exact"
    assert ask(c, q, stream=True).headers["x-reprise-cache"] == "exact"
    assert ask(c, "broken [fail:503]").status_code == 502
    assert c.post("/v1/chat/completions", json={"messages": []}).status_code == 400
    assert c.get("/v1/collections/absent").status_code == 404
    assert c.get("/no/such/path").status_code == 404
    m = settled(c)

    def delta(name: str, **labels: str) -> float:
        return value(m, name, **labels) - value(before, name, **labels)

    chat = "/v1/chat/completions"
    assert delta("reprise_http_requests_total", route=chat, status="200") == 3
    assert delta("reprise_http_requests_total", route=chat, status="502") == 1
    assert delta("reprise_http_requests_total", route=chat, status="400") == 1
    assert delta("reprise_http_requests_total", route="/v1/collections/{name}",
                 status="404") == 1
    assert delta("reprise_http_requests_total", route="unmatched", status="404") == 1
    assert delta("reprise_http_request_seconds_count", route=chat) == 5
    # The failed request missed the cache too: it is counted like a failed stream always
    # was, so the dashboard's failed requests and upstream errors agree.
    assert delta("reprise_cache_requests_total", tier="miss") == 2
    assert delta("reprise_cache_requests_total", tier="exact") == 2
    assert delta("reprise_chat_latency_seconds_count", outcome="hit") == 2
    assert delta("reprise_chat_latency_seconds_count", outcome="miss") == 2
    assert delta("reprise_upstream_latency_seconds_count") == 2  # the miss + the failure
    assert delta("reprise_upstream_errors_total", status="502") == 1
    assert delta("reprise_tokens_saved_total", kind="prompt") > 0
    assert delta("reprise_tokens_saved_total", kind="completion") > 0
    assert delta("reprise_cost_saved_total") > 0
    # The model reported its usage: nothing saved was estimated by the gateway.
    assert delta("reprise_tokens_saved_estimated_total", kind="prompt") == 0


@pytest.fixture(scope="module")
def no_stream_usage() -> Any:
    """A model server that, like llama.cpp's, sends no usage when streaming."""
    server, state = start_fake_upstream(FakeUpstreamState(stream_usage=False))
    try:
        yield server.url + "/v1", state
    finally:
        server.stop()


def test_streamed_miss_without_usage_is_counted_by_the_gateway(
        no_stream_usage: Any, tmp_path: Path) -> None:
    url, state = no_stream_usage
    q = f"How long does shipping to Porto take, order {uuid.uuid4().hex[:6]}?"
    with running_gateway(url, tmp_path, price_prompt_per_mtok=1000.0,
                         price_completion_per_mtok=2000.0) as (base, _), \
            httpx.Client(base_url=base, timeout=30) as c:
        before = settled(c)
        miss = sse_events(ask(c, q, stream=True,
                              stream_options={"include_usage": True}).text)
        assert state.requests[-1]["stream_options"] == {"include_usage": True}  # asked...
        answer = "".join(ch["delta"].get("content") or "" for e in miss[:-1]
                         for ch in e["choices"])
        usage_events = [e for e in miss if isinstance(e, dict) and e.get("usage")]
        assert len(usage_events) == 1 and usage_events[0]["choices"] == []  # ...got none
        prompt = 3 + 3 + count_tokens(q)  # reply priming + one message's framing + its text
        completion = count_tokens(answer)
        assert usage_events[0]["usage"] == {
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "estimated": True}
        assert miss[-1] == "[DONE]" and miss[-2] is usage_events[0]
        # A client that did not ask for usage does not get the gateway's either.
        other = sse_events(ask(c, q + " (again)", stream=True).text)
        assert not [e for e in other if isinstance(e, dict) and e.get("usage")]
        # Hits on the stored answer report what they saved, marked as estimated.
        hit = ask(c, q)
        assert hit.headers["x-reprise-cache"] == "exact"
        usage = hit.json()["usage"]
        assert usage["estimated"] is True and usage["completion_tokens"] == completion
        assert usage["prompt_tokens_details"]["cached_tokens"] == prompt
        replay = sse_events(ask(c, q, stream=True, stream_options={"include_usage": True}).text)
        assert [e["usage"]["estimated"] for e in replay if isinstance(e, dict)
                and e.get("usage")] == [True]
        m = settled(c)
        events = c.get("/admin/events").json()["data"]

    def delta(name: str, **labels: str) -> float:
        return value(m, name, **labels) - value(before, name, **labels)

    for kind, n in (("prompt", prompt), ("completion", completion)):
        assert delta("reprise_tokens_saved_total", kind=kind) == 2 * n
        assert delta("reprise_tokens_saved_estimated_total", kind=kind) == 2 * n
    assert delta("reprise_cost_saved_total") == pytest.approx(
        2 * (prompt * 1000.0 + completion * 2000.0) / 1e6)
    hits = [e for e in events if e["tier"] == "exact"]
    assert [(e["saved_tokens"], e["tokens_estimated"]) for e in hits] == [
        (prompt + completion, True)] * 2
    assert all(not e["tokens_estimated"] for e in events if e["tier"] == "miss")


def test_store_errors_are_counted_and_fail_open(fake_upstream: Any, tmp_path: Path) -> None:
    url, _ = fake_upstream
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", 8, 1 << 20, prefix="dead")
    with running_gateway(url, tmp_path, store_obj=dead) as (base, _), \
            httpx.Client(base_url=base, timeout=30) as c:
        r = ask(c, "store is down")
        assert r.status_code == 200 and r.headers["x-reprise-cache"] == "miss"
        m = samples(c.get("/metrics").text)
    errors = {labels: v for (name, labels), v in m.items()
              if name == "reprise_store_errors_total"}
    assert sum(errors.values()) >= 2  # the lookup and the store both failed
    assert (("op", "get_exact"),) in errors


def test_logs_are_json_with_request_id_and_hold_no_prompt_or_key(
        fake_upstream: Any, tmp_path: Path) -> None:
    url, _ = fake_upstream
    keys = tmp_path / "keys.toml"
    raw, key = add_key(keys, "acme")
    secret_prompt = f"my diagnosis is {uuid.uuid4().hex} please keep it private"
    gw = GatewayProcess("logs", tmp_path, {
        "REPRISE_UPSTREAM_URL": url, "REPRISE_UPSTREAM_MODEL": "fake-model",
        "REPRISE_API_KEYS_FILE": str(keys), "REPRISE_JSON_LOGS": "true",
        "REPRISE_LOG_LEVEL": "info"}).start()
    try:
        gw.wait_ready()
        h = {"Authorization": f"Bearer {raw}", "X-Request-Id": "trace-42"}
        with httpx.Client(base_url=gw.url, headers=h, timeout=60) as c:
            assert ask(c, secret_prompt).status_code == 200
            assert ask(c, secret_prompt, stream=True).status_code == 200
            assert ask(c, secret_prompt + " [fail:500]").status_code == 502
            assert ask(c, secret_prompt, temperature=9).status_code == 400
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            assert ask(c, secret_prompt, headers={
                "Authorization": f"Bearer {raw}x"}).status_code == 401
    finally:
        gw.stop()
    text = gw.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, text[-2000:]
    access = [r for r in lines if r["logger"] == "reprise.access"]
    chat = [r for r in access if r.get("route") == "/v1/chat/completions"]
    assert len(chat) == 5
    assert {r["status"] for r in chat} == {200, 502, 400, 401}
    traced = [r for r in chat if r.get("request_id") == "trace-42"]
    assert len(traced) == 4 and all(r["tenant"] == "acme" for r in traced)
    assert all(r["key_id"] == key.key_id for r in traced)
    assert {r.get("tier") for r in traced if r["status"] == 200} == {"miss", "exact"}
    # Nothing about the prompt, nothing of the key.
    assert secret_prompt.split()[3] not in text
    assert raw not in text and raw[3:15] not in text


def test_redaction_masks_keys_in_any_message(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1,
                               "upstream said: Authorization: Bearer %s (sk-abcdefghijkl)",
                               ("rk-SECRETSECRET123",), None)
    assert RedactSecrets().filter(record)
    out = JsonFormatter().format(record)
    assert "SECRET" not in out and "sk-abcdefghijkl" not in out
    assert "[redacted]" in json.loads(out)["msg"]
    assert redact("nothing to see") == "nothing to see"
