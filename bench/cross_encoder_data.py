"""The cross-encoder's training and calibration data: tuning splits only, fixed seeds.

Shared by ``scripts/train_cross_encoder.py`` (which trains on ``splits()[0]``) and
``scripts/calibrate_cross_encoder.py`` (which picks the cosine floor and the cutoff on
``splits()[1]``), so both see exactly the same held-out pairs. No report split is read:
``semantic_data.TUNING`` is the only source.
"""

from __future__ import annotations

import random
import re

import numpy as np

import semantic_data as sd

SAMPLE = {"qqp": None, "lcqmc": None, "bq": 6000, "assin": None}
SET_WEIGHT = {"qqp": 1.0, "lcqmc": 1.0, "bq": 0.5, "assin": 1.5, "assin-long": 1.5,
              "swap": 1.0}
HELD_SHARE = 0.15
LONG_PAIRS = 900  # joined ASSIN pairs (see long_pairs)


_NUM = re.compile(r"\d+(?:[.,]\d+)?")
_SWAPS = (
    re.compile(r"\b(from) (\w[\w\s]{0,30}?) (to) (\w[\w\s]{0,30}?)(\?|$)", re.I),
    re.compile(r"\b(de|do|da) (\w[\w\s]{0,30}?) (para|até|a) (\w[\w\s]{0,30}?)(\?|$)", re.I),
    re.compile(r"(从)(\w{1,12}?)(到|去)(\w{1,12}?)(的|要|怎么|多|坐|[？?]|$)"),
)


def derived_negatives(questions: list[str], rng: random.Random, n: int) -> list[sd.Pair]:
    """Pairs that differ in what is asked though nearly every word is shared: the swapped
    ends of a route or conversion, or a changed number. Built from tuning questions."""
    out: list[sd.Pair] = []
    pool = list(questions)
    rng.shuffle(pool)
    for q in pool:
        if len(out) >= n:
            break
        lang = "zh" if re.search(r"[\u4e00-\u9fff]", q) else "en"
        for rx in _SWAPS:
            m = rx.search(q)
            if m and m.group(2).strip().lower() != m.group(4).strip().lower():
                swapped = (q[: m.start()] + f"{m.group(1)} {m.group(4)} {m.group(3)} "
                           f"{m.group(2)}{m.group(5)}" + q[m.end():])
                if rx.pattern.startswith("(从)"):
                    swapped = (q[: m.start()] + m.group(1) + m.group(4) + m.group(3) + m.group(2)
                               + m.group(5) + q[m.end():])
                out.append(sd.Pair(q, swapped, 0, lang))
                break
        else:
            nums = _NUM.findall(q)
            if nums and rng.random() < 0.5:
                old = rng.choice(nums)
                digits = list(old)
                k = rng.choice([i for i, ch in enumerate(digits) if ch.isdigit()])
                digits[k] = str((int(digits[k]) + rng.randint(1, 8)) % 10)
                new = "".join(digits)
                if new != old:
                    out.append(sd.Pair(q, q.replace(old, new, 1), 0, lang))
    return out


def long_pairs(pairs: list[sd.Pair], rng: random.Random, n: int) -> list[sd.Pair]:
    """Two ASSIN pairs joined side by side: a long rewrite, a duplicate only when both
    halves are (one-half duplicates are the hard negatives of long rewrites)."""
    pos = [p for p in pairs if p.label]
    neg = [p for p in pairs if not p.label]
    out: list[sd.Pair] = []
    for i in range(n):
        a = rng.choice(pos)
        b = rng.choice(pos) if i % 2 == 0 else rng.choice(neg)
        if a is b:
            continue
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        out.append(sd.Pair(f"{first.q1} {second.q1}", f"{first.q2} {second.q2}",
                           int(first.label and second.label), "pt"))
    return out


def splits() -> tuple[list[tuple[sd.Pair, str]], list[tuple[sd.Pair, str]]]:
    """(train, held-out) pairs with their set names; every derived pair is built inside one
    side of the split, so no held-out question is seen in training."""
    rng = np.random.default_rng(42)
    train: list[tuple[sd.Pair, str]] = []
    held: list[tuple[sd.Pair, str]] = []
    by_side: dict[bool, dict[str, list[sd.Pair]]] = {False: {}, True: {}}
    for name, loader in sd.TUNING.items():
        chosen = sd.sample(loader(), SAMPLE[name])
        mask = rng.random(len(chosen)) < HELD_SHARE
        for p, h in zip(chosen, mask, strict=True):
            (held if h else train).append((p, name))
            by_side[bool(h)].setdefault(name, []).append(p)
    for side, target, share in ((False, train, 1 - HELD_SHARE), (True, held, HELD_SHARE)):
        r = random.Random(7 + int(side))
        target += [(p, "assin-long") for p in long_pairs(by_side[side]["assin"], r,
                                                           int(LONG_PAIRS * share))]
        questions = [p.q1 for ps in by_side[side].values() for p in ps]
        target += [(p, "swap") for p in derived_negatives(questions, r, int(4000 * share))]
    return train, held
