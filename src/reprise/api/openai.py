"""OpenAI-compatible endpoints: chat completions (JSON and SSE) and models.

``/v1/embeddings`` lives in ``api/embeddings.py``, shared with the embeddings role.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from reprise.api.body import read_json
from reprise.api.deps import components, tenant_namespace
from reprise.api.errors import APIError, error_body, error_response
from reprise.api.limits import enforce, estimate_tokens
from reprise.api.schemas import ChatRequest, parse_model
from reprise.cache.service import CachePolicy
from reprise.components import Components
from reprise.rag.errors import RagError
from reprise.serving.chat import ChatOutcome, Prepare, Prepared
from reprise.serving.model_defaults import apply_model_defaults
from reprise.upstream.client import UpstreamError

log = logging.getLogger(__name__)
router = APIRouter()

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


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


async def resolve_model(comp: Components, requested: str | None) -> str:
    """Public model name → upstream model name; 404 for a model nobody serves."""
    settings = comp.settings
    upstream_name = settings.upstream_model_for(requested)
    if not requested or requested == "default" or requested in comp.known_models:
        return upstream_name
    # Not configured: the upstream may still serve it (Ollama/vLLM with many models).
    listed = await comp.upstream.models()
    comp.known_models.update(listed)
    if requested in comp.known_models:
        return upstream_name
    raise APIError(404, f"The model '{requested}' does not exist or is not served here",
                   code="model_not_found", param="model")


def _upstream_failed(comp: Components, exc: UpstreamError) -> None:
    """Counted and logged: an operator must see why a request failed (no prompt text)."""
    comp.metrics.upstream_errors.labels(str(exc.status)).inc()
    log.warning("upstream error %s: %s", exc.status, exc.message)


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


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def rag_prepare(rag: Any, namespace: str, collection: str,
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


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    comp = components(request)
    started = time.perf_counter()
    body = await read_json(request, comp.settings.max_body_bytes)
    req = parse_model(ChatRequest, body)
    if len(req.messages) > comp.settings.max_messages:
        raise APIError(400, f"too many messages ({len(req.messages)}); the limit is "
                       f"{comp.settings.max_messages}", code="too_many_messages",
                       param="messages")
    cap = comp.settings.max_tokens_cap
    asked = req.max_tokens or req.max_completion_tokens
    if cap is not None and asked is not None and asked > cap:
        raise APIError(400, f"max_tokens {asked} is over this gateway's cap of {cap}",
                       code="max_tokens_too_large", param="max_tokens")
    await enforce(request, estimate_tokens(body["messages"], asked))
    namespace = tenant_namespace(request)
    upstream_model = await resolve_model(comp, req.model)
    policy = cache_policy(request, namespace)
    model = req.model or upstream_model
    body = apply_model_defaults(body, comp.settings.model_defaults.get(upstream_model),
                                grounded=req.collection is not None)
    key_context: dict[str, Any] | None = None
    prepare = None
    if req.collection is not None:
        rag = comp.extras.get("rag")
        if rag is None:
            raise APIError(400, "document chat is not enabled on this gateway",
                           code="rag_disabled", param="collection")
        key_context, prepare = await rag_prepare(rag, namespace, req.collection, body)
    try:
        outcome = await comp.chat.complete(
            body, policy, model=model, upstream_model=upstream_model, stream=req.stream,
            include_usage=req.include_usage, key_context=key_context, prepare=prepare,
        )
    except UpstreamError as exc:
        _upstream_failed(comp, exc)
        # One event per failed request too, so the dashboard's count of failed requests
        # agrees with its count of upstream errors.
        comp.metrics.chat(tier="miss" if policy.lookup else "bypass",
                          latency_s=time.perf_counter() - started, stream=req.stream,
                          status=exc.status, namespace=namespace)
        return error_response(exc.status, exc.message, code="upstream_error")
    except RagError as exc:
        raise APIError(exc.status, exc.message, code=exc.code, param="collection") from exc
    headers = outcome_headers(outcome)

    def record(status: int) -> None:
        comp.metrics.chat(
            tier=outcome.tier, latency_s=time.perf_counter() - started, stream=req.stream,
            status=status, namespace=namespace, saved_prompt=outcome.saved_prompt_tokens,
            saved_completion=outcome.saved_completion_tokens, similarity=outcome.similarity,
            tokens_estimated=outcome.tokens_estimated,
            lookup=None if outcome.explanation is None else outcome.explanation.as_dict(),
        )

    if not req.stream:
        assert outcome.completion is not None
        record(200)
        return Response(orjson.dumps(outcome.completion), media_type="application/json",
                        headers=headers)

    assert outcome.chunks is not None
    chunks = outcome.chunks
    # Peek the first chunk so an upstream that fails at once gets a proper HTTP status.
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except UpstreamError as exc:
        _upstream_failed(comp, exc)
        record(exc.status)
        return error_response(exc.status, exc.message, code="upstream_error")
    except RagError as exc:
        record(exc.status)
        return error_response(exc.status, exc.message, code=exc.code, param="collection")

    async def events() -> AsyncIterator[bytes]:
        status = 200
        try:
            if first is not None:
                yield _sse(first)
            async for chunk in chunks:
                yield _sse(chunk)
            yield b"data: [DONE]\n\n"
        except UpstreamError as exc:
            status = exc.status
            _upstream_failed(comp, exc)
            yield _sse(error_body(exc.status, exc.message, "upstream_error"))
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
            record(status)

    headers["Cache-Control"] = "no-cache"
    headers["X-Accel-Buffering"] = "no"
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    comp = components(request)
    names = list(dict.fromkeys([*comp.settings.public_models, *sorted(comp.known_models)]))
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "reprise"} for n in names]
    return Response(orjson.dumps({"object": "list", "data": data}),
                    media_type="application/json")

