"""Gateway latency: miss vs exact hit (JSON, SSE), miss overhead, hit throughput.

Starts, as separate processes on loopback: the test upstream with a fixed 1 s latency, and
the gateway (`reprise serve`, SQLite store, exact tier). Prints a markdown table and writes
it to bench/results/gateway.md.

    python bench/gateway_latency.py [--quick] [--store sqlite|memory]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from _load import encode_post, percentile, run_load
from reprise.services.processes import ManagedProcess
from reprise.testing.upstream import free_port

RESULTS = Path(__file__).parent / "results"


def body(question: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": "fake-model", "stream": stream,
                         "messages": [{"role": "user", "content": question}]})


async def sequential(host: str, port: int, payloads: list[bytes]) -> list[float]:
    res = await run_load(host, port, payloads, concurrency=1, total=len(payloads))
    assert res.errors == 0, res.statuses
    return res.latencies_ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--store", default="sqlite")
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    n_miss = 10 if args.quick else 40
    n_hit = 500 if args.quick else 3000
    n_tput = 5000 if args.quick else 30000

    up_port, gw_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="reprise-bench-"))
    upstream = ManagedProcess(
        "upstream", [sys.executable, "-m", "reprise.testing.upstream", "--port", str(up_port),
                     "--latency", str(args.latency)],
        ready_url=f"http://127.0.0.1:{up_port}/v1/models")
    env = {"REPRISE_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
           "REPRISE_UPSTREAM_MODEL": "fake-model", "REPRISE_STORE": args.store,
           "REPRISE_DATA_DIR": str(tmp), "REPRISE_SEMANTIC_ENABLED": "false",
           "REPRISE_LOG_LEVEL": "warning", "REPRISE_PORT": str(gw_port)}
    gateway = ManagedProcess("gateway", [sys.executable, "-m", "reprise.cli", "serve"],
                             ready_url=f"http://127.0.0.1:{gw_port}/healthz", env=env)
    rows: list[tuple[str, str, str, str]] = []
    try:
        upstream.start().wait_ready()
        gateway.start().wait_ready()
        host = "127.0.0.1"
        tag = uuid.uuid4().hex[:6]
        # direct upstream (the baseline the miss overhead is measured against)
        direct = asyncio.run(sequential(host, up_port, [
            encode_post(host, up_port, "/v1/chat/completions", body(f"d{i}{tag}"))
            for i in range(n_miss)]))
        misses = asyncio.run(sequential(host, gw_port, [
            encode_post(host, gw_port, "/v1/chat/completions", body(f"m{i}{tag}"))
            for i in range(n_miss)]))
        hit_json = asyncio.run(sequential(host, gw_port, [
            encode_post(host, gw_port, "/v1/chat/completions", body(f"m{i % n_miss}{tag}"))
            for i in range(n_hit)]))
        hit_sse = asyncio.run(sequential(host, gw_port, [
            encode_post(host, gw_port, "/v1/chat/completions",
                        body(f"m{i % n_miss}{tag}", stream=True))
            for i in range(n_hit)]))
        tput = asyncio.run(run_load(host, gw_port, [
            encode_post(host, gw_port, "/v1/chat/completions", body(f"m{i}{tag}"))
            for i in range(n_miss)], concurrency=32, total=n_tput))
        assert tput.errors == 0, tput.statuses
        assert tput.tiers.get("exact", 0) == n_tput, tput.tiers
    finally:
        gateway.stop()
        upstream.stop()

    def fmt(values: list[float]) -> tuple[str, str]:
        return f"{percentile(values, 50):.2f}", f"{percentile(values, 99):.2f}"

    overhead = [m - d for m, d in zip(sorted(misses), sorted(direct), strict=False)]
    rows.append(("upstream direct (1 s model)", *fmt(direct), f"n={n_miss}"))
    rows.append(("miss through gateway", *fmt(misses), f"n={n_miss}"))
    rows.append(("miss overhead (gateway − direct)", *fmt(overhead), "target p50 ≤ 5 ms"))
    rows.append(("exact hit, JSON", *fmt(hit_json), f"n={n_hit}, target p50 ≤ 3 ms"))
    rows.append(("exact hit, SSE (full stream)", *fmt(hit_sse), f"n={n_hit}"))
    rps = n_tput / tput.seconds
    rows.append(("exact hits, concurrency 32", *fmt(tput.latencies_ms),
                 f"**{rps:,.0f} req/s** (n={n_tput}, target ≥ 1,000)"))

    lines = [
        f"# Gateway latency ({args.store} store, exact tier)",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}; gateway, upstream and load client are separate processes"
        " on loopback; upstream answers after a fixed "
        f"{args.latency:.1f} s. Load client: keep-alive raw HTTP/1.1 (bench/_load.py). "
        f"Run: {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| measurement | p50 ms | p99 ms | notes |",
        "| --- | ---: | ---: | --- |",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "gateway.md" if args.store == "sqlite" else f"gateway-{args.store}.md"
    (RESULTS / name).write_text(text)


if __name__ == "__main__":
    main()
