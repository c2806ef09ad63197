"""OpenAI's Responses API, ``POST /v1/responses``: the stateless subset.

``input`` (text, or a list of messages and function-call items) and ``instructions`` are
parsed into the canonical chat request (``instructions`` is the system message,
``max_output_tokens`` is ``max_tokens``, ``text.format`` is the response format, function
tools are translated); the answer comes back as a ``response`` object with a ``message``
output item (and ``function_call`` items), or as the typed SSE events the openai SDK reads
(``response.created`` … ``response.output_text.delta`` … ``response.completed``).

Reprise stores no responses, so ``previous_response_id`` (and ``conversation``) are a clear
400 telling the caller to send the history in ``input``; built-in tools (web search, file
search…) have no OpenAI-compatible counterpart and are a 400 as well. ``store`` is accepted
and means nothing here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from reprise.api.body import read_json
from reprise.api.canonical import Answer, StreamReader, ToolCall, Usage, protocol_id
from reprise.api.chat_endpoint import ChatCall, ServedChat, serve_chat, stream_body, stream_headers
from reprise.api.deps import components
from reprise.api.errors import APIError
from reprise.api.schemas import parse_model

router = APIRouter()

_PARAM_NAMES = {"max_tokens": "max_output_tokens", "messages": "input"}


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool = False
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    collection: str | None = None  # Reprise: answer from a document collection


# -- parse -----------------------------------------------------------------------------------
def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where}: content must be text or a list of parts", param=where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "input_image" and part.get("image_url"):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise APIError(400, f"{where}.{j}: content part {kind!r} is not supported by "
                           "Reprise", param=f"{where}.{j}")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input.{i}"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError(400, f"{where}.role: {role!r} is not a message role",
                               param=f"{where}.role")
            out.append({"role": role, "content": _content(item.get("content"),
                                                          f"{where}.content")})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id") or item.get("id") or f"call_{i}"),
                    "type": "function", "function": {"name": str(item.get("name") or ""),
                                                     "arguments": str(item.get("arguments")
                                                                      or "{}")}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""),
                        "content": output if isinstance(output, str)
                        else orjson.dumps(output).decode()})
        elif kind == "reasoning":
            continue
        else:
            raise APIError(400, f"{where}: input item type {kind!r} is not supported by "
                           "Reprise", param=where)
    return out


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise APIError(400, f"tools.{i}: built-in tool {tool.get('type')!r} is not "
                           "supported by Reprise; give function tools", param=f"tools.{i}")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict")
              if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    raise APIError(400, f"tool_choice {choice!r} is not supported", param="tool_choice")


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise APIError(400, f"text.format type {fmt.get('type')!r} is not supported",
                   param="text.format")


def parse_response_request(req: ResponsesRequest) -> ChatCall:
    if req.previous_response_id or req.conversation:
        name = "previous_response_id" if req.previous_response_id else "conversation"
        raise APIError(400, f"{name} is not supported: Reprise stores no responses; send "
                       "the earlier turns in input", param=name)
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        messages += _items(req.input)
    if not messages:
        raise APIError(400, "input must not be empty", param="input")
    body: dict[str, Any] = {"messages": messages}
    for name, value in (("model", req.model), ("max_tokens", req.max_output_tokens),
                        ("temperature", req.temperature), ("top_p", req.top_p)):
        if value is not None:
            body[name] = value
    if req.tools:
        body["tools"] = _tools(req.tools)
    if req.tool_choice is not None and req.tools:
        body["tool_choice"] = _tool_choice(req.tool_choice)
    fmt = _response_format(req.text)
    if fmt is not None:
        body["response_format"] = fmt
    return ChatCall(body, stream=req.stream, collection=req.collection,
                    param_names=_PARAM_NAMES)


# -- render ----------------------------------------------------------------------------------
def _usage(u: Usage) -> dict[str, Any]:
    return {"input_tokens": u.prompt, "input_tokens_details": {"cached_tokens": u.cached},
            "output_tokens": u.completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt + u.completion}


def _text_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _call_item(call: ToolCall) -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{call.id}", "call_id": call.id,
            "name": call.name, "arguments": call.arguments or "{}", "status": "completed"}


class _Shell:
    """The fields of a ``response`` object that repeat the request, shared by the JSON
    answer and every event that carries the response."""

    def __init__(self, req: ResponsesRequest, served: ServedChat) -> None:
        self.req, self.served = req, served
        self.created = int(time.time())

    def response(self, answer: Answer, status: str, output: list[dict[str, Any]],
                 usage: dict[str, Any] | None) -> dict[str, Any]:
        req = self.req
        incomplete = status == "incomplete"
        out: dict[str, Any] = {
            "id": protocol_id("resp_", answer.id), "object": "response",
            "created_at": self.created, "status": status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "model": self.served.model, "output": output, "parallel_tool_calls": True,
            "previous_response_id": None, "temperature": req.temperature,
            "top_p": req.top_p, "tool_choice": req.tool_choice or "auto",
            "tools": req.tools or [], "text": req.text or {"format": {"type": "text"}},
            "truncation": "disabled", "metadata": req.metadata or {}, "usage": usage,
        }
        if answer.meta is not None:
            out["reprise"] = answer.meta
        if answer.citations is not None:
            out["citations"] = answer.citations
        return out


def _status(answer: Answer) -> str:
    return "incomplete" if answer.finish_reason == "length" else "completed"


def render_response(shell: _Shell, answer: Answer) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if answer.text or not answer.tool_calls:
        output.append(_text_item(f"msg_{answer.id.removeprefix('chatcmpl-')}", answer.text,
                                 _status(answer)))
    output += [_call_item(c) for c in answer.tool_calls]
    return shell.response(answer, _status(answer), output, _usage(answer.usage))


def _encoder(shell: _Shell) -> Any:
    async def encode(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        seq = 0

        def event(kind: str, **data: Any) -> bytes:
            nonlocal seq
            seq += 1
            payload = {"type": kind, "sequence_number": seq - 1, **data}
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

        reader = StreamReader()
        deltas = reader.deltas(chunks)
        first = await anext(deltas, None)
        answer = reader.answer
        pending = shell.response(answer, "in_progress", [], None)
        yield event("response.created", response=pending)
        yield event("response.in_progress", response=pending)
        output: list[dict[str, Any]] = []
        item_id = f"msg_{answer.id.removeprefix('chatcmpl-')}"
        if first is not None:
            yield event("response.output_item.added", output_index=0,
                        item={**_text_item(item_id, "", "in_progress"), "content": []})
            part = {"type": "output_text", "text": "", "annotations": []}
            yield event("response.content_part.added", item_id=item_id, output_index=0,
                        content_index=0, part=part)
            yield event("response.output_text.delta", item_id=item_id, output_index=0,
                        content_index=0, delta=first.text, logprobs=[])
            async for delta in deltas:
                yield event("response.output_text.delta", item_id=item_id, output_index=0,
                            content_index=0, delta=delta.text, logprobs=[])
            text = answer.text
            yield event("response.output_text.done", item_id=item_id, output_index=0,
                        content_index=0, text=text, logprobs=[])
            yield event("response.content_part.done", item_id=item_id, output_index=0,
                        content_index=0, part={**part, "text": text})
            item = _text_item(item_id, text, _status(answer))
            yield event("response.output_item.done", output_index=0, item=item)
            output.append(item)
        for call in answer.tool_calls:
            index = len(output)
            item = _call_item(call)
            yield event("response.output_item.added", output_index=index,
                        item={**item, "arguments": "", "status": "in_progress"})
            yield event("response.function_call_arguments.delta", item_id=item["id"],
                        output_index=index, delta=item["arguments"])
            yield event("response.function_call_arguments.done", item_id=item["id"],
                        output_index=index, arguments=item["arguments"])
            yield event("response.output_item.done", output_index=index, item=item)
            output.append(item)
        status = _status(answer)
        final = shell.response(answer, status, output, _usage(answer.usage))
        yield event(f"response.{status}", response=final)

    return encode


def _error_event(status: int, message: str) -> bytes:
    data = {"type": "error", "sequence_number": 0, "code": "upstream_error",
            "message": message, "param": None}
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


@router.post("/v1/responses")
async def responses(request: Request) -> Response:
    body = await read_json(request, components(request).settings.max_body_bytes)
    req = parse_model(ResponsesRequest, body)
    served = await serve_chat(request, parse_response_request(req))
    shell = _Shell(req, served)
    if served.completion is not None:
        out = render_response(shell, Answer.of(served.completion))
        return Response(orjson.dumps(out), media_type="application/json",
                        headers=served.headers)
    return StreamingResponse(stream_body(request, served, _encoder(shell), _error_event),
                             media_type="text/event-stream", headers=stream_headers(served))
