"""Semantic lookup latency of the cache stores as they grow (index search only).

What is measured, and why this way:
* **search latency** of ``Store.search(namespace, fingerprint, vector, k=5)`` — the vector
  index plus fetching the candidate entries; the embedding of the question is excluded (it
  costs the same whatever the store). p50/p99 over ``--queries`` sequential lookups.
* **vectors**: seeded random unit vectors of dim 512 (USE's dimension). Random vectors in 512
  dimensions are nearly orthogonal, which is the hard case for HNSW (no cluster structure to
  exploit), so recall here is a lower bound. Each query is a stored vector plus small noise,
  so it has one true nearest neighbour and recall@1 is reported next to the latency.
* **one partition** holds all N entries: the worst case (real partitions are per tenant,
  model and context, and far smaller).
* **insert throughput** through the public ``Store.put`` (Redis with 64 puts in flight, as
  replicas would); **memory per entry**: process RSS growth for the embedded stores (+ the
  SQLite file size), ``used_memory`` growth for Redis.

Usage::

    python bench/lookup_latency.py --store sqlite                # 1k, 10k, 100k, 1M
    python bench/lookup_latency.py --store redis --sizes 1000,10000,100000

Writes ``bench/results/lookup.md`` (sqlite/memory) or ``bench/results/redis.md`` (redis).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "src"))

from reprise.store.base import CacheEntry, unit  # noqa: E402

DIM = 512
K = 5
NS, FP = "bench", "one-partition"
CHUNK = 10_000
BODY = b'{"choices":[{"message":{"role":"assistant","content":"' + b"x" * 150 + b'"}}]}'


@dataclass
class Row:
    n: int
    insert_per_s: float
    first_search_s: float
    p50_ms: float
    p99_ms: float
    recall1: float
    mem_per_entry: float
    disk_per_entry: float | None


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def chunk_vectors(n: int, seed: int, start: int) -> np.ndarray:
    """Vectors ``start .. start+CHUNK`` of the seeded stream (regenerable for the queries)."""
    rng = np.random.default_rng([seed, start // CHUNK])
    v = rng.standard_normal((min(CHUNK, n - start), DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def open_store(kind: str, tmp: Path, redis_url: str) -> Any:
    big = 1 << 40  # no eviction while measuring
    if kind == "memory":
        from reprise.store.memory import MemoryStore

        return MemoryStore(DIM, big)
    if kind == "sqlite":
        from reprise.store.sqlite import SQLiteStore

        return SQLiteStore(tmp / "cache.sqlite3", DIM, big)
    from reprise.store.redis import RedisStore

    return RedisStore(redis_url, DIM, big, prefix=f"bench{uuid.uuid4().hex[:6]}")


def redis_used_memory(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


async def fill(store: Any, n: int, seed: int, inflight: int) -> float:
    """Insert n entries; returns seconds spent."""
    t0 = time.perf_counter()
    now = time.time()
    for start in range(0, n, CHUNK):
        vecs = chunk_vectors(n, seed, start)
        entries = [
            CacheEntry(key=f"k{start + i}", namespace=NS, fingerprint=FP,
                       question=f"benchmark question number {start + i}?", response=BODY,
                       vector=vecs[i], created_at=now, prompt_tokens=20, completion_tokens=40)
            for i in range(len(vecs))
        ]
        for b in range(0, len(entries), inflight):
            await asyncio.gather(*(store.put(e) for e in entries[b : b + inflight]))
        if n >= 100_000:
            print(f"    {start + len(vecs)}/{n} inserted", file=sys.stderr, flush=True)
    return time.perf_counter() - t0


async def measure(kind: str, n: int, queries: int, redis_url: str, seed: int) -> Row:
    tmp = Path(tempfile.mkdtemp(prefix="reprise-bench-"))
    store = open_store(kind, tmp, redis_url)
    try:
        mem0 = redis_used_memory(redis_url) if kind == "redis" else rss_bytes()
        inflight = 64 if kind == "redis" else 1
        seconds = await fill(store, n, seed, inflight)

        rng = np.random.default_rng(seed + 1)
        targets = rng.choice(n, size=queries, replace=n < queries)
        qs = []
        for t in targets:
            base = chunk_vectors(n, seed, int(t) // CHUNK * CHUNK)[int(t) % CHUNK]
            qs.append(unit(base + rng.standard_normal(DIM).astype(np.float32) * 0.01))

        t0 = time.perf_counter()  # the embedded stores build/load the partition index here
        await store.search(NS, FP, qs[0], K)
        first = time.perf_counter() - t0
        for q in qs[:20]:  # warm caches
            await store.search(NS, FP, q, K)
        lat, correct = [], 0
        for t, q in zip(targets, qs, strict=True):
            t0 = time.perf_counter()
            hits = await store.search(NS, FP, q, K)
            lat.append(time.perf_counter() - t0)
            correct += bool(hits) and hits[0].entry.key == f"k{int(t)}"
        mem1 = redis_used_memory(redis_url) if kind == "redis" else rss_bytes()
        disk = None
        if kind == "sqlite":
            disk = dir_bytes(tmp) / n
        arr = np.array(lat) * 1000
        return Row(n, n / seconds, first, float(np.percentile(arr, 50)),
                   float(np.percentile(arr, 99)), correct / len(qs), (mem1 - mem0) / n, disk)
    finally:
        if kind == "redis":
            await store.clear()
        await store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def table(kind: str, rows: list[Row], queries: int) -> str:
    head = ("| entries (1 partition) | insert /s | first search s | search p50 ms | search p99 ms"
            " | recall@1 | memory B/entry | disk B/entry |")
    lines = [head, "|" + "---:|" * 8]
    for r in rows:
        disk = "" if r.disk_per_entry is None else f"{r.disk_per_entry:,.0f}"
        lines.append(
            f"| {r.n:,} | {r.insert_per_s:,.0f} | {r.first_search_s:.2f} | {r.p50_ms:.3f} |"
            f" {r.p99_ms:.3f} | {r.recall1:.3f} | {r.mem_per_entry:,.0f} | {disk} |"
        )
    verdict = ""
    by_n = {r.n: r for r in rows}
    if 100_000 in by_n:
        ok = by_n[100_000].p99_ms <= 2.0
        verdict += f"\n- target search p99 ≤ 2 ms at 100k: **{'met' if ok else 'MISSED'}**"
        verdict += f" ({by_n[100_000].p99_ms:.3f} ms)"
    if len(rows) > 1:
        growth = rows[-1].p99_ms / rows[0].p99_ms
        verdict += (f"\n- p99 growth {rows[0].n:,} → {rows[-1].n:,}: ×{growth:.2f}"
                    f" (target ≤ ×2: **{'met' if growth <= 2 else 'MISSED'}**)")
    return (
        f"### store: {kind}\n\n"
        f"Random unit vectors, dim {DIM}, all entries in ONE partition (worst case), k={K},"
        f" {queries} sequential queries (stored vector + 1% noise); embedding time excluded."
        f" Machine: {platform.machine()}, {platform.python_version()}, shared 2-core VM"
        f" (timings are noisy under the other engineers' load).\n\n"
        + "\n".join(lines) + "\n" + verdict + "\n"
    )


async def run(args: argparse.Namespace) -> str:
    sizes = [int(s) for s in args.sizes.split(",")]
    server = None
    redis_url = args.redis_url
    if args.store == "redis" and not redis_url:
        from reprise.services.redis_stack import default_cache_dir, start_server

        server = start_server(ROOT / ".cache" / "redis-stack" if ROOT.exists()
                              else default_cache_dir())
        redis_url = server.url
    rows: list[Row] = []
    try:
        for n in sizes:
            print(f"{args.store}: {n:,} entries …", file=sys.stderr, flush=True)
            row = await measure(args.store, n, args.queries, redis_url, args.seed)
            print(f"  {row}", file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        if server is not None:
            server.close()
    return table(args.store, rows, args.queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "memory", "redis"], default="sqlite")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated entry counts (default 1k..1M, redis 1k..100k)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--redis-url", default="", help="use this server instead of starting one")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.sizes is None:
        args.sizes = "1000,10000,100000" if args.store == "redis" else "1000,10000,100000,1000000"
    md = asyncio.run(run(args))
    print(md)
    out = args.out or RESULTS / ("redis.md" if args.store == "redis" else "lookup.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Semantic lookup latency\n\n" + md)


if __name__ == "__main__":
    main()
