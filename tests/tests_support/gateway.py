"""Running a real gateway over loopback for tests (uvicorn in a thread)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from reprise.api.app import create_app
from reprise.components import build_components
from reprise.config import Settings
from reprise.testing.upstream import ServerThread


@contextmanager
def running_gateway(upstream_url: str, tmp: Path, *, embedder: Any = None,
                    store_obj: Any = None, rag_embedder: Any = None,
                    **overrides: Any) -> Iterator[tuple[str, Any]]:
    """Yields (base_url, components). Semantic tier is on only when an embedder is given."""
    values: dict[str, Any] = {"upstream_model": "fake-model",
                              "semantic_enabled": embedder is not None, **overrides}
    settings = Settings(upstream_url=upstream_url, data_dir=tmp, **values)
    comp = build_components(settings, embedder=embedder, store=store_obj)
    if rag_embedder is not None:
        from reprise.rag.service import RagService

        comp.extras["rag"] = RagService.from_components(comp, embedder=rag_embedder)
    server = ServerThread(create_app(settings, comp)).start()
    try:
        yield server.url, comp
    finally:
        server.stop()


def ask(client: httpx.Client, content: str, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", {})
    body = {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def sse_events(text: str) -> list[Any]:
    import json

    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return out


def stream_text(events: list[Any]) -> str:
    return "".join(
        (ch.get("delta") or {}).get("content") or ""
        for e in events if isinstance(e, dict) for ch in e.get("choices", [])
    )
