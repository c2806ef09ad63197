"""Canonical exact key: what must hit and what must miss."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from reprise.cache.keys import request_keys

BASE: dict[str, Any] = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
    ],
    "temperature": 0.2,
    "max_tokens": 50,
}


def key(body: dict[str, Any], model: str = "m", extra: dict[str, Any] | None = None) -> str:
    return request_keys(body, model, extra).key


def mutate(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    for k, v in changes.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    return body


SAME = {
    "key order": json.loads(json.dumps(dict(reversed(list(BASE.items()))))),
    "stream on": mutate(stream=True),
    "stream_options": mutate(stream=True, stream_options={"include_usage": True}),
    "user field": mutate(user="alice"),
    "metadata": mutate(metadata={"trace": "x"}),
    "float spelling": mutate(max_tokens=50.0),
    "text parts list": mutate(messages=[
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        {"role": "user", "content": [{"type": "text", "text": "Capital "},
                                     {"type": "text", "text": "of France?"}]},
    ]),
    "max_completion_tokens alias": {**mutate(max_tokens=None), "max_completion_tokens": 50},
    "explicit nulls": mutate(seed=None) | {"tools": None},
}

DIFFERENT = {
    "question": mutate(messages=[BASE["messages"][0],
                                 {"role": "user", "content": "Capital of Germany?"}]),
    "system prompt": mutate(messages=[{"role": "system", "content": "You are verbose."},
                                      BASE["messages"][1]]),
    "history": mutate(messages=[BASE["messages"][0],
                                {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello"},
                                BASE["messages"][1]]),
    "temperature": mutate(temperature=0.3),
    "max_tokens": mutate(max_tokens=51),
    "seed": mutate(seed=1),
    "n": mutate(n=2),
    "stop": mutate(stop=["\n"]),
    "tools": mutate(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    "tool_choice": mutate(tool_choice="none"),
    "response_format": mutate(response_format={"type": "json_object"}),
    "role name": mutate(messages=[
        BASE["messages"][0], {"role": "user", "name": "bob", "content": "Capital of France?"}]),
    "trailing space": mutate(messages=[BASE["messages"][0],
                                       {"role": "user", "content": "Capital of France? "}]),
    "unknown field": mutate(logit_bias={"123": 5}),
    "image part": mutate(messages=[BASE["messages"][0], {"role": "user", "content": [
        {"type": "text", "text": "Capital of France?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]}]),
}


@pytest.mark.parametrize("name", list(SAME))
def test_same_key(name: str) -> None:
    assert key(SAME[name]) == key(BASE), name


@pytest.mark.parametrize("name", list(DIFFERENT))
def test_different_key(name: str) -> None:
    assert key(DIFFERENT[name]) != key(BASE), name


def test_model_and_gateway_context_change_key() -> None:
    assert key(BASE, model="other") != key(BASE)
    assert key(BASE, extra={"collection": "docs", "version": 2}) != key(
        BASE, extra={"collection": "docs", "version": 3})


def test_fingerprint_ignores_only_the_question() -> None:
    a = request_keys(BASE, "m")
    b = request_keys(DIFFERENT["question"], "m")
    assert a.key != b.key and a.fingerprint == b.fingerprint
    assert a.question == "Capital of France?"
    for name in ("system prompt", "history", "temperature", "tools", "response_format"):
        assert request_keys(DIFFERENT[name], "m").fingerprint != a.fingerprint, name
    assert request_keys(BASE, "other").fingerprint != a.fingerprint


def test_question_only_for_text_user_turns() -> None:
    tool_turn = mutate(messages=[*BASE["messages"],
                                 {"role": "assistant", "tool_calls": [{
                                     "id": "1", "type": "function",
                                     "function": {"name": "f", "arguments": "{}"}}]},
                                 {"role": "tool", "tool_call_id": "1", "content": "42"}])
    assert request_keys(tool_turn, "m").question is None
    assert request_keys(DIFFERENT["image part"], "m").question is None
