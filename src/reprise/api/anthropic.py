"""Anthropic's Messages API, ``POST /v1/messages``, for the ``anthropic`` SDK and its users.

Parsed into the canonical chat request: ``system`` becomes the system message, content
blocks become OpenAI content (text, images as image parts, ``tool_use`` as tool calls,
``tool_result`` as tool messages), ``stop_sequences`` → ``stop``, ``max_tokens`` as is,
``top_k`` passed through (it changes the answer), ``tools``/``tool_choice`` translated,
``output_config.format`` (structured output) as ``response_format``; ``temperature`` and
``top_p`` are taken from clients that send them (older SDKs), ``output_config.effort``,
``thinking`` and the top-level ``cache_control`` are accepted and change nothing.
``cache_control`` marks on blocks are accepted: Reprise caches whole answers itself, and
reports a hit's prompt tokens as ``cache_read_input_tokens``. ``thinking`` blocks of earlier
assistant turns are dropped (an OpenAI-compatible upstream has no field for them); block
types with no OpenAI counterpart (documents, search results, server tools) get a clear 400.

Rendered back as a ``message`` with ``text`` and ``tool_use`` blocks, or as Anthropic's
typed SSE events (``message_start`` … ``message_stop``); errors use Anthropic's error
object and types (``api/errors.py``). A model nobody serves is a 404 ``not_found_error``;
``model_map`` gives Claude model names to local models when an app hard-codes one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from reprise.api.body import read_json
from reprise.api.canonical import Answer, StreamReader, ToolCall, Usage, protocol_id
from reprise.api.chat_endpoint import ChatCall, ServedChat, serve_chat, stream_body, stream_headers
from reprise.api.deps import components
from reprise.api.errors import APIError, anthropic_error_body
from reprise.api.schemas import parse_model
from reprise.serving.format import estimate_usage

router = APIRouter()

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "function_call": "tool_use", "content_filter": "refusal"}
_PARAM_NAMES = {"max_tokens": "max_tokens", "messages": "messages"}


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[dict[str, Any]] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    collection: str | None = None  # Reprise: answer from a document collection (extra_body)


# -- parse -----------------------------------------------------------------------------------
def _block_text(block: dict[str, Any], where: str) -> str:
    if block.get("type") != "text":
        raise APIError(400, f"{where}: only text blocks are allowed here, not "
                       f"{block.get('type')!r}", param=where)
    return str(block.get("text") or "")


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url") or "")
    else:
        raise APIError(400, f"{where}: image source type {source.get('type')!r} is not "
                       "supported by Reprise", param=where)
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list):
        parts = [_block_text(b, f"{where}.content") for b in content]
        content = "\n".join(parts)
    text = str(content or "")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id") or ""),
            "content": text}


def _user(content: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """One Anthropic user turn → tool messages (its tool results) then the user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind, at = block.get("type"), f"{where}.content.{j}"
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            out.append(_tool_result(block, at))
        else:
            raise APIError(400, f"{at}: content block type {kind!r} is not supported by "
                           "Reprise", param=at)
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": parts[0]["text"]
                    if only_text and len(parts) == 1 else parts})
    return out


def _assistant(content: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append({"id": str(block.get("id") or f"toolu_{j}"), "type": "function",
                          "function": {"name": str(block.get("name") or ""),
                                       "arguments": orjson.dumps(block.get("input") or {})
                                       .decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            at = f"{where}.content.{j}"
            raise APIError(400, f"{at}: content block type {kind!r} is not supported by "
                           "Reprise", param=at)
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if "input_schema" not in tool:
            raise APIError(400, f"tools.{i}: server tools ({tool.get('type')!r}) are not "
                           "supported by Reprise; give custom tools with an input_schema",
                           param=f"tools.{i}")
        fn: dict[str, Any] = {"name": tool.get("name", ""), "parameters": tool["input_schema"]}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: dict[str, Any]) -> str | dict[str, Any]:
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    raise APIError(400, f"tool_choice type {kind!r} is not supported", param="tool_choice")


def parse_messages(req: MessagesRequest) -> ChatCall:
    messages: list[dict[str, Any]] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n".join(
            _block_text(b, f"system.{i}") for i, b in enumerate(req.system))
        messages.append({"role": "system", "content": system})
    for i, msg in enumerate(req.messages):
        where = f"messages.{i}"
        if isinstance(msg.content, str):
            messages.append({"role": msg.role, "content": msg.content})
        elif msg.role == "user":
            messages += _user(msg.content, where)
        else:
            messages.append(_assistant(msg.content, where))
    body: dict[str, Any] = {"model": req.model, "messages": messages,
                            "max_tokens": req.max_tokens}
    for name, value in (("temperature", req.temperature), ("top_p", req.top_p),
                        ("top_k", req.top_k), ("stop", req.stop_sequences)):
        if value is not None:
            body[name] = value
    if req.tools:
        body["tools"] = _tools(req.tools)
    if req.tool_choice:
        body["tool_choice"] = _tool_choice(req.tool_choice)
    fmt = (req.output_config or {}).get("format")
    if fmt:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            raise APIError(400, "output_config.format must be a json_schema format",
                           param="output_config.format")
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": fmt.get("schema") or {}}}
    return ChatCall(body, stream=req.stream, collection=req.collection,
                    param_names=_PARAM_NAMES)


# -- render ----------------------------------------------------------------------------------
def _usage(u: Usage) -> dict[str, Any]:
    """Anthropic counts cache reads apart from ``input_tokens`` (their sum is the prompt)."""
    return {"input_tokens": max(0, u.prompt - u.cached), "output_tokens": u.completion,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": u.cached}


def _tool_block(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name,
            "input": call.arguments_object()}


def render_message(answer: Answer, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if answer.text or not answer.tool_calls:
        content.append({"type": "text", "text": answer.text})
    content += [_tool_block(c) for c in answer.tool_calls]
    out: dict[str, Any] = {
        "id": protocol_id("msg_", answer.id), "type": "message", "role": "assistant",
        "model": model, "content": content,
        "stop_reason": _STOP_REASONS.get(answer.finish_reason, "end_turn"),
        "stop_sequence": None, "usage": _usage(answer.usage)}
    if answer.meta is not None:
        out["reprise"] = answer.meta
    if answer.citations is not None:
        out["citations"] = answer.citations
    return out


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) \
        + b"\n\n"


def _error_event(status: int, message: str) -> bytes:
    return b"event: error\ndata: " + orjson.dumps(anthropic_error_body(status, message)) \
        + b"\n\n"


def _encoder(served: ServedChat) -> Any:
    async def encode(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        reader = StreamReader()
        deltas = reader.deltas(chunks)
        first = await anext(deltas, None)  # the first chunk names the answer and its tier
        answer = reader.answer
        start: dict[str, Any] = {
            "id": protocol_id("msg_", answer.id), "type": "message", "role": "assistant",
            "model": served.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": _usage(answer.usage)}
        if answer.meta is not None:
            start["reprise"] = answer.meta
        yield _event("message_start", {"message": start})
        index = 0
        if first is not None:
            yield _event("content_block_start",
                         {"index": 0, "content_block": {"type": "text", "text": ""}})
            yield _event("ping", {})
            yield _event("content_block_delta",
                         {"index": 0, "delta": {"type": "text_delta", "text": first.text}})
            async for delta in deltas:
                yield _event("content_block_delta",
                             {"index": 0, "delta": {"type": "text_delta", "text": delta.text}})
            yield _event("content_block_stop", {"index": 0})
            index = 1
        for call in answer.tool_calls:
            yield _event("content_block_start", {"index": index, "content_block": {
                "type": "tool_use", "id": call.id, "name": call.name, "input": {}}})
            yield _event("content_block_delta", {"index": index, "delta": {
                "type": "input_json_delta", "partial_json": call.arguments or "{}"}})
            yield _event("content_block_stop", {"index": index})
            index += 1
        if index == 0:  # an empty answer still has its (empty) text block
            yield _event("content_block_start",
                         {"index": 0, "content_block": {"type": "text", "text": ""}})
            yield _event("content_block_stop", {"index": 0})
        done: dict[str, Any] = {
            "delta": {"stop_reason": _STOP_REASONS.get(answer.finish_reason, "end_turn"),
                      "stop_sequence": None},
            "usage": _usage(answer.usage)}
        if answer.citations is not None:
            done["citations"] = answer.citations
        yield _event("message_delta", done)
        yield _event("message_stop", {})

    return encode


class CountTokensRequest(MessagesRequest):
    max_tokens: int = 1  # not part of a count request


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """The prompt's size as Reprise estimates it (tokenizer-free, the count it charges to
    rate limits and reports for answers a model did not count): ``input_tokens``."""
    body = await read_json(request, components(request).settings.max_body_bytes)
    req = parse_model(CountTokensRequest, body)
    call = parse_messages(req)
    tokens = estimate_usage(call.body, {"choices": []})["prompt_tokens"]
    return Response(orjson.dumps({"input_tokens": tokens}), media_type="application/json")


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    body = await read_json(request, components(request).settings.max_body_bytes)
    req = parse_model(MessagesRequest, body)
    served = await serve_chat(request, parse_messages(req))
    if served.completion is not None:
        out = render_message(Answer.of(served.completion), served.model)
        return Response(orjson.dumps(out), media_type="application/json",
                        headers=served.headers)
    return StreamingResponse(stream_body(request, served, _encoder(served), _error_event),
                             media_type="text/event-stream", headers=stream_headers(served))
