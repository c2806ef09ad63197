"""What the gateway needs from a model server, whatever sits behind it.

``UpstreamClient`` talks to one OpenAI-compatible server; ``FailoverUpstream`` puts several
behind the same four calls. The serving layer only knows this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class Upstream(Protocol):
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def models(self) -> list[str]: ...

    async def healthy(self) -> bool: ...

    async def aclose(self) -> None: ...
