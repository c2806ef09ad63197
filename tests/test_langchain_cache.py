"""``RepriseCache`` as LangChain's global LLM cache, with real ``langchain-core``.

The models are langchain-core's own fakes (``FakeListChatModel``, ``FakeListLLM``): they
return their scripted responses in order, so an answer tells whether the model was called
(next response) or the cache answered (an earlier one). Everything else is real: the
SQLite and Redis Stack stores, the USE embedder, the guards and the verifier.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.language_models import FakeListChatModel, FakeListLLM
from langchain_core.messages import HumanMessage, SystemMessage

from reprise.config import Settings
from reprise.integrations.langchain import RepriseCache, prompt_messages

RESPONSES = [f"response {i}" for i in range(20)]


@pytest.fixture(params=["sqlite", "redis"])
def cache(request: pytest.FixtureRequest, tmp_path: Path, use_embedder: Any
          ) -> Iterator[RepriseCache]:
    if request.param == "redis":
        settings = Settings(store="redis", redis_url=request.getfixturevalue("redis_url"),
                            redis_prefix=f"lc{uuid.uuid4().hex[:8]}", data_dir=tmp_path)
    else:
        settings = Settings(store="sqlite", data_dir=tmp_path)
    c = RepriseCache(settings, embedder=use_embedder)
    previous = get_llm_cache()
    set_llm_cache(c)
    try:
        yield c
    finally:
        set_llm_cache(previous)
        c.clear()
        c.close()


def test_chat_model_exact_semantic_and_miss(cache: RepriseCache) -> None:
    model = FakeListChatModel(responses=RESPONSES)
    first = model.invoke("What is a vector database?").content
    assert first == "response 0"
    assert model.invoke("What is a vector database?").content == first  # exact
    assert model.invoke("What's a vector database?").content == first  # semantic
    assert model.invoke("How do I delete my account?").content == "response 1"  # miss
    # Guards still apply: another entity is not a paraphrase.
    assert model.invoke("What is the capital of France?").content == "response 2"
    assert model.invoke("What is the capital of Germany?").content == "response 3"


async def test_chat_model_async(cache: RepriseCache) -> None:
    model = FakeListChatModel(responses=RESPONSES)
    first = (await model.ainvoke("What is the CAP theorem?")).content
    assert first == "response 0"
    assert (await model.ainvoke("What is the CAP theorem?")).content == first
    assert (await model.ainvoke("What's the CAP theorem?")).content == first
    assert (await model.ainvoke("Como faço backup do banco de dados?")).content == "response 1"
    # Sync and async share the same entries.
    assert model.invoke("What's the CAP theorem?").content == first


def test_plain_llm(cache: RepriseCache) -> None:
    llm = FakeListLLM(responses=RESPONSES)
    first = llm.invoke("What is a load balancer?")
    assert first == "response 0"
    assert llm.invoke("What is a load balancer?") == first
    assert llm.invoke("What's a load balancer?") == first
    assert llm.invoke("How do I export my data?") == "response 1"


def test_context_and_model_settings_partition_the_cache(cache: RepriseCache) -> None:
    terse = FakeListChatModel(responses=RESPONSES)
    asked = [SystemMessage("Answer in one word."), HumanMessage("How do I reset my password?")]
    assert terse.invoke(asked).content == "response 0"
    # Another system prompt is another context: never served the first answer.
    other = [SystemMessage("Answer in detail."), HumanMessage("How do I reset my password?")]
    assert terse.invoke(other).content == "response 1"
    # Another model configuration (llm_string) too, even for the identical prompt.
    different = FakeListChatModel(responses=["other " + r for r in RESPONSES])
    assert different.invoke(asked).content == "other response 0"
    assert terse.invoke(asked).content == "response 0"


async def test_clear_and_aclear(cache: RepriseCache) -> None:
    model = FakeListChatModel(responses=RESPONSES)
    assert model.invoke("How do I rotate an API key?").content == "response 0"
    cache.clear()
    assert model.invoke("How do I rotate an API key?").content == "response 1"
    await cache.aclear()
    assert (await model.ainvoke("How do I rotate an API key?")).content == "response 2"


def test_entries_are_visible_to_reprise_admin_tools(cache: RepriseCache) -> None:
    model = FakeListChatModel(responses=RESPONSES)
    model.invoke("How do I upgrade my plan?")
    rows = cache._run(cache.components.store.list_entries("langchain"))
    assert [r.question for r in rows] == ["How do I upgrade my plan?"]
    assert rows[0].vector is not None  # eligible for the semantic tier


def test_prompt_messages_parsing() -> None:
    from langchain_core.load import dumps

    msgs = prompt_messages(dumps([SystemMessage("be terse"), HumanMessage("hi", id="x1")]))
    assert msgs == [{"role": "system", "content": "be terse"},
                    {"role": "user", "content": "hi"}]
    assert prompt_messages("plain prompt") == [{"role": "user", "content": "plain prompt"}]
    assert prompt_messages("[1, 2]") == [{"role": "user", "content": "[1, 2]"}]
