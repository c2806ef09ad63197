"""Failover across several OpenAI-compatible model servers.

Users run a local server (llama.cpp, Ollama) with a hosted API as the fallback, or two
vLLM boxes. A request goes to the first healthy server in order; if that server cannot be
reached, times out or answers 5xx *before the first streamed token*, the next one is tried
and the failed one is skipped for a cool-down. Once a stream has started, switching servers
would splice two different answers together, so a mid-stream failure is passed on (and the
cache never stores the cut answer).

A request the server itself rejects (4xx other than auth/rate limit) is not retried
elsewhere: another server would reject it too, and retrying would hide the app's bug.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from reprise.upstream.base import Upstream
from reprise.upstream.client import UpstreamError

log = logging.getLogger(__name__)

RETRYABLE = frozenset({502, 503, 504})


@dataclass
class Target:
    """One model server and the upstream model name it knows the request's model by."""

    name: str
    client: Upstream
    model: str | None = None  # None: keep the model the gateway already chose
    down_until: float = 0.0


class FailoverUpstream:
    def __init__(self, targets: list[Target], *, cooldown_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not targets:
            raise ValueError("FailoverUpstream needs at least one model server")
        self.targets = targets
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self.failovers = 0

    def _order(self) -> list[Target]:
        """Healthy servers first (in configured order), then the cooling ones as a last resort."""
        now = self._clock()
        up = [t for t in self.targets if t.down_until <= now]
        down = sorted((t for t in self.targets if t.down_until > now), key=lambda t: t.down_until)
        return up + down

    def _body_for(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": target.model} if target.model else body

    def _failed(self, target: Target, exc: UpstreamError) -> None:
        target.down_until = self._clock() + self.cooldown_seconds
        self.failovers += 1
        log.warning("upstream %s failed (%s); trying the next one", target.name, exc.message)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        last: UpstreamError | None = None
        for target in self._order():
            try:
                result = await target.client.complete(self._body_for(target, body))
            except UpstreamError as exc:
                if exc.status not in RETRYABLE:
                    raise
                self._failed(target, exc)
                last = exc
                continue
            target.down_until = 0.0
            return result
        assert last is not None
        raise last

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        last: UpstreamError | None = None
        for target in self._order():
            started = False
            try:
                async for chunk in target.client.stream(self._body_for(target, body)):
                    started = True
                    yield chunk
            except UpstreamError as exc:
                if started or exc.status not in RETRYABLE:
                    raise
                self._failed(target, exc)
                last = exc
                continue
            target.down_until = 0.0
            return
        assert last is not None
        raise last

    async def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for target in self.targets:
            for name in await target.client.models():
                seen.setdefault(name, None)
        return list(seen)

    async def healthy(self) -> bool:
        for target in self.targets:
            if await target.client.healthy():
                return True
        return False

    async def aclose(self) -> None:
        for target in self.targets:
            await target.client.aclose()
