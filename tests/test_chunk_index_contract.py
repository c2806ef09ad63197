"""One contract, run against both chunk indexes: SQLite (embedded) and Redis Stack (shared).

Vectors are small random unit vectors (the contract is about storage and search, not about
an embedder); text goes through the real tokenizer, so BM25 here is the real thing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reprise.rag.chunk_index import ChunkIndex, SQLiteChunkIndex
from reprise.rag.documents import Chunk
from reprise.rag.tokenize import tokenize

DIM = 16
TEXTS = {
    "doc_pt": ["O decreto nº 56 transferiu o feriado do Dia do Servidor Público.",
               "A prefeitura publicou a licitação de merenda escolar."],
    "doc_zh": ["自然人的个人信息受法律保护，任何组织、个人不得侵害自然人的个人信息权益。",
               "个人信息处理者应当对其个人信息处理活动负责。"],
    "doc_en": ["WordPerfect was popular among legal professionals in the 1980s.",
               "Ducks are waterfowl that swim on lakes and rivers."],
}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def chunks_of(doc_id: str) -> list[Chunk]:
    return [Chunk(doc_id, i, i + 1, t, len(t)) for i, t in enumerate(TEXTS[doc_id])]


Opener = Callable[[], ChunkIndex]


@pytest.fixture(params=["sqlite", "redis"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens (and re-opens, to check persistence) one index of the given kind."""
    opened: list[Any] = []
    if request.param == "sqlite":
        def make() -> ChunkIndex:
            idx = SQLiteChunkIndex(tmp_path / "chunks.sqlite3", DIM, hnsw_from=4)
            opened.append(idx)
            return idx
    else:
        from reprise.rag.chunk_index_redis import RedisChunkIndex

        url = request.getfixturevalue("redis_url")
        prefix = f"t{uuid.uuid4().hex[:8]}:rag"

        def make() -> ChunkIndex:
            idx = RedisChunkIndex(url, DIM, prefix=prefix, exact_below=2)
            opened.append(idx)
            return idx
    yield make
    if request.param == "redis":
        await opened[-1].drop_all()
    for idx in opened:
        await idx.aclose()


async def fill(index: ChunkIndex, key: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    vectors = {}
    for doc_id in TEXTS:
        vecs = unit(rng, len(TEXTS[doc_id]))
        await index.add(key, chunks_of(doc_id), vecs)
        for i, v in enumerate(vecs):
            vectors[f"{doc_id}:{i}"] = v
    return vectors


async def test_add_search_fetch(opener: Opener) -> None:
    index = opener()
    rng = np.random.default_rng(7)
    vectors = await fill(index, "ns/a", rng)
    assert await index.count("ns/a") == 6
    assert await index.version("ns/a") == 3  # one bump per added document
    for cid, vec in vectors.items():
        hits = await index.dense_search("ns/a", vec, 3)
        assert hits[0][0] == cid and hits[0][1] == pytest.approx(1.0, abs=1e-3)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    # BM25 with the real tokenizer: accents folded, stems, jieba words
    cases = {"Qual feriado o decreto 56 transferiu?": "doc_pt:0",
             "feriados e decretos": "doc_pt:0",
             "个人信息处理者的责任": "doc_zh:1",
             "legal professional word processors": "doc_en:0",
             "licitacao merenda": "doc_pt:1"}
    for query, expected in cases.items():
        hits = await index.bm25_search("ns/a", tokenize(query), 5)
        assert hits and hits[0][0] == expected, (query, hits)
        assert all(s > 0 for _, s in hits)
    assert await index.bm25_search("ns/a", tokenize("quantum chromodynamics"), 5) == []
    got = await index.fetch("ns/a", ["doc_zh:1", "doc_en:0", "missing:0"])
    assert set(got) == {"doc_zh:1", "doc_en:0"}
    zh = got["doc_zh:1"]
    assert (zh.doc_id, zh.ordinal, zh.page, zh.text) == ("doc_zh", 1, 2, TEXTS["doc_zh"][1])
    assert np.allclose(zh.vector, vectors["doc_zh:1"])


async def test_collections_are_isolated(opener: Opener) -> None:
    index = opener()
    rng = np.random.default_rng(1)
    vec = unit(rng, 1)
    await index.add("ns/a", chunks_of("doc_en")[:1], vec)
    await index.add("other/a", chunks_of("doc_pt")[:1], vec)
    assert [c for c, _ in await index.dense_search("ns/a", vec[0], 10)] == ["doc_en:0"]
    assert [c for c, _ in await index.dense_search("other/a", vec[0], 10)] == ["doc_pt:0"]
    assert await index.bm25_search("ns/a", tokenize("decreto feriado"), 5) == []
    assert await index.dense_search("ns/none", vec[0], 10) == []
    assert await index.bm25_search("ns/none", ["x"], 10) == []
    assert await index.count("ns/none") == 0


async def test_delete_document_and_collection(opener: Opener) -> None:
    index = opener()
    rng = np.random.default_rng(3)
    vectors = await fill(index, "ns/a", rng)
    v0 = await index.version("ns/a")
    assert await index.delete_document("ns/a", "doc_pt") == 2
    assert await index.version("ns/a") > v0
    assert await index.count("ns/a") == 4
    hits = await index.dense_search("ns/a", vectors["doc_pt:0"], 10)
    assert all(not c.startswith("doc_pt") for c, _ in hits) and len(hits) == 4
    assert await index.bm25_search("ns/a", tokenize("decreto feriado"), 5) == []
    assert await index.fetch("ns/a", ["doc_pt:0"]) == {}
    assert await index.delete_document("ns/a", "doc_pt") == 0
    v1 = await index.version("ns/a")
    assert await index.delete_collection("ns/a") == 4
    assert await index.count("ns/a") == 0
    assert await index.dense_search("ns/a", vectors["doc_en:0"], 10) == []
    assert await index.bm25_search("ns/a", tokenize("ducks"), 5) == []
    # The version never goes back: a re-created collection cannot match old cached state.
    assert await index.version("ns/a") > v1
    await index.add("ns/a", chunks_of("doc_en"), unit(rng, 2))
    assert [c for c, _ in await index.bm25_search("ns/a", tokenize("ducks lakes"), 5)] == [
        "doc_en:1"]


async def test_bm25_is_built_once_per_version_not_per_query(opener: Opener) -> None:
    index = opener()
    await fill(index, "ns/a", np.random.default_rng(5))
    bm25 = index.bm25  # type: ignore[attr-defined]
    before = bm25.builds
    for _ in range(5):
        await index.bm25_search("ns/a", tokenize("decreto"), 3)
    assert bm25.builds == before + 1
    await index.delete_document("ns/a", "doc_en")
    for _ in range(3):
        await index.bm25_search("ns/a", tokenize("decreto"), 3)
    assert bm25.builds == before + 2


async def test_persists_across_reopen(opener: Opener) -> None:
    index = opener()
    rng = np.random.default_rng(11)
    vectors = await fill(index, "ns/a", rng)
    await index.dense_search("ns/a", vectors["doc_en:1"], 3)  # load (HNSW above 4 chunks)
    await index.aclose()
    again = opener()
    assert await again.count("ns/a") == 6
    for cid, vec in vectors.items():
        assert (await again.dense_search("ns/a", vec, 1))[0][0] == cid
    hits = await again.bm25_search("ns/a", tokenize("个人信息处理者"), 1)
    assert hits[0][0] == "doc_zh:1"


async def test_bad_vectors_are_refused(opener: Opener) -> None:
    index = opener()
    with pytest.raises(ValueError):
        await index.add("ns/a", chunks_of("doc_en"), np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(ValueError):
        await index.dense_search("ns/a", np.zeros(DIM + 2, np.float32), 3)
    assert await index.count("ns/a") == 0


def saved_indexes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".usearch")


async def test_sqlite_saves_hnsw_index_and_rebuilds_when_stale(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "c.sqlite3"
    index = SQLiteChunkIndex(path, DIM, hnsw_from=4)
    vectors = await fill(index, "ns/a", rng)
    await index.dense_search("ns/a", vectors["doc_en:0"], 1)
    await index.aclose()
    saved = saved_indexes(tmp_path)
    assert len(saved) == 1
    # Another writer changes the collection while no index is loaded: the saved graph is
    # now stale (older version) and must not be trusted.
    other = SQLiteChunkIndex(path, DIM, hnsw_from=4)
    await other.delete_document("ns/a", "doc_en")
    await other.aclose()
    third = SQLiteChunkIndex(path, DIM, hnsw_from=4)
    hits = await third.dense_search("ns/a", vectors["doc_en:0"], 10)
    assert all(not c.startswith("doc_en") for c, _ in hits) and len(hits) == 4
    await third.aclose()
