"""``reprise serve --role embeddings``: only ``/v1/embeddings``, for gateways to share.

Embedding is the gateway's main CPU cost on a miss and on every semantic lookup; running it
as its own service lets replicas stay light (``REPRISE_EMBEDDER=remote`` +
``REPRISE_EMBEDDINGS_URL=http://host:port/v1``) and lets the model live on a bigger box.
The same middleware as the gateway applies: API keys, request ids, metrics, rate limits.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from reprise.api import embeddings
from reprise.api.errors import install_error_handlers
from reprise.api.middleware import install_operations
from reprise.config import Settings
from reprise.embed.base import Embedder
from reprise.observability.metrics import Metrics

log = logging.getLogger(__name__)


def create_embeddings_app(settings: Settings | None = None,
                          embedder: Embedder | None = None) -> FastAPI:
    """The embeddings service; builds the configured local embedder at start unless given."""
    settings = settings or Settings()
    if embedder is None and settings.embedder == "remote":
        raise ValueError("the embeddings role serves a local model: set REPRISE_EMBEDDER to "
                         "'use' or 'e5'")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if embedder is None:
            from reprise.components import build_embedder

            app.state.embedder = build_embedder(settings)
        log.info("reprise embeddings service ready: model=%s dim=%d",
                 app.state.embedder.name, app.state.embedder.dim)
        try:
            yield
        finally:
            await app.state.limiter.aclose()

    app = FastAPI(title="Reprise embeddings", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.metrics = Metrics()
    if embedder is not None:
        app.state.embedder = embedder
    install_error_handlers(app)
    install_operations(app, settings)
    app.include_router(embeddings.router)

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        model = getattr(request.app.state, "embedder", None)
        body = {"status": "ok" if model is not None else "starting", "role": "embeddings",
                "model": getattr(model, "name", None), "dim": getattr(model, "dim", None)}
        return Response(orjson.dumps(body), media_type="application/json",
                        status_code=200 if model is not None else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        model = getattr(request.app.state, "embedder", None)
        data = [{"id": model.name, "object": "model", "created": 0, "owned_by": "reprise"}
                ] if model is not None else []
        return Response(orjson.dumps({"object": "list", "data": data}),
                        media_type="application/json")

    return app
