"""Ollama's own REST API (``/api/*``), so ``OLLAMA_HOST=http://reprise:11434`` switches an app.

Covers what Ollama apps call: ``/api/chat`` and ``/api/generate`` (NDJSON streaming by
default, ``"stream": false`` for one JSON object), ``/api/embed`` and the legacy
``/api/embeddings``, the model listings ``/api/tags``, ``/api/show``, ``/api/ps``,
``/api/version``, and ``/api/pull`` (succeeds at once for a served model). Creating,
copying, pushing and deleting models are not served (404): the model server behind Reprise
owns its models. Chat and generate are parsed into the canonical chat request and served by
the shared path (``chat_endpoint``), so they hit the same cache entries as OpenAI requests
with the same settings.

Mapping, where Ollama and OpenAI differ:
* ``options``: ``temperature``, ``top_p``, ``seed``, ``stop``, ``presence_penalty`` and
  ``frequency_penalty`` map to the OpenAI fields; ``num_predict`` to ``max_tokens``
  (negative = unbounded = absent); ``top_k``, ``min_p`` and ``repeat_penalty`` change the
  answer, so they are kept and sent upstream as the extra fields llama.cpp, vLLM and
  Ollama's OpenAI endpoint accept. Runtime options (``num_ctx``, ``num_thread``,
  ``num_gpu``…) belong to the model server behind Reprise and are ignored, as Ollama
  ignores unknown options.
* ``format: "json"`` → ``response_format: json_object``; a JSON schema → ``json_schema``.
* ``images`` (base64) → image parts: such questions skip the semantic tier.
* ``keep_alive`` is accepted (the model server manages its own memory); an empty prompt or
  message list answers ``done_reason: "load"`` (or ``"unload"`` with ``keep_alive: 0``),
  which apps use to warm a model.
* ``suffix``, ``raw``, ``template`` and ``context`` (fill-in-the-middle, a raw prompt, a
  per-request template and token-id history) cannot be expressed as a chat request to an
  OpenAI-compatible upstream: a clear 400 instead of a silently different answer.

Errors are Ollama's ``{"error": "..."}`` with the same status codes (``api/errors.py``);
a stream that fails after it started ends with an ``{"error": ...}`` line, as Ollama's.
Durations are the gateway's own measurements, in nanoseconds.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from reprise.api.body import read_json
from reprise.api.canonical import Answer, StreamReader, data_uri
from reprise.api.chat_endpoint import (
    ChatCall,
    ServedChat,
    resolve_model,
    serve_chat,
    served_models,
    stream_body,
    stream_headers,
)
from reprise.api.deps import components
from reprise.api.embeddings import embed_texts
from reprise.api.errors import APIError
from reprise.api.schemas import parse_model

router = APIRouter()

# The Ollama API level these routes implement (clients such as Open WebUI read it to decide
# which fields they may send); Reprise's own version is in ``reprise``.
OLLAMA_API_VERSION = "0.12.0"

_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
             "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
_PASSED_THROUGH = ("top_k", "min_p", "repeat_penalty")
_PARAM_NAMES = {"max_tokens": "options.num_predict", "messages": "messages"}
_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop",
                 "content_filter": "stop"}


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None


class OllamaChatRequest(_Common):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class OllamaGenerateRequest(_Common):
    prompt: str | None = ""
    system: str | None = None
    images: list[str] | None = None
    suffix: str | None = None
    raw: bool | None = None
    template: str | None = None
    context: list[int] | None = None


class OllamaEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool | None = None
    dimensions: int | None = None
    keep_alive: str | int | float | None = None


class OllamaEmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    prompt: str
    keep_alive: str | int | float | None = None


class OllamaModelRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    name: str | None = None  # older clients send the model as ``name``


R = TypeVar("R", bound=OllamaModelRequest)


# -- parse -----------------------------------------------------------------------------------
def _sampling(options: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key in _SAMPLING:
            out[_SAMPLING[key]] = value
        elif key == "num_predict":
            if not isinstance(value, int) or isinstance(value, bool):
                raise APIError(400, "options.num_predict must be an integer",
                               param="options.num_predict")
            if value > 0:
                out["max_tokens"] = value
        elif key in _PASSED_THROUGH:
            out[key] = value
    return out


def _response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    raise APIError(400, f"format must be \"json\" or a JSON schema, not {fmt!r}",
                   param="format")


def _content(text: str | None, images: list[str] | None) -> str | list[dict[str, Any]]:
    if not images:
        return text or ""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text or ""}]
    parts += [{"type": "image_url", "image_url": {"url": data_uri(img)}} for img in images]
    return parts


def _messages(messages: list[OllamaMessage]) -> list[dict[str, Any]]:
    """Ollama messages → OpenAI messages. Ollama's tool calls carry no ids and its tool
    results name the tool instead: ids are made up per call, and each result is paired with
    the latest unanswered call of its tool, as OpenAI upstreams require."""
    out: list[dict[str, Any]] = []
    open_calls: list[tuple[str, str]] = []  # (id, tool name) awaiting a result
    for i, msg in enumerate(messages):
        item: dict[str, Any] = {"role": msg.role, "content": _content(msg.content, msg.images)}
        if msg.role == "assistant" and msg.tool_calls:
            calls = []
            for j, call in enumerate(msg.tool_calls):
                fn = call.get("function") or {}
                args = fn.get("arguments")
                cid = f"call_{i}_{j}"
                calls.append({"id": cid, "type": "function", "function": {
                    "name": str(fn.get("name") or ""),
                    "arguments": args if isinstance(args, str)
                    else orjson.dumps(args or {}).decode()}})
                open_calls.append((cid, str(fn.get("name") or "")))
            item["tool_calls"] = calls
        if msg.role == "tool":
            match = next((c for c in reversed(open_calls) if c[1] == msg.tool_name), None)
            match = match or (open_calls[-1] if open_calls else None)
            if match is not None:
                open_calls.remove(match)
            item["tool_call_id"] = match[0] if match else f"call_{msg.tool_name or i}"
            if msg.tool_name:
                item["name"] = msg.tool_name
        out.append(item)
    return out


def _canonical(model: str, messages: list[dict[str, Any]], req: _Common,
               tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, **_sampling(req.options)}
    fmt = _response_format(req.format)
    if fmt is not None:
        body["response_format"] = fmt
    if tools:
        body["tools"] = tools
    return body


def parse_chat(req: OllamaChatRequest) -> ChatCall:
    body = _canonical(req.model, _messages(req.messages), req, req.tools)
    return ChatCall(body, stream=req.stream, param_names=_PARAM_NAMES)


def parse_generate(req: OllamaGenerateRequest) -> ChatCall:
    for name in ("suffix", "template"):
        if getattr(req, name):
            raise APIError(400, f"{name} is not supported by Reprise: it serves models "
                           "through their chat template", param=name)
    if req.raw:
        raise APIError(400, "raw prompts are not supported by Reprise: it serves models "
                       "through their chat template", param="raw")
    if req.context:
        raise APIError(400, "context (token ids of an earlier answer) is not supported by "
                       "Reprise; send the conversation to /api/chat instead", param="context")
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    messages.append({"role": "user", "content": _content(req.prompt, req.images)})
    body = _canonical(req.model, messages, req)
    return ChatCall(body, stream=req.stream, param_names=_PARAM_NAMES)


# -- render ----------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _final_fields(answer: Answer, served: ServedChat, first_token_at: float | None,
                  ) -> dict[str, Any]:
    """The closing counters Ollama apps read (tokens/s in Open WebUI, say)."""
    total = time.perf_counter() - served.started
    prompt_time = (first_token_at - served.started) if first_token_at else 0.0
    out: dict[str, Any] = {
        "done": True, "done_reason": _DONE_REASONS.get(answer.finish_reason, "stop"),
        "total_duration": _ns(total), "load_duration": 0,
        "prompt_eval_count": answer.usage.prompt, "prompt_eval_duration": _ns(prompt_time),
        "eval_count": answer.usage.completion, "eval_duration": _ns(total - prompt_time),
    }
    if answer.meta is not None:
        out["reprise"] = answer.meta
    if answer.citations is not None:
        out["citations"] = answer.citations
    return out


def _message(answer: Answer, text: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": text}
    if answer.tool_calls:
        msg["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments_object()}}
                             for c in answer.tool_calls]
    return msg


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def _error_line(status: int, message: str) -> bytes:
    return _line({"error": message})


def _json(obj: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json", headers=headers)


def _respond(request: Request, served: ServedChat, kind: Literal["chat", "generate"]
             ) -> Response:
    model = served.model
    if served.completion is not None:
        answer = Answer.of(served.completion)
        out: dict[str, Any] = {"model": model, "created_at": _now()}
        if kind == "chat":
            out["message"] = _message(answer, answer.text)
        else:
            out["response"] = answer.text
        out.update(_final_fields(answer, served, None))
        return _json(out, served.headers)

    async def encode(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        reader = StreamReader()
        async for delta in reader.deltas(chunks):
            line: dict[str, Any] = {"model": model, "created_at": _now()}
            if kind == "chat":
                line["message"] = {"role": "assistant", "content": delta.text}
            else:
                line["response"] = delta.text
            line["done"] = False
            yield _line(line)
        answer = reader.answer
        last: dict[str, Any] = {"model": model, "created_at": _now()}
        if kind == "chat":
            last["message"] = _message(answer, "")
        else:
            last["response"] = ""
        last.update(_final_fields(answer, served, reader.first_token_at))
        yield _line(last)

    return StreamingResponse(stream_body(request, served, encode, _error_line),
                             media_type="application/x-ndjson", headers=stream_headers(served))


async def _load_only(request: Request, model: str, keep_alive: Any,
                     kind: Literal["chat", "generate"]) -> Response:
    """An empty request loads (or, with ``keep_alive: 0``, unloads) a model in Ollama."""
    await resolve_model(components(request), model)
    out: dict[str, Any] = {"model": model, "created_at": _now()}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out.update(done=True, done_reason="unload" if keep_alive in (0, "0", "0s") else "load")
    return _json(out)


# -- routes ----------------------------------------------------------------------------------
@router.post("/api/chat")
async def chat(request: Request) -> Response:
    body = await read_json(request, components(request).settings.max_body_bytes)
    req = parse_model(OllamaChatRequest, body)
    if not req.messages:
        return await _load_only(request, req.model, req.keep_alive, "chat")
    served = await serve_chat(request, parse_chat(req))
    return _respond(request, served, "chat")


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    body = await read_json(request, components(request).settings.max_body_bytes)
    req = parse_model(OllamaGenerateRequest, body)
    if not req.prompt and not req.images:
        return await _load_only(request, req.model, req.keep_alive, "generate")
    served = await serve_chat(request, parse_generate(req))
    return _respond(request, served, "generate")


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    started = time.perf_counter()
    body = await read_json(request, components(request).settings.max_body_bytes)
    req = parse_model(OllamaEmbedRequest, body)
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise APIError(400, "input must not be empty", param="input")
    _, vectors, tokens = await embed_texts(request, texts, dimensions=req.dimensions)
    return _json({"model": req.model, "embeddings": vectors.tolist(),
                  "total_duration": _ns(time.perf_counter() - started), "load_duration": 0,
                  "prompt_eval_count": tokens})


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    body = await read_json(request, components(request).settings.max_body_bytes)
    req = parse_model(OllamaEmbeddingsRequest, body)
    _, vectors, _ = await embed_texts(request, [req.prompt], param="prompt")
    return _json({"embedding": vectors[0].tolist()})


def _model_entry(name: str) -> dict[str, Any]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return {"name": name, "model": name, "modified_at": "1970-01-01T00:00:00Z", "size": 0,
            "digest": digest, "details": {"parent_model": "", "format": "", "family": "",
                                          "families": None, "parameter_size": "",
                                          "quantization_level": ""}}


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    return _json({"models": [_model_entry(n) for n in served_models(components(request))]})


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    """The models Reprise serves are always "loaded" from a client's point of view: the
    model server behind it owns loading, so no expiry is reported."""
    models = [{**_model_entry(n), "expires_at": "0001-01-01T00:00:00Z", "size_vram": 0}
              for n in served_models(components(request))]
    return _json({"models": models})


class OllamaPullRequest(OllamaModelRequest):
    stream: bool = True


async def _served_model(request: Request, cls: type[R]) -> tuple[R, str]:
    """The body of a request about one model, and that model's name, checked to be served
    (404 in Ollama's shape otherwise)."""
    body = await read_json(request, components(request).settings.max_body_bytes)
    req = parse_model(cls, body)
    name = req.model or req.name
    if not name:
        raise APIError(400, "model is required", param="model")
    await resolve_model(components(request), name)
    return req, name


@router.post("/api/show")
async def show(request: Request) -> Response:
    _, name = await _served_model(request, OllamaModelRequest)
    entry = _model_entry(name)
    return _json({"modelfile": "", "parameters": "", "template": "",
                  "details": entry["details"], "model_info": {},
                  "capabilities": ["completion", "tools"], "modified_at": entry["modified_at"]})




@router.post("/api/pull")
async def pull(request: Request) -> Response:
    """Scripts pull a model before using it: a model Reprise serves is already there (the
    model server behind it owns the weights), so this succeeds without downloading; any
    other model is a 404, as a pull of an unknown model is in Ollama."""
    req, _ = await _served_model(request, OllamaPullRequest)
    if req.stream:
        return Response(_line({"status": "success"}), media_type="application/x-ndjson")
    return _json({"status": "success"})


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    """The health text Ollama apps and scripts probe ``OLLAMA_HOST`` for."""
    return Response("Ollama is running", media_type="text/plain")


@router.get("/api/version")
async def version() -> Response:
    from reprise import __version__

    return _json({"version": OLLAMA_API_VERSION, "reprise": __version__})
