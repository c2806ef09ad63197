"""Operational endpoints: health, metrics, cache administration, recent events."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from reprise.api.deps import components, tenant_namespace
from reprise.api.errors import APIError
from reprise.api.feedback import feedback_view
from reprise.store.base import CacheEntry

router = APIRouter()


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
                    status_code=status, media_type="application/json")


def _is_admin(request: Request) -> bool:
    return getattr(request.state, "role", "admin") == "admin"


def _scope(request: Request, namespace: str | None, all_namespaces: bool,
           write: bool = False) -> str | None:
    """Which namespace an admin call acts on; only admins may act on others or on all.

    With API keys, a user key may read its own tenant's cache (list, stats, events) but
    changing it (delete, clear) takes an admin key: a leaked app key cannot wipe the cache.
    """
    own = tenant_namespace(request)
    if write and not _is_admin(request):
        raise APIError(403, "changing the cache needs an admin API key", code="admin_required")
    if all_namespaces or (namespace is not None and namespace != own):
        if not _is_admin(request):
            raise APIError(403, "this needs an admin API key", code="admin_required")
        return None if all_namespaces else namespace
    return namespace or own


def entry_view(e: CacheEntry, now: float) -> dict[str, Any]:
    try:
        answer = orjson.loads(e.response)["choices"][0]["message"].get("content") or ""
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        answer = ""
    return {
        "key": e.key, "namespace": e.namespace, "question": e.question,
        # Digest of the rest of the request (model, system prompt, earlier turns, sampling,
        # document collection version): two entries of one question differ here.
        "context": e.fingerprint[:8],
        "answer_preview": answer[:200], "model": e.model, "hits": e.hits,
        "created_at": e.created_at, "last_access": e.last_access,
        "age_seconds": int(now - e.created_at),
        "ttl_seconds": None if e.expires_at is None else max(0, int(e.expires_at - now)),
        "semantic": e.vector is not None, "prompt_tokens": e.prompt_tokens,
        "completion_tokens": e.completion_tokens,
        "feedback": None if e.feedback.empty else feedback_view(e.feedback),
    }


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    comp = components(request)
    store_ok = await comp.store.ping()
    body = {"status": "ok", "store": {"backend": comp.store.backend, "ok": store_ok,
                                      "errors": comp.cache.health.errors},
            "embedder": {"name": comp.embedder.name if comp.embedder else None,
                         "errors": comp.cache.embedder_health.errors},
            "upstream": comp.settings.upstream_url}
    return _json(body)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(components(request).metrics.render(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/admin/cache")
async def list_cache(request: Request, namespace: str | None = None, all: bool = False,
                     q: str = "", limit: int = 100, offset: int = 0) -> Response:
    comp = components(request)
    scope = _scope(request, namespace, all)
    now = time.time()
    rows = await comp.store.list_entries(scope, limit=min(limit, 1000), offset=offset, query=q)
    return _json({"object": "list", "data": [entry_view(e, now) for e in rows]})


@router.get("/admin/cache/stats")
async def cache_stats(request: Request, namespace: str | None = None,
                      all: bool = False) -> Response:
    comp = components(request)
    scope = _scope(request, namespace, all)
    stats = await comp.store.stats(scope)
    out = asdict(stats)
    if scope is not None:
        out["namespaces"] = {scope: stats.namespaces.get(scope, 0)}
    out["store_errors"] = comp.cache.health.errors
    out["embedder_errors"] = comp.cache.embedder_health.errors
    out["semantic_threshold"] = comp.settings.semantic_threshold
    out["semantic_enabled"] = comp.cache.semantic_enabled
    out["ttl_seconds"] = comp.settings.cache_ttl_seconds
    out["embedder"] = comp.embedder.name if comp.embedder else None
    # Votes since this process started (every replica counts its own; /metrics has them
    # by tier), and lookups whose entry votes refused.
    out["feedback"] = {**comp.metrics.feedback_counts,
                       "refused": dict(comp.cache.refusals),
                       "window_seconds": comp.settings.feedback_window_seconds}
    return _json(out)


@router.delete("/admin/cache/{key}")
async def delete_entry(request: Request, key: str, namespace: str | None = None) -> Response:
    comp = components(request)
    scope = _scope(request, namespace, False, write=True)
    assert scope is not None
    if not await comp.store.delete(scope, key):
        raise APIError(404, f"no cache entry {key} in namespace {scope}", code="not_found")
    return _json({"deleted": key, "namespace": scope})


@router.post("/admin/cache/clear")
async def clear_cache(request: Request, namespace: str | None = None,
                      all: bool = False) -> Response:
    comp = components(request)
    scope = _scope(request, namespace, all, write=True)
    removed = await comp.store.clear(scope)
    return _json({"cleared": removed, "namespace": scope})


@router.get("/admin/events")
async def events(request: Request, since: float = 0.0, all: bool = False) -> Response:
    comp = components(request)
    scope = _scope(request, None, all)
    return _json({"object": "list", "data": comp.metrics.recent(since, scope)})
