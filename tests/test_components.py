"""Composition root: model instances are shared, not loaded once per user."""

from __future__ import annotations

from pathlib import Path

from reprise.components import build_components
from reprise.config import Settings
from reprise.rag.service import RagService


async def test_verifier_and_retrieval_share_one_e5(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, embedder="use", rag_embedder="e5")
    comp = build_components(settings)
    try:
        assert comp.embedders is not None and comp.embedder is not None
        assert comp.embedders.get("use") is comp.embedder
        rag = RagService.from_components(comp)
        semantic = comp.cache.semantic
        assert semantic is not None and semantic.e5 is not None
        verifier_e5 = semantic.e5._model()  # what the verifier loads on first need
        assert rag.embedder is verifier_e5 is comp.embedders.get("e5")
        assert rag.embedder.name == "e5"
        await rag.aclose()
    finally:
        await comp.aclose()
