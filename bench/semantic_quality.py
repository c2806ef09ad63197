"""Semantic-cache quality: would the cache have served the right answer, or a wrong one?

    .venv/bin/python bench/semantic_quality.py [--quick] [--pairs N]

For each labelled pair (report splits only: QQP outside the 40k tuning file, LCQMC test,
BQ test, ASSIN 1+2 test) the first question is stored with a unique answer in a
``MemoryStore`` partition already holding 10,500 other questions of the same set (its other
pairs; ASSIN is topped up with Portuguese SQuAD questions), then the second question goes
through the real ``SemanticLookup``. Outcomes: true hit (the pair's own answer, label 1),
false hit (any answer for a non-duplicate, or another entry's answer), miss.
GPTCache's mock_data.json (all paraphrases) stores every origin plus the fillers and asks
every paraphrase: recall only. Results: ``bench/results/semantic.md`` and
``bench/results/semantic_pr.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import semantic_data as sd  # noqa: E402
from reprise.cache.semantic import (  # noqa: E402
    Assessment,
    E5Similarity,
    SemanticLookup,
    embedding_text,
)
from reprise.cache.verifier import Verifier  # noqa: E402
from reprise.config import Settings  # noqa: E402
from reprise.embed.use import UseEmbedder  # noqa: E402
from reprise.store.base import CacheEntry  # noqa: E402
from reprise.store.memory import MemoryStore  # noqa: E402

NS, FP = "bench", "partition"
SWEEP = np.round(np.arange(0.60, 0.996, 0.01), 2)
# Thresholds at which the sweep computes e5 where it decides (below, the verifier judges
# without it, at its lowest possible score: cheaper, and only ever stricter).
SWEEP_T = [float(t) for t in SWEEP if t >= 0.75]
FILLERS = 10_500
RESULTS = ROOT / "bench" / "results"


@dataclass
class Outcomes:
    """Per threshold: true hits, false hits; plus positives/negatives counts."""

    positives: int = 0
    negatives: int = 0
    tp: dict[str, np.ndarray] = field(default_factory=dict)
    fp: dict[str, np.ndarray] = field(default_factory=dict)  # the pair's own entry, label 0
    other: dict[str, np.ndarray] = field(default_factory=dict)  # another entry (a filler)
    neg_hits: dict[str, np.ndarray] = field(default_factory=dict)
    default: dict[str, int] = field(default_factory=dict)

    def add(self, mode: str, correct: np.ndarray, wrong: np.ndarray, other: np.ndarray,
            negative: np.ndarray) -> None:
        for name, arr in (("tp", correct), ("fp", wrong), ("other", other),
                          ("neg_hits", negative)):
            store = getattr(self, name)
            store[mode] = store.get(mode, np.zeros(len(SWEEP), dtype=np.int64)) + arr

    def curve(self, mode: str, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Precision and recall per sweep threshold. ``strict`` counts a hit on another
        entry as false; otherwise only hits on the pair's own labelled entry count."""
        tp, fp = self.tp[mode], self.fp[mode] + (self.other[mode] if strict else 0)
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
        return prec, tp / max(self.positives, 1)

    def recall_at(self, mode: str, target: float, strict: bool = True) -> float:
        prec, rec = self.curve(mode, strict)
        ok = prec >= target
        return float(rec[ok].max()) if ok.any() else 0.0


def embed_all(cache: sd.EmbeddingCache, embedder: UseEmbedder, texts: list[str]
              ) -> dict[str, np.ndarray]:
    """Vectors keyed by the raw text, computed from ``embedding_text`` as the cache does."""
    return dict(zip(texts, cache.get_many([embedding_text(t) for t in texts],
                                          embedder.embed_sync), strict=True))


class CachedE5:
    """The real e5 embedder behind the on-disk embedding cache (reruns skip the model)."""

    name, dim = "e5", 384

    def __init__(self, cache_dir: Path) -> None:
        self.cache = sd.EmbeddingCache(cache_dir, self.name, self.dim, autosave=False)
        self._model: Any = None

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            from reprise.embed.e5 import E5Embedder

            self._model = E5Embedder()
        return np.asarray(self._model.embed_sync(texts, "query"))

    def embed_sync(self, texts: list[str], kind: Any = "query") -> np.ndarray:
        return self.cache.get_many(texts, self._embed)

    async def embed(self, texts: list[str], kind: Any = "query") -> np.ndarray:
        return self.embed_sync(texts, kind)


def entry(key: str, question: str, vector: np.ndarray) -> CacheEntry:
    return CacheEntry(key=key, namespace=NS, fingerprint=FP, question=question,
                      response=key.encode(), vector=vector)


def judge_sweep(lookup: SemanticLookup, assessed: list[Assessment], hits_top: tuple[float, str]
                ) -> tuple[list[str | None], list[str | None]]:
    """Returned key per sweep threshold: (cosine alone on the top hit, shipped pipeline)."""
    top_sim, top_key = hits_top
    cos_keys = [top_key if top_sim >= t else None for t in SWEEP]
    pipe_keys = []
    for t in SWEEP:
        m = lookup.choose(assessed, float(t))
        pipe_keys.append(None if m is None else m.entry.key)
    return cos_keys, pipe_keys


async def run_pairs(name: str, pairs: list[sd.Pair], fill: list[str], lookup: SemanticLookup,
                    vec: dict[str, np.ndarray]) -> Outcomes:
    store = lookup.store
    assert isinstance(store, MemoryStore)
    await store.clear()
    for i, text in enumerate(fill):
        await store.put(entry(f"filler-{i}", text, vec[text]))
    out = Outcomes()
    for p in pairs:
        await store.put(entry("target", p.q1, vec[p.q1]))
        v2 = vec[p.q2]
        hits = await store.search(NS, FP, v2, lookup.top_k)
        assessed = lookup.assess(p.q2, hits, float(SWEEP[0]), SWEEP_T)
        top = (hits[0].similarity, hits[0].entry.key) if hits else (-1.0, "")
        cos_keys, pipe_keys = judge_sweep(lookup, assessed, top)
        shipped = await lookup.find(NS, FP, p.q2, v2)
        await store.delete(NS, "target")
        if p.label:
            out.positives += 1
        else:
            out.negatives += 1
        for mode, keys in (("cosine", cos_keys), ("pipeline", pipe_keys)):
            hit = np.array([k is not None for k in keys])
            own = np.array([k == "target" for k in keys])
            right = own & bool(p.label)
            out.add(mode, right.astype(int), (own & ~right).astype(int),
                    (hit & ~own).astype(int), (hit & (not p.label)).astype(int))
        key = None if shipped is None else shipped.entry.key
        outcome = ("miss" if key is None else "other" if key != "target"
                   else "tp" if p.label else "fp")
        out.default[outcome] = out.default.get(outcome, 0) + 1
        out.default["neg_hit"] = out.default.get("neg_hit", 0) + int(key is not None
                                                                      and not p.label)
    return out


async def run_mock(pairs: list[sd.Pair], fill: list[str], lookup: SemanticLookup,
                   vec: dict[str, np.ndarray]) -> Outcomes:
    store = lookup.store
    assert isinstance(store, MemoryStore)
    await store.clear()
    for i, text in enumerate(fill):
        await store.put(entry(f"filler-{i}", text, vec[text]))
    origins = list(dict.fromkeys(p.q1 for p in pairs))
    for i, text in enumerate(origins):
        await store.put(entry(f"origin-{i}", text, vec[text]))
    out = Outcomes()
    for p in pairs:
        v2 = vec[p.q2]
        hits = await store.search(NS, FP, v2, lookup.top_k)
        assessed = lookup.assess(p.q2, hits, float(SWEEP[0]), SWEEP_T)
        top = (hits[0].similarity, hits[0].entry.question) if hits else (-1.0, "")
        # Keys are compared by question text: a right hit is the paraphrase's own origin.
        cos_q = [top[1] if top[0] >= t else None for t in SWEEP]
        pipe_q = []
        for t in SWEEP:
            m = lookup.choose(assessed, float(t))
            pipe_q.append(None if m is None else m.entry.question)
        shipped = await lookup.find(NS, FP, p.q2, v2)
        out.positives += 1
        for mode, qs in (("cosine", cos_q), ("pipeline", pipe_q)):
            hit = np.array([q is not None for q in qs])
            right = np.array([q == p.q1 for q in qs])
            zero = np.zeros(len(SWEEP), int)
            out.add(mode, right.astype(int), (hit & ~right).astype(int), zero, zero)
        got = None if shipped is None else shipped.entry.question
        outcome = "miss" if got is None else ("tp" if got == p.q1 else "fp")
        out.default[outcome] = out.default.get(outcome, 0) + 1
    return out


def plot(results: dict[str, Outcomes], thr: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
    i_default = int(np.argmin(np.abs(SWEEP - thr)))
    for ax, (name, o) in zip(axes[0], results.items(), strict=True):
        for mode, style in (("cosine", "--"), ("pipeline", "-")):
            prec, rec = o.curve(mode)
            ax.plot(rec, prec, style, label=mode)
            ax.plot(rec[i_default], prec[i_default], "o")
        ax.set_title(name)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0.0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.suptitle(f"Semantic cache strict precision / recall over thresholds (dots = {thr:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(results: dict[str, Outcomes], thr: float, cutoff: float, n_pairs: int,
           seconds: float) -> str:
    lines = [
        "# Semantic cache quality",
        "",
        f"Shipped default: cosine threshold **{thr:.2f}**, verifier cutoff **{cutoff:.2f}** "
        "(USE embedder, guards + learned verifier). Report splits only; "
        f"up to {n_pairs} pairs per set (fixed seed 13), each asked against a partition of "
        f"{FILLERS:,} other questions of the same set plus the stored first question. "
        "ASSIN duplicate = similarity ≥ 4.5. mock_data.json: all 964 origins stored with the "
        "fillers (QQP questions), all 999 paraphrases asked; recall only.",
        "",
        "## At the shipped default",
        "",
        "*false hits* = the pair's own stored question served for a non-duplicate; "
        "*other hits* = another stored question (a filler, or for mock another origin) served. "
        "Other hits are unlabelled: some fillers are true paraphrases of the asked question "
        "(BQ and QQP repeat the same questions many times), so two precisions are given: "
        "**strict** (other hits count as wrong) and **labelled** (only hits on the pair's own "
        "entry are judged, as in pair-level evaluation).",
        "",
        "| set | pairs | true hits | false hits | other hits | misses | precision strict | "
        "precision labelled | recall | false-hit rate on non-duplicates |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, o in results.items():
        d = o.default
        tp, fp, oh, miss = d.get("tp", 0), d.get("fp", 0), d.get("other", 0), d.get("miss", 0)
        strict = tp / (tp + fp + oh) if tp + fp + oh else float("nan")
        labelled = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / max(o.positives, 1)
        fhr = (f"{d.get('neg_hit', 0) / o.negatives:.3f}" if o.negatives else "n/a")
        lines.append(f"| {name} | {o.positives + o.negatives} | {tp} | {fp} | {oh} | {miss} | "
                     f"{strict:.3f} | {labelled:.3f} | {rec:.3f} | {fhr} |")
    lines += [
        "",
        "## Recall at fixed precision (best over the threshold sweep 0.60–0.99)",
        "",
        "| set | mode | strict R@P0.85 | R@P0.90 | R@P0.95 | labelled R@P0.85 | R@P0.90 | "
        "R@P0.95 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, o in results.items():
        if name == "gptcache-mock":
            continue
        for mode in ("cosine", "pipeline"):
            lines.append(f"| {name} | {mode} | " + " | ".join(
                f"{o.recall_at(mode, p, strict):.3f}"
                for strict in (True, False) for p in (0.85, 0.90, 0.95)) + " |")
    lines += ["", "## Sweep (strict precision / recall)", "",
              "| threshold | " + " | ".join(f"{n} cos" + " | " + f"{n} pipeline"
                                          for n in results) + " |",
              "| --- |" + " --- | --- |" * len(results)]
    for i, t in enumerate(SWEEP):
        if round(t * 100) % 2:
            continue
        cells = []
        for o in results.values():
            for mode in ("cosine", "pipeline"):
                prec, rec = o.curve(mode)
                cells.append(f"{prec[i]:.2f} / {rec[i]:.2f}")
        lines.append(f"| {t:.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"Run time {seconds:.0f} s. Plot: `semantic_pr.png`.", ""]
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 pairs per set")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--sets", default="qqp,lcqmc,bq,assin,gptcache-mock",
                    help="comma-separated subset (a partial run for iterating)")
    ap.add_argument("--cache-dir", type=Path, default=sd.CACHE_DIR)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not sd.DATA.exists():
        print(f"evaluation data not found at {sd.DATA}; skipping")
        return
    n = 500 if args.quick else args.pairs
    t0 = time.time()
    embedder = UseEmbedder()
    cache = sd.EmbeddingCache(args.cache_dir, embedder.name, embedder.dim)
    verifier = Verifier.load()
    # The shipped default, not whatever REPRISE_* variables say on this machine.
    thr = float(Settings.model_fields["semantic_threshold"].default)
    cached_e5 = CachedE5(args.cache_dir)
    e5 = E5Similarity(lambda: cached_e5, cache_size=1 << 20)
    lookup = SemanticLookup(MemoryStore(embedder.dim, 1 << 31), embedder, verifier,
                            threshold=thr, e5=e5)
    results: dict[str, Outcomes] = {}
    qqp_fill: list[str] = []
    chosen = set(args.sets.split(","))
    for name, loader in sd.REPORT.items():
        if name not in chosen and not (name == "qqp" and "gptcache-mock" in chosen):
            continue
        pool = loader()
        # Same sample as the embedding prep: sample(pool, 2000) then its first n.
        pairs = sd.sample(pool, max(n, 2000))[:n]
        fill = sd.fillers(name, pool, sd.sample(pool, max(n, 2000)), FILLERS)
        if name == "qqp":
            qqp_fill = fill
            if name not in chosen:
                continue
        texts = [t for p in pairs for t in (p.q1, p.q2)] + fill
        vec = embed_all(cache, embedder, texts)
        results[name] = await run_pairs(name, pairs, fill, lookup, vec)
        cached_e5.cache.save()
        print(f"{name}: {len(pairs)} pairs, {time.time() - t0:.0f}s", flush=True)
    if "gptcache-mock" in chosen:
        mock = sd.mock_pairs()
        texts = [t for p in mock for t in (p.q1, p.q2)] + qqp_fill
        vec = embed_all(cache, embedder, texts)
        results["gptcache-mock"] = await run_mock(mock, qqp_fill, lookup, vec)
        cached_e5.cache.save()
        print(f"gptcache-mock: {len(mock)} pairs, {time.time() - t0:.0f}s", flush=True)
    md = report(results, thr, verifier.cutoff_for(thr), n, time.time() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "semantic.md").write_text(md, encoding="utf-8")
    plot(results, thr, args.out / "semantic_pr.png")
    print(md)


if __name__ == "__main__":
    asyncio.run(main())
