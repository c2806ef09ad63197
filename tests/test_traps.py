"""The hand-written trap list through the real semantic pipeline: not one may be served.

``tests/data/traps.tsv`` holds near-misses a user could type after a question that is
already cached (another number, a swapped name, a negation, an antonym, swapped arguments,
another unit, language or day); each pair is stored and asked in its own partition of a
lookup wired exactly as the gateway wires it (``components.build_semantic`` from default
settings: real USE embedder, shipped guards, shipped verifier). ``paraphrases.tsv`` is the
other side of the trade; how many of those hit is a benchmark (``bench/traps.py``), not a
test, so here only the lists' shape and the plain sanity that a question asked again hits
are checked.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reprise.cache.semantic import SemanticLookup
from reprise.components import build_semantic
from reprise.config import Settings
from reprise.store.base import CacheEntry
from reprise.store.memory import MemoryStore

DATA = Path(__file__).parent / "data"
NS = "traps"
CATEGORIES = {"number", "entity swap", "negation", "antonym", "ordered arguments", "unit",
              "language", "time"}


def read(name: str) -> list[dict[str, str]]:
    with (DATA / name).open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


TRAPS = read("traps.tsv")
PARAPHRASES = read("paraphrases.tsv")


@pytest.fixture(scope="module")
def lookup(use_embedder: Any) -> SemanticLookup:
    lookup = build_semantic(Settings(), MemoryStore(use_embedder.dim), use_embedder)
    assert isinstance(lookup, SemanticLookup)
    return lookup


async def store(lookup: SemanticLookup, partition: str, question: str) -> None:
    vector = await lookup.embed(question)
    await lookup.store.put(CacheEntry(key=partition, namespace=NS, fingerprint=partition,
                                      question=question, response=b"{}", vector=vector))


async def served(lookup: SemanticLookup, partition: str, question: str) -> tuple[bool, str]:
    decision = await lookup.find(NS, partition, question, await lookup.embed(question))
    return decision.match is not None, decision.explanation.reason


def test_lists_are_well_formed() -> None:
    assert len(TRAPS) >= 60 and len(PARAPHRASES) >= 40
    assert {r["category"] for r in TRAPS} == CATEGORIES
    for rows in (TRAPS, PARAPHRASES):
        assert {r["lang"] for r in rows} == {"en", "pt", "zh"}
        assert all(r["stored"].strip() and r["incoming"].strip() for r in rows)
        assert all(r["stored"] != r["incoming"] for r in rows)
        pairs = Counter((r["stored"], r["incoming"]) for r in rows)
        assert max(pairs.values()) == 1
    # Every category has cases in more than one language.
    for cat in CATEGORIES:
        assert len({r["lang"] for r in TRAPS if r["category"] == cat}) >= 2, cat


@pytest.mark.parametrize("row", TRAPS, ids=[f"{r['category']}-{i}" for i, r in enumerate(TRAPS)])
async def test_trap_is_never_served(lookup: SemanticLookup, row: dict[str, str]) -> None:
    partition = f"trap-{TRAPS.index(row)}"
    await store(lookup, partition, row["stored"])
    hit, why = await served(lookup, partition, row["incoming"])
    assert not hit, f"served {row['stored']!r} for {row['incoming']!r} ({why})"
    # The entry is there and servable: the same question again is a hit.
    assert (await served(lookup, partition, row["stored"]))[0]


@pytest.mark.parametrize("row", PARAPHRASES,
                         ids=[f"{r['lang']}-{i}" for i, r in enumerate(PARAPHRASES)])
async def test_identical_question_hits(lookup: SemanticLookup, row: dict[str, str]) -> None:
    partition = f"para-{PARAPHRASES.index(row)}"
    await store(lookup, partition, row["stored"])
    assert (await served(lookup, partition, row["stored"]))[0]
    # Case and closing punctuation never make it another question.
    assert (await served(lookup, partition, row["stored"].lower().rstrip("?？")))[0]
