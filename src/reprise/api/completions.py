"""OpenAI's legacy text completions, ``POST /v1/completions`` (LangChain's ``OpenAI`` class).

A prompt is asked as one user turn of the canonical chat request, so it shares cache entries
with the same question asked through chat completions, Ollama or Anthropic (same sampling
settings), and the model answers through its chat template as every other surface does.
A list of prompts gives one choice per prompt, in order (each its own cache entry).

Refused with a clear 400 rather than answered differently: ``suffix`` (fill-in-the-middle),
token-id prompts, ``logprobs`` and ``best_of`` above ``n``. ``echo`` puts the prompt before
the answer text, as OpenAI does. ``max_tokens`` defaults to 16 as in OpenAI's API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from reprise.api.body import read_json
from reprise.api.canonical import Answer, Usage, protocol_id
from reprise.api.chat_endpoint import ChatCall, ServedChat, serve_chat, stream_body, stream_headers
from reprise.api.deps import components
from reprise.api.errors import APIError, error_body
from reprise.api.schemas import parse_model

router = APIRouter()

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
MAX_PROMPTS = 16
# Fields with the same meaning in chat completions, carried over as they are.
_CARRIED = ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "seed",
            "logit_bias", "user")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    n: int | None = Field(default=None, ge=1, le=16)
    best_of: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: int | None = None
    echo: bool = False
    collection: str | None = None


def _prompts(req: CompletionRequest) -> list[str]:
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        if len(prompt) > MAX_PROMPTS:
            raise APIError(400, f"too many prompts ({len(prompt)}); the limit is "
                           f"{MAX_PROMPTS}", param="prompt")
        return [str(p) for p in prompt]
    raise APIError(400, "token-id prompts are not supported by Reprise; send the prompt as "
                   "text", param="prompt")


def parse_completion(req: CompletionRequest, body: dict[str, Any]) -> list[ChatCall]:
    if req.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported by Reprise",
                       param="suffix")
    if req.logprobs is not None:
        raise APIError(400, "logprobs are not supported by Reprise", param="logprobs")
    if req.best_of is not None and req.best_of > (req.n or 1):
        raise APIError(400, "best_of above n is not supported by Reprise", param="best_of")
    base: dict[str, Any] = {k: body[k] for k in _CARRIED if body.get(k) is not None}
    if body.get("logit_bias") == {}:
        base.pop("logit_bias", None)  # LangChain sends an empty one: means nothing
    if req.model is not None:
        base["model"] = req.model
    base["max_tokens"] = req.max_tokens
    if req.n is not None and req.n > 1:
        base["n"] = req.n
    return [ChatCall({**base, "messages": [{"role": "user", "content": prompt}]},
                     stream=req.stream, include_usage=True, collection=req.collection)
            for prompt in _prompts(req)]


def _choices(answer_choices: list[dict[str, Any]], offset: int, prefix: str
             ) -> list[dict[str, Any]]:
    out = []
    for ch in answer_choices:
        text = (ch.get("message") or {}).get("content") or ""
        out.append({"text": prefix + text, "index": offset + int(ch.get("index") or 0),
                    "logprobs": None, "finish_reason": ch.get("finish_reason") or "stop"})
    return out


def _completion_id(served: list[ServedChat]) -> str:
    """One prompt: the chat answer's id in this format (votes find it); several: a new one."""
    if len(served) == 1 and served[0].headers.get("X-Reprise-Response-Id"):
        return protocol_id("cmpl-", served[0].headers["X-Reprise-Response-Id"])
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def render_json(served: list[ServedChat], prompts: list[str], echo: bool,
                per_prompt: int) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = cached = 0
    for i, s in enumerate(served):
        assert s.completion is not None
        choices += _choices(s.completion.get("choices") or [], i * per_prompt,
                            prompts[i] if echo else "")
        usage = Answer.of(s.completion).usage
        prompt_tokens += usage.prompt
        completion_tokens += usage.completion
        cached += usage.cached
    first = served[0]
    out: dict[str, Any] = {
        "id": _completion_id(served), "object": "text_completion", "created": int(time.time()),
        "model": first.model, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": cached}},
    }
    if len(served) == 1:
        assert first.completion is not None
        out["reprise"] = first.completion.get("reprise")
    else:
        out["reprise"] = [s.completion.get("reprise") for s in served if s.completion]
    return out


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    body = await read_json(request, components(request).settings.max_body_bytes)
    req = parse_model(CompletionRequest, body)
    calls = parse_completion(req, body)
    prompts = [c.body["messages"][0]["content"] for c in calls]
    per_prompt = req.n or 1
    if not req.stream:
        served = list(await asyncio.gather(*(serve_chat(request, c) for c in calls)))
        headers = served[0].headers if len(served) == 1 else {}
        return Response(orjson.dumps(render_json(served, prompts, req.echo, per_prompt)),
                        media_type="application/json", headers=headers)
    if len(calls) > 1:
        raise APIError(400, "streaming a list of prompts is not supported by Reprise; "
                       "stream one prompt per request", param="prompt")
    served_one = await serve_chat(request, calls[0])
    include_usage = bool((req.stream_options or {}).get("include_usage"))
    cid, created = _completion_id([served_one]), int(time.time())

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {"id": cid, "object": "text_completion", "created": created,
                "model": served_one.model, "choices": choices, **extra}
        return b"data: " + orjson.dumps(data) + b"\n\n"

    async def encode(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        meta: dict[str, Any] = {}
        echoed: set[int] = set()
        async for chunk in chunks:
            if chunk.get("reprise") is not None:
                meta = {"reprise": chunk["reprise"]}
            if chunk.get("usage") and not chunk.get("choices"):
                if include_usage:
                    u = Usage.of(chunk["usage"])
                    yield event([], usage={
                        "prompt_tokens": u.prompt, "completion_tokens": u.completion,
                        "total_tokens": u.prompt + u.completion,
                        "prompt_tokens_details": {"cached_tokens": u.cached}})
                continue
            out = []
            for ch in chunk.get("choices") or []:
                idx = int(ch.get("index") or 0)
                text = (ch.get("delta") or {}).get("content") or ""
                if req.echo and idx not in echoed:
                    echoed.add(idx)
                    text = prompts[0] + text
                if text or ch.get("finish_reason"):
                    out.append({"text": text, "index": idx, "logprobs": None,
                                "finish_reason": ch.get("finish_reason")})
            if out:
                yield event(out, **meta)
                meta = {}
        yield b"data: [DONE]\n\n"

    def error_event(status: int, message: str) -> bytes:
        return b"data: " + orjson.dumps(error_body(status, message, "upstream_error")) + b"\n\n"

    return StreamingResponse(stream_body(request, served_one, encode, error_event),
                             media_type="text/event-stream",
                             headers=stream_headers(served_one))
