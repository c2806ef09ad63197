"""N identical concurrent misses make exactly one upstream call; everyone gets the answer."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests_support.gateway import running_gateway, sse_events, stream_text


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_hundred_concurrent_identical_requests_one_upstream_call(
    fake_upstream: Any, tmp_path: Path, store: str
) -> None:
    url, state = fake_upstream
    question = f"[slow:0.8] single flight {uuid.uuid4().hex[:8]}"
    body = {"model": "fake-model", "messages": [{"role": "user", "content": question}]}

    async def run(base: str) -> list[tuple[str, str]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            async def one(i: int) -> tuple[str, str]:
                stream = i % 2 == 0  # half stream, half JSON
                r = await client.post("/v1/chat/completions", json={**body, "stream": stream})
                assert r.status_code == 200, r.text
                text = (stream_text(sse_events(r.text)) if stream
                        else r.json()["choices"][0]["message"]["content"])
                return r.headers["x-reprise-cache"], text

            return await asyncio.gather(*(one(i) for i in range(100)))

    with running_gateway(url, tmp_path, store=store) as (base, comp):
        before = state.calls
        results = asyncio.run(run(base))
        assert state.calls - before == 1
        texts = {t for _, t in results}
        assert len(texts) == 1 and texts.pop().startswith("Answer #")
        # every request was either the flight itself or a hit afterwards; none failed
        assert {tier for tier, _ in results} <= {"miss", "exact"}
        assert comp.chat.upstream_calls >= 1
