"""Semantic lookup latency of the cache stores as they grow, and the whole semantic hit.

Three runs (each writes its own section of a results file, see ``--help``):

* **index** (default): ``Store.search(namespace, fingerprint, vector, k=5)`` — the vector index
  plus fetching the candidate entries — and the **lookup** = search + guards + verifier
  (``SemanticLookup.find`` with a precomputed vector: embedding excluded, it costs the same
  whatever the store). p50/p99 over ``--queries`` sequential lookups, recall@1, insert rate,
  memory and disk per entry. All N entries sit in ONE partition: the worst case (real
  partitions are per tenant, model and context, and far smaller).
* **--gateway**: the whole semantic hit over loopback — HTTP, exact miss, embedding of the
  question with the real USE model, search, guards, replay — against a ``reprise serve``
  process, sequential requests.
* **--replicas N** (Redis): hit throughput of one gateway process vs N processes sharing
  one Redis Stack server, under concurrent load.

Vectors (``--vectors``):
* ``use`` (default): Gaussian with the mean and covariance of real USE embeddings of real
  questions (QQP tuning-split questions), normalised. Real question embeddings are far from
  isotropic (participation ratio ≈130 of 512 dims), and that structure is what lets HNSW
  find neighbours in few steps, so this is the realistic case. It is still *harder* than
  real data: it keeps the spectrum but not the cluster structure of real questions.
* ``random``: isotropic unit vectors, the adversarial case for any graph index (every point
  is equidistant from every other); reported as a lower bound.
Each query is a stored vector plus 1% noise per dimension, so it has one true nearest
neighbour; recall@1 is the share of queries that find it.

Usage::

    python bench/lookup_latency.py                                 # sqlite: 1k, 10k, 100k, 1M
    python bench/lookup_latency.py --store redis                   # 1k, 10k, 100k
    python bench/lookup_latency.py --gateway [--store redis]
    python bench/lookup_latency.py --replicas 2                    # redis, two processes

Large embedded stores (≥100k) are kept under ``.cache/bench/`` once filled and indexed, so a
rerun measures a restarted store (index loaded from disk) instead of refilling for an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / ".cache" / "bench"
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).parent))

from _load import (  # noqa: E402
    _read_response,
    encode_post,
    percentile,
    run_load,
    server_timing,
)
from reprise.store.base import CacheEntry, unit  # noqa: E402

DIM = 512
K = 5
NS, FP = "bench", "one-partition"
CHUNK = 10_000
BODY = b'{"choices":[{"message":{"role":"assistant","content":"' + b"x" * 150 + b'"}}]}'
KEEP_FROM = 100_000  # embedded stores this large are cached under .cache/bench
SWEEP: list[tuple[int, int, float, float, float]] = []  # redis: (n, EF_RUNTIME, p50, p99, r@1)


# ------------------------------------------------------------------------------ vectors
def _tuning_questions(limit: int) -> list[str]:
    """Unique questions of the QQP tuning split (never a report split)."""
    path = DATA / "qqp" / "qqp_pairs_40k.tsv"
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    seen: dict[str, None] = {}
    for r in rows:
        for q in (r[1], r[2]):
            if q.strip():
                seen.setdefault(q, None)
        if len(seen) >= limit:
            break
    return list(seen)[:limit]


def use_spectrum() -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance factor of real USE question embeddings (cached)."""
    path = CACHE / "use_spectrum.npz"
    if path.exists():
        with np.load(path) as z:
            return z["mean"], z["factor"]
    texts = _tuning_questions(6000)
    print(f"embedding {len(texts)} QQP tuning questions with USE for the spectrum …",
          file=sys.stderr, flush=True)
    from reprise.embed.use import UseEmbedder

    real = np.asarray(UseEmbedder().embed_sync(texts, "query"), dtype=np.float64)
    mean = real.mean(axis=0)
    w, v = np.linalg.eigh(np.cov(real.T))
    factor = (v * np.sqrt(np.clip(w, 0.0, None))).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, mean=mean.astype(np.float32), factor=factor, n=len(texts))
    return mean.astype(np.float32), factor


class Vectors:
    """The seeded stream of stored vectors, regenerable by chunk (for the queries)."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind, self.seed = kind, seed
        self.mean: np.ndarray | None = None
        self.factor: np.ndarray | None = None
        if kind == "use":
            self.mean, self.factor = use_spectrum()

    def chunk(self, n: int, start: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start // CHUNK])
        z = rng.standard_normal((min(CHUNK, n - start), DIM)).astype(np.float32)
        if self.factor is not None:
            z = self.mean + z @ self.factor.T
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    def one(self, n: int, i: int) -> np.ndarray:
        return self.chunk(n, i // CHUNK * CHUNK)[i % CHUNK]

    def rows(self, n: int, idx: np.ndarray) -> np.ndarray:
        """Stored vectors ``idx`` (any order), each chunk generated once, not once per row."""
        out = np.empty((len(idx), DIM), dtype=np.float32)
        for start in np.unique(np.asarray(idx) // CHUNK * CHUNK):
            sel = np.flatnonzero(np.asarray(idx) // CHUNK * CHUNK == start)
            out[sel] = self.chunk(n, int(start))[np.asarray(idx)[sel] - start]
        return out


def stored_question(i: int) -> str:
    return f"How do I configure option {i} of the billing service?"


def asked_question(i: int) -> str:
    return f"How can I configure option {i} of the billing service"


# ------------------------------------------------------------------------------ measuring
@dataclass
class Row:
    n: int
    insert_per_s: float
    first_search_s: float
    p50_ms: float
    p99_ms: float
    lookup_p50_ms: float | None
    lookup_p99_ms: float | None
    recall1: float
    mem_per_entry: float
    index_per_entry: float | None
    disk_per_entry: float | None
    build_s: float | None = None  # kept stores: index build time when they were filled


def _threads(pid: int) -> list[int]:
    base = Path(f"/proc/{pid or os.getpid()}/task")
    return [int(t.name) for t in base.iterdir()] if base.exists() else [pid]


def priority(niceness: int, *pids: int) -> None:
    """Long fills run politely (nice 10, like the other jobs on this shared machine).

    The short timed phases (niceness 0) run every thread of this process and of the Redis
    server at real-time priority (SCHED_FIFO 1) when allowed (root), else at nice 0: on a
    2-core VM shared with a dozen busy processes, a lookup's p99 otherwise measures how long
    the scheduler kept it waiting, not the code. The kernel's RT throttling still leaves
    others 5% of each second, and a timed phase lasts seconds."""
    for pid in pids or (0,):
        for tid in _threads(pid):
            with contextlib.suppress(OSError):
                if niceness == 0 and REALTIME["on"]:
                    os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))
                else:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                    os.setpriority(os.PRIO_PROCESS, tid, niceness)


REALTIME = {"on": True}


def realtime_note() -> str:
    if not REALTIME["on"]:
        return "Timed phases at nice 0."
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        return ("Timed phases ran at real-time priority (SCHED_FIFO: this process and the"
                " servers it started) to keep the other tenants' load of the shared VM out of"
                " the numbers; long fills ran at nice 10.")
    except OSError:
        return "Timed phases at nice 0 (real-time priority not permitted)."


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def open_store(kind: str, where: Path, redis_url: str, prefix: str) -> Any:
    big = 1 << 40  # no eviction while measuring
    if kind == "memory":
        from reprise.store.memory import MemoryStore

        return MemoryStore(DIM, big)
    if kind == "sqlite":
        from reprise.store.sqlite import SQLiteStore

        return SQLiteStore(where / "cache.sqlite3", DIM, big)
    from reprise.store.redis import RedisStore

    return RedisStore(redis_url, DIM, big, prefix=prefix)


def redis_used_memory(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


async def fill(store: Any, n: int, vectors: Vectors, inflight: int) -> float:
    """Insert n entries through ``Store.put``; returns seconds spent."""
    t0 = time.perf_counter()
    now = time.time()
    for start in range(0, n, CHUNK):
        vecs = vectors.chunk(n, start)
        entries = [
            CacheEntry(key=f"k{start + i}", namespace=NS, fingerprint=FP,
                       question=stored_question(start + i), response=BODY, vector=vecs[i],
                       created_at=now, prompt_tokens=20, completion_tokens=40)
            for i in range(len(vecs))
        ]
        for b in range(0, len(entries), inflight):
            await asyncio.gather(*(store.put(e) for e in entries[b : b + inflight]))
        if n >= 100_000:
            print(f"    {start + len(vecs):,}/{n:,} inserted", file=sys.stderr, flush=True)
    return time.perf_counter() - t0


async def bulk_fill_sqlite(path: Path, n: int, vectors: Vectors) -> float:
    """Load rows straight into the SQLite store's table, in the layout ``SQLiteStore.put``
    writes (one transaction per 10k rows instead of one per entry); returns rows/s. Used
    for the ≥100k stores only: ``put`` throughput is measured at the smaller sizes, and a
    million single-row transactions on the shared VM would take hours. The store then
    builds its index from these rows exactly as it does after a restart."""
    import sqlite3

    from reprise.store.sqlite import SQLiteStore

    store = SQLiteStore(path, DIM, 1 << 40)
    await store.ping()  # creates the schema and records the dimension
    await store.close()
    t0 = time.perf_counter()
    now = time.time()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        for start in range(0, n, CHUNK):
            vecs = vectors.chunk(n, start)
            rows = []
            for i, v in enumerate(vecs):
                q = stored_question(start + i)
                size = len(BODY) + len(q.encode()) + v.nbytes + 256  # CacheEntry.size_bytes
                rows.append((NS, f"k{start + i}", FP, q, BODY, "", v.tobytes(), now, None, 0,
                             now, 20, 40, size))
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO entries (namespace, key, fingerprint, question, response, model,"
                " vector, created_at, expires_at, hits, last_access, prompt_tokens,"
                " completion_tokens, size) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            db.execute("INSERT INTO partitions VALUES (?, ?, 1) ON CONFLICT(namespace,"
                       " fingerprint) DO UPDATE SET generation = generation + 1", (NS, FP))
            db.execute("COMMIT")
            if (start // CHUNK) % 10 == 9:
                print(f"    {start + len(vecs):,}/{n:,} loaded", file=sys.stderr, flush=True)
    finally:
        db.close()
    return n / (time.perf_counter() - t0)


def semantic_lookup(store: Any) -> Any:
    """The production lookup (guards + verifier) around ``store``, or None if the verifier
    cannot load (then only the search is measured)."""
    from reprise.components import build_semantic
    from reprise.config import Settings

    # The gateway's own wiring; no embedder runs (vectors are given).
    try:
        return build_semantic(Settings(), store, None)  # type: ignore[arg-type]
    except (OSError, ValueError) as exc:
        print(f"  verifier unavailable, lookup column skipped: {exc}", file=sys.stderr)
        return None


async def timed_searches(store: Any, targets: np.ndarray,
                         qs: list[np.ndarray]) -> tuple[list[float], int]:
    """Every query once: its latency, and how many found the entry it was made from first."""
    lat, correct = [], 0
    for t, q in zip(targets, qs, strict=True):
        t0 = time.perf_counter()
        hits = await store.search(NS, FP, q, K)
        lat.append(time.perf_counter() - t0)
        correct += bool(hits) and hits[0].entry.key == f"k{int(t)}"
    return lat, correct


def store_dir(kind: str, n: int, args: argparse.Namespace) -> tuple[Path, bool]:
    """Where the store lives; True when it is a kept, already filled one."""
    if kind == "sqlite" and n >= KEEP_FROM and not args.no_keep:
        d = CACHE / f"lookup-{kind}-{args.vectors}-{n}-s{args.seed}"
        if d.exists() and not (d / "filled.json").exists():
            shutil.rmtree(d)  # an interrupted fill: start over
        return d, (d / "filled.json").exists()
    return Path(tempfile.mkdtemp(prefix="reprise-bench-")), False


async def measure(kind: str, n: int, args: argparse.Namespace, redis_url: str,
                  vectors: Vectors, pids: tuple[int, ...]) -> Row:
    where, filled = store_dir(kind, n, args)
    kept = where.parent == CACHE
    # A kept store whose saved index is of an older layout (or missing) is re-indexed from
    # its rows: that first search is the build, timed like a fresh fill's.
    reindex = filled and not any((where / "cache.index").glob("*.vectors.npz"))
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    store = open_store(kind, where, redis_url, prefix)
    try:
        mem0 = redis_used_memory(redis_url) if kind == "redis" else rss_bytes()
        priority(10, *pids)
        build_s = None
        if filled:
            info = json.loads((where / "filled.json").read_text())
            rate, build_s = float(info["insert_per_s"]), float(info["build_s"])
            if reindex:
                filled = False
        elif kept:
            await store.close()
            rate = -await bulk_fill_sqlite(where / "cache.sqlite3", n, vectors)  # < 0: bulk
            store = open_store(kind, where, redis_url, prefix)
        else:
            inflight = 64 if kind == "redis" else 1
            rate = n / await fill(store, n, vectors, inflight)

        rng = np.random.default_rng(args.seed + 1)
        targets = rng.choice(n, size=args.queries, replace=n < args.queries)
        stored = vectors.rows(n, targets)
        qs = [unit(stored[i] + rng.standard_normal(DIM).astype(np.float32) * 0.01)
              for i in range(len(targets))]
        mem_before_index = redis_used_memory(redis_url) if kind == "redis" else rss_bytes()

        priority(args.build_nice, *pids)
        t0 = time.perf_counter()  # the embedded stores build (or load) the partition here
        await store.search(NS, FP, qs[0], K)
        first = time.perf_counter() - t0
        if kept and not filled:
            # Persist the built index with the rows, so a rerun loads instead of rebuilding.
            await store.close()
            build_s = first
            (where / "filled.json").write_text(json.dumps(
                {"insert_per_s": rate, "build_s": first, "n": n}))
            store = open_store(kind, where, redis_url, prefix)
            t0 = time.perf_counter()
            await store.search(NS, FP, qs[0], K)
            first = time.perf_counter() - t0
        priority(0, *pids)
        for q in qs[:50]:  # warm caches
            await store.search(NS, FP, q, K)
        lat, correct = await timed_searches(store, targets, qs)
        part = store._index.partition((NS, FP)) if kind in ("sqlite", "memory") else None
        if part is not None and part.is_hnsw and args.ef_sweep:
            for ef in (int(x) for x in args.ef_sweep.split(",")):
                part.expansion_search = ef
                slat, ok = await timed_searches(store, targets, qs)
                a = np.array(slat) * 1000
                SWEEP.append((n, ef, float(np.percentile(a, 50)), float(np.percentile(a, 99)),
                              ok / len(qs)))
            part.expansion_search = None
        if kind == "redis" and args.ef_sweep:
            default = store.hnsw
            for ef in (int(x) for x in args.ef_sweep.split(",")):
                store.hnsw = (default[0], default[1], ef)
                slat, ok = await timed_searches(store, targets, qs)
                a = np.array(slat) * 1000
                SWEEP.append((n, ef, float(np.percentile(a, 50)), float(np.percentile(a, 99)),
                              ok / len(qs)))
            store.hnsw = default
        lookup = semantic_lookup(store)
        llat: list[float] = []
        if lookup is not None:
            served = 0
            for t, q in zip(targets, qs, strict=True):
                t0 = time.perf_counter()
                match = (await lookup.find(NS, FP, asked_question(int(t)), q)).match
                llat.append(time.perf_counter() - t0)
                served += match is not None and match.entry.key == f"k{int(t)}"
            print(f"  lookup served the right entry for {served}/{len(qs)} queries",
                  file=sys.stderr)
        priority(10, *pids)
        mem1 = redis_used_memory(redis_url) if kind == "redis" else rss_bytes()
        index_bytes = None
        if kind in ("sqlite", "memory"):
            index_bytes = store._index.memory_bytes() / n
        disk = dir_bytes(where) / n if kind == "sqlite" else None
        # Embedded stores: the process growth while building/loading the index (the rows
        # live on disk for SQLite); Redis: the server's growth for rows + index.
        mem = (mem1 - mem0) / n if kind != "sqlite" else (mem1 - mem_before_index) / n
        arr = np.array(lat) * 1000
        larr = np.array(llat) * 1000 if llat else None
        return Row(n, rate, first, float(np.percentile(arr, 50)), float(np.percentile(arr, 99)),
                   None if larr is None else float(np.percentile(larr, 50)),
                   None if larr is None else float(np.percentile(larr, 99)),
                   correct / len(qs), mem, index_bytes, disk, build_s)
    finally:
        if kind == "redis":
            await store.clear()
        await store.close()
        if not kept:
            shutil.rmtree(where, ignore_errors=True)


def machine_note() -> str:
    load = os.getloadavg()[0]
    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other engineers"
            f" (load average {load:.1f} at the end of the run: timings are noisy, p99 most of"
            f" all), CPython {platform.python_version()}. Run {time.strftime('%Y-%m-%d %H:%M')}."
            f" {realtime_note()}")


def insert_rate(rate: float) -> str:
    """Rows/s through ``Store.put``, or ``bulk`` (with its rate) for the bulk-loaded stores."""
    return f"{rate:,.0f}" if rate >= 0 else f"bulk ({-rate:,.0f})"


def index_table(kind: str, rows: list[Row], args: argparse.Namespace) -> str:
    head = ("| entries (1 partition) | insert /s | first search s | search p50 ms |"
            " search p99 ms | lookup p50 ms | lookup p99 ms | recall@1 | memory B/entry |"
            " index B/entry | disk B/entry |")
    lines = [head, "|" + "---:|" * 11]

    def opt(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    for r in rows:
        lines.append(
            f"| {r.n:,} | {insert_rate(r.insert_per_s)} | {r.first_search_s:.2f} | {r.p50_ms:.3f} |"
            f" {r.p99_ms:.3f} | {opt(r.lookup_p50_ms, '.3f')} | {opt(r.lookup_p99_ms, '.3f')} |"
            f" {r.recall1:.3f} | {r.mem_per_entry:,.0f} | {opt(r.index_per_entry, ',.0f')} |"
            f" {opt(r.disk_per_entry, ',.0f')} |"
        )
    verdict = ""
    by_n = {r.n: r for r in rows}
    if 100_000 in by_n:
        ok = by_n[100_000].p99_ms <= 2.0
        verdict += f"\n- target search p99 ≤ 2 ms at 100k: **{'met' if ok else 'MISSED'}**"
        verdict += f" ({by_n[100_000].p99_ms:.3f} ms)"
    if len(rows) > 1:
        growth = rows[-1].p99_ms / rows[0].p99_ms
        verdict += (f"\n- search p99 growth {rows[0].n:,} → {rows[-1].n:,}: ×{growth:.2f}"
                    f" (target ≤ ×2: **{'met' if growth <= 2 else 'MISSED'}**)")
        g50 = rows[-1].p50_ms / rows[0].p50_ms
        verdict += f"; p50 growth ×{g50:.2f}"
    builds = [f"{r.n:,}: {r.build_s:,.0f} s" for r in rows if r.build_s is not None]
    if builds:
        verdict += ("\n- index build from the rows when the kept stores were filled (niced,"
                    " shared VM): " + ", ".join(builds) + "; *first search* above is the"
                    " restart path (saved index memory-loaded)")
    sweep = merged_sweep(kind, args)
    if sweep:
        knob = ("EF_RUNTIME" if kind == "redis" else "expansion_search")
        where = ("only partitions above `exact_below` walk the graph" if kind == "redis" else
                 "the graph's breadth; the default grows with the partition, see"
                 " `PartitionIndex._ef`")
        verdict += (f"\n\n{knob} sweep (same queries; {where}):\n\n| entries | {knob} |"
                    " search p50 ms | search p99 ms | recall@1 |\n|---:|---:|---:|---:|---:|\n")
        verdict += "\n".join(f"| {n:,} | {ef} | {p50:.3f} | {p99:.3f} | {r:.3f} |"
                              for n, ef, p50, p99, r in sweep) + "\n"
    what = {"use": "vectors with the spectrum of real USE question embeddings",
            "random": "isotropic random unit vectors (adversarial worst case)"}[args.vectors]
    return (
        f"Store `{kind}`, {what}, dim {DIM}, all entries in ONE partition, k={K},"
        f" {args.queries} sequential queries (a stored vector + 1% noise); embedding excluded."
        " *search* = `Store.search`; *lookup* = search + guards + verifier"
        " (`SemanticLookup.find`, the gateway's wiring without the verifier's e5 pass, which"
        " the gateway runs beside the USE pass: candidates whose verdict needs e5 are then"
        " judged at its lowest value, so these synthetic pairs are timed through the whole"
        " judgement and rejected). *first search* = building the partition index from the"
        " rows (or loading it from disk for the kept ≥100k SQLite stores). *memory* ="
        + (" process RSS growth from building/loading the index (rows stay on disk);"
           if kind == "sqlite" else " Redis `used_memory` growth (rows + index + bookkeeping);"
           if kind == "redis" else " process RSS growth;")
        + " *index* = the vector index alone.\n" + machine_note() + "\n\n"
        + "\n".join(lines) + "\n" + verdict + "\n"
    )


# ------------------------------------------------------------------------------ processes
def start_redis() -> Any:
    from reprise.services.redis_stack import start_server

    return start_server(ROOT / ".cache" / "redis-stack")


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], ready: str, log: Path) -> None:
        self.ready, self.log = ready, log
        with open(log, "ab") as fh:
            self.p = subprocess.Popen(argv, env={**os.environ, **env}, stdout=fh,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 240) -> Proc:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.p.args!r} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.ready, timeout=2).status_code == 200:
                    return self
            time.sleep(0.25)
        raise RuntimeError(f"not ready: {self.ready}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()


def free_port() -> int:
    from reprise.testing.upstream import free_port as fp

    return fp()


@contextlib.contextmanager
def stack(store: str, replicas: int, tmp: Path, pids: list[int] | None = None) -> Iterator[
        list[int]]:
    """Fake upstream (no latency) + ``replicas`` gateway processes; yields their ports (and
    fills ``pids`` with every process id, Redis included, for ``priority``)."""
    procs: list[Proc] = []
    redis = None
    try:
        up_port = free_port()
        procs.append(Proc([sys.executable, "-m", "reprise.testing.upstream", "--port",
                           str(up_port)], {}, f"http://127.0.0.1:{up_port}/v1/models",
                          tmp / "upstream.log").wait_ready())
        env = {"REPRISE_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
               "REPRISE_UPSTREAM_MODEL": "fake-model", "REPRISE_STORE": store,
               "REPRISE_EMBEDDER": "use", "REPRISE_RAG_EMBEDDER": "use",
               "REPRISE_LOG_LEVEL": "warning", "REPRISE_JSON_LOGS": "false"}
        if store == "redis":
            redis = start_redis()
            env["REPRISE_REDIS_URL"] = redis.url
        ports = []
        for i in range(replicas):
            port = free_port()
            d = tmp / f"gw{i}"
            d.mkdir(parents=True, exist_ok=True)
            procs.append(Proc([sys.executable, "-m", "reprise.cli", "serve", "--port", str(port)],
                              {**env, "REPRISE_DATA_DIR": str(d)},
                              f"http://127.0.0.1:{port}/healthz", tmp / f"gw{i}.log"))
            ports.append(port)
        for p in procs[1:]:
            p.wait_ready()
        if pids is not None:
            pids += [p.p.pid for p in procs]
            if redis is not None and redis._proc is not None:
                pids.append(redis._proc.pid)
        yield ports
    finally:
        for p in reversed(procs):
            p.stop()
        if redis is not None:
            redis.close()


def chat_body(question: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": "fake-model", "stream": stream,
                         "messages": [{"role": "user", "content": question}]})


async def sequential(port: int, questions: list[str], headers: dict[str, str],
                     timings: list[dict[str, float]] | None = None) -> list[tuple[float, str]]:
    """(latency ms, X-Reprise-Cache) per request, one keep-alive connection; the gateway's
    Server-Timing phases are appended to ``timings``, with the stage that decided the
    semantic lookup (``X-Reprise-Lookup``: ``verifier``, ``rule``, ...) under ``"stage"``."""
    timings = [] if timings is None else timings
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for q in questions:
            payload = encode_post("127.0.0.1", port, "/v1/chat/completions", chat_body(q),
                                  headers)
            t0 = time.perf_counter()
            writer.write(payload)
            status, hdrs, _ = await _read_response(reader)
            out.append(((time.perf_counter() - t0) * 1000,
                        hdrs.get("x-reprise-cache", "-") if status == 200 else f"{status}"))
            phase = server_timing(hdrs.get("server-timing", ""))
            stage = hdrs.get("x-reprise-lookup", "").split(";")[0]
            timings.append({**phase, "stage": float(STAGES.index(stage))
                            if stage in STAGES else -1.0})
    finally:
        writer.close()
    return out


STAGES = ("verifier", "rule")  # semantic hits by what accepted them (X-Reprise-Lookup)
PARAPHRASES = [
    ("How do I reset the password of account {i}?", "How can I reset the password of account {i}"),
    ("What is the refund policy for order {i}?", "What's the refund policy for order {i}?"),
    ("How do I export report number {i} to PDF?", "How can I export report number {i} to PDF"),
    ("How do I cancel subscription {i}?", "What's the way to cancel subscription {i}?"),
    ("Where can I download the invoices of customer {i}?",
     "Where do I find the invoices of customer {i} to download?"),
]


def paraphrase_pairs(n: int) -> list[tuple[str, str]]:
    """Distinct texts (a plain number in each: ids like "3f9a-17" read as noise to the
    cross-encoder, which then rejects most pairs and leaves no hit to time)."""
    out = []
    for i in range(n):
        a, b = PARAPHRASES[i % len(PARAPHRASES)]
        out.append((a.format(i=100 + i), b.format(i=100 + i)))
    return out


def gateway_run(args: argparse.Namespace) -> str:
    n = args.gateway_requests
    tmp = Path(tempfile.mkdtemp(prefix="reprise-bench-gw-"))
    try:
        pids: list[int] = []
        with stack(args.store, 1, tmp, pids) as (port,):
            pairs = paraphrase_pairs(n)
            h = {"X-Reprise-Namespace": f"bench-gw-{uuid.uuid4().hex[:6]}"}
            priority(0, 0, *pids)
            try:
                fill_res = asyncio.run(sequential(port, [a for a, _ in pairs], h))
                time.sleep(3.0)  # let the fill's background writes (hit counts) settle
                phases: list[dict[str, float]] = []
                res = asyncio.run(sequential(port, [b for _, b in pairs], h, phases))
                exact = asyncio.run(sequential(port, [a for a, _ in pairs], h))
            finally:
                priority(10, 0, *pids)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sem = [ms for ms, tier in res if tier == "semantic"]
    by_stage = {st: [ms for (ms, tier), t in zip(res, phases, strict=True)
                     if tier == "semantic" and t.get("stage") == float(i)]
                for i, st in enumerate(STAGES)}
    tiers: dict[str, int] = {}
    for _, tier in res:
        tiers[tier] = tiers.get(tier, 0) + 1
    miss = [ms for ms, tier in fill_res if tier == "miss"]
    ex = [ms for ms, tier in exact if tier == "exact"]

    def row(name: str, v: list[float], note: str) -> str:
        return f"| {name} | {len(v)} | {percentile(v, 50):.2f} | {percentile(v, 99):.2f} | {note} |"

    p50 = percentile(sem, 50)
    lines = [
        f"Gateway `reprise serve` (store `{args.store}`, USE embedder, guards + verifier on) and"
        " the test upstream (no latency) as separate processes on loopback; sequential"
        " requests over one keep-alive connection. Each paraphrase is a new text (no embedding"
        " reuse). " + machine_note(), "",
        "| request | n | p50 ms | p99 ms | notes |", "| --- | ---: | ---: | ---: | --- |",
        row("miss (stores the answer, embeds once)", miss, "upstream answers at once"),
        row("**semantic hit**", sem,
            f"target p50 ≤ 20 ms: **{'met' if p50 <= 20 else 'MISSED'}**; tiers {tiers}"),
        row("semantic hit accepted by the cross-encoder", by_stage["verifier"],
            "USE pass, search, guards, one cross-encoder pair"),
        row("semantic hit accepted by a rule", by_stage["rule"],
            "same question / same explain-request: no model pass"),
        row("exact hit", ex, "no embedding"),
        "",
        "Inside the gateway on the semantic hits (its `Server-Timing` header): "
        + ", ".join(f"{name} p50 {percentile([t[name] for t in phases if name in t], 50):.2f} ms"
                    for name in ("exact", "embed", "semantic")
                    if any(name in t for t in phases))
        + ". *embed* is the USE pass; *semantic* is the index search, guards and the"
        " cross-encoder where the guards leave a candidate open. The paraphrases the"
        " cross-encoder rejects are misses here (its quality is `semantic.md`'s subject).",
    ]
    return "\n".join(lines) + "\n"


async def _load_two(ports: list[int], payloads: list[bytes], concurrency: int,
                    total: int) -> tuple[float, list[float], int, dict[str, int]]:
    per = max(1, concurrency // len(ports))
    t0 = time.perf_counter()
    results = await asyncio.gather(*(
        run_load("127.0.0.1", p, [re.sub(rb"Host: 127.0.0.1:\d+", f"Host: 127.0.0.1:{p}".encode(),
                                         x) for x in payloads],
                 concurrency=per, total=total // len(ports)) for p in ports))
    seconds = time.perf_counter() - t0
    lat = [v for r in results for v in r.latencies_ms]
    tiers: dict[str, int] = {}
    for r in results:
        for k, v in r.tiers.items():
            tiers[k] = tiers.get(k, 0) + v
    return seconds, lat, sum(r.errors for r in results), tiers


def replicas_run(args: argparse.Namespace) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="reprise-bench-rep-"))
    rows = []
    try:
        pids: list[int] = []
        # Nice 0, never real-time here: several multi-threaded gateway processes under
        # sustained load at SCHED_FIFO would take both cores from everyone else.
        REALTIME["on"] = False
        with stack("redis", args.replicas, tmp, pids) as ports:
            priority(0, 0, *pids)
            pairs = paraphrase_pairs(400)
            h = {"X-Reprise-Namespace": f"bench-rep-{uuid.uuid4().hex[:6]}"}
            asyncio.run(sequential(ports[0], [a for a, _ in pairs], h))  # stored via replica 1
            exact = [encode_post("127.0.0.1", ports[0], "/v1/chat/completions", chat_body(a), h)
                     for a, _ in pairs]
            for label, targets, total in (("exact hits, 1 process", ports[:1], args.tput_exact),
                                          (f"exact hits, {len(ports)} processes", ports,
                                           args.tput_exact)):
                s, lat, errors, tiers = asyncio.run(_load_two(targets, exact, 32, total))
                rows.append((label, total / s, lat, errors, tiers))
            n_sem = args.tput_semantic
            for label, targets, part in (("semantic hits, 1 process", ports[:1],
                                          pairs[:n_sem]),
                                         (f"semantic hits, {len(ports)} processes", ports,
                                          pairs[200:200 + n_sem])):
                # A paraphrase never asked before per request: each one embeds and searches.
                sem = [encode_post("127.0.0.1", ports[0], "/v1/chat/completions", chat_body(b), h)
                       for _, b in part]
                s, lat, errors, tiers = asyncio.run(_load_two(targets, sem, 8, len(sem)))
                rows.append((label, len(sem) / s, lat, errors, tiers))
            priority(10, 0, *pids)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"{args.replicas} gateway processes (`reprise serve`, store `redis`, USE embedder) share"
        " one Redis Stack server; the answers were stored through the first process only."
        " Load: keep-alive raw HTTP (bench/_load.py), connections split evenly over the"
        " processes (32 for exact hits, 8 for semantic hits). All processes, Redis and the"
        " load client share the same 2 cores, so more processes cannot add CPU here: the"
        " run shows that replicas serve each other's entries under load without errors, not"
        " how throughput scales on more cores. " + machine_note(), "",
        "| load | req/s | p50 ms | p99 ms | errors | tiers |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, rps, lat, errors, tiers in rows:
        lines.append(f"| {label} | {rps:,.0f} | {percentile(lat, 50):.2f} |"
                     f" {percentile(lat, 99):.2f} | {errors} | {tiers} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ results
def upsert_section(path: Path, name: str, title: str, body: str) -> None:
    """Replace (or append) one named section, so each run updates only its own table."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = path.read_text() if path.exists() else "# Semantic lookup latency\n"
    block = f"{begin}\n## {title}\n\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def merged_rows(kind: str, args: argparse.Namespace, rows: list[Row]) -> list[Row]:
    """Rows of this run plus those of earlier runs of the same store and vectors (kept in
    ``.cache/bench``), so the 1M row measured in its own long run joins the small ones."""
    path = CACHE / f"rows-{kind}-{args.vectors}.json"
    known: dict[int, dict[str, Any]] = {}
    if path.exists():
        known = {int(k): v for k, v in json.loads(path.read_text()).items()}
    for r in rows:
        known[r.n] = asdict(r)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=1))
    return [Row(**known[n]) for n in sorted(known)]


def merged_sweep(kind: str, args: argparse.Namespace) -> list[tuple[int, int, float, float,
                                                                    float]]:
    """This run's ef sweep plus earlier runs' (same store and vectors), by (entries, ef)."""
    path = CACHE / f"sweep-{kind}-{args.vectors}.json"
    known: dict[str, list[float]] = json.loads(path.read_text()) if path.exists() else {}
    for n, ef, p50, p99, r in SWEEP:
        known[f"{n}:{ef}"] = [n, ef, p50, p99, r]
    if SWEEP:
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
    return sorted((int(v[0]), int(v[1]), v[2], v[3], v[4]) for v in known.values())


async def index_run(args: argparse.Namespace) -> str:
    # "none": only re-render the table from the rows kept by earlier runs.
    sizes = [] if args.sizes == "none" else [int(s) for s in args.sizes.split(",")]
    server = None
    redis_url = args.redis_url
    if args.store == "redis" and not redis_url and sizes:
        server = start_redis()
        redis_url = server.url
    vectors = Vectors(args.vectors, args.seed)
    pids: tuple[int, ...] = (0,)
    if server is not None and server._proc is not None:
        pids = (0, server._proc.pid)
    rows: list[Row] = []
    try:
        for n in sizes:
            print(f"{args.store}: {n:,} entries …", file=sys.stderr, flush=True)
            row = await measure(args.store, n, args, redis_url, vectors, pids)
            print(f"  {asdict(row)}", file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        if server is not None:
            server.close()
    return index_table(args.store, merged_rows(args.store, args, rows), args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "memory", "redis"], default="sqlite")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated entry counts (default 1k..1M, redis 1k..100k)")
    parser.add_argument("--vectors", choices=["use", "random"], default="use")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--redis-url", default="", help="use this server instead of starting one")
    parser.add_argument("--no-keep", action="store_true",
                        help="do not keep/reuse large filled stores under .cache/bench")
    parser.add_argument("--gateway", action="store_true", help="whole semantic hit over HTTP")
    parser.add_argument("--gateway-requests", type=int, default=300)
    parser.add_argument("--replicas", type=int, default=0, help="N-process throughput (redis)")
    parser.add_argument("--tput-exact", type=int, default=6000)
    parser.add_argument("--tput-semantic", type=int, default=200, help="≤ 200")
    parser.add_argument("--ef-sweep", default="",
                        help="redis: also measure these EF_RUNTIME values, e.g. 32,64,128")
    parser.add_argument("--build-nice", type=int, default=10,
                        help="niceness while the embedded stores build their index")
    parser.add_argument("--no-realtime", action="store_true",
                        help="time at nice 0 instead of real-time priority")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    REALTIME["on"] = not args.no_realtime
    if args.sizes is None:
        args.sizes = "1000,10000,100000" if args.store == "redis" else "1000,10000,100000,1000000"
    redis_file = args.store == "redis" or args.replicas
    out = args.out or RESULTS / ("redis.md" if redis_file else "lookup.md")
    if args.replicas:
        md = replicas_run(args)
        name, title = "replicas", f"Throughput: {args.replicas} replicas sharing one Redis"
    elif args.gateway:
        md = gateway_run(args)
        name = f"gateway-{args.store}"
        title = f"Whole semantic hit through the gateway ({args.store})"
    else:
        md = asyncio.run(index_run(args))
        name = f"index-{args.store}-{args.vectors}"
        title = f"Index search and lookup: {args.store}, {args.vectors} vectors"
    print(md)
    upsert_section(out, name, title, md)


if __name__ == "__main__":
    main()
