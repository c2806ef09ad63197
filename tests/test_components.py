"""Composition root: model instances are shared, not loaded once per user."""

from __future__ import annotations

from pathlib import Path

from reprise.components import build_components
from reprise.config import Settings
from reprise.rag.service import RagService


async def test_cache_and_retrieval_share_one_e5(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, embedder="e5", rag_embedder="e5")
    comp = build_components(settings)
    try:
        assert comp.embedders is not None and comp.embedder is not None
        assert comp.embedders.get("e5") is comp.embedder
        rag = RagService.from_components(comp)
        assert rag.embedder is comp.embedder
        await rag.aclose()
    finally:
        await comp.aclose()


async def test_cross_encoder_loads_on_first_need(tmp_path: Path) -> None:
    """Building the gateway maps no verifier model; the first grey-zone pair does, once."""
    comp = build_components(Settings(data_dir=tmp_path, embedder="use"))
    try:
        semantic = comp.cache.semantic
        assert semantic is not None and semantic.verifier.available
        assert semantic.verifier._model is None
        first = semantic.verifier.model()
        assert semantic.verifier.model() is first
    finally:
        await comp.aclose()
