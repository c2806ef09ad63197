"""Why GPTCache's paraphrase-recall target and the QQP precision target conflict here.

Issue 3 asks for precision ≥ 0.85 on QQP while recall on GPTCache's ``mock_data.json``
paraphrases stays ≥ 0.80. Nearly all of those paraphrases are long rewritten sentences (the
shorter side has ≥ 10 words), so the question is what accepting long pairs more freely costs
on QQP. This script answers it on the QQP *tuning* split (the 40k file, where the verifier
was fitted, so its QQP precision here is if anything optimistic) and GPTCache's mock pairs:

* both sets' pairs are run through the shipped cosine floor and rule guards;
* the long group's acceptance is then set, per signal (verifier probability, e5 similarity,
  USE cosine), so that it keeps 80 / 90 / 95 / 97 % of the mock pairs left, and the QQP
  precision that results is printed (the short group stays at the shipped cutoff);
* a grid over "(e5 ≥ a and cosine ≥ c) or verifier ≥ b" for the long group gives the best
  QQP precision any such rule reaches while mock recall is ≥ 0.80.

Nothing here sets a shipped constant: it reads a report set (mock) only to show the
trade-off, as ``bench/results/semantic.md`` does. Output: ``bench/results/semantic_tradeoff.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import semantic_data as sd
from reprise.cache.guards import run_guards
from reprise.cache.text import embedding_text
from reprise.cache.verifier import Verifier
from reprise.embed.use import UseEmbedder
from semantic_quality import CachedE5, embed_all

RESULTS = Path(__file__).resolve().parent / "results"
SHARES = (0.80, 0.90, 0.95, 0.97)
TARGET_PRECISION, TARGET_RECALL = 0.85, 0.80


@dataclass(frozen=True, slots=True)
class Judged:
    """One pair that passed the cosine floor and the guards."""

    label: int
    cosine: float
    e5: float
    score: float  # verifier probability (1.0 for the rule accepts)
    long: bool


def judge(pairs: list[sd.Pair], use: sd.EmbeddingCache, e5: CachedE5, verifier: Verifier,
          embedder: UseEmbedder) -> list[Judged]:
    """Pairs past the floor and the guards, with every signal the long group could use."""
    stored = embed_all(use, embedder, [p.q1 for p in pairs])
    asked = embed_all(use, embedder, [p.q2 for p in pairs])
    cos = [float(stored[p.q1] @ asked[p.q2]) for p in pairs]
    floor = verifier.config.threshold
    keep = [i for i, p in enumerate(pairs)
            if cos[i] >= floor and run_guards(p.q2, p.q1).ok]
    # e5 of the same ``embedding_text`` form the cache computes it on (E5Similarity)
    ea = e5.embed_sync([embedding_text(pairs[i].q1) for i in keep])
    eb = e5.embed_sync([embedding_text(pairs[i].q2) for i in keep])
    out = []
    for j, i in enumerate(keep):
        p, sim = pairs[i], float(ea[j] @ eb[j])
        out.append(Judged(p.label, cos[i], sim, verifier.score(p.q2, p.q1, cos[i], sim),
                          verifier.is_long(p.q2, p.q1)))
    return out


def precision(rows: list[Judged]) -> float:
    return float(np.mean([r.label for r in rows])) if rows else float("nan")


def accepted(rows: list[Judged], short_cut: float,
             long_ok: Callable[[Judged], bool]) -> list[Judged]:
    return [r for r in rows if (long_ok(r) if r.long else r.score >= short_cut)]


def at_least(get: Callable[[Judged], float], cut: float) -> Callable[[Judged], bool]:
    return lambda r: get(r) >= cut


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=sd.CACHE_DIR)
    ap.add_argument("--out", type=Path, default=RESULTS / "semantic_tradeoff.md")
    args = ap.parse_args()
    if not sd.DATA.exists():
        print(f"skipped: no data at {sd.DATA}")
        return
    t0 = time.perf_counter()
    verifier = Verifier.load()
    cfg = verifier.config
    embedder = UseEmbedder()
    use = sd.EmbeddingCache(args.cache_dir, "use", 512, autosave=False)
    e5 = CachedE5(args.cache_dir)
    qqp_pairs, mock_pairs = sd.TUNING["qqp"](), sd.mock_pairs()
    qqp = judge(qqp_pairs, use, e5, verifier, embedder)
    mock = judge(mock_pairs, use, e5, verifier, embedder)
    use.save()
    e5.cache.save()
    n_mock = len(mock_pairs)

    def line(name: str, long_ok: Callable[[Judged], bool]) -> str:
        aq = accepted(qqp, cfg.cutoff, long_ok)
        am = accepted(mock, cfg.cutoff, long_ok)
        lq = [r for r in aq if r.long]
        return (f"| {name} | {len(am) / n_mock:.3f} | {precision(lq):.3f} ({len(lq)}) "
                f"| {precision(aq):.3f} ({len(aq)}) |")

    rows = [line(f"shipped (long: verifier ≥ {cfg.cutoff_long:.2f})",
                 lambda r: r.score >= cfg.cutoff_long)]
    signals: dict[str, Callable[[Judged], float]] = {
        "verifier": lambda r: r.score, "e5": lambda r: r.e5, "USE cosine": lambda r: r.cosine}
    for name, get in signals.items():
        values = np.sort([get(r) for r in mock if r.long])
        for share in SHARES:
            cut = float(values[int((1 - share) * len(values))])
            rows.append(line(f"long: {name} ≥ {cut:.4f} (keeps {share:.0%} of mock's long)",
                             at_least(get, cut)))
    rows.append(line("long: everything past floor + guards", lambda r: True))

    best: tuple[float, str] = (0.0, "none reaches the recall")
    for ce in np.arange(0.94, 0.99, 0.0025):
        for cp in np.arange(0.0, 1.0, 0.02):
            for cc in np.arange(cfg.threshold, 0.95, 0.01):
                def ok(r: Judged, ce: float = ce, cp: float = cp, cc: float = cc) -> bool:
                    return (r.e5 >= ce and r.cosine >= cc) or r.score >= cp
                am = accepted(mock, cfg.cutoff, ok)
                if len(am) / n_mock < TARGET_RECALL:
                    continue
                aq = accepted(qqp, cfg.cutoff, ok)
                if precision(aq) > best[0]:
                    best = (precision(aq), f"e5 ≥ {ce:.4f} and cosine ≥ {cc:.2f}, or verifier ≥ "
                            f"{cp:.2f}: mock recall {len(am) / n_mock:.3f}, QQP {len(aq)} pairs")

    n_long_q = sum(r.long for r in qqp)
    md = "\n".join([
        "# Semantic cache: the paraphrase-recall / QQP-precision trade-off",
        "",
        "Written by `bench/semantic_tradeoff.py`. QQP: the 40k *tuning* file (the verifier was "
        "fitted on 80% of it, so its QQP precision here is optimistic); GPTCache "
        f"`mock_data.json`: {n_mock} paraphrase pairs, all positives (recall is over all of "
        "them). Every pair first goes through the shipped cosine floor "
        f"({cfg.threshold:.2f}) and the rule guards: {len(qqp)} QQP pairs pass "
        f"({n_long_q} long, i.e. the shorter side has ≥ {cfg.long_words} words; precision "
        f"{precision(qqp):.3f}), and {len(mock)} mock pairs ({sum(r.long for r in mock)} long). "
        f"The short group keeps the shipped verifier cutoff {cfg.cutoff:.2f}; only the long "
        "group's rule changes. Pair level: no fillers, so these are upper bounds on what the "
        "cache reaches.",
        "",
        "| long-group rule | mock recall | QQP long: precision (pairs) | "
        "QQP all: precision (pairs) |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        f"Best QQP precision of any long-group rule \"(e5 ≥ a and cosine ≥ c) or verifier ≥ b\" "
        f"(grid a 0.94–0.99, c {cfg.threshold:.2f}–0.95, b 0–1) with mock recall ≥ "
        f"{TARGET_RECALL:.2f}: **{best[0]:.3f}** ({best[1]}); the target is "
        f"{TARGET_PRECISION:.2f}.",
        "",
        "Reading: GPTCache's paraphrases sit where QQP's long pairs are duplicates only about "
        "70–80% of the time by its labels, and none of the signals the cache has offline (USE, "
        "e5, the lexical and rule features inside the verifier) tells the two apart. A long "
        "group open enough for 0.80 recall on the paraphrases costs QQP precision below "
        f"{TARGET_PRECISION:.2f} even before the cache's other neighbours add wrong hits; "
        "the short group cannot pay for it (QQP recall at precision 0.95 is under 0.10, "
        "`semantic.md`). Meeting both needs a verifier that reads the two texts together "
        "(a cross-encoder), which no offline package provides.",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, {time.perf_counter() - t0:.0f} s.",
        "",
    ])
    args.out.write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
