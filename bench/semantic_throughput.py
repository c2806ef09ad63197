"""Semantic-lookup throughput: every request runs the semantic tier, at concurrency 64 and 1.

Why a separate bench from ``load.py``: there, misses wait on the model and exact hits skip
the semantic tier, so the cost of the tier's model work (the question's USE pass, the
cross-encoder's pair scoring) is diluted. Here every measured request is a lookup the exact
tier cannot answer (``Cache-Control: no-store``, so nothing asked is stored and the next ask
of the same words is a semantic lookup again): paraphrases of seeded questions (hits, most
decided by the cross-encoder) and new questions (misses, answered by a fast test upstream).

Each configuration gets a fresh gateway process (SQLite store, USE embedder, the shipped
cross-encoder) with its own ``REPRISE_*`` overrides, on one machine in one run, so the
batching window can be compared point by point:

    nice python bench/semantic_throughput.py \
        --config before: --config off:REPRISE_BATCHING=false \
        --config w0:REPRISE_BATCH_WINDOW_MS=0 --config w2:REPRISE_BATCH_WINDOW_MS=2

Per configuration: seed (unmeasured), warm-up, ``--requests`` at concurrency
``--concurrency`` (throughput, p50/p99), then ``--serial`` requests one at a time (p50 at
concurrency 1, where batching must cost nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from _load import _read_response, encode_post, percentile, server_timing
from load import TOPICS, start_gateways, start_upstream

RESULTS = Path(__file__).parent / "results"

SEEDED = [f"How do I {t}?" for t in TOPICS] + [f"What is the best way to {t}?" for t in TOPICS]
# Rewordings the exact tier cannot answer: most go to the cross-encoder, which accepts them.
PARAPHRASES = ([f"How to {t}?" for t in TOPICS] + [f"How can I {t}?" for t in TOPICS]
               + [f"What's the best way to {t}?" for t in TOPICS])


@dataclass
class Outcome:
    ms: list[float] = field(default_factory=list)
    by_tier: dict[str, list[float]] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    phases: list[dict[str, float]] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0


def questions(rng: random.Random, n: int, paraphrase: float) -> list[str]:
    out = []
    for i in range(n):
        if rng.random() < paraphrase:
            out.append(rng.choice(PARAPHRASES))
        else:  # a new question: unique numbers, so no stored answer may serve it
            out.append(f"Ticket {i}: how do I {rng.choice(TOPICS)} for order "
                       f"{rng.randrange(100000)}?")
    return out


async def run(port: int, qs: list[str], concurrency: int, *, store: bool) -> Outcome:
    out = Outcome()
    it = iter(qs)
    headers = {"X-Reprise-Namespace": "bench"}
    if not store:
        headers["Cache-Control"] = "no-store"

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for q in it:
                body = orjson.dumps({"model": "fake-model",
                                     "messages": [{"role": "user", "content": q}]})
                t0 = time.perf_counter()
                writer.write(encode_post("127.0.0.1", port, "/v1/chat/completions", body,
                                         headers))
                status, head, _ = await _read_response(reader)
                out.ms.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    out.errors += 1
                tier = head.get("x-reprise-cache", "-")
                out.tiers[tier] = out.tiers.get(tier, 0) + 1
                out.by_tier.setdefault(tier, []).append(out.ms[-1])
                out.phases.append(server_timing(head.get("server-timing", "")))
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.seconds = time.perf_counter() - t0
    return out


def phase_p50(o: Outcome, name: str) -> str:
    values = [p[name] for p in o.phases if name in p]
    return f"{percentile(values, 50):.1f}" if values else "-"


BATCH_LINE = re.compile(r'^reprise_model_batch_items_(sum|count)\{model="([^"]+)"\} (\S+)$',
                        re.M)


async def batch_totals(port: int) -> dict[tuple[str, str], float]:
    """The gateway's pass-size histogram totals ({(model, sum|count): value})."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return {(m, kind): float(v) for kind, m, v in BATCH_LINE.findall(text)}


def items_per_pass(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float],
                   model: str) -> str:
    passes = after.get((model, "count"), 0.0) - before.get((model, "count"), 0.0)
    items = after.get((model, "sum"), 0.0) - before.get((model, "sum"), 0.0)
    return f"{items / passes:.1f}" if passes else "-"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(port: int, pid: int, args: argparse.Namespace
                  ) -> tuple[Outcome, Outcome, str, float]:
    await run(port, SEEDED, 8, store=True)
    rng = random.Random(args.seed)
    await run(port, questions(rng, 200, args.paraphrase), args.concurrency, store=False)
    before = await batch_totals(port)
    cpu0 = cpu_seconds(pid)
    loaded = await run(port, questions(rng, args.requests, args.paraphrase), args.concurrency,
                       store=False)
    cpu = cpu_seconds(pid) - cpu0
    after = await batch_totals(port)
    serial = await run(port, questions(rng, args.serial, args.paraphrase), 1, store=False)
    sizes = " / ".join(items_per_pass(before, after, m) for m in ("use-query", "cross-encoder"))
    return loaded, serial, sizes, cpu


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    label, _, rest = text.partition(":")
    env = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return label, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", default=[],
                        help="LABEL:REPRISE_X=V,REPRISE_Y=W (repeatable; runs in order)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--serial", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--paraphrase", type=float, default=0.8)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the configurations this many times, interleaved")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS / "semantic_throughput.md")
    args = parser.parse_args()
    configs = [parse_config(c) for c in args.config] or [("default", {})]

    tmp = Path(tempfile.mkdtemp(prefix="reprise-semtp-"))
    rows: list[str] = []
    with ExitStack() as stack:
        upstream = start_upstream(stack, args.latency, 0.0, tmp)
        for rnd in range(args.rounds):
            for label, extra in configs:
                env = {"REPRISE_UPSTREAM_URL": upstream, "REPRISE_UPSTREAM_MODEL": "fake-model",
                       "REPRISE_LOG_LEVEL": "warning", "REPRISE_STORE": "sqlite",
                       "REPRISE_EMBEDDER": "use", "REPRISE_SEMANTIC_ENABLED": "true", **extra}
                with ExitStack() as gw_stack:
                    (proc, port), = start_gateways(gw_stack, 1, env, tmp / f"{label}-{rnd}")
                    assert proc.proc is not None
                    loaded, serial, sizes, cpu = asyncio.run(measure(port, proc.proc.pid,
                                                                     args))
                tiers = ", ".join(f"{k} {v}" for k, v in sorted(loaded.tiers.items()))
                row = (f"| {label} | {rnd + 1} | {len(loaded.ms) / loaded.seconds:.0f} | "
                       f"{1000 * cpu / len(loaded.ms):.1f} | "
                       f"{percentile(loaded.ms, 50):.0f} | {percentile(loaded.ms, 99):.0f} | "
                       f"{phase_p50(loaded, 'embed')} / {phase_p50(loaded, 'semantic')} | "
                       f"{percentile(serial.by_tier.get('semantic', []), 50):.2f} / "
                       f"{percentile(serial.by_tier.get('bypass', []), 50):.2f} | "
                       f"{phase_p50(serial, 'embed')} / {phase_p50(serial, 'semantic')} | "
                       f"{sizes} | {loaded.errors + serial.errors} | {tiers} |")
                rows.append(row)
                print(row, flush=True)
    lines = [
        "# Semantic-lookup throughput",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs"
        + (f"; {args.note}" if args.note else "") + f". Python {platform.python_version()}.",
        f"One gateway (SQLite, USE, cross-encoder verifier), test upstream answering after "
        f"{args.latency}s. Every measured request is a semantic lookup (`no-store`): "
        f"{args.paraphrase:.0%} paraphrases of {len(SEEDED)} seeded questions, the rest new "
        f"questions. {args.requests} requests at concurrency {args.concurrency}, then "
        f"{args.serial} one at a time.",
        "",
        "`python bench/semantic_throughput.py " + " ".join(
            f"--config '{c}'" for c in args.config) + f" --rounds {args.rounds}`",
        "",
        f"| config | round | req/s @{args.concurrency} | gateway CPU ms per request "
        f"@{args.concurrency} | p50 ms | p99 ms | embed / semantic "
        f"phase p50 ms @{args.concurrency} | p50 ms @1 hit / miss | embed / semantic p50 ms "
        f"@1 | items per pass @{args.concurrency} (USE / cross-encoder) | errors | outcomes "
        f"@{args.concurrency} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | ---: | --- |",
        *rows, "",
        "A miss (`bypass`: a lookup that served nothing, under `no-store`) includes the test "
        "upstream's answer time. Gateway CPU per request: user + system CPU time of the "
        "gateway process (all threads) over the loaded phase, divided by its requests: the "
        "cost of a lookup, less dependent than req/s on what else the shared cores ran.", "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
