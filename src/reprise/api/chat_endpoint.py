"""The chat path every client protocol shares, from the HTTP request to a served answer.

Each protocol module (``openai``, ``completions``, ``responses``, ``anthropic``, ``ollama``)
parses its wire body into one canonical form, a ``ChatCall`` whose body is an OpenAI
chat-completions request, and renders the ``ServedChat`` back in its own format. Everything
between (body limits, the message and max-tokens caps, rate limits, the tenant namespace,
model resolution, cache-control headers, RAG collections, the cache lookup, single-flight,
the upstream call and storing the answer, metrics) happens here and in
``serving.chat.ChatService``, once, so the same question asked through Ollama and through
OpenAI with the same settings is one cache entry and obeys the same controls.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from starlette.requests import Request

from reprise.api.deps import components, tenant_namespace
from reprise.api.errors import APIError
from reprise.api.limits import enforce, estimate_tokens
from reprise.api.schemas import ChatRequest, parse_model
from reprise.cache.service import CachePolicy
from reprise.components import Components
from reprise.rag.errors import RagError
from reprise.serving.chat import ChatOutcome, Prepare, Prepared
from reprise.serving.model_defaults import apply_model_defaults
from reprise.upstream.client import UpstreamError

log = logging.getLogger(__name__)

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


@dataclass(slots=True)
class ChatCall:
    """One request in the canonical form: an OpenAI chat-completions body.

    ``body`` holds only what the caller's protocol said (no ``stream``; fields it left out
    are absent, not null), so equal questions with equal settings hash to one cache key
    whichever protocol carried them. ``collection`` names a document collection to answer
    from (RAG); ``include_usage`` asks for the usage chunk at the end of a stream, which
    every non-OpenAI renderer needs for its final event.
    """

    body: dict[str, Any]
    stream: bool = False
    include_usage: bool = True
    collection: str | None = None
    param_names: dict[str, str] = field(default_factory=dict)  # canonical → protocol field
    validated: ChatRequest | None = None  # ``body`` already validated (OpenAI chat does)


@dataclass(slots=True)
class ServedChat:
    """An answer ready to render: a completion, or chunks whose first one is already in hand
    (an upstream that fails before its first token got an HTTP error status instead)."""

    outcome: ChatOutcome
    headers: dict[str, str]
    model: str  # the public name the caller asked for
    started: float  # perf_counter at the start of the request
    completion: dict[str, Any] | None = None
    chunks: AsyncIterator[dict[str, Any]] | None = None
    record: Callable[[int], None] = field(default=lambda status: None)


def cache_policy(request: Request, namespace: str) -> CachePolicy:
    """Request headers → what the cache may do for this request."""
    cc = request.headers.get("cache-control", "").lower()
    policy = CachePolicy(namespace=namespace)
    if "no-cache" in cc:
        policy.lookup = False
    if "no-store" in cc:
        policy.store = False
    if m := _MAX_AGE.search(cc):
        policy.max_age = float(m.group(1))
    if request.headers.get("x-reprise-semantic", "").lower() in ("off", "0", "false", "no"):
        policy.semantic = False
    raw = request.headers.get("x-reprise-threshold")
    if raw:
        try:
            policy.threshold = float(raw)
        except ValueError as exc:
            raise APIError(400, "X-Reprise-Threshold must be a number between 0 and 1",
                           code="invalid_header", param="X-Reprise-Threshold") from exc
        if not 0.0 <= policy.threshold <= 1.0:
            raise APIError(400, "X-Reprise-Threshold must be between 0 and 1",
                           code="invalid_header", param="X-Reprise-Threshold")
    return policy


def _tag_variants(name: str) -> list[str]:
    """``llama3`` and ``llama3:latest`` name one model (Ollama's convention, which Ollama
    upstreams list with the tag and apps write without it, or the other way round)."""
    if name.endswith(":latest"):
        return [name, name.removesuffix(":latest")]
    if ":" not in name:
        return [name, f"{name}:latest"]
    return [name]


async def resolve_model(comp: Components, requested: str | None) -> str:
    """Public model name → upstream model name; 404 for a model nobody serves."""
    settings = comp.settings
    if not requested or requested == "default":
        return settings.upstream_model_for(requested)
    for refreshed in (False, True):
        if refreshed:
            # Not configured: the upstream may still serve it (Ollama/vLLM, many models).
            comp.known_models.update(await comp.upstream.models())
        for name in _tag_variants(requested):
            if name in comp.known_models:
                return settings.upstream_model_for(name)
    raise APIError(404, f"model '{requested}' not found: it is not served here (serve it "
                   "under that name with REPRISE_MODEL_MAP, e.g. "
                   f"'{{\"{requested}\": \"{settings.upstream_model}\"}}')",
                   code="model_not_found", param="model")


def served_models(comp: Components) -> list[str]:
    """Every public model name this gateway answers for, configured ones first."""
    return list(dict.fromkeys([*comp.settings.public_models, *sorted(comp.known_models)]))


def upstream_failed(comp: Components, exc: UpstreamError) -> APIError:
    """Counted and logged (an operator must see why a request failed; no prompt text),
    then raised in the caller's protocol like any other error."""
    comp.metrics.upstream_errors.labels(str(exc.status)).inc()
    log.warning("upstream error %s: %s", exc.status, exc.message)
    return APIError(exc.status, exc.message, code="upstream_error")


def outcome_headers(outcome: ChatOutcome) -> dict[str, str]:
    headers = {"X-Reprise-Cache": outcome.tier, "Age": str(outcome.age),
               "X-Reprise-Key": outcome.keys.key[:16]}
    if outcome.hit and outcome.similarity is not None:
        headers["X-Reprise-Similarity"] = f"{outcome.similarity:.4f}"
    if outcome.matched_question:
        headers["X-Reprise-Matched-Question"] = quote(outcome.matched_question[:300])
    if outcome.explanation is not None:
        # Why the semantic tier served this or did not: the stage that decided and its
        # numbers; the nearest stored question is in the body's ``reprise.lookup``.
        headers["X-Reprise-Lookup"] = outcome.explanation.header()
    if outcome.timings:
        # W3C Server-Timing: browsers' dev tools and load tools show where a lookup's time
        # went (exact lookup, question embedding, semantic search + verification).
        headers["Server-Timing"] = ", ".join(
            f"{name.removesuffix('_ms')};dur={ms:.2f}" for name, ms in outcome.timings.items())
    return headers


async def _rag_prepare(rag: Any, namespace: str, collection: str,
                       body: dict[str, Any]) -> tuple[dict[str, Any], Prepare]:
    """Key context now (collection version); retrieval only if the cache misses."""
    try:
        key_context = await rag.key_context(namespace, collection)
    except RagError as exc:
        raise APIError(exc.status, exc.message, code=exc.code, param="collection") from exc

    async def prepare() -> Prepared:
        prep = await rag.prepare_chat(namespace, collection, body)
        return Prepared(prep.body, {"citations": prep.citations}, prep.direct_answer)

    return key_context, prepare


def _collection(request: Request, call: ChatCall) -> str | None:
    """A body field where the protocol allows one, else the ``X-Reprise-Collection`` header
    (the Ollama and Anthropic SDKs can set headers on every call but not body fields)."""
    header = request.headers.get("x-reprise-collection")
    if call.collection is not None and header is not None and header != call.collection:
        raise APIError(400, "the body's collection and X-Reprise-Collection disagree",
                       code="invalid_value", param="collection")
    return call.collection if call.collection is not None else header


def _check_caps(comp: Components, req: ChatRequest, call: ChatCall) -> int | None:
    settings = comp.settings
    if len(req.messages) > settings.max_messages:
        raise APIError(400, f"too many messages ({len(req.messages)}); the limit is "
                       f"{settings.max_messages}", code="too_many_messages",
                       param=call.param_names.get("messages", "messages"))
    cap = settings.max_tokens_cap
    asked = req.max_tokens or req.max_completion_tokens
    if cap is not None and asked is not None and asked > cap:
        name = call.param_names.get("max_tokens", "max_tokens")
        raise APIError(400, f"{name} {asked} is over this gateway's cap of {cap}",
                       code="max_tokens_too_large", param=name)
    return asked


async def serve_chat(request: Request, call: ChatCall) -> ServedChat:
    """Answer one canonical chat request through the cache, or raise ``APIError``."""
    comp = components(request)
    started = time.perf_counter()
    body = call.body
    req = call.validated or parse_model(ChatRequest, body)
    asked = _check_caps(comp, req, call)
    await enforce(request, estimate_tokens(body["messages"], asked))
    namespace = tenant_namespace(request)
    upstream_model = await resolve_model(comp, req.model)
    policy = cache_policy(request, namespace)
    model = req.model or upstream_model
    collection = _collection(request, call)
    # The model's own request defaults (answer cap, sampling, a system prompt in the
    # question's language) fill what the caller left unset, before the key is computed:
    # the key says what the model was really asked, whichever protocol asked it.
    body = apply_model_defaults(body, comp.settings.model_defaults.get(upstream_model),
                                grounded=collection is not None)
    key_context: dict[str, Any] | None = None
    prepare = None
    if collection is not None:
        rag = comp.extras.get("rag")
        if rag is None:
            raise APIError(400, "document chat is not enabled on this gateway",
                           code="rag_disabled", param="collection")
        key_context, prepare = await _rag_prepare(rag, namespace, collection, body)
    try:
        outcome = await comp.chat.complete(
            body, policy, model=model, upstream_model=upstream_model, stream=call.stream,
            include_usage=call.include_usage, key_context=key_context, prepare=prepare,
        )
    except UpstreamError as exc:
        # One event per failed request too, so the dashboard's count of failed requests
        # agrees with its count of upstream errors.
        comp.metrics.chat(tier="miss" if policy.lookup else "bypass",
                          latency_s=time.perf_counter() - started, stream=call.stream,
                          status=exc.status, namespace=namespace)
        raise upstream_failed(comp, exc) from exc
    except RagError as exc:
        raise APIError(exc.status, exc.message, code=exc.code, param="collection") from exc

    def record(status: int) -> None:
        comp.metrics.chat(
            tier=outcome.tier, latency_s=time.perf_counter() - started, stream=call.stream,
            status=status, namespace=namespace, saved_prompt=outcome.saved_prompt_tokens,
            saved_completion=outcome.saved_completion_tokens, similarity=outcome.similarity,
            tokens_estimated=outcome.tokens_estimated,
            lookup=None if outcome.explanation is None else outcome.explanation.as_dict(),
        )

    served = ServedChat(outcome, outcome_headers(outcome), model, started, record=record)
    if not call.stream:
        assert outcome.completion is not None
        served.completion = outcome.completion
        _name_response(served, outcome.completion)
        record(200)
        return served
    assert outcome.chunks is not None
    chunks = outcome.chunks
    # Peek the first chunk so an upstream that fails at once gets a proper HTTP status.
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except UpstreamError as exc:
        record(exc.status)
        raise upstream_failed(comp, exc) from exc
    except RagError as exc:
        record(exc.status)
        raise APIError(exc.status, exc.message, code=exc.code, param="collection") from exc
    if first is not None:
        _name_response(served, first)
    served.chunks = _prepend(first, chunks)
    return served


def _name_response(served: ServedChat, completion_or_chunk: dict[str, Any]) -> None:
    """The id users vote with (``POST /v1/feedback``), for protocols whose body has none."""
    rid = completion_or_chunk.get("id")
    if isinstance(rid, str) and rid:
        served.headers["X-Reprise-Response-Id"] = rid


async def _prepend(first: dict[str, Any] | None,
                   rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    try:
        if first is not None:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


Encoder = Callable[[AsyncIterator[dict[str, Any]]], AsyncIterator[bytes]]
ErrorEvent = Callable[[int, str], bytes]


async def stream_body(request: Request, served: ServedChat, encode: Encoder,
                      error_event: ErrorEvent) -> AsyncIterator[bytes]:
    """The bytes of a streamed answer in one protocol's framing.

    ``encode`` turns the canonical chunks into that protocol's events; an upstream that
    fails mid-stream ends the stream with the protocol's own error event (the status line
    is already sent), and nothing partial is stored (``ChatService`` stores only complete
    answers). Metrics record the final status once, however the stream ended.
    """
    comp = components(request)
    assert served.chunks is not None
    status = 200
    try:
        async for data in encode(served.chunks):
            yield data
    except UpstreamError as exc:
        status = exc.status
        upstream_failed(comp, exc)
        yield error_event(exc.status, exc.message)
    finally:
        await served.chunks.aclose()  # type: ignore[attr-defined]
        served.record(status)


def stream_headers(served: ServedChat) -> dict[str, str]:
    return {**served.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
