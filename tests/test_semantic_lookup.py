"""SemanticLookup end to end: real USE embedder, real MemoryStore, shipped guards + verifier."""

from __future__ import annotations

import pytest

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
    await remember(lookup, "How do I learn Python?")
    await remember(lookup, "How can I lose weight fast?")
    await remember(lookup, "怎么学习英语")
    # At the shipped default (cosine 0.93 and a case-only difference).
    assert await ask(lookup, "What is the best way to learn Python?") == "How do I learn Python?"
    assert await ask(lookup, "how can i lose weight fast") == "How can I lose weight fast?"
    # Cosine 0.907 / 0.907: just under the default floor, served once a caller lowers it.
    assert await ask(lookup, "What is the fastest way to lose weight?") is None
    assert await ask(lookup, "What is the fastest way to lose weight?", threshold=0.85) == \
        "How can I lose weight fast?"
    assert await ask(lookup, "如何学好英语", threshold=0.85) == "怎么学习英语"


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


@pytest.mark.xfail(strict=True, reason=(
    "known limitation: USE puts these at cosine 0.84, below the shipped default floor; "
    "the pair is not special-cased"))
async def test_portuguese_explain_paraphrase_at_default(lookup: SemanticLookup) -> None:
    await remember(lookup, "O que são sistemas distribuídos?")
    assert await ask(lookup, "Explique sistemas distribuídos") == \
        "O que são sistemas distribuídos?"


async def test_portuguese_explain_paraphrase_with_lower_threshold(lookup: SemanticLookup) -> None:
    await remember(lookup, "O que são sistemas distribuídos?")
    assert await ask(lookup, "Explique sistemas distribuídos", threshold=0.8) == \
        "O que são sistemas distribuídos?"
