"""Reprise against LiteLLM's proxy with its Redis semantic cache: same workload, one run.

What a user would otherwise deploy for "an OpenAI-compatible gateway with a semantic cache"
is LiteLLM's proxy with ``cache_params.type: redis-semantic``. Both gateways here get:

* the same test model server (``reprise.testing.upstream``, first token after
  ``--latency`` s), which answers "Answer #N to: <question>" with N counting its calls;
* the same Redis Stack server (the project's ``reprise.services.redis_stack``);
* the same embedding model: Reprise's embeddings role (``reprise serve --role embeddings``,
  USE) serves both (Reprise's gateway through ``REPRISE_EMBEDDER=remote``, LiteLLM through
  an OpenAI-compatible embedding deployment);
* one gateway process each, and the same seeded request sequence from ``load.py``'s
  workload: repeats, paraphrases of seeded questions, new questions (not streamed: the
  answer text is what tells a hit from a miss for both gateways alike).

Ground truth comes from the answers themselves: the model server names the question it
answered, every question belongs to a known group (a seeded question and its paraphrase
form one; each new question, with its unique ticket and order numbers, is its own), and an
answer is **wrong** when it answers a question of another group. A response is a **hit**
when it answers another question or repeats an earlier call's number N.

LiteLLM runs in its own virtual environment (``make litellm``: pinned in
``bench/requirements-litellm.txt``; its pins of fastapi, openai and uvicorn differ from
Reprise's own):

    make install litellm
    nice .venv/bin/python bench/vs_litellm.py --requests 3000

Writes ``bench/results/vs_litellm.md`` (and the summary in ``load.md`` is copied by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import secrets
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from _load import _read_response, encode_post, percentile
from load import FAMILIES, Workload, start_upstream
from reprise.services.processes import ManagedProcess
from reprise.testing.upstream import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
LITELLM = ROOT / ".cache" / "litellm-venv" / "bin" / "litellm"
ANSWER = re.compile(r"^Answer #(\d+) to: (.*)$", re.S)
TICKET = re.compile(r"^Ticket (\d+):")


def group_of(question: str) -> str:
    """Questions with the same answer share a group; each new (ticket) question is alone."""
    for i, (base, para) in enumerate(FAMILIES):
        if question in (base, para):
            return f"family-{i}"
    m = TICKET.match(question)
    return f"ticket-{m.group(1)}" if m else f"other-{question}"


@dataclass
class Tally:
    hit_ms: list[float] = field(default_factory=list)
    miss_ms: list[float] = field(default_factory=list)
    errors: int = 0
    wrong: list[tuple[str, str]] = field(default_factory=list)  # (asked, answered)
    hits_by_kind: dict[str, int] = field(default_factory=dict)
    asked_by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.hit_ms) + len(self.miss_ms) + self.errors


@dataclass
class Seen:
    numbers: set[int] = field(default_factory=set)


async def drive(port: int, jobs: list[tuple[str, str]], concurrency: int, seen: Seen,
                tally: Tally, headers: dict[str, str]) -> None:
    it = iter(jobs)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for kind, question in it:
                body = orjson.dumps({"model": "fake-model",
                                     "messages": [{"role": "user", "content": question}]})
                t0 = time.perf_counter()
                try:
                    writer.write(encode_post("127.0.0.1", port, "/v1/chat/completions", body,
                                             headers))
                    status, _, raw = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    tally.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                ms = (time.perf_counter() - t0) * 1000
                m = None
                if status == 200:
                    content = orjson.loads(raw)["choices"][0]["message"]["content"] or ""
                    m = ANSWER.match(content)
                if m is None:
                    tally.errors += 1
                    continue
                n, answered = int(m.group(1)), m.group(2)
                hit = answered != question or n in seen.numbers
                seen.numbers.add(n)
                tally.asked_by_kind[kind] = tally.asked_by_kind.get(kind, 0) + 1
                if hit:
                    tally.hit_ms.append(ms)
                    tally.hits_by_kind[kind] = tally.hits_by_kind.get(kind, 0) + 1
                else:
                    tally.miss_ms.append(ms)
                if group_of(answered) != group_of(question):
                    tally.wrong.append((question, answered))
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    tally.seconds = time.perf_counter() - t0


def litellm_config(path: Path, upstream: str, embeddings: str, redis_port: int,
                   threshold: float) -> Path:
    path.write_text(f"""\
model_list:
  - model_name: fake-model
    litellm_params:
      model: openai/fake-model
      api_base: {upstream}
      api_key: unused
  - model_name: reprise-use
    litellm_params:
      model: openai/use
      api_base: {embeddings}
      api_key: unused
litellm_settings:
  cache: true
  cache_params:
    type: redis-semantic
    host: 127.0.0.1
    port: "{redis_port}"
    similarity_threshold: {threshold}
    redis_semantic_cache_embedding_model: reprise-use
""")
    return path


def start(stack: ExitStack, name: str, argv: list[str], ready: str, env: dict[str, str],
          log: Path, timeout: float = 240) -> None:
    proc = ManagedProcess(name, argv, ready_url=ready, env=env, log_file=log)
    proc.start()
    stack.callback(proc.stop)
    proc.wait_ready(timeout)


async def run_one(port: int, jobs: list[tuple[str, str]], seeds: list[tuple[str, str]],
                  args: argparse.Namespace, headers: dict[str, str]) -> Tally:
    seen = Seen()
    await drive(port, seeds, 8, seen, Tally(), headers)
    await asyncio.sleep(1.0)  # LiteLLM stores its cache entries after answering
    tally = Tally()
    await drive(port, jobs, args.concurrency, seen, tally, headers)
    return tally


def row(name: str, t: Tally) -> str:
    return (f"| {name} | {t.total} | {t.total / t.seconds:.0f} | {len(t.hit_ms)} | "
            f"{percentile(t.hit_ms, 50):.0f} / {percentile(t.hit_ms, 99):.0f} | "
            f"{len(t.miss_ms)} | {percentile(t.miss_ms, 50):.0f} / "
            f"{percentile(t.miss_ms, 99):.0f} | {t.errors} | **{len(t.wrong)}** |")


def kinds(t: Tally) -> str:
    return ", ".join(f"{k} {t.hits_by_kind.get(k, 0)}/{t.asked_by_kind.get(k, 0)}"
                     for k in ("repeat", "paraphrase", "new"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--repeat", type=float, default=0.45)
    parser.add_argument("--paraphrase", type=float, default=0.20)
    parser.add_argument("--threshold", type=float, action="append", default=[],
                        help="LiteLLM similarity_threshold (repeatable; default 0.8 and 0.9)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS / "vs_litellm.md")
    args = parser.parse_args()
    thresholds = args.threshold or [0.8, 0.9]
    if not LITELLM.exists():
        raise SystemExit(f"LiteLLM is not installed at {LITELLM}: run `make litellm`")

    workload = Workload(args.seed, repeat=args.repeat, paraphrase=args.paraphrase, stream=0.0)
    jobs = [workload.next()[:2] for _ in range(args.requests)]
    seeds = [("seed", base) for base, _ in FAMILIES]
    tmp = Path(tempfile.mkdtemp(prefix="reprise-vs-litellm-"))
    results: list[tuple[str, Tally]] = []
    with ExitStack() as stack:
        from reprise.services.redis_stack import start_server

        redis = start_server(ROOT / ".cache" / "redis-stack", data_dir=tmp / "redis")
        stack.callback(redis.stop)
        upstream = start_upstream(stack, args.latency, 0.0, tmp)
        emb_port = free_port()
        base_env = {"REPRISE_LOG_LEVEL": "warning", "REPRISE_EMBEDDER": "use"}
        start(stack, "embeddings", [sys.executable, "-m", "reprise.cli", "serve", "--role",
                                    "embeddings", "--host", "127.0.0.1", "--port",
                                    str(emb_port)],
              f"http://127.0.0.1:{emb_port}/healthz", base_env, tmp / "embeddings.log")
        embeddings = f"http://127.0.0.1:{emb_port}/v1"

        gw_port = free_port()
        (tmp / "gw").mkdir()
        start(stack, "reprise", [sys.executable, "-m", "reprise.cli", "serve", "--host",
                                 "127.0.0.1", "--port", str(gw_port)],
              f"http://127.0.0.1:{gw_port}/healthz",
              {**base_env, "REPRISE_UPSTREAM_URL": upstream,
               "REPRISE_UPSTREAM_MODEL": "fake-model", "REPRISE_STORE": "redis",
               "REPRISE_REDIS_URL": redis.url, "REPRISE_REDIS_PREFIX": "reprise-vs",
               "REPRISE_EMBEDDER": "remote", "REPRISE_EMBEDDINGS_URL": embeddings,
               "REPRISE_EMBEDDINGS_MODEL": "use", "REPRISE_EMBEDDINGS_DIM": "512",
               "REPRISE_DATA_DIR": str(tmp / "gw")}, tmp / "gw" / "gateway.log")
        tally = asyncio.run(run_one(gw_port, jobs, seeds, args, {"X-Reprise-Namespace": "vs"}))
        results.append(("Reprise (1 gateway process)", tally))
        print(row(*results[-1]), flush=True)

        master_key = "sk-" + secrets.token_hex(24)  # the proxy refuses to start without one
        for i, threshold in enumerate(thresholds):
            port = free_port()
            cfg = litellm_config(tmp / f"litellm-{i}.yaml", upstream, embeddings, redis.port,
                                 threshold)
            with ExitStack() as ll:
                start(ll, "litellm", [str(LITELLM), "--config", str(cfg), "--host",
                                      "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                      f"http://127.0.0.1:{port}/health/liveliness",
                      {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                       "REDIS_PASSWORD": "",  # none: LiteLLM reads it from here
                       "LITELLM_MASTER_KEY": master_key,
                       "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "True"},
                      tmp / f"litellm-{i}.log")
                tally = asyncio.run(run_one(port, jobs, seeds, args,
                                            {"Authorization": f"Bearer {master_key}"}))
                results.append((f"LiteLLM proxy, redis-semantic, threshold {threshold}",
                                tally))
                print(row(*results[-1]), flush=True)
            # each threshold starts with an empty cache: drop LiteLLM's index and entries
            import redis as redis_py

            client = redis_py.Redis.from_url(redis.url)
            for name in client.execute_command("FT._LIST"):
                if not name.decode().startswith("reprise"):
                    client.execute_command("FT.DROPINDEX", name, "DD")
            client.close()

    lines = [
        "# Reprise vs LiteLLM's proxy (redis-semantic cache): same workload, one run",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs"
        + (f"; {args.note}" if args.note else "") + f". Python {platform.python_version()}.",
        f"Same test model server (first token after {args.latency}s), same Redis Stack, same "
        f"embedding model (Reprise's embeddings role, USE) for both; one gateway process each. "
        f"Workload (`load.py`'s, seed {args.seed}): {args.requests} requests at concurrency "
        f"{args.concurrency}, {args.repeat:.0%} repeats, {args.paraphrase:.0%} paraphrases of "
        f"{len(FAMILIES)} seeded questions, {1 - args.repeat - args.paraphrase:.0%} new "
        f"questions; not streamed. Each gateway starts with an empty cache and gets the "
        f"{len(FAMILIES)} seed questions first.",
        "",
        "| gateway | requests | req/s | hits | hit p50 / p99 ms | misses | miss p50 / p99 ms | "
        "errors | wrong answers served |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: |",
        *(row(n, t) for n, t in results),
        "",
        "Hits by request kind (hits/asked): "
        + "; ".join(f"{n}: {kinds(t)}" for n, t in results) + ".",
        "",
    ]
    for name, t in results:
        if t.wrong:
            lines.append(f"Wrong answers served by {name}, e.g.: "
                         + "; ".join(f"asked “{a}”, got the answer to “{b}”"
                                     for a, b in t.wrong[:3]) + ".")
    lines += ["", "Reproduce: `make install litellm && nice .venv/bin/python bench/vs_litellm.py "
              f"--requests {args.requests}`", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
