"""The learned verifier: shipped weights load, behave sensibly and are documented."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reprise.cache.verifier import E5, FEATURES, WEIGHTS_PATH, Verifier, pair_features, with_e5


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier.load()


def test_features_have_the_declared_shape() -> None:
    f = pair_features("How do I learn Python?", "Best way to learn Python?", 0.9, 0.95)
    assert f.shape == (len(FEATURES),) and np.all(np.isfinite(f))
    assert f[FEATURES.index("cosine")] == pytest.approx(0.9)
    assert f[E5] == pytest.approx(0.95)
    # Without the e5 similarity the row says so (NaN) and predict refuses it.
    g = pair_features("How do I learn Python?", "Best way to learn Python?", 0.9)
    assert np.isnan(g[E5]) and np.array_equal(with_e5(g, 0.95), f)


def test_scores_are_probabilities(verifier: Verifier) -> None:
    x = np.stack([pair_features("a b c", "a b d", c, c) for c in (0.2, 0.8, 0.99)])
    p = verifier.predict(x)
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))


def test_paraphrase_scores_above_entity_swap(verifier: Verifier) -> None:
    para = verifier.score("How can I lose weight fast?", "What is the fastest way to lose weight?",
                          0.91, 0.95)
    swap = verifier.score("Who is the president of Brazil?", "Who is the president of Chile?",
                          0.91, 0.95)
    assert para > swap


def test_same_question_is_certain(verifier: Verifier) -> None:
    assert verifier.score("What is the capital of France?", "what is the capital of france", 0.9,
                          0.9) == 1.0


def test_missing_e5_needs_bounds(verifier: Verifier) -> None:
    with pytest.raises(ValueError):
        verifier.predict(pair_features("How do I learn Python?", "Learn Python how?", 0.9))


def test_bounds_bracket_every_e5_value(verifier: Verifier) -> None:
    """The lazy e5 step is only sound if no e5 value can score outside [low, high]."""
    pairs = [("How do I learn Python?", "What is the best way to learn Python?", 0.93),
             ("怎么学习英语", "如何学好英语", 0.88),
             ("O que são sistemas distribuídos?", "Explique sistemas distribuídos", 0.84),
             ("How to lose weight?", "How to gain muscle?", 0.75)]
    rows = np.stack([pair_features(q, c, cos) for q, c, cos in pairs])
    low, high = verifier.bounds(rows)
    assert np.all(low <= high)
    lo_e5 = verifier.e5_range[0]
    for e5 in np.linspace(lo_e5 - 0.05, 1.0, 101):
        p = verifier.predict(np.stack([with_e5(r, e5) for r in rows]))
        assert np.all(p >= low - 1e-3) and np.all(p <= high + 1e-3)
    # Known e5 values give one exact score.
    known = np.stack([with_e5(r, 0.97) for r in rows])
    k_low, k_high = verifier.bounds(known)
    assert np.array_equal(k_low, k_high)
    assert np.allclose(k_low, verifier.predict(known))


def test_lower_threshold_relaxes_cutoff(verifier: Verifier) -> None:
    t = verifier.config.threshold
    assert verifier.cutoff_for(None) == verifier.config.cutoff
    assert verifier.cutoff_for(t - 0.1) <= verifier.cutoff_for(t) <= verifier.cutoff_for(t + 0.05)
    assert 0.0 <= verifier.cutoff_for(-5) and verifier.cutoff_for(5) <= 1.0


def test_weights_for_other_features_are_refused() -> None:
    weights = json.loads(WEIGHTS_PATH.read_text())
    weights["features"] = weights["features"][:-1]
    with pytest.raises(ValueError):
        Verifier(weights)


def test_training_data_is_recorded_beside_the_weights() -> None:
    card = WEIGHTS_PATH.with_suffix(".md").read_text()
    for split in ("qqp_pairs_40k.tsv", "LCQMC `dev.txt`", "BQ `dev.csv`", "assin2-dev.xml"):
        assert split in card
    assert "test.txt" not in card.replace("No report split", "")


def test_embedders_agreeing_is_accepted(verifier: Verifier) -> None:
    """USE 0.97 / e5 0.998: a textbook rewording the model alone scores below its cutoff."""
    a, b = "How do I reset my password?", "How can I reset my password?"
    assert verifier.score(a, b, 0.97, 0.998) == 1.0
    assert verifier.score(a, b, 0.97, 0.95) < 1.0
