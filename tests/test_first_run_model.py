"""The embedded model as a newcomer meets it (the real llama.cpp server, no test double):
an answer capped by the model's defaults says so, and a question too long for the model's
context gets a clear 400 whether it streams or not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reprise.config import Settings
from reprise.services.llama_server import MODEL_ALIAS
from tests_support.gateway import running_gateway, sse_events, stream_text

CAP = 12


@pytest.fixture
def gateway(llama_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    defaults = {**Settings().model_defaults[MODEL_ALIAS], "max_tokens": CAP}
    with running_gateway(llama_url, tmp_path, store="sqlite", upstream_model=MODEL_ALIAS,
                         model_defaults={MODEL_ALIAS: defaults}) as (base, _comp):
        with httpx.Client(base_url=base, timeout=600) as client:
            yield client


def ask(client: httpx.Client, question: str, **extra: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": question}], **extra})


def test_capped_answer_ends_with_length_and_the_exact_count(gateway: httpx.Client) -> None:
    q = f"Explique em detalhes a história dos sistemas distribuídos. ({uuid.uuid4().hex[:6]})"
    r = ask(gateway, q, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["x-reprise-cache"] == "miss"
    events = [e for e in sse_events(r.text) if isinstance(e, dict)]
    assert stream_text(events).strip()
    finish = [c["finish_reason"] for e in events for c in e.get("choices") or []
              if c.get("finish_reason")]
    assert finish == ["length"]
    usage = next(e["usage"] for e in events if e.get("usage"))
    assert usage["completion_tokens"] == CAP
    hit = ask(gateway, q)
    assert hit.headers["x-reprise-cache"] == "exact"
    assert hit.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_question_longer_than_the_context_gets_a_clear_400(gateway: httpx.Client,
                                                           stream: bool) -> None:
    q = f"{uuid.uuid4().hex} " + "Why is the sky blue and the sea green? " * 250
    r = ask(gateway, q, stream=stream)
    assert r.status_code == 400, r.text[:300]
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]["message"]
    assert "context" in message and "closed the stream" not in message
