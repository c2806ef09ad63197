"""Prefix-aware routing vs round robin vs least busy, over two real llama.cpp replicas.

Starts two llama.cpp servers (llama-cpp-python with SmolLM2-135M, one thread each, its RAM
prompt cache on) on loopback and, for each routing policy, a Reprise gateway in this process
with both as `REPRISE_UPSTREAM_REPLICAS` (memory store, semantic tier off: every request is a
miss, which is what reaches a replica). The servers are restarted before each policy so no
policy inherits another's warm caches. Workloads, streamed, temperature 0:

* **multi-turn**: conversations, each over its own ~350-token context, several turns each;
  every turn repeats the earlier ones with the model's real answers. `--concurrency`
  conversations run at once.
* **rag**: questions about two documents; each question's sources are 5 of its document's 8
  passages (4 that every question retrieves, 1 that varies, in a random score order),
  packed with `reprise.rag.answer` (document order). Run once more with prefix routing and
  the sources in score order (the prompt layout before issue 21) to measure item 3.
* **kill**: the multi-turn workload with prefix routing, one replica SIGKILLed once a third
  of the requests have finished; every request must still succeed.

Time to first token (first content token at the client, through the gateway) p50/p99,
throughput (requests/s over the run), and prompt tokens the replicas reused, read from their
logs ("N prefix-match hit, remaining M prompt tokens to eval": llama-cpp-python reports no
reuse figure in its responses). Writes bench/results/prefix_routing.md.

    nice -n 5 python bench/prefix_routing.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from _load import percentile
from reprise.api.app import create_app
from reprise.components import build_components
from reprise.config import Settings
from reprise.rag.answer import grounded_messages, pack_sources
from reprise.rag.tokens import count_tokens
from reprise.runtime import limit_native_threads
from reprise.services.llama_server import MODEL_ALIAS, llama_server
from reprise.services.processes import ManagedProcess
from reprise.testing.upstream import ServerThread, free_port

RESULTS = Path(__file__).parent / "results"
WORDS = ("ledger replica quorum tenant invoice shipment warranty clause harbour audit "
         "vessel cargo voltage turbine sensor reactor orbit module payload crater glacier "
         "delta basin ridge canal budget grant survey patient dosage trial enzyme protein "
         "market tariff export credit bond yield pension rental lease deposit penalty "
         "archive library manuscript verse chapter author editor printer courier route").split()
_REUSE = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens")


def prose(rng: random.Random, chars: int, topic: str) -> str:
    out: list[str] = []
    size = 0
    n = 0
    while size < chars:
        n += 1
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14)))
        sentence = f"{topic} note {n}: the {words}."
        out.append(sentence)
        size += len(sentence) + 1
    return " ".join(out)


@dataclass
class Result:
    ttft_ms: list[float] = field(default_factory=list)
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0
    reused: int = 0
    computed: int = 0
    routed: dict[str, int] = field(default_factory=dict)
    failovers: int = 0
    resumed: int = 0

    def row(self, name: str, policy: str) -> str:
        p50 = percentile(self.ttft_ms, 50) / 1000 if self.ttft_ms else float("nan")
        p99 = percentile(self.ttft_ms, 99) / 1000 if self.ttft_ms else float("nan")
        share = self.reused / max(1, self.reused + self.computed)
        routes = ", ".join(f"{k} {v}" for k, v in sorted(self.routed.items()))
        if self.failovers:
            routes += (f"; {self.failovers} failed over, {self.resumed} of them resumed "
                       "mid-answer")
        return (f"| {name} | {policy} | {self.requests} | {self.failed} | {p50:.2f} | "
                f"{p99:.2f} | {self.requests / self.seconds:.3f} | {self.seconds:.1f} | "
                f"{self.reused:,} / {self.reused + self.computed:,} ({share:.0%}) | {routes} |")


async def stream_one(client: httpx.AsyncClient, messages: list[dict[str, Any]],
                     max_tokens: int, result: Result) -> str | None:
    """One streamed request; its TTFT is recorded, its answer returned (None: failed)."""
    body = {"model": "default", "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    finished = False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = orjson.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(str(chunk["error"])[:200])
                for ch in chunk.get("choices") or []:
                    piece = (ch.get("delta") or {}).get("content")
                    if piece and first is None:
                        first = time.perf_counter()
                    text.append(piece or "")
                    finished = finished or bool(ch.get("finish_reason"))
        if not finished:
            raise RuntimeError("stream ended without finish_reason")
    except (httpx.HTTPError, RuntimeError) as exc:
        result.failed += 1
        result.errors.append(f"{type(exc).__name__}: {exc}"[:200])
        return None
    finally:
        result.requests += 1
    result.ttft_ms.append(((first or time.perf_counter()) - started) * 1000)
    return "".join(text)


def conversations(seed: int, n: int, context_chars: int) -> list[str]:
    rng = random.Random(seed)
    return [f"You are the assistant for case file {i}. Case file {i}:\n"
            + prose(rng, context_chars, f"File {i}") for i in range(n)]


async def multi_turn(client: httpx.AsyncClient, contexts: list[str], turns: int,
                     concurrency: int, max_tokens: int, result: Result,
                     on_progress: Any = None) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(contexts)):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            messages: list[dict[str, Any]] = [{"role": "system", "content": contexts[i]}]
            for t in range(turns):
                messages.append({"role": "user",
                                 "content": f"Question {t + 1} about file {i}: what does "
                                            f"note {t + 2} say?"})
                answer = await stream_one(client, messages, max_tokens, result)
                if on_progress is not None:
                    on_progress()
                messages.append({"role": "assistant", "content": answer or "(no answer)"})

    await asyncio.gather(*(worker() for _ in range(concurrency)))


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    doc_id: str
    page: int
    text: str
    score: float


def rag_requests(seed: int, per_doc: int, passage_chars: int,
                 doc_order: bool) -> list[list[dict[str, Any]]]:
    """Grounded message lists, questions of both documents interleaved."""
    rng = random.Random(seed)
    docs = {f"doc{d}": [Passage(f"doc{d}:{k}", f"doc{d}", 1 + k // 3, prose(
        rng, passage_chars, f"Manual {d} section {k}"), 0.0) for k in range(8)]
        for d in (1, 2)}
    names = {"doc1": "pump-manual.pdf", "doc2": "lease-contract.pdf"}
    out: list[list[dict[str, Any]]] = []
    for q in range(per_doc):
        for doc_id, passages in docs.items():
            core, rest = passages[:4], passages[4:]
            chosen = [*core, rng.choice(rest)]
            rng.shuffle(chosen)  # the score order differs from question to question
            scored = [Passage(p.chunk_id, p.doc_id, p.page, p.text, 1.0 - i / 10)
                      for i, p in enumerate(chosen)]
            question = {"role": "user", "content": f"Question {q} about {names[doc_id]}: "
                                                   f"what do the sources say about it?"}
            if doc_order:
                sources, _ = pack_sources(scored, names, 4000, count_tokens)
            else:  # the layout before issue 21: best score first
                sources = "\n".join(f"[{i}] ({names[p.doc_id]}, page {p.page})\n{p.text}\n"
                                    for i, p in enumerate(scored, start=1))
            out.append(grounded_messages([question], sources))
    # Questions about either document arrive in any order (interleaved, round robin over two
    # replicas would keep each document on one replica by accident).
    random.Random(seed + 1).shuffle(out)
    return out


async def rag(client: httpx.AsyncClient, requests: list[list[dict[str, Any]]],
              concurrency: int, max_tokens: int, result: Result) -> None:
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)

    async def worker() -> None:
        while not queue.empty():
            await stream_one(client, queue.get_nowait(), max_tokens, result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class Replicas:
    def __init__(self, tmp: Path, cache_bytes: int, n_ctx: int) -> None:
        self.tmp, self.cache_bytes, self.n_ctx = tmp, cache_bytes, n_ctx
        self.procs: list[ManagedProcess] = []
        self.urls: list[str] = []
        self.logs: list[Path] = []
        self.round = 0

    def start(self) -> None:
        self.round += 1
        self.procs, self.urls, self.logs = [], [], []
        for i in range(2):
            port = free_port()
            log = self.tmp / f"llama-{self.round}-{i}.log"
            proc = llama_server(port, n_ctx=self.n_ctx, threads=1,
                                prompt_cache_bytes=self.cache_bytes, log_file=log).start()
            self.procs.append(proc)
            self.urls.append(f"http://127.0.0.1:{port}/v1")
            self.logs.append(log)
        for proc in self.procs:
            proc.wait_ready(timeout=300)

    def kill(self, i: int) -> None:
        proc = self.procs[i].proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def reuse(self) -> tuple[int, int]:
        reused = computed = 0
        for log in self.logs:
            if log.exists():
                for m in _REUSE.finditer(log.read_text(errors="replace")):
                    reused += int(m.group(1))
                    computed += int(m.group(2))
        return reused, computed


async def run_policy(replicas: Replicas, policy: str, tmp: Path, work: Any,
                     result: Result) -> None:
    settings = Settings(upstream_replicas=replicas.urls, upstream_routing=policy,
                        upstream_model=MODEL_ALIAS, store="memory", semantic_enabled=False,
                        data_dir=tmp, upstream_cooldown_seconds=5.0, log_level="warning")
    comp = build_components(settings)
    comp.router.route_listeners.append(  # type: ignore[union-attr]
        lambda name, reason, _chars: result.routed.__setitem__(
            reason, result.routed.get(reason, 0) + 1))
    server = ServerThread(create_app(settings, comp)).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            started = time.perf_counter()
            await work(client, result)
            result.seconds = time.perf_counter() - started
    finally:
        server.stop()
    assert comp.router is not None
    result.failovers, result.resumed = comp.router.failovers, comp.router.resumed
    result.reused, result.computed = replicas.reuse()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--context-chars", type=int, default=2800)
    parser.add_argument("--rag-per-doc", type=int, default=6)
    parser.add_argument("--passage-chars", type=int, default=700)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--cache-mb", type=int, default=96,
                        help="each replica's RAM prompt cache (llama-cpp-python --cache_size)")
    parser.add_argument("--policies", default="round_robin,least_busy,prefix")
    parser.add_argument("--out", default="prefix_routing.md",
                        help="file name under bench/results/")
    args = parser.parse_args()
    if args.quick:
        args.conversations, args.turns, args.rag_per_doc = 4, 3, 3
    limit_native_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="reprise-prefix-bench-"))
    replicas = Replicas(tmp, args.cache_mb << 20, n_ctx=2048)
    contexts = conversations(21, args.conversations, args.context_chars)
    policies = args.policies.split(",")
    load_before = os.getloadavg()
    rows: list[str] = []
    notes: list[str] = []
    results: dict[tuple[str, str], Result] = {}

    def record(name: str, policy: str, result: Result) -> None:
        results[(name, policy)] = result
        rows.append(result.row(name, policy))
        print(rows[-1], flush=True)
        for err in result.errors[:5]:
            print(f"  failed: {err}", flush=True)

    async def one(name: str, policy: str, work: Any) -> None:
        replicas.start()
        result = Result()
        try:
            await run_policy(replicas, policy, tmp, work, result)
        finally:
            replicas.stop()
        record(name, policy, result)

    async def everything() -> None:
        def multi(client: httpx.AsyncClient, result: Result) -> Any:
            return multi_turn(client, contexts, args.turns, args.concurrency, args.max_tokens,
                              result)

        for policy in policies:
            await one("multi-turn", policy, multi)
        rag_doc = rag_requests(7, args.rag_per_doc, args.passage_chars, doc_order=True)
        for policy in policies:
            await one("rag (document order)", policy,
                      lambda c, r: rag(c, rag_doc, args.concurrency, args.max_tokens, r))
        rag_score = rag_requests(7, args.rag_per_doc, args.passage_chars, doc_order=False)
        await one("rag (score order, before)", "prefix",
                  lambda c, r: rag(c, rag_score, args.concurrency, args.max_tokens, r))

        total = args.conversations * args.turns
        killed: list[float] = []

        def kill_multi(client: httpx.AsyncClient, result: Result) -> Any:
            def progress() -> None:
                if not killed and result.requests >= total // 3:
                    replicas.kill(1)
                    killed.append(time.perf_counter())
                    notes.append(f"Replica 2 was SIGKILLed after {result.requests} of {total} "
                                 "requests had finished.")
                    print(f"  {notes[-1]}", flush=True)

            return multi_turn(client, contexts, args.turns, args.concurrency,
                              args.max_tokens, result, on_progress=progress)

        await one("multi-turn, replica 2 killed", "prefix", kill_multi)

    asyncio.run(everything())
    load_after = os.getloadavg()

    def speedup(name: str) -> str:
        base, pref = results.get((name, "round_robin")), results.get((name, "prefix"))
        if not base or not pref or not pref.ttft_ms:
            return "n/a"
        ratio = percentile(base.ttft_ms, 50) / max(percentile(pref.ttft_ms, 50), 1e-9)
        tput = (pref.requests / pref.seconds) / (base.requests / base.seconds)
        return f"TTFT p50 {ratio:.2f}× lower, throughput {tput:.2f}× round robin's"

    header = (
        "# Prefix-aware routing over two llama.cpp replicas\n\n"
        "`bench/prefix_routing.py`"
        + (" --quick" if args.quick else "") + ": two llama-cpp-python servers (SmolLM2-135M, "
        f"1 thread each, RAM prompt cache {args.cache_mb} MB each, restarted before every "
        "row) behind the Reprise gateway on loopback; streamed, temperature 0, "
        f"max_tokens {args.max_tokens}, concurrency {args.concurrency}. Multi-turn: "
        f"{args.conversations} conversations × {args.turns} turns over their own "
        f"~{args.context_chars}-character context. RAG: {args.rag_per_doc} questions per "
        "document × 2 documents, 5 of 8 passages each "
        f"(~{args.passage_chars} characters per passage).\n\n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"shared with other engineers' jobs: load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after. Rows ran one after another, so they did not all see the "
        "same load.\n\n"
        "Reused prompt tokens are the replicas' own count from their logs (llama-cpp-python "
        "puts no reuse figure in its responses).\n\n"
        "| workload | routing | requests | failed | TTFT p50 s | TTFT p99 s | req/s | "
        "seconds | prompt tokens reused / processed | routed by |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    summary = (f"\n{' '.join(notes)}\n\nMulti-turn, prefix vs round robin: "
               f"{speedup('multi-turn')}.\n"
               f"RAG (document order), prefix vs round robin: "
               f"{speedup('rag (document order)')}.\n")
    text = header + "\n".join(rows) + "\n" + summary
    print(summary)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / args.out
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
