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


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
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

        url = (request.getfixturevalue("redis_url") if request.param == "redis"
               else request.getfixturevalue("redis_cluster").url)
        prefix = f"t{uuid.uuid4().hex[:8]}:rag"

        def make() -> ChunkIndex:
            idx = RedisChunkIndex(url, DIM, prefix=prefix, exact_below=2)
            opened.append(idx)
            return idx
    yield make
    if request.param != "sqlite":
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


# --- the catalog beside it: same contract on SQLite and Redis -----------------------------------
@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
async def catalogs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Opens catalogs of one kind that share their storage (two replicas, or a restart)."""
    from reprise.rag.catalog import Catalog

    opened: list[Any] = []
    if request.param == "sqlite":
        def make() -> Any:
            opened.append(Catalog(tmp_path / "catalog.sqlite3"))
            return opened[-1]
    else:
        from reprise.rag.catalog_redis import RedisCatalog

        url = (request.getfixturevalue("redis_url") if request.param == "redis"
               else request.getfixturevalue("redis_cluster").url)
        prefix = f"t{uuid.uuid4().hex[:8]}:rag"

        def make() -> Any:
            opened.append(RedisCatalog(url, prefix=prefix))
            return opened[-1]
    yield make
    for cat in opened:
        await cat.aclose()


def record(doc_id: str, coll: str, sha: str, chunks: int) -> Any:
    from reprise.rag.catalog import DocumentRecord

    return DocumentRecord(doc_id, coll, f"{doc_id}.pdf", sha, "application/pdf", 2, chunks,
                          float(len(doc_id)), None)


async def test_catalog_collections_documents_versions(catalogs: Any) -> None:
    cat = catalogs()
    created = await cat.create_collection("ns", "b")
    assert (created.name, created.version, created.documents) == ("b", 0, 0)
    assert await cat.create_collection("ns", "b") is None
    await cat.create_collection("ns", "a")
    await cat.create_collection("other", "a")
    assert [c.name for c in await cat.list_collections("ns")] == ["a", "b"]
    assert await cat.get_collection("ns", "zzz") is None
    await cat.add_document("ns", record("d1", "b", "s1", 3))
    await cat.add_document("ns", record("d22", "b", "s2", 4))
    coll = await cat.get_collection("ns", "b")
    assert (coll.version, coll.documents, coll.chunks) == (2, 2, 7)
    assert (await cat.find_by_sha("ns", "b", "s2")).id == "d22"
    assert await cat.find_by_sha("ns", "a", "s2") is None
    assert [d.id for d in await cat.list_documents("ns", "b")] == ["d1", "d22"]
    # another replica (Redis) or a restart (SQLite) sees the same state
    other = catalogs()
    assert (await other.get_collection("ns", "b")).version == 2
    assert await other.delete_document("ns", "b", "d1") is True
    assert await other.delete_document("ns", "b", "d1") is False
    coll = await cat.get_collection("ns", "b")
    assert (coll.version, coll.documents) == (3, 1)
    assert await cat.find_by_sha("ns", "b", "s1") is None
    assert await cat.delete_collection("ns", "b") == ["d22"]
    assert await cat.get_collection("ns", "b") is None
    assert [c.name for c in await cat.list_collections("other")] == ["a"]


async def test_catalog_jobs_are_per_namespace(catalogs: Any) -> None:
    from reprise.rag.catalog import FileProgress, Job

    cat = catalogs()
    job = Job("job_1", "c", [FileProgress("a.pdf"), FileProgress("b.pdf")])
    job.files[0].state, job.files[0].chunks = "done", 5
    await cat.save_job("ns", job)
    got = await cat.get_job("ns", "job_1")
    assert got["chunks_done"] == 5 and got["files"][1]["state"] == "queued"
    assert await cat.get_job("other", "job_1") is None
    assert await cat.get_job("ns", "job_2") is None


async def test_redis_index_of_another_dimension_is_refused(redis_url: str) -> None:
    from reprise.rag.chunk_index_redis import RedisChunkIndex
    from reprise.rag.errors import RagError

    prefix = f"t{uuid.uuid4().hex[:8]}:rag"
    first = RedisChunkIndex(redis_url, DIM, prefix=prefix)
    await first.add("ns/a", chunks_of("doc_en"), unit(np.random.default_rng(0), 2))
    other = RedisChunkIndex(redis_url, DIM * 2, prefix=prefix)
    with pytest.raises(RagError, match="16-dim"):
        await other.count("ns/a")
    await first.drop_all()
    await first.aclose()
    await other.aclose()
