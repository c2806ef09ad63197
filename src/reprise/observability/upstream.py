"""Times every call the serving layer makes to the model server.

A wrapper rather than code inside the client, so failover chains, single clients and test
upstreams are all measured the same way (``reprise_upstream_latency_seconds``: a whole
non-streaming call, or a stream from request to its last chunk), and every answer's report
of prompt tokens the server reused from its prompt cache is counted
(``reprise_upstream_prompt_tokens_total``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from reprise.observability.metrics import Metrics
from reprise.upstream.base import Upstream


class TimedUpstream:
    def __init__(self, inner: Upstream, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            result = await self.inner.complete(body)
        finally:
            self.metrics.upstream_latency.observe(time.perf_counter() - started)
        self.metrics.upstream_usage(result.get("usage"))
        return result

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        started = time.perf_counter()
        usage: dict[str, Any] | None = None
        try:
            async for chunk in self.inner.stream(body):
                if chunk.get("usage"):
                    usage = chunk["usage"]
                yield chunk
        finally:
            self.metrics.upstream_latency.observe(time.perf_counter() - started)
        self.metrics.upstream_usage(usage)

    async def models(self) -> list[str]:
        return await self.inner.models()

    async def healthy(self) -> bool:
        return await self.inner.healthy()

    async def aclose(self) -> None:
        await self.inner.aclose()
