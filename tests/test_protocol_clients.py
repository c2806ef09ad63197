"""Every client protocol through its real client library, over loopback, against a real
gateway whose upstream is the real llama.cpp server (SmolLM2) and whose semantic tier runs
the real multilingual USE embedder and cross-encoder. No test double in this file.

Clients: ``ollama`` (the official one), ``langchain-ollama`` (OllamaLLM, ChatOllama,
OllamaEmbeddings), plain ``httpx`` as a ``requests`` script would call Ollama, ``openai``
(text completions and Responses), ``langchain-openai``'s ``OpenAI`` class and ``anthropic``.
A question served from the cache is recognised by the gateway's upstream call counter not
moving and the answer being the first one's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reprise.services.llama_server import MODEL_ALIAS
from tests_support.gateway import running_gateway

MODEL = MODEL_ALIAS


@pytest.fixture(scope="module")
def gw(llama_url: str, use_embedder: Any, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[tuple[str, Any]]:
    tmp = tmp_path_factory.mktemp("protocols")
    with running_gateway(llama_url, tmp, embedder=use_embedder, store="sqlite",
                         upstream_model=MODEL) as (base, comp):
        yield base, comp


@pytest.fixture
def ns() -> dict[str, str]:
    """A fresh namespace per test: each test sees only its own cache entries."""
    return {"X-Reprise-Namespace": f"p{uuid.uuid4().hex[:10]}"}


def calls(gw: tuple[str, Any]) -> int:
    return int(gw[1].chat.upstream_calls)


# -- Ollama ------------------------------------------------------------------------------------
def test_ollama_client_chat_repeat_stream_paraphrase_and_generate(
        gw: tuple[str, Any], ns: dict[str, str]) -> None:
    import ollama

    client = ollama.Client(host=gw[0], headers=ns)
    opts = {"temperature": 0, "num_predict": 24}
    before = calls(gw)
    first = client.chat(model=MODEL, options=opts,
                        messages=[{"role": "user", "content": "O que são sistemas distribuídos?"}])
    assert first.message.role == "assistant" and first.message.content
    assert first.done and first.done_reason in ("stop", "length")
    assert first.prompt_eval_count and first.eval_count and first.total_duration
    assert calls(gw) == before + 1

    again = client.chat(model=MODEL, options=opts,
                        messages=[{"role": "user", "content": "O que são sistemas distribuídos?"}])
    assert again.message.content == first.message.content

    parts = list(client.chat(model=f"{MODEL}:latest", options=opts, stream=True, messages=[
        {"role": "user", "content": "O que são sistemas distribuídos?"}]))
    assert "".join(p.message.content or "" for p in parts) == first.message.content
    assert parts[-1].done and not any(p.done for p in parts[:-1])

    paraphrase = client.chat(model=MODEL, options=opts, messages=[
        {"role": "user", "content": "Explique sistemas distribuídos"}])
    assert paraphrase.message.content == first.message.content

    generated = client.generate(model=MODEL, prompt="O que são sistemas distribuídos?",
                                options=opts)
    assert generated.response == first.message.content  # /api/generate shares the entry
    assert calls(gw) == before + 1


def test_ollama_rest_api_as_a_requests_script_calls_it(gw: tuple[str, Any],
                                                       ns: dict[str, str]) -> None:
    """The course material's style: JSON in, ``result["message"]["content"]`` out."""
    base = gw[0]
    body = {"model": MODEL, "stream": False, "options": {"temperature": 1.3, "seed": 7,
                                                         "num_predict": 16},
            "messages": [{"role": "user", "content": "Name a colour."}]}
    with httpx.Client(base_url=base, headers=ns, timeout=120) as http:
        result = http.post("/api/chat", json=body).json()
        assert isinstance(result["message"]["content"], str) and result["done"] is True
        hit = http.post("/api/chat", json=body)
        assert hit.headers["x-reprise-cache"] == "exact"
        assert hit.json()["message"]["content"] == result["message"]["content"]
        assert hit.json()["reprise"]["cache"] == "exact"

        lines = []
        with http.stream("POST", "/api/generate", json={
                "model": MODEL, "prompt": "Name a colour.", "options": body["options"]}) as r:
            assert r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert "".join(x["response"] for x in lines) == result["message"]["content"]
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] >= 1

        one = http.post("/api/embed", json={"model": "any", "input": "hello"}).json()
        many = http.post("/api/embed", json={"model": "any", "input": ["a", "b"]}).json()
        legacy = http.post("/api/embeddings", json={"model": "any", "prompt": "hello"}).json()
        assert len(one["embeddings"]) == 1 and len(many["embeddings"]) == 2
        assert len(legacy["embedding"]) == len(one["embeddings"][0]) == 512
        assert abs(sum(a * b for a, b in zip(legacy["embedding"], one["embeddings"][0],
                                              strict=True)) - 1.0) < 1e-4

        missing = http.post("/api/chat", json={**body, "model": "llama9"})
        assert missing.status_code == 404
        assert set(missing.json()) == {"error"}
        assert missing.json()["error"].startswith("model 'llama9' not found")
        assert "REPRISE_MODEL_MAP" in missing.json()["error"]
        bad = http.post("/api/generate", content=b"{not json")
        assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
        assert http.get("/").text == "Ollama is running"


def test_ollama_client_listing_and_errors(gw: tuple[str, Any]) -> None:
    import ollama

    client = ollama.Client(host=gw[0])
    assert MODEL in [m.model for m in client.list().models]
    assert MODEL in [m.model for m in client.ps().models]
    assert "completion" in (client.show(MODEL).capabilities or [])
    assert httpx.get(f"{gw[0]}/api/version").json()["version"]
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404 and "nope" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nope")
    assert err.value.status_code == 404
    embedded = client.embed(model="any", input=["uno", "dos"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 512
    warm = client.generate(model=MODEL, prompt="")  # how apps preload a model
    assert warm.done and warm.done_reason == "load"


def test_langchain_ollama_llm_chat_and_embeddings(gw: tuple[str, Any],
                                                  ns: dict[str, str]) -> None:
    from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM

    kwargs = {"base_url": gw[0], "client_kwargs": {"headers": ns}}
    llm = OllamaLLM(model=MODEL, temperature=0, num_predict=16, **kwargs)
    before = calls(gw)
    a = llm.invoke("What is a distributed system?")
    b = llm.invoke("What is a distributed system?")
    assert a and a == b
    assert "".join(llm.stream("What is a distributed system?")) == a
    chat = ChatOllama(model=MODEL, temperature=0, num_predict=16, **kwargs)
    assert chat.invoke("What is a distributed system?").content == a  # same canonical request
    assert calls(gw) == before + 1
    vectors = OllamaEmbeddings(model="any", **kwargs).embed_documents(["one", "two"])
    assert len(vectors) == 2 and len(vectors[0]) == 512


# -- OpenAI text completions and Responses ------------------------------------------------------
def test_openai_text_completions_sdk_and_langchain(gw: tuple[str, Any],
                                                   ns: dict[str, str]) -> None:
    import openai
    from langchain_openai import OpenAI

    client = openai.OpenAI(base_url=f"{gw[0]}/v1", api_key="unused", default_headers=ns)
    before = calls(gw)
    first = client.completions.create(model=MODEL, prompt="Name a fruit.", max_tokens=12,
                                      temperature=0)
    assert first.object == "text_completion" and first.choices[0].text
    assert first.id.startswith("cmpl-")
    again = client.completions.with_raw_response.create(
        model=MODEL, prompt="Name a fruit.", max_tokens=12, temperature=0)
    assert again.headers["x-reprise-cache"] == "exact"
    parsed = again.parse()
    assert parsed.choices[0].text == first.choices[0].text
    assert parsed.usage is not None and parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == parsed.usage.prompt_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Name a fruit.", max_tokens=12, temperature=0, stream=True)
        if c.choices)
    assert streamed == first.choices[0].text
    echoed = client.completions.create(model=MODEL, prompt="Name a fruit.", max_tokens=12,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text == "Name a fruit." + first.choices[0].text
    assert calls(gw) == before + 1
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="def f(", suffix="return 1")
    assert err.value.body["param"] == "suffix"  # type: ignore[index]

    llm = OpenAI(base_url=f"{gw[0]}/v1", api_key="unused", model=MODEL, max_tokens=12,
                 temperature=0, default_headers=ns)
    x = llm.invoke("Name a vegetable.")
    assert x and llm.invoke("Name a vegetable.") == x
    assert calls(gw) == before + 2


def test_openai_responses_sdk(gw: tuple[str, Any], ns: dict[str, str]) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{gw[0]}/v1", api_key="unused", default_headers=ns)
    before = calls(gw)
    args: dict[str, Any] = {"model": MODEL, "input": "What is a cache?",
                            "instructions": "Answer in one sentence.",
                            "max_output_tokens": 20, "temperature": 0}
    first = client.responses.create(**args)
    assert first.output_text and first.status in ("completed", "incomplete")
    assert first.id.startswith("resp_") and first.usage and first.usage.output_tokens >= 1
    again = client.responses.create(**args)
    assert again.output_text == first.output_text
    assert again.usage and again.usage.input_tokens_details.cached_tokens == \
        again.usage.input_tokens
    with client.responses.stream(**args) as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = events[-1]  # completed, or incomplete when max_output_tokens cut the answer
    assert final.type == f"response.{first.status}"
    assert "".join(deltas) == final.response.output_text == first.output_text
    messages = client.responses.create(**{**args, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "What is a cache?"}]}]})
    assert messages.output_text == first.output_text  # same canonical request
    assert calls(gw) == before + 1
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(**args, previous_response_id=first.id)
    assert "previous_response_id" in str(err.value)


# -- Anthropic ---------------------------------------------------------------------------------
def test_anthropic_sdk_messages(gw: tuple[str, Any], ns: dict[str, str]) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=gw[0], api_key="unused", default_headers=ns)
    before = calls(gw)
    # (the anthropic SDK 2.x has no temperature parameter; the API still accepts one)
    q = "What is a distributed system?"
    args: dict[str, Any] = {"model": MODEL, "max_tokens": 20, "system": "Answer briefly.",
                            "messages": [{"role": "user", "content": q}]}
    first = client.messages.create(**args)
    assert first.type == "message" and first.role == "assistant"
    assert first.content[0].type == "text" and first.content[0].text
    assert first.stop_reason in ("end_turn", "max_tokens") and first.id.startswith("msg_")
    assert first.usage.output_tokens >= 1
    again = client.messages.create(**args)
    assert again.content[0].text == first.content[0].text  # type: ignore[union-attr]
    assert again.usage.cache_read_input_tokens and again.usage.input_tokens == 0
    with client.messages.stream(**args) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == first.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == first.stop_reason and final.usage.cache_read_input_tokens
    blocks = client.messages.create(**{**args, "system": [
        {"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": q}]}]})
    assert blocks.content[0].text == first.content[0].text  # type: ignore[union-attr]
    paraphrase = client.messages.create(**{**args, "messages": [
        {"role": "user", "content": "Can you explain what a distributed system is?"}]})
    assert paraphrase.content[0].text == first.content[0].text  # type: ignore[union-attr]
    assert calls(gw) == before + 1
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(**{**args, "model": "claude-sonnet-4-5"})
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(**{**args, "max_tokens": 0})
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


# -- one cache behind all of them --------------------------------------------------------------
def test_one_question_through_every_protocol_is_one_entry(gw: tuple[str, Any],
                                                          ns: dict[str, str]) -> None:
    import anthropic
    import ollama
    import openai

    q = "Which planet is known as the red planet?"
    oai = openai.OpenAI(base_url=f"{gw[0]}/v1", api_key="unused", default_headers=ns)
    before = calls(gw)
    chat = oai.chat.completions.create(model=MODEL, max_tokens=16,
                                       messages=[{"role": "user", "content": q}])
    answer = chat.choices[0].message.content
    assert answer
    claude = anthropic.Anthropic(base_url=gw[0], api_key="unused", default_headers=ns)
    answers = [
        ollama.Client(host=gw[0], headers=ns).chat(
            model=MODEL, options={"num_predict": 16},
            messages=[{"role": "user", "content": q}]).message.content,
        ollama.Client(host=gw[0], headers=ns).generate(
            model=MODEL, prompt=q, options={"num_predict": 16}).response,
        oai.completions.create(model=MODEL, prompt=q, max_tokens=16).choices[0].text,
        oai.responses.create(model=MODEL, input=q, max_output_tokens=16).output_text,
        claude.messages.create(model=MODEL, max_tokens=16, messages=[
            {"role": "user", "content": q}]).content[0].text,  # type: ignore[union-attr]
    ]
    assert answers == [answer] * len(answers)
    assert calls(gw) == before + 1
    stats = httpx.get(f"{gw[0]}/admin/cache/stats", headers=ns).json()
    assert stats["entries"] == 1
