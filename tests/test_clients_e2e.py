"""Real clients against the gateway: the openai SDK, LangChain's ChatOpenAI, and the real
llama.cpp server with SmolLM2 as the upstream model (no test double in this file)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reprise.services.llama_server import MODEL_ALIAS
from tests_support.gateway import running_gateway


@pytest.fixture
def gateway(llama_url: str, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    with running_gateway(llama_url, tmp_path, store="sqlite",
                         upstream_model=MODEL_ALIAS) as (base, comp):
        yield base, comp


def test_openai_sdk_json_and_stream(gateway: tuple[str, Any]) -> None:
    from openai import OpenAI

    base, _ = gateway
    client = OpenAI(base_url=f"{base}/v1", api_key="unused")
    question = f"Name one colour. ({uuid.uuid4().hex[:6]})"
    args: dict[str, Any] = {"model": MODEL_ALIAS, "max_tokens": 24, "temperature": 0,
                            "messages": [{"role": "user", "content": question}]}
    raw = client.chat.completions.with_raw_response.create(**args)
    first = raw.parse()
    assert raw.headers["x-reprise-cache"] == "miss"
    assert first.choices[0].message.content
    raw2 = client.chat.completions.with_raw_response.create(**args)
    assert raw2.headers["x-reprise-cache"] == "exact"
    assert raw2.parse().choices[0].message.content == first.choices[0].message.content
    assert raw2.parse().usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens

    stream = client.chat.completions.create(**args, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == first.choices[0].message.content
    models = [m.id for m in client.models.list()]
    assert MODEL_ALIAS in models


def test_langchain_chat_openai(gateway: tuple[str, Any]) -> None:
    from langchain_openai import ChatOpenAI

    base, comp = gateway
    llm = ChatOpenAI(base_url=f"{base}/v1", api_key="unused", model=MODEL_ALIAS,
                     max_tokens=24, temperature=0)
    question = f"Say hello in Portuguese. ({uuid.uuid4().hex[:6]})"
    calls = comp.chat.upstream_calls
    a = llm.invoke(question)
    b = llm.invoke(question)
    assert a.content and a.content == b.content
    assert comp.chat.upstream_calls == calls + 1
    streamed = "".join(str(c.content) for c in llm.stream(question))
    assert streamed == a.content


def test_real_model_end_to_end_miss_then_hit_over_http(gateway: tuple[str, Any]) -> None:
    base, _comp = gateway
    body = {"model": MODEL_ALIAS, "max_tokens": 16, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": f"Count to three. {uuid.uuid4().hex[:6]}"}]}
    with httpx.Client(base_url=base, timeout=120) as client:
        live = client.post("/v1/chat/completions", json=body)
        assert live.headers["x-reprise-cache"] == "miss"
        assert live.text.rstrip().endswith("data: [DONE]")
        hit = client.post("/v1/chat/completions", json=body)
        assert hit.headers["x-reprise-cache"] == "exact"
    stats = httpx.get(f"{base}/admin/cache/stats").json()
    assert stats["entries"] >= 1
