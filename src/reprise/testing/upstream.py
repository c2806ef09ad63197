"""A controllable OpenAI-compatible model server for tests, benchmarks and demos.

It stands in for a real model where a test needs control a real one can't give: exact
latency, chunking, failures, counted calls. End-to-end tests also run against the real
llama.cpp server. Controls, by magic words in the last user message:

``[fail:503]`` answer that status; ``[cut]`` close the stream mid-answer (no [DONE]);
``[tools]`` answer with a tool call; ``[slow:0.5]`` take that many seconds;
``[hang]`` never answer (for timeouts); ``[empty]`` answer with empty content;
``[drip:0.2]`` wait that long between streamed chunks. ``max_tokens`` cuts the answer to
that many words (``finish_reason: "length"``).
Otherwise the answer is "Answer #N to: <question>" where N counts upstream calls, so a test
can tell a cached answer (same N) from a fresh one.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

_SLOW = re.compile(r"\[slow:([\d.]+)\]")
_FAIL = re.compile(r"\[fail:(\d+)\]")
_DRIP = re.compile(r"\[drip:([\d.]+)\]")


@dataclass
class FakeUpstreamState:
    latency: float = 0.0  # seconds before the first token
    chunk_delay: float = 0.0  # seconds between chunks
    chunk_words: int = 1
    calls: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["fake-model", "other-model"])
    usage_details: bool = True  # include prompt_tokens_details / DeepSeek fields
    # False: like llama.cpp's server, never send usage on a stream, even when asked for it.
    stream_usage: bool = True
    cut_streams: bool = False  # every stream is cut mid-answer, as by a server that died
    # Like llama-cpp-python's server: a prompt of more words than this is refused with 400
    # when not streamed, and a stream of it is accepted (200) and closed with no event.
    context_tokens: int | None = None


def _last_user(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user":
            c = msg.get("content")
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            return str(c or "")
    return ""


def _usage(state: FakeUpstreamState, prompt: str, answer: str) -> dict[str, Any]:
    p, c = max(1, len(prompt.split())) + 8, max(1, len(answer.split()))
    usage: dict[str, Any] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    if state.usage_details:
        usage["prompt_tokens_details"] = {"cached_tokens": 2}
        usage["prompt_cache_hit_tokens"] = 2
        usage["prompt_cache_miss_tokens"] = p - 2
    return usage


def build_app(state: FakeUpstreamState) -> Starlette:
    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        state.calls += 1
        state.requests.append(body)
        n = state.calls
        q = _last_user(body)
        if m := _FAIL.search(q):
            return Response(orjson.dumps({"error": {"message": "injected failure"}}),
                            status_code=int(m.group(1)), media_type="application/json")
        if "[hang]" in q:
            await asyncio.sleep(3600)
        delay = float(m.group(1)) if (m := _SLOW.search(q)) else state.latency
        model = body.get("model", "fake-model")
        tools = "[tools]" in q
        answer = "" if ("[empty]" in q or tools) else f"Answer #{n} to: {q}"
        finish = "tool_calls" if tools else "stop"
        cap = body.get("max_tokens") or body.get("max_completion_tokens")
        if cap and len(answer.split()) > int(cap):
            answer, finish = " ".join(answer.split()[:int(cap)]), "length"
        usage = _usage(state, q, answer)
        prompt_words = sum(len(str(m.get("content") or "").split())
                           for m in body.get("messages") or [])
        if state.context_tokens is not None and prompt_words > state.context_tokens:
            if body.get("stream"):
                async def nothing() -> AsyncIterator[bytes]:
                    return
                    yield b""

                return StreamingResponse(nothing(), media_type="text/event-stream")
            message = (f"This model's maximum context length is {state.context_tokens} "
                       f"tokens. However, you requested {prompt_words} tokens.")
            return Response(orjson.dumps({"error": {"message": message,
                                                    "type": "invalid_request_error"}}),
                            status_code=400, media_type="application/json")
        cid, created = f"chatcmpl-fake{n}", int(time.time())
        tool_calls: list[dict[str, Any]] | None = [{
            "id": f"call_{n}", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Lisboa"}'},
        }] if tools else None
        if not body.get("stream"):
            await asyncio.sleep(delay)
            msg: dict[str, Any] = {"role": "assistant", "content": answer or None}
            if tool_calls:
                msg["tool_calls"] = tool_calls
            return Response(orjson.dumps({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                "usage": usage}), media_type="application/json")

        include_usage = state.stream_usage and bool(
            (body.get("stream_options") or {}).get("include_usage"))
        words = re.findall(r"\S+\s*", answer)
        step = max(1, state.chunk_words)
        drip = float(m.group(1)) if (m := _DRIP.search(q)) else state.chunk_delay

        async def events() -> AsyncIterator[bytes]:
            base = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model}

            def ev(choice: dict[str, Any], **extra: Any) -> bytes:
                return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

            await asyncio.sleep(delay)
            yield ev({"index": 0, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None})
            for i in range(0, len(words), step):
                if ("[cut]" in q or state.cut_streams) and i >= len(words) // 2:
                    return  # connection closes without finish_reason or [DONE]
                if drip:
                    await asyncio.sleep(drip)
                yield ev({"index": 0, "delta": {"content": "".join(words[i:i + step])},
                          "finish_reason": None})
            if tool_calls:
                call = tool_calls[0]
                yield ev({"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                    {"index": 0, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": ""}}]}})
                args = call["function"]["arguments"]
                for j in range(0, len(args), 5):
                    yield ev({"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                        {"index": 0, "function": {"arguments": args[j:j + 5]}}]}})
            yield ev({"index": 0, "delta": {}, "finish_reason": finish})
            if include_usage:
                yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(_: Request) -> Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in state.models]
        return Response(orjson.dumps({"object": "list", "data": data}),
                        media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """Runs an ASGI app with uvicorn on a loopback port in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_fake_upstream(state: FakeUpstreamState | None = None) -> tuple[ServerThread,
                                                                          FakeUpstreamState]:
    state = state or FakeUpstreamState()
    return ServerThread(build_app(state)).start(), state


def main() -> None:
    """``python -m reprise.testing.upstream --port 9000 --latency 1.0`` (benchmarks, demos)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args()
    state = FakeUpstreamState(latency=args.latency, chunk_delay=args.chunk_delay)
    uvicorn.run(build_app(state), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
