"""Composition root: builds every long-lived component from one ``Settings``.

The HTTP layer, the CLI and the LangChain adapter all get their parts from here, so wiring
lives in one place and nothing is a module-level global.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from reprise.cache.service import CacheService
from reprise.config import Settings
from reprise.embed.base import Embedder
from reprise.embed.batching import BatchingEmbedder, BatchPolicy, MicroBatcher
from reprise.observability.metrics import Metrics
from reprise.observability.upstream import TimedUpstream
from reprise.serving.chat import ChatService
from reprise.store.base import Store
from reprise.upstream.base import Upstream
from reprise.upstream.client import UpstreamClient
from reprise.upstream.replicas import ReplicaRouter
from reprise.upstream.router import FailoverUpstream, Target

log = logging.getLogger(__name__)


@dataclass
class Components:
    settings: Settings
    store: Store
    embedder: Embedder | None
    cache: CacheService
    upstream: Upstream
    chat: ChatService
    metrics: Metrics
    extras: dict[str, Any] = field(default_factory=dict)
    known_models: set[str] = field(default_factory=set)
    embedders: EmbedderPool | None = None  # shared model instances (see EmbedderPool)
    router: ReplicaRouter | None = None  # replicas of the primary model, when configured

    async def astart(self) -> None:
        """Checks that need the network before serving: replicas must serve one model."""
        if self.router is not None:
            await self.router.verify()

    async def aclose(self) -> None:
        rag = self.extras.get("rag")
        if rag is not None:
            await rag.aclose()
        await self.cache.aclose()
        await self.upstream.aclose()
        await self.store.close()


class EmbedderPool:
    """One instance per embedder kind for the whole process.

    The cache's embedder and document retrieval may be the same kind (both e5, say):
    without a pool each would load its own copy of the model. Thread-safe: a model may be
    loaded from a worker thread.
    """

    def __init__(self, settings: Settings, preset: Embedder | None = None) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._by_kind: dict[str, Embedder] = {}
        if preset is not None:
            self._by_kind[preset.name] = preset

    def get(self, kind: str) -> Embedder:
        with self._lock:
            if kind not in self._by_kind:
                self._by_kind[kind] = build_embedder(self._settings, kind)
            return self._by_kind[kind]


def batch_policy(settings: Settings) -> BatchPolicy | None:
    """How the request path's model calls are batched across requests; None: not at all."""
    if not settings.batching:
        return None
    return BatchPolicy(max_batch=settings.batch_max, window_s=settings.batch_window_ms / 1000,
                       workers=settings.batch_workers)


def build_embedder(settings: Settings, kind: str | None = None) -> Embedder:
    """The configured embedder; a local model (USE, e5) behind a micro-batcher, so that
    concurrent requests' question embeddings share forward passes. A remote embedder is
    not wrapped: its server does its own batching."""
    from reprise.embed.factory import make_embedder

    chosen = kind or settings.embedder
    embedder = make_embedder(
        chosen,
        url=settings.embeddings_url,
        model=settings.embeddings_model,
        api_key=settings.embeddings_api_key,
        threads=settings.compute_threads,
        e5_engine=settings.e5_engine,
    )
    policy = batch_policy(settings)
    if policy is None or chosen == "remote":
        return embedder
    return BatchingEmbedder(embedder, policy)


def build_semantic(settings: Settings, store: Store, embedder: Embedder) -> Any:
    from reprise.cache.semantic import SemanticLookup
    from reprise.cache.verifier import Verifier

    # The cross-encoder maps its model on the first grey-zone candidate, off the event loop.
    verifier = Verifier.load(engine=settings.e5_engine, threads=settings.compute_threads,
                             enabled=settings.semantic_verifier, batch=batch_policy(settings))
    return SemanticLookup(
        store,
        embedder,
        verifier,
        threshold=settings.semantic_threshold,
        top_k=settings.semantic_top_k,
        max_chars=settings.semantic_max_chars,
    )


def model_batchers(embedder: Embedder | None, semantic: Any) -> list[MicroBatcher[Any]]:
    """The request path's batchers, for the metrics of their pass sizes."""
    out: list[MicroBatcher[Any]] = []
    if isinstance(embedder, BatchingEmbedder):
        out += embedder.batchers.values()
    if semantic is not None and semantic.verifier.batcher is not None:
        out.append(semantic.verifier.batcher)
    return out


def build_upstream(settings: Settings) -> tuple[Upstream, ReplicaRouter | None]:
    """One model server, or replicas of it, then the fallbacks in order when configured."""

    def client(url: str, api_key: str) -> UpstreamClient:
        return UpstreamClient(url, api_key, connect_timeout=settings.upstream_connect_timeout,
                              read_timeout=settings.upstream_read_timeout)

    router: ReplicaRouter | None = None
    primary: Upstream
    if settings.upstream_replicas:
        router = ReplicaRouter(
            [(url, client(url, settings.upstream_api_key))
             for url in settings.upstream_replicas],
            policy=settings.upstream_routing,
            max_imbalance=settings.upstream_route_max_imbalance,
            min_match=settings.upstream_route_min_match,
            cooldown_seconds=settings.upstream_cooldown_seconds,
            prefix_capacity_blocks=settings.upstream_prefix_blocks,
        )
        primary, primary_name = router, "replicas"
    else:
        primary = client(settings.upstream_url, settings.upstream_api_key)
        primary_name = settings.upstream_url
    if not settings.upstream_fallbacks:
        return primary, router
    targets = [Target(primary_name, primary)]
    for fb in settings.upstream_fallbacks:
        if "url" not in fb:
            raise ValueError("every entry of upstream_fallbacks needs a 'url'")
        targets.append(Target(fb["url"], client(fb["url"], fb.get("api_key", "")),
                              model=fb.get("model") or None))
    return FailoverUpstream(targets, cooldown_seconds=settings.upstream_cooldown_seconds), router


def build_components(
    settings: Settings,
    *,
    store: Store | None = None,
    embedder: Embedder | None = None,
    upstream: Upstream | None = None,
) -> Components:
    from reprise.store.factory import make_store

    if embedder is None and settings.semantic_enabled:
        embedder = build_embedder(settings)
    dim = embedder.dim if embedder is not None else 512
    store = store or make_store(settings, dim)
    pool = EmbedderPool(settings, embedder)
    semantic = build_semantic(settings, store, embedder) if embedder is not None else None
    cache = CacheService(
        store, semantic, ttl_seconds=settings.cache_ttl_seconds,
        semantic_enabled=settings.semantic_enabled,
        served_ttl_seconds=settings.feedback_window_seconds,
    )
    router: ReplicaRouter | None = None
    if upstream is None:
        upstream, router = build_upstream(settings)
    metrics = Metrics(settings.price_prompt_per_mtok, settings.price_completion_per_mtok)
    if router is not None:
        router.route_listeners.append(metrics.routed)
        router.health_listeners.append(metrics.replica_health)
        for replica in router.replicas:
            metrics.replica_health(replica.name, replica.up)
    chat = ChatService(
        cache, TimedUpstream(upstream, metrics),
        distributed_lock_seconds=settings.single_flight_lock_seconds
        if store.backend == "redis" else None,
    )
    cache.health.listeners.append(lambda op: metrics.store_errors.labels(op).inc())
    cache.embedder_health.listeners.append(lambda op: metrics.embedder_errors.labels(op).inc())
    cache.refusal_listeners.append(lambda tier: metrics.feedback_refusals.labels(tier).inc())
    for batcher in model_batchers(embedder, semantic):
        hist = metrics.batch_items.labels(batcher.name)
        batcher.listeners.append(hist.observe)
    return Components(settings, store, embedder, cache, upstream, chat, metrics,
                      known_models=set(settings.public_models), embedders=pool, router=router)
