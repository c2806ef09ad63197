"""Single-flight: identical concurrent misses share one upstream call.

The upstream call runs as its own task (a *flight*) that records every chunk it receives;
each waiting request is a subscriber that replays the recorded chunks and then follows the
live ones, so a streaming follower that joins late still gets the whole answer. When every
subscriber has gone (the clients disconnected) the flight is cancelled: nobody is paying
attention, and a dropped stream must not be cached.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

Producer = Callable[["Flight"], Awaitable[dict[str, Any]]]


class Flight:
    def __init__(self, key: str) -> None:
        self.key = key
        self.chunks: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- producer side ---------------------------------------------------------------------------
    def push(self, chunk: dict[str, Any]) -> None:
        self.chunks.append(chunk)
        self._notify()

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def finish(self, result: dict[str, Any] | None, error: BaseException | None) -> None:
        self.result, self.error, self.finished = result, error, True
        self._notify()

    # -- subscriber side ------------------------------------------------------------------------
    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every chunk from the first, live; raises the flight's error at the end."""
        i = 0
        while True:
            while i < len(self.chunks):
                yield self.chunks[i]
                i += 1
            if self.finished:
                break
            await self._wake.wait()
        if self.error is not None:
            raise self.error

    async def wait(self) -> dict[str, Any]:
        while not self.finished:
            await self._wake.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class SingleFlight:
    """In-process registry of flights by exact key."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join_or_start(self, key: str, producer: Producer) -> tuple[Flight, bool]:
        """The running flight for ``key`` (False) or a new one running ``producer`` (True)."""
        flight = self._flights.get(key)
        if flight is not None and not flight.finished:
            return flight, False
        flight = Flight(key)
        self._flights[key] = flight

        async def run() -> None:
            try:
                result = await producer(flight)
            except asyncio.CancelledError:
                flight.finish(None, ConnectionAbortedError("every client left"))
                raise
            except BaseException as exc:
                flight.finish(None, exc)
            else:
                flight.finish(result, None)
            finally:
                if self._flights.get(key) is flight:
                    del self._flights[key]

        flight.task = asyncio.create_task(run(), name=f"flight-{key[:12]}")
        return flight, True

    @contextlib.asynccontextmanager
    async def subscribe(self, flight: Flight) -> AsyncIterator[Flight]:
        flight.subscribers += 1
        try:
            yield flight
        finally:
            flight.subscribers -= 1
            if flight.subscribers == 0 and not flight.finished and flight.task is not None:
                flight.task.cancel()
