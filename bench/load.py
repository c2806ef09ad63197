"""Load and soak: a bounded mixed workload at concurrency 64 against real gateway processes.

Two deployments, each started fresh as separate OS processes on loopback:

* ``sqlite`` — one gateway (``reprise serve``), SQLite store, in-process USE embedder;
* ``redis``  — two gateway replicas sharing one Redis Stack server (started with the
  project's ``reprise.services.redis_stack``); the client splits its connections between them.

The model is the test upstream (``reprise.testing.upstream``) with a realistic latency
(first token after ``--latency`` s, then ``--chunk-delay`` s per streamed word). The mix:
exact repeats of asked questions, paraphrases of seeded questions (the semantic tier), new
questions (misses; each carries a unique number so no guard lets it match), a share of them
streamed. The cache size bound is small (``--cache-mb``) so a long soak keeps evicting
instead of growing without end, which is what a memory soak has to exercise.

Phases per deployment: seed (unmeasured) → bounded run of ``--requests`` (throughput,
p50/p99 by tier, errors) → soak for ``--soak-seconds`` with the gateways' RSS sampled every
``--sample-seconds`` (flat = the peak after warm-up within 10 % of the warm-up level).

    nice python bench/load.py --soak-seconds 600          # the real run (≈25 min)
    python bench/load.py --requests 1500 --soak-seconds 30 # a quick look

On a 2-core machine shared with other work the load client, the upstream and the gateways
compete for the same CPUs: numbers are a floor, and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from _load import _read_response, encode_post, percentile, server_timing
from reprise.services.processes import ManagedProcess
from reprise.testing.upstream import free_port

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]

# Question families: (seeded form, paraphrase asked later). Topics × templates give many
# distinct partitions-worth of questions without any dataset.
TOPICS = [
    "reset my password", "change my email address", "cancel my subscription",
    "export my data", "enable two-factor authentication", "delete my account",
    "update my billing details", "invite a teammate", "rotate an API key",
    "download an invoice", "change the language of the app", "merge two accounts",
    "set up single sign-on", "recover a deleted project", "change my username",
    "turn off email notifications", "connect a custom domain", "upgrade my plan",
    "transfer ownership of a workspace", "restore a previous version of a file",
]
CONCEPTS = [
    "distributed systems", "a vector database", "semantic caching", "eventual consistency",
    "a load balancer", "rate limiting", "a message queue", "container orchestration",
    "retrieval-augmented generation", "a reverse proxy", "database sharding",
    "a content delivery network", "consensus algorithms", "garbage collection",
    "a bloom filter", "public key cryptography", "a write-ahead log", "a hash table",
    "the CAP theorem", "zero-downtime deployment",
]
FAMILIES: list[tuple[str, str]] = (
    [(f"How do I {t}?", f"How to {t}?") for t in TOPICS]
    + [(f"What is {c}?", f"What's {c}?") for c in CONCEPTS]
)


@dataclass
class Sample:
    kind: str  # repeat | paraphrase | new
    tier: str
    stream: bool
    ms: float
    status: int
    phases: dict[str, float] = field(default_factory=dict)  # the gateway's Server-Timing


@dataclass
class RunStats:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    wrong: list[tuple[str, str, str]] = field(default_factory=list)  # (tier, asked, answer)
    # A "new" question carries unique numbers: a semantic hit on one is a wrong answer.
    suspect: list[tuple[str, str]] = field(default_factory=list)  # (asked, matched)
    seconds: float = 0.0
    error_kinds: dict[str, int] = field(default_factory=dict)


class Workload:
    """Chooses the next request; seeded so two runs send the same sequence."""

    def __init__(self, seed: int, *, repeat: float, paraphrase: float, stream: float) -> None:
        self.rng = random.Random(seed)
        self.repeat, self.paraphrase, self.stream = repeat, paraphrase, stream
        self.asked: list[str] = [base for base, _ in FAMILIES]
        self.counter = 0

    def next(self) -> tuple[str, str, bool]:
        r = self.rng.random()
        stream = self.rng.random() < self.stream
        if r < self.repeat:
            return "repeat", self.rng.choice(self.asked[:4000]), stream
        if r < self.repeat + self.paraphrase:
            return "paraphrase", self.rng.choice(FAMILIES)[1], stream
        self.counter += 1
        n = self.counter
        q = (f"Ticket {n}: how do I {self.rng.choice(TOPICS)} for order {n * 7919 % 100000}?")
        if len(self.asked) < 4000:
            self.asked.append(q)
        return "new", q, stream


def payload(host: str, port: int, question: str, stream: bool) -> bytes:
    body = orjson.dumps({"model": "fake-model", "stream": stream,
                         "messages": [{"role": "user", "content": question}]})
    return encode_post(host, port, "/v1/chat/completions", body,
                       {"X-Reprise-Namespace": "load"})


async def drive(targets: list[tuple[str, int]], next_job: Callable[[], tuple[str, str, bool]],
                *, concurrency: int,
                total: int | None, seconds: float | None, stats: RunStats) -> None:
    """``concurrency`` keep-alive connections spread over ``targets``; stop on count or time."""
    started = time.perf_counter()
    deadline = None if seconds is None else started + seconds
    issued = 0

    def take() -> tuple[str, str, bool] | None:
        nonlocal issued
        if total is not None and issued >= total:
            return None
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        issued += 1
        return next_job()

    async def worker(i: int) -> None:
        host, port = targets[i % len(targets)]
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (job := take()) is not None:
                kind, question, stream = job
                t0 = time.perf_counter()
                try:
                    writer.write(payload(host, port, question, stream))
                    status, headers, body = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    stats.errors += 1
                    name = type(exc).__name__
                    stats.error_kinds[name] = stats.error_kinds.get(name, 0) + 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                ms = (time.perf_counter() - t0) * 1000
                ok = status == 200 and (not stream or body.rstrip().endswith(b"[DONE]"))
                if not ok:
                    stats.errors += 1
                    key = f"http {status}" if status != 200 else "stream cut"
                    stats.error_kinds[key] = stats.error_kinds.get(key, 0) + 1
                tier = headers.get("x-reprise-cache", "-")
                if ok and tier in ("exact", "miss", "bypass"):
                    # The test upstream answers "Answer #N to: <question>": an exact hit or a
                    # miss must carry the asked question itself, or the cache mixed answers up.
                    answer = answer_text(body, stream)
                    if not answer.endswith(question):
                        stats.wrong.append((tier, question, answer))
                if tier == "semantic" and kind == "new":
                    matched = unquote(headers.get("x-reprise-matched-question", ""))
                    # The same text stored by another request between this one's exact
                    # lookup and its vector search is a correct (if late) hit, not a suspect.
                    if matched != question:
                        stats.suspect.append((question, matched))
                stats.samples.append(Sample(kind, tier, stream, ms, status,
                                            server_timing(headers.get("server-timing", ""))))
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    stats.seconds = time.perf_counter() - started


def answer_text(body: bytes, stream: bool) -> str:
    if not stream:
        return str(orjson.loads(body)["choices"][0]["message"]["content"] or "")
    parts = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def sample_rss(pids: list[int], every: float, out: list[tuple[float, list[float]]],
                     stop: asyncio.Event) -> None:
    t0 = time.perf_counter()
    while not stop.is_set():
        out.append((time.perf_counter() - t0, [rss_mb(p) for p in pids]))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
    out.append((time.perf_counter() - t0, [rss_mb(p) for p in pids]))


# ------------------------------------------------------------------------------ processes
def start_upstream(stack: ExitStack, latency: float, chunk_delay: float, tmp: Path) -> str:
    port = free_port()
    proc = ManagedProcess(
        "upstream", [sys.executable, "-m", "reprise.testing.upstream", "--port", str(port),
                     "--latency", str(latency), "--chunk-delay", str(chunk_delay)],
        ready_url=f"http://127.0.0.1:{port}/v1/models", log_file=tmp / "upstream.log")
    proc.start()
    stack.callback(proc.stop)
    proc.wait_ready(60)
    return f"http://127.0.0.1:{port}/v1"


def start_gateways(stack: ExitStack, count: int, env: dict[str, str],
                   tmp: Path) -> list[tuple[ManagedProcess, int]]:
    out = []
    for i in range(count):
        port = free_port()
        data = tmp / f"gw{i}"
        data.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess(
            f"gateway-{i}", [sys.executable, "-m", "reprise.cli", "serve", "--host",
                             "127.0.0.1", "--port", str(port)],
            ready_url=f"http://127.0.0.1:{port}/healthz",
            env={**env, "REPRISE_DATA_DIR": str(data)}, log_file=data / "gateway.log")
        proc.start()
        stack.callback(proc.stop)
        out.append((proc, port))
    for proc, _ in out:
        proc.wait_ready(240)
    return out


# ------------------------------------------------------------------------------ reporting
PHASES = ("exact", "embed", "semantic")
TIER_HEADER = ["| tier | requests | p50 ms | p99 ms | lookup phases p50 ms (exact / embed /"
               " semantic) |", "| --- | ---: | ---: | ---: | --- |"]


def tier_rows(stats: RunStats) -> list[str]:
    """Latency per tier, and where the gateway's own lookup spent its time (its
    Server-Timing header): what the cache costs, apart from queueing and the upstream."""
    rows = []
    groups: dict[str, list[Sample]] = {}
    for s in stats.samples:
        groups.setdefault(s.tier, []).append(s)
    for tier in ("exact", "semantic", "miss", "bypass"):
        samples = groups.get(tier, [])
        if samples:
            values = [s.ms for s in samples]
            phases = " / ".join(
                f"{percentile(v, 50):.1f}" if (v := [s.phases[p] for s in samples
                                                       if p in s.phases]) else "-"
                for p in PHASES)
            rows.append(f"| {tier} | {len(values)} | {percentile(values, 50):.1f} | "
                        f"{percentile(values, 99):.1f} | {phases} |")
    return rows


def mix_line(stats: RunStats) -> str:
    kinds: dict[str, dict[str, int]] = {}
    for s in stats.samples:
        kinds.setdefault(s.kind, {}).setdefault(s.tier, 0)
        kinds[s.kind][s.tier] += 1
    parts = []
    for kind in ("repeat", "paraphrase", "new"):
        tiers = kinds.get(kind, {})
        parts.append(f"{kind}: " + ", ".join(f"{t} {n}" for t, n in sorted(tiers.items())))
    streamed = sum(1 for s in stats.samples if s.stream)
    return "; ".join(parts) + f"; streamed {streamed}/{len(stats.samples)}"


def rss_summary(series: list[tuple[float, list[float]]], warmup_fraction: float
                ) -> tuple[list[str], bool]:
    if not series:
        return ["(no samples)"], True
    n = len(series[0][1])
    cut = max(1, int(len(series) * warmup_fraction))
    lines, flat = [], True
    for i in range(n):
        values = [v[i] for _, v in series]
        base = values[cut - 1] if cut - 1 < len(values) else values[-1]
        after = values[cut - 1:]
        peak = max(after)
        growth = (peak / base - 1) * 100 if base else float("nan")
        ok = growth <= 10.0
        flat = flat and ok
        lines.append(f"| gateway {i} | {values[0]:.0f} | {base:.0f} | {peak:.0f} | "
                     f"{values[-1]:.0f} | {growth:+.1f}% | {'flat' if ok else 'GROWING'} |")
    return lines, flat


def rss_timeline(series: list[tuple[float, list[float]]], points: int = 12) -> str:
    if not series:
        return ""
    step = max(1, len(series) // points)
    picked = series[::step] + ([series[-1]] if (len(series) - 1) % step else [])
    return ", ".join(f"{t:.0f}s: " + "/".join(f"{v:.0f}" for v in vals) for t, vals in picked)


# ------------------------------------------------------------------------------ one deployment
async def run_deployment(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        upstream = start_upstream(stack, args.latency, args.chunk_delay, tmp)
        env = {
            "REPRISE_UPSTREAM_URL": upstream, "REPRISE_UPSTREAM_MODEL": "fake-model",
            "REPRISE_LOG_LEVEL": "warning", "REPRISE_JSON_LOGS": "true",
            "REPRISE_RAG_EMBEDDER": "use", "REPRISE_CACHE_MAX_BYTES": str(args.cache_mb << 20),
            "REPRISE_EMBEDDER": "use",
            "REPRISE_SEMANTIC_ENABLED": "true" if args.semantic else "false",
        }
        replicas = 1
        if name == "redis":
            from reprise.services.redis_stack import start_server

            redis = start_server(ROOT / ".cache" / "redis-stack", data_dir=tmp / "redis")
            stack.callback(redis.stop)
            env.update({"REPRISE_STORE": "redis", "REPRISE_REDIS_URL": redis.url,
                        "REPRISE_REDIS_PREFIX": "load"})
            replicas = 2
        else:
            env["REPRISE_STORE"] = "sqlite"
        gateways = start_gateways(stack, replicas, env, tmp / name)
        targets = [("127.0.0.1", port) for _, port in gateways]
        pids = [proc.proc.pid for proc, _ in gateways if proc.proc is not None]

        workload = Workload(args.seed, repeat=args.repeat, paraphrase=args.paraphrase,
                            stream=args.stream)
        # Seed: every family's first form is asked once (misses), unmeasured.
        seed = RunStats()
        seeds = iter([("seed", q, False) for q, _ in FAMILIES])
        await drive(targets, seeds.__next__, concurrency=16, total=len(FAMILIES),
                    seconds=None, stats=seed)

        bounded = RunStats()
        await drive(targets, workload.next, concurrency=args.concurrency, total=args.requests,
                    seconds=None, stats=bounded)
        result: dict[str, Any] = {"name": name, "replicas": replicas, "bounded": bounded,
                                  "seed_errors": seed.errors, "seed_kinds": seed.error_kinds}
        if args.soak_seconds > 0:
            soak = RunStats()
            series: list[tuple[float, list[float]]] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(pids, args.sample_seconds, series, stop))
            await drive(targets, workload.next, concurrency=args.concurrency, total=None,
                        seconds=args.soak_seconds, stats=soak)
            stop.set()
            await sampler
            result.update(soak=soak, series=series)
        return result


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Load and soak: mixed workload at concurrency 64",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other work "
        f"(load client, fake upstream and gateways on the same cores: a noisy floor, not a "
        f"ceiling). Python {platform.python_version()}.",
        f"Upstream: test model server, first token after {args.latency}s, "
        f"{args.chunk_delay}s per streamed word. Mix: {args.repeat:.0%} repeats, "
        f"{args.paraphrase:.0%} paraphrases of seeded questions, "
        f"{1 - args.repeat - args.paraphrase:.0%} new questions; {args.stream:.0%} streamed. "
        f"Cache bound {args.cache_mb} MiB (LRU eviction keeps the soak bounded). Semantic "
        f"tier {'on (USE embedder in each gateway)' if args.semantic else 'OFF (--no-semantic)'}. "
        f"`python bench/load.py --requests {args.requests} --soak-seconds "
        f"{args.soak_seconds:g}{'' if args.semantic else ' --no-semantic'}`.",
        "",
    ]
    all_flat = True
    total_errors = 0
    for r in results:
        b: RunStats = r["bounded"]
        total_errors += b.errors + r["seed_errors"]
        title = ("SQLite store, 1 gateway" if r["name"] == "sqlite"
                 else f"Redis Stack store, {r['replicas']} gateway replicas")
        lines += [f"## {title}", "",
                  f"Seed phase (unmeasured, {len(FAMILIES)} first asks): errors "
                  f"{r['seed_errors']}" + (f" {r['seed_kinds']}" if r["seed_errors"] else "")
                  + ".", "",
                  f"Bounded run: {len(b.samples)} requests in {b.seconds:.1f}s = "
                  f"**{len(b.samples) / b.seconds:.0f} req/s**, errors **{b.errors}**"
                  + (f" {b.error_kinds}" if b.error_kinds else ""), "",
                  *TIER_HEADER, *tier_rows(b), "", f"Outcomes by request kind: {mix_line(b)}.",
                  f"Wrong answers (an exact hit or miss not answering the asked question): "
                  f"**{len(b.wrong)}**" + (f", e.g. {b.wrong[:3]}" if b.wrong else "") + ".",
                  f"Semantic hits on new questions (each has unique numbers, so any hit is "
                  f"wrong): **{len(b.suspect)}**"
                  + (f", e.g. {b.suspect[:3]}" if b.suspect else "") + ".", ""]
        if "soak" in r:
            s: RunStats = r["soak"]
            total_errors += s.errors
            rows, flat = rss_summary(r["series"], args.warmup_fraction)
            all_flat = all_flat and flat
            lines += [f"Soak: {args.soak_seconds}s, {len(s.samples)} requests = "
                      f"{len(s.samples) / s.seconds:.0f} req/s, errors **{s.errors}**"
                      + (f" {s.error_kinds}" if s.error_kinds else ""), "",
                      *TIER_HEADER, *tier_rows(s), "",
                      f"Wrong answers: **{len(s.wrong)}**"
                      + (f", e.g. {s.wrong[:3]}" if s.wrong else "") + "; semantic hits on new "
                      f"questions: **{len(s.suspect)}**"
                      + (f", e.g. {s.suspect[:3]}" if s.suspect else "") + ".", "",
                      f"RSS (MiB), sampled every {args.sample_seconds:.0f}s; warm-up = first "
                      f"{args.warmup_fraction:.0%} of the soak:", "",
                      "| process | start | after warm-up | peak after | end | growth | |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | --- |", *rows, "",
                      f"Timeline: {rss_timeline(r['series'])}.", ""]
    lines += [f"**Errors, all runs: {total_errors}.** "
              + ("RSS flat within 10% after warm-up in every process." if all_flat else
                 "RSS grew more than 10% after warm-up in at least one process."), ""]
    return "\n".join(lines)


# The workload's numeric knobs: flag → default (its type is the option's type).
NUMERIC_OPTIONS: dict[str, int | float] = {
    "--requests": 4000, "--concurrency": 64,
    "--soak-seconds": 0.0, "--sample-seconds": 5.0, "--warmup-fraction": 0.2,
    "--latency": 0.3, "--chunk-delay": 0.01,  # the test upstream's first-token and chunk delays
    "--repeat": 0.45, "--paraphrase": 0.20, "--stream": 0.30,  # request mix (fractions)
    "--cache-mb": 8, "--seed": 7,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in NUMERIC_OPTIONS.items():
        parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--deployments", default="sqlite,redis")
    parser.add_argument("--no-semantic", dest="semantic", action="store_false",
                        help="exact tier only (paraphrases then miss)")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.md")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="reprise-load-"))
    results = []
    for name in args.deployments.split(","):
        print(f"== {name} …", flush=True)
        results.append(asyncio.run(run_deployment(name, args, tmp)))
    text = report(results, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
