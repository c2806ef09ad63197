"""UpstreamClient over real loopback HTTP: one retry when a connection dies before answering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest

from reprise.upstream.client import UpstreamClient, UpstreamError

COMPLETION = {"id": "c1", "object": "chat.completion", "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                           "finish_reason": "stop"}]}
CHUNK = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
         "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}


class FlakyServer:
    """Drops the first ``drops`` connections after reading the request (what a server that
    closed an idle keep-alive connection looks like to the client), then answers."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length")), 0)
        body = orjson.loads(await reader.readexactly(length))
        if self.connections <= self.drops:
            writer.close()
            return
        if body.get("stream"):
            payload = b"data: " + orjson.dumps(CHUNK) + b"\n\ndata: [DONE]\n\n"
            ctype = b"text/event-stream"
        else:
            payload, ctype = orjson.dumps(COMPLETION), b"application/json"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                     + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload)
        await writer.drain()
        writer.close()


@asynccontextmanager
async def flaky_server(drops: int) -> AsyncIterator[FlakyServer]:
    """Started inside the test, on the test's own event loop."""
    server = FlakyServer(drops)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield server


def client(server: FlakyServer) -> UpstreamClient:
    return UpstreamClient(f"http://127.0.0.1:{server.port}/v1", read_timeout=5.0)


BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


async def test_a_dropped_connection_is_retried_once() -> None:
    async with flaky_server(1) as flaky:
        await _retried_once(flaky)


async def _retried_once(flaky: FlakyServer) -> None:
    up = client(flaky)
    try:
        assert (await up.complete(BODY))["choices"][0]["message"]["content"] == "hi"
        assert flaky.connections == 2
        flaky.connections, flaky.drops = 0, 1
        chunks = [c async for c in up.stream(BODY)]
        assert chunks[0]["choices"][0]["delta"]["content"] == "hi"
        assert flaky.connections == 2
    finally:
        await up.aclose()


async def test_a_second_failure_is_a_502() -> None:
    async with flaky_server(2) as flaky:
        up = client(flaky)
        try:
            with pytest.raises(UpstreamError) as err:
                await up.complete(BODY)
            assert err.value.status == 502 and flaky.connections == 2
        finally:
            await up.aclose()
