"""The FastAPI application: routers, error handlers and component lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from reprise.api import (
    admin,
    anthropic,
    collections,
    completions,
    embeddings,
    feedback,
    ollama,
    openai,
    responses,
)
from reprise.api.errors import install_error_handlers
from reprise.api.middleware import install_operations
from reprise.components import Components, build_components
from reprise.config import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, components: Components | None = None) -> FastAPI:
    """An app that builds its components at start-up (or uses the given ones)."""
    settings = settings or (components.settings if components else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        comp = components or build_components(settings)
        await comp.astart()
        app.state.components = comp
        app.state.metrics = comp.metrics
        if "rag" not in comp.extras:
            from reprise.rag.service import RagService

            comp.extras["rag"] = RagService.from_components(comp)
        log.info("reprise gateway ready: store=%s upstream=%s", comp.store.backend,
                 settings.upstream_url)
        try:
            yield
        finally:
            await app.state.limiter.aclose()
            await comp.aclose()

    app = FastAPI(title="Reprise", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    install_error_handlers(app)
    install_operations(app, settings)
    app.include_router(openai.router)
    app.include_router(completions.router)
    app.include_router(responses.router)
    app.include_router(anthropic.router)
    app.include_router(ollama.router)
    app.include_router(embeddings.router)
    app.include_router(admin.router)
    app.include_router(collections.router)
    app.include_router(feedback.router)
    return app
