"""Per-model request defaults: answer cap, sampling, a system prompt in the question's language.

The upstream is the test model server, which records what it was sent and honours
``max_tokens`` (cutting the answer to that many words with ``finish_reason: "length"``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reprise.config import Settings
from reprise.serving.model_defaults import apply_model_defaults
from reprise.serving.prompts import CHAT, GROUNDED, chat_prompt
from reprise.testing.upstream import start_fake_upstream
from tests_support.gateway import ask, running_gateway, sse_events

DEFAULTS = {"max_tokens": 6, "repeat_penalty": 1.25, "system_prompt": "auto"}


def user(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


@pytest.mark.parametrize(("question", "lang"), [
    ("O que são sistemas distribuídos?", "pt"),
    ("什么是分布式系统？", "zh"),
    ("What are distributed systems?", "en"),
    ("iPhone 15", "en"),  # too little evidence: English
])
def test_system_prompt_is_written_in_the_questions_language(question: str, lang: str) -> None:
    out = apply_model_defaults(user(question), DEFAULTS)
    assert out["messages"][0] == {"role": "system", "content": CHAT[lang]}
    assert out["messages"][1]["content"] == question
    assert out["max_tokens"] == 6 and out["repeat_penalty"] == 1.25
    assert "system_prompt" not in out


def test_the_request_wins() -> None:
    body = {**user("Qual é a capital do Brasil?"), "max_completion_tokens": 50,
            "repeat_penalty": 1.0,
            "messages": [{"role": "system", "content": "Be terse."},
                         {"role": "user", "content": "Qual é a capital do Brasil?"}]}
    out = apply_model_defaults(body, DEFAULTS)
    assert "max_tokens" not in out and out["max_completion_tokens"] == 50
    assert out["repeat_penalty"] == 1.0
    assert out["messages"] == body["messages"]


def test_no_defaults_and_grounded_requests() -> None:
    body = user("hello there, what is this?")
    assert apply_model_defaults(body, None) is body
    grounded = apply_model_defaults(body, DEFAULTS, grounded=True)
    assert grounded["messages"] == body["messages"] and grounded["max_tokens"] == 6
    fixed = apply_model_defaults(body, {"system_prompt": "Answer in haiku."})
    assert fixed["messages"][0]["content"] == "Answer in haiku."


def test_every_language_has_both_prompts_and_the_default_model_has_defaults() -> None:
    assert set(CHAT) == set(GROUNDED) == {"en", "pt", "zh"}
    assert all("[1]" in p for p in GROUNDED.values())
    settings = Settings()
    embedded = settings.model_defaults[settings.upstream_model]
    assert embedded["system_prompt"] == "auto" and embedded["max_tokens"] > 0
    assert chat_prompt("O que é fotossíntese?") == CHAT["pt"]


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[tuple[httpx.Client, Any]]:
    server, state = start_fake_upstream()
    try:
        with running_gateway(server.url + "/v1", tmp_path, store="sqlite",
                             model_defaults={"fake-model": DEFAULTS}) as (base, _comp):
            with httpx.Client(base_url=base, timeout=30) as client:
                yield client, state
    finally:
        server.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_capped_answer_says_so_and_is_replayed_as_cut(gw: Any, stream: bool) -> None:
    client, state = gw
    q = f"Por que o céu é azul e o mar também é azul? {uuid.uuid4().hex}"
    for tier in ("miss", "exact"):
        r = ask(client, q, stream=stream, stream_options={"include_usage": True})
        assert r.status_code == 200 and r.headers["x-reprise-cache"] == tier
        if stream:
            events = [e for e in sse_events(r.text) if isinstance(e, dict)]
            finish = [c["finish_reason"] for e in events for c in e["choices"]
                      if c.get("finish_reason")]
            usage = next(e["usage"] for e in events if e.get("usage"))
        else:
            finish = [r.json()["choices"][0]["finish_reason"]]
            usage = r.json()["usage"]
        assert finish == ["length"]
        assert usage["completion_tokens"] == 6
    sent = state.requests[-1]
    assert sent["max_tokens"] == 6 and sent["repeat_penalty"] == 1.25
    assert sent["messages"][0] == {"role": "system", "content": CHAT["pt"]}
    assert sum(1 for b in state.requests if b["messages"][-1]["content"] == q) == 1


def test_other_models_get_nothing(gw: Any) -> None:
    client, state = gw
    r = ask(client, f"[tools] weather? {uuid.uuid4().hex}", model="other-model")
    assert r.status_code == 200
    sent = state.requests[-1]
    assert "max_tokens" not in sent and sent["messages"][0]["role"] == "user"
