"""The embedder contract: text in, unit-norm float32 vectors out.

Embedding is CPU-bound (or a network call for ``remote``); implementations expose an async
``embed`` that runs the model off the event loop, and load their model once at construction.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

Kind = Literal["query", "passage"]


class EmbedderError(RuntimeError):
    """The embedder could not produce vectors (model missing, remote server down)."""


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed_sync(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        """Shape (len(texts), dim), float32, each row unit-norm. Blocking."""

    async def embed(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        """Same as ``embed_sync`` without blocking the event loop."""
