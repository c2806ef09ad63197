"""A question that cannot fit the model's context gets the clear 400 whether it streams or not.

llama-cpp-python's server accepts such a stream with 200 and then closes it with no event;
without streaming it refuses with 400. The gateway re-asks a stream that closed before its
first chunk without streaming (one token) to learn why, so the client gets the same 400
before any byte of the stream. The test upstream reproduces that server's behaviour (the
real server is checked in ``test_first_run_model.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reprise.testing.upstream import start_fake_upstream
from tests_support.gateway import ask, running_gateway


@pytest.fixture
def small_context(tmp_path: Path) -> Iterator[tuple[httpx.Client, Any]]:
    server, state = start_fake_upstream()
    state.context_tokens = 50
    try:
        with running_gateway(server.url + "/v1", tmp_path, store="sqlite") as (base, comp):
            with httpx.Client(base_url=base, timeout=30) as client:
                yield client, comp
    finally:
        server.stop()


def long_question() -> str:
    return f"{uuid.uuid4().hex} " + "why is the sky blue " * 40


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_too_long_question_gets_the_same_400(small_context: Any, stream: bool) -> None:
    client, _comp = small_context
    r = ask(client, long_question(), stream=stream)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]["message"]
    assert "maximum context length is 50 tokens" in message
    assert "closed the stream" not in message


def test_refused_question_is_not_cached_and_a_short_one_still_streams(
        small_context: Any) -> None:
    client, _comp = small_context
    q = long_question()
    assert ask(client, q, stream=True).status_code == 400
    again = ask(client, q, stream=True)
    assert again.status_code == 400 and again.headers.get("x-reprise-cache") is None
    ok = ask(client, f"short {uuid.uuid4().hex}", stream=True)
    assert ok.status_code == 200 and "data: [DONE]" in ok.text


def test_a_stream_cut_after_its_first_chunk_is_still_a_cut(small_context: Any) -> None:
    """Only a stream that closed before its first chunk is re-asked; one cut later stays
    the cut it is (an error event, nothing cached)."""
    client, _comp = small_context
    r = ask(client, f"[cut] tell me a long story {uuid.uuid4().hex}", stream=True)
    assert r.status_code == 200
    assert "closed the stream before [DONE]" in r.text
