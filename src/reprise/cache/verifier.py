"""Learned verifier: is a cached question close enough to serve its answer for this one?

Cosine similarity alone cannot be both safe and useful (QQP: precision 0.74 at the recall
that a useful threshold gives). The verifier looks at what embeddings blur: lexical overlap,
length, word order, and the guards' softer signals (a number or a proper noun on one side
only, a question word that changed), and turns them into a probability that the two
questions share an answer.

The model is a tiny MLP (or a logistic regression when it has no hidden layer) evaluated in
numpy; its weights live in ``verifier_weights.json`` beside this file and are produced by
``scripts/train_verifier.py`` from the tuning splits only (see ``verifier_weights.md``).

One feature is the similarity of the two questions under a second embedder
(multilingual-e5-small): on the tuning splits it separates QQP's duplicates from its hard
negatives far better than USE's cosine or any lexical feature. It costs ~7 ms per text, so
it is computed lazily: ``Verifier.bounds`` gives the lowest and highest score the pair can
reach over the whole range of that feature, and only a candidate whose decision depends on
it pays for the second embedding (see ``SemanticLookup.assess``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from reprise.cache import guards as g

WEIGHTS_PATH = Path(__file__).with_name("verifier_weights.json")
CLIP = 5.0

FEATURES: tuple[str, ...] = (
    "cosine",
    "char2_jaccard",
    "char3_jaccard",
    "token_jaccard",
    "content_overlap",
    "length_ratio",
    "log_length",
    "only_query",
    "only_candidate",
    "number_swap",
    "number_one_side",
    "entity_swap",
    "entity_one_side",
    "negation_mismatch",
    "antonym",
    "language_mismatch",
    "cjk",
    "order_discord",
    "wh_mismatch",
    "cosine_x_cjk",
    "char4_containment",
    "content_containment",
    "content_jaccard",
    "log_min_words",
    "e5_cosine",
)
E5 = FEATURES.index("e5_cosine")
E5_GRID = 33  # points of the e5 range evaluated by ``Verifier.bounds``
# Both embedders agree: USE cosine ≥ AGREE_COSINE and e5 cosine ≥ AGREE_E5 (guards passing)
# is accepted without the model. On the held-out tuning pairs this zone alone has precision
# QQP 0.946, LCQMC 0.979 (above the verifier's floors; 0.93/0.99 gave 0.903/0.949, and with
# it no operating point kept the floors), and it catches textbook rewordings the model
# scores low because QQP labels many of them non-duplicates
# ("How do I reset my password?" / "How can I reset my password?": USE 0.97, e5 0.998).
AGREE_COSINE = 0.95
AGREE_E5 = 0.995

_WH = {
    "what": "what", "which": "what", "who": "who", "whom": "who", "whose": "who",
    "where": "where", "when": "when", "why": "why", "how": "how",
    "onde": "where", "quando": "when", "quem": "who", "porque": "why", "porquê": "why",
    "como": "how", "qual": "what", "quais": "what", "quanto": "howmuch", "quanta": "howmuch",
    "quantos": "howmuch", "quantas": "howmuch",
}
_ZH_WH = (
    ("为什么", "why"), ("为啥", "why"), ("怎么", "how"), ("如何", "how"), ("怎样", "how"),
    ("哪里", "where"), ("哪儿", "where"), ("什么时候", "when"), ("多少", "howmuch"),
    ("几", "howmuch"), ("谁", "who"), ("什么", "what"), ("哪", "what"),
)
_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


@lru_cache(maxsize=8192)
def _tokens(text: str) -> tuple[str, ...]:
    """Words for Latin text; jieba words for Chinese (characters if rjieba is missing)."""
    t = g.normalize(text).lower()
    if not g.has_cjk(t):
        return tuple(g.words(t))
    tagged = g.cjk_tagged(t)
    if tagged:
        return tuple(w.lower() for w, _ in tagged if _PUNCT.sub("", w))
    return tuple(ch for ch in t if not ch.isspace() and _PUNCT.sub("", ch))


def _ngrams(text: str, n: int) -> set[str]:
    s = _PUNCT.sub("", g.normalize(text).lower())
    if len(s) < n:
        return {s} if s else set()
    return {s[i : i + n] for i in range(len(s) - n + 1)}


def _containment(a: set[str], b: set[str]) -> float:
    """Share of the smaller set found in the other: a long rewrite keeps the short side's
    pieces even when it adds many of its own, which Jaccard would punish."""
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


def _jaccard(a: set[str] | frozenset[str], b: set[str] | frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _wh(text: str) -> frozenset[str]:
    t = g.normalize(text).lower()
    found = {_WH[w] for w in g.words(t) if w in _WH}
    if "o que" in t or "o quê" in t:
        found.add("what")
    if "por que" in t or "por quê" in t:
        found.add("why")
    if g.has_cjk(t):
        for word, kind in _ZH_WH:
            if word in t:
                found.add(kind)
                t = t.replace(word, " ")
    return frozenset(found)


def _order_discord(qt: Sequence[str], ct: Sequence[str]) -> float:
    """Share of discordant pairs among shared tokens (0 = same order, 1 = reversed):
    "dog bites man" vs "man bites dog"."""
    pos_c: dict[str, int] = {}
    for i, t in enumerate(ct):
        pos_c.setdefault(t, i)
    seq = []
    seen: set[str] = set()
    for t in qt:
        if t in pos_c and t not in seen:
            seen.add(t)
            seq.append(pos_c[t])
    n = len(seq)
    if n < 2:
        return 0.0
    discord = sum(1 for i in range(n) for j in range(i + 1, n) if seq[i] > seq[j])
    return discord / (n * (n - 1) / 2)


def pair_features(
    query: str, candidate: str, cosine: float, e5_cosine: float = math.nan
) -> np.ndarray:
    """The verifier's input for one pair, in ``FEATURES`` order.

    ``e5_cosine`` may be left out (NaN): ``Verifier.bounds`` then scores the pair over the
    feature's whole range, and ``with_e5`` fills it in once it is known.
    """
    qt, ct = _tokens(query), _tokens(candidate)
    qs, cs = set(qt), set(ct)
    qn, cn = g.numbers(query), g.numbers(candidate)
    qa, ca = g.normalize(query).lower(), g.normalize(candidate).lower()
    q_ent = [e for e in g.entities(query) if not g._mentions(ca, e)]
    c_ent = [e for e in g.entities(candidate) if not g._mentions(qa, e)]
    lq, lc = len(g.normalize(query)), len(g.normalize(candidate))
    cjk = float(g.has_cjk(query) or g.has_cjk(candidate))
    wq, wc = _wh(query), _wh(candidate)
    uq, uc = g.content_units(query), g.content_units(candidate)
    shorter, longer = (uq, uc) if len(uq) <= len(uc) else (uc, uq)
    values = (
        cosine,
        _jaccard(_ngrams(query, 2), _ngrams(candidate, 2)),
        _jaccard(_ngrams(query, 3), _ngrams(candidate, 3)),
        _jaccard(qs, cs),
        g.content_overlap(query, candidate),
        min(lq, lc) / max(lq, lc, 1),
        float(np.log1p((lq + lc) / 2)),
        len(qs - cs) / max(len(qs), 1),
        len(cs - qs) / max(len(cs), 1),
        float(bool(qn - cn) and bool(cn - qn)),
        float(qn != cn and not (qn and cn)),
        float(bool(q_ent) and bool(c_ent)),
        float(bool(q_ent) != bool(c_ent)),
        float(g.negated(query) != g.negated(candidate)),
        float(bool(g.antonym_pairs(query, candidate))),
        float(g.language_guard(query, candidate) is not None),
        cjk,
        _order_discord(qt, ct),
        float(bool(wq) and bool(wc) and wq != wc),
        cosine * cjk,
        _containment(_ngrams(query, 4), _ngrams(candidate, 4)),
        float(bool(shorter) and shorter <= longer),
        _jaccard(uq, uc),
        float(np.log1p(min(len(qt), len(ct)))),
        e5_cosine,
    )
    return np.asarray(values, dtype=np.float64)


def with_e5(features: np.ndarray, e5_cosine: float) -> np.ndarray:
    """A copy of a ``pair_features`` row with the e5 similarity filled in."""
    out = np.array(features, dtype=np.float64)
    out[E5] = e5_cosine
    return out


def same_question(a: str, b: str) -> bool:
    """Equal up to case, spacing and closing punctuation: no model needed to accept it."""
    def key(t: str) -> str:
        return g.normalize(t).casefold().strip(" ?？.。!！")

    return key(a) == key(b)


# Ways of asking for an explanation of something. "O que são X?" and "Explique X" want the
# same answer; the learned verifier, trained on pairs that mostly share their frame, scores
# such a swap low. Latin-script only: Chinese frames cannot be stripped reliably without
# word boundaries.
_FRAMES = (
    "what is", "what are", "what's", "explain", "define", "describe", "tell me about",
    "what is meant by", "what does it mean", "definition of", "meaning of",
    "o que é", "o que são", "o que significa", "explique", "explica", "defina", "descreva",
    "me explique", "fale sobre", "me fale sobre", "definição de", "significado de",
)
_FRAME_RX = re.compile(
    r"^(?:please |por favor )?(?:"
    + "|".join(re.escape(f) for f in sorted(_FRAMES, key=len, reverse=True))
    + r")\b\s*(?:(?:a|an|the|o|os|as|um|uma)\s+)?"
)


def _framed(text: str) -> tuple[str, str] | None:
    """(frame, subject) when the text is "<explain-frame> <subject>", else None."""
    t = g.normalize(text).casefold().strip(" ?？.。!！")
    m = _FRAME_RX.match(t)
    if m is None or g.has_cjk(t):
        return None
    subject = t[m.end():].strip(" ,:")
    return (m.group(0).strip(), subject) if subject else None


def same_request(a: str, b: str) -> bool:
    """Both ask for an explanation of the same subject, in different words: the frame
    differs ("o que são" / "explique"), the subject is the same text."""
    fa, fb = _framed(a), _framed(b)
    return fa is not None and fb is not None and fa[1] == fb[1] and fa[0] != fb[0]


def min_words(query: str, candidate: str) -> int:
    """Words (jieba words for Chinese) of the shorter side: the verifier's length group."""
    return min(len(_tokens(query)), len(_tokens(candidate)))


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """Decision constants shipped with the weights (chosen on the tuning splits).

    Two cutoffs, by length group: a short question and a long rewritten sentence reach the
    same verifier score with different reliability (QQP's short non-duplicates differ in one
    word the features barely see; long pairs that keep every content word rarely differ), so
    each group gets the lowest cutoff that holds the precision floors on its own held-out
    tuning pairs.
    """

    threshold: float  # default cosine floor
    cutoff: float  # verifier probability needed at the default threshold (short group)
    slope: float  # how far the cutoff moves per unit of threshold change
    cutoff_long: float  # same for pairs whose shorter side has >= long_words words
    long_words: int


class Verifier:
    """Scores (query, candidate, cosine) → probability of "same answer"."""

    def __init__(self, weights: dict[str, Any]) -> None:
        names = tuple(weights["features"])
        if names != FEATURES:
            raise ValueError("verifier weights were trained on other features; retrain them")
        self._mean = np.asarray(weights["mean"], dtype=np.float64)
        self._std = np.asarray(weights["std"], dtype=np.float64)
        self._layers = [
            (np.asarray(layer["W"], dtype=np.float64), np.asarray(layer["b"], dtype=np.float64))
            for layer in weights["layers"]
        ]
        lo, hi = weights["e5_range"]
        self.e5_range = (float(lo), float(hi))
        self.config = VerifierConfig(
            threshold=float(weights["threshold"]),
            cutoff=float(weights["cutoff"]),
            slope=float(weights.get("slope", 0.0)),
            cutoff_long=float(weights.get("cutoff_long", weights["cutoff"])),
            long_words=int(weights.get("long_words", 10**9)),
        )

    @classmethod
    def load(cls, path: Path | None = None) -> Verifier:
        """The shipped weights (or another file written by ``scripts/train_verifier.py``)."""
        return cls(json.loads((path or WEIGHTS_PATH).read_text(encoding="utf-8")))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probabilities for a (n, len(FEATURES)) matrix of complete ``pair_features`` rows.

        A row whose e5 similarity is unknown (NaN) must go through ``bounds`` instead.
        """
        x = np.array(np.atleast_2d(features), dtype=np.float64)
        if np.isnan(x[:, E5]).any():
            raise ValueError("e5 similarity missing: use Verifier.bounds")
        # The e5 similarity is held to its training range, so ``bounds`` (which scans that
        # range) brackets every score ``predict`` can give; other features are clipped in
        # standard units: a value no tuning pair had must not swing the score arbitrarily.
        x[:, E5] = np.clip(x[:, E5], *self.e5_range)
        x = np.clip((x - self._mean) / self._std, -CLIP, CLIP)
        for i, (w, b) in enumerate(self._layers):
            x = x @ w + b
            if i < len(self._layers) - 1:
                x = np.tanh(x)
        z = np.clip(x[:, 0], -40.0, 40.0)
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def bounds(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest probability per row over the e5 similarity's range.

        Rows whose e5 similarity is known get that one score twice. The range is scanned on
        a grid of ``E5_GRID`` points: exact for a logistic model (monotone in every feature),
        and for the small tanh MLP the score is smooth enough between grid points (0.01 of
        similarity) that the bracket is what decides in practice.
        """
        x = np.array(np.atleast_2d(features), dtype=np.float64)
        unknown = np.isnan(x[:, E5])
        lo = np.empty(len(x))
        hi = np.empty(len(x))
        if (~unknown).any():
            lo[~unknown] = hi[~unknown] = self.predict(x[~unknown])
        if unknown.any():
            grid = np.linspace(*self.e5_range, E5_GRID)
            rows = np.repeat(x[unknown], len(grid), axis=0)
            rows[:, E5] = np.tile(grid, int(unknown.sum()))
            p = self.predict(rows).reshape(-1, len(grid))
            lo[unknown], hi[unknown] = p.min(axis=1), p.max(axis=1)
        return lo, hi

    def score(self, query: str, candidate: str, cosine: float, e5_cosine: float) -> float:
        if same_question(query, candidate) or same_request(query, candidate):
            return 1.0
        if cosine >= AGREE_COSINE and e5_cosine >= AGREE_E5:
            return 1.0
        return float(self.predict(pair_features(query, candidate, cosine, e5_cosine))[0])

    def is_long(self, query: str, candidate: str) -> bool:
        """Whether the pair is judged with the long-group cutoff."""
        return min_words(query, candidate) >= self.config.long_words

    def cutoff_for(self, threshold: float | None, long: bool = False) -> float:
        """The verifier cutoff that goes with a cosine threshold (and the pair's length group).

        A caller who lowers the threshold asks for more hits, so the verifier is relaxed
        along with it (and tightened when the threshold is raised); guards apply regardless.
        """
        base = self.config.cutoff_long if long else self.config.cutoff
        if threshold is None:
            return base
        c = base + self.config.slope * (threshold - self.config.threshold)
        return float(min(max(c, 0.0), 1.0))
