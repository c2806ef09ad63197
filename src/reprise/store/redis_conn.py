"""One Redis client per event loop, and closing it quietly: shared by every Redis user.

``redis.asyncio`` connections belong to the loop that opened them, and the cache store,
the document index and the catalog are used from successive loops (tests, CLI commands,
the LangChain integration's own loop), so each keeps a client for the running loop and
makes a new one when the loop changes. Closing must survive a loop that is already gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError


async def close_quietly(client: Redis) -> None:
    """Close ``client``; a client of a finished loop has nothing left to release."""
    aclose = getattr(client, "aclose", None) or client.close  # redis-py 5 renamed it
    try:
        await aclose()
    except (RedisError, OSError, RuntimeError):
        pass


class LoopClient:
    """A ``Redis.from_url(url, **options)`` client for the running event loop.

    ``on_new`` runs on every new client (e.g. to register Lua scripts, which are bound to
    their client). A client left behind by an earlier loop is dropped, not closed: closing
    needs the loop it belongs to.
    """

    def __init__(self, url: str, options: dict[str, Any],
                 on_new: Callable[[Redis], None] | None = None) -> None:
        # A plain dict: the installed redis stubs predate ``protocol``.
        self.url = url
        self.options = options
        self._on_new = on_new
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = Redis.from_url(self.url, **self.options)
            self._loop = loop
            if self._on_new is not None:
                self._on_new(self._client)
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await close_quietly(client)
