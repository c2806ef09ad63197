"""OpenAI chat completions (JSON and SSE) and the model list.

Chat completions is the canonical form every other protocol is parsed into, so this adapter
is the thin one: the body goes through as it is (gateway fields included), and the served
completion or chunks come back unchanged. ``/v1/embeddings`` lives in ``api/embeddings.py``,
text completions in ``api/completions.py``, Responses in ``api/responses.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from reprise.api.body import read_json
from reprise.api.chat_endpoint import (
    ChatCall,
    serve_chat,
    served_models,
    stream_body,
    stream_headers,
)
from reprise.api.deps import components
from reprise.api.errors import error_body
from reprise.api.schemas import ChatRequest, parse_model

router = APIRouter()


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def _chat_events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield sse(chunk)
    yield b"data: [DONE]\n\n"


def _error_event(status: int, message: str) -> bytes:
    return sse(error_body(status, message, "upstream_error"))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    comp = components(request)
    body = await read_json(request, comp.settings.max_body_bytes)
    req = parse_model(ChatRequest, body)
    call = ChatCall(body, stream=req.stream, include_usage=req.include_usage,
                    collection=req.collection, validated=req)
    served = await serve_chat(request, call)
    if served.completion is not None:
        return Response(orjson.dumps(served.completion), media_type="application/json",
                        headers=served.headers)
    return StreamingResponse(stream_body(request, served, _chat_events, _error_event),
                             media_type="text/event-stream", headers=stream_headers(served))


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "reprise"}
            for n in served_models(components(request))]
    return Response(orjson.dumps({"object": "list", "data": data}),
                    media_type="application/json")
