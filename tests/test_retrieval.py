"""Hybrid retrieval on the real sample documents (pt, zh, en) with the real e5 embedder.

Everything runs for real: loaders, chunker, tokenizer, bm25s, the SQLite chunk index, e5
and the reranker. Retrieval quality on public sets is measured by ``bench/retrieval.py``;
these tests pin behaviour: the right page is found in each language, both legs report,
off-topic questions are judged irrelevant, bad files fail alone and leave nothing behind.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pypdf import PdfWriter

from reprise.config import Settings
from reprise.rag.catalog import Catalog
from reprise.rag.chunk_index import SQLiteChunkIndex
from reprise.rag.fusion import convex, rrf
from reprise.rag.ingest import load_document
from reprise.rag.rerank import (
    CrossEncoderReranker,
    FeatureReranker,
    FeatureWeights,
    NoReranker,
    RerankerError,
    default_reranker,
)
from reprise.rag.results import Retrieved
from reprise.rag.retrieve import HybridRetriever
from reprise.rag.service import RagService, collection_key
from reprise.rag.tokenize import tokenize

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "documents"
SAMPLES = {"gazette": "pdf/pt_diario_oficial_pratania_2020-10-26.pdf",
           "docling": "pdf/docling_multi_page.pdf",
           "law": "md/zh_personal_information_protection_law_2021.md",
           "word": "docx/word_sample.docx"}
needs_docs = pytest.mark.skipif(not DOCS.is_dir(), reason=f"sample documents not at {DOCS}")


# --- tokenizer -------------------------------------------------------------------------------
def test_tokenizer_chinese_words_not_characters() -> None:
    terms = tokenize("自然人的个人信息受法律保护。")
    assert "个人信息" in terms and "法律" in terms and "自然人" in terms
    assert "的" not in terms and "。" not in terms
    # search mode: a long word also yields its parts
    assert {"中华", "人民", "共和国"} <= set(tokenize("中华人民共和国"))


def test_tokenizer_latin_folding_stemming_stopwords() -> None:
    # accents folded before stemming: with or without them, the same term
    assert tokenize("Informação pública, INFORMACAO publica") == ["informaca", "public"] * 2
    en = tokenize("The proteins were inhibiting the receptors")
    assert en == ["protein", "inhibit", "receptor"]
    pt = tokenize("Os decretos da prefeitura foram publicados")
    assert pt == ["decret", "prefeitur", "public"]
    # ligatures and full-width letters are plain letters
    assert tokenize("The ﬁnal Ｏｆｆｉｃｉａｌ report") == ["final", "offici", "report"]
    # mixed scripts split cleanly, numbers kept whole
    terms = tokenize("GDPR与个人信息保护法2021")
    assert terms[0] == "gdpr" and terms[-1] == "2021"
    assert {"个人信息", "保护法", "个人", "信息"} <= set(terms)


def test_tokenizer_short_ambiguous_text_gets_both_stems() -> None:
    # No function word says which language: both stemmers' forms are searched.
    terms = set(tokenize("feriados decretos"))
    assert {"feri", "decret"} <= terms  # Portuguese stems (what a pt document holds)
    assert tokenize("") == [] and tokenize("?!，。") == []


# --- fusion ----------------------------------------------------------------------------------
def test_rrf_rewards_agreement_and_records_legs() -> None:
    fused = rrf({"dense": [("a", 0.9), ("b", 0.8)], "bm25": [("b", 12.0), ("c", 3.0)]}, k=60)
    order = sorted(fused, key=lambda i: -fused[i].score)
    assert order[0] == "b" and fused["b"].legs == ["dense", "bm25"]
    assert fused["a"].legs == ["dense"] and fused["c"].legs == ["bm25"]
    assert fused["b"].dense == 0.8 and fused["b"].bm25 == 12.0


def test_convex_uses_score_gaps() -> None:
    lists = {"dense": [("a", 0.90), ("b", 0.89), ("c", 0.10)],
             "bm25": [("c", 10.0), ("b", 9.9), ("a", 0.0)]}
    fused = convex(lists, {"dense": 0.5, "bm25": 0.5})
    assert max(fused, key=lambda i: fused[i].score) == "b"  # near the top of both
    only_dense = convex(lists, {"dense": 1.0, "bm25": 0.0})
    assert max(only_dense, key=lambda i: only_dense[i].score) == "a"


# --- rerankers -------------------------------------------------------------------------------
def cand(cid: str, *, sim: float, bm25: float, fused: float, cov: float = 0.0) -> Retrieved:
    return Retrieved(cid, "d", 1, "text", fused, ["dense"], similarity=sim, bm25=bm25,
                     fused=fused, coverage=cov)


async def test_no_reranker_keeps_fusion_order() -> None:
    cands = [cand("a", sim=0.9, bm25=0, fused=0.01), cand("b", sim=0.1, bm25=0, fused=0.03)]
    assert [c.chunk_id for c in await NoReranker().rerank("q", [], cands)] == ["b", "a"]


async def test_feature_reranker_combines_cosine_bm25_and_coverage() -> None:
    cands = [cand("close", sim=0.86, bm25=0.0, fused=0.03, cov=0.0),
             cand("lexical", sim=0.85, bm25=20.0, fused=0.02, cov=1.0),
             cand("half", sim=0.84, bm25=10.0, fused=0.01, cov=0.5)]
    ranked = await FeatureReranker(FeatureWeights(1.0, 0.06, 0.04)).rerank("q", [], cands)
    assert [c.chunk_id for c in ranked] == ["lexical", "half", "close"]
    assert ranked[0].score == pytest.approx(0.85 + 0.06 + 0.04)
    assert ranked[1].score == pytest.approx(0.84 + 0.03 + 0.02)
    # cosine alone keeps the semantically closer one first
    alone = await FeatureReranker(FeatureWeights(1.0, 0.0, 0.0)).rerank("q", [], cands)
    assert alone[0].chunk_id == "close"


def test_relevance_gate_and_term_coverage() -> None:
    from reprise.rag.retrieve import RelevanceGate, coverage

    terms = tokenize("Qual feriado foi transferido pelo decreto?")
    page = set(tokenize("O Decreto nº 56 transfere o feriado do Dia do Servidor Público."))
    assert coverage(terms, page) == pytest.approx(1.0)
    assert coverage(tokenize("bolo de chocolate"), page) == 0.0
    gate = RelevanceGate(strong=0.86, weak=0.78, coverage=0.3)
    assert gate(cand("a", sim=0.87, bm25=0, fused=0))  # strong on its own
    assert gate(cand("b", sim=0.80, bm25=0, fused=0, cov=0.5))  # weak + shared terms
    assert not gate(cand("c", sim=0.80, bm25=0, fused=0, cov=0.0))  # same-language noise
    assert not gate(cand("d", sim=0.70, bm25=0, fused=0, cov=1.0))


def test_default_reranker_depends_on_the_embedder() -> None:
    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

    assert isinstance(default_reranker(Named("e5")), FeatureReranker)
    assert isinstance(default_reranker(Named("use")), NoReranker)


def test_cross_encoder_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RerankerError, match="does not exist"):
        CrossEncoderReranker(tmp_path / "no-such-model")
    with pytest.raises(RerankerError, match=r"model\.onnx, tokenizer\.json"):
        CrossEncoderReranker(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    (tmp_path / "tokenizer.json").write_text("{}")
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        with pytest.raises(RerankerError, match="onnxruntime"):
            CrossEncoderReranker(tmp_path)
    else:  # runtime present: a damaged model file is reported by it, not silently used
        with pytest.raises(Exception):  # noqa: B017
            CrossEncoderReranker(tmp_path)


# --- end to end on the sample documents ---------------------------------------------------
@pytest.fixture(scope="module")
def e5() -> Any:
    from reprise.embed.e5 import E5Embedder

    return E5Embedder()


def make_service(tmp: Path, embedder: Any, **overrides: Any) -> RagService:
    settings = Settings(data_dir=tmp, **overrides)
    index = SQLiteChunkIndex(tmp / "documents.sqlite3", embedder.dim)
    retriever = HybridRetriever(index, embedder, default_reranker(embedder))
    return RagService(settings, Catalog(tmp / "catalog.sqlite3"), index, retriever, embedder)


async def run_job(rag: RagService, ns: str, coll: str,
                  files: list[tuple[str, bytes | None, int]]) -> dict[str, Any]:
    job = await rag.submit(ns, coll, files)
    for task in list(rag._tasks):
        await task
    return await rag.job(ns, job.id)


@pytest.fixture(scope="module")
async def loaded(e5: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    if not DOCS.is_dir():
        pytest.skip(f"sample documents not at {DOCS}")
    rag = make_service(tmp_path_factory.mktemp("rag"), e5)
    await rag.create_collection("ns", "docs")
    files = [(Path(rel).name, (DOCS / rel).read_bytes(), 0) for rel in SAMPLES.values()]
    job = await run_job(rag, "ns", "docs", [(n, d, len(d)) for n, d, _ in files])
    assert job["state"] == "done", job
    yield rag
    await rag.aclose()


def page_text(rel: str, page: int) -> str:
    doc = load_document(Path(rel).name, (DOCS / rel).read_bytes(), max_bytes=10**9)
    return doc.pages[page - 1].text


@needs_docs
@pytest.mark.parametrize(("question", "doc", "page"), [
    ("Qual feriado foi transferido pelo decreto nº 56?", "gazette", 2),
    ("Quem é o prefeito de Pratânia?", "gazette", None),
    # page 3 names WordPerfect for lawyers too; only page 2 has MacWrite
    ("Which word processor used the Macintosh graphical capabilities?", "docling", 2),
    ("个人信息处理者应当履行哪些义务？", "law", 1),
    ("敏感个人信息包括哪些？", "law", 1),
])
async def test_questions_find_their_page_in_each_language(loaded: Any, question: str, doc: str,
                                                          page: int | None) -> None:
    rag = loaded
    results = await rag.search("ns", "docs", question, 5)
    top = results[0]
    assert top["document"] == Path(SAMPLES[doc]).name, (question, top)
    if page is not None:
        assert top["page"] == page
    # the chunk text is verbatim text of the page it names
    assert top["text"] in page_text(SAMPLES[doc], top["page"])
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert all(set(r["legs"]) <= {"dense", "bm25"} and r["legs"] for r in results)
    hits = await rag.retriever.search(collection_key("ns", "docs"), question, 5)
    assert rag.retriever.is_relevant(hits[0])


@needs_docs
async def test_both_legs_contribute(loaded: Any) -> None:
    rag = loaded
    key = collection_key("ns", "docs")
    # A rare exact token only BM25 can pin down, and a paraphrase only the dense leg gets.
    lexical = await rag.retriever.search(key, "Lei Municipal nº 725", 5)
    assert any("bm25" in r.legs for r in lexical)
    semantic = await rag.retriever.search(key, "machines that print letters onto paper", 5)
    assert semantic[0].doc_id and "dense" in semantic[0].legs
    assert "typewriter" in " ".join(r.text.lower() for r in semantic[:3])


@needs_docs
@pytest.mark.parametrize("question", [
    "What is the boiling point of liquid nitrogen in Kelvin?",
    "Como faço um bolo de chocolate sem ovos?",
    "明天北京的天气怎么样？",
])
async def test_off_topic_questions_are_not_relevant(loaded: Any, question: str) -> None:
    rag = loaded
    hits = await rag.retriever.search(collection_key("ns", "docs"), question, 5)
    assert hits, "retrieval always returns the nearest chunks"
    assert not any(rag.retriever.is_relevant(h) for h in hits), [
        (h.similarity, h.text[:60]) for h in hits]


# --- bad input: per-file errors, nothing half-written ------------------------------------------
def _pdf(encrypt: bool = False) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    if encrypt:
        writer.encrypt("secret")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", b"<Types/>")
        zf.writestr("word/document.xml", b"\x00" * (64 * 1024 * 1024))
    return buf.getvalue()


async def test_bad_files_fail_alone_and_leave_nothing(e5: Any, tmp_path: Path) -> None:
    rag = make_service(tmp_path, e5, max_upload_bytes=100_000)
    await rag.create_collection("ns", "c")
    good = b"Reprise keeps the page of every chunk so citations can be checked."
    bad = {"scan.pdf": (_pdf(), "no_text"), "locked.pdf": (_pdf(encrypt=True), "encrypted_pdf"),
           "cut.pdf": (_pdf()[:120], "corrupt"),
           "setup.pdf": (b"MZ\x90\x00" + bytes(range(256)) * 4, "unsupported_type"),
           "empty.txt": (b"", "empty"), "bomb.docx": (_bomb(), "zip_bomb")}
    files: list[tuple[str, bytes | None, int]] = [("good.txt", good, len(good))]
    files += [(name, data, len(data)) for name, (data, _) in bad.items()]
    files.append(("huge.txt", None, 300_000_000))  # over the limit: never read into memory
    job = await run_job(rag, "ns", "c", files)
    assert job["state"] == "partial"
    by_name = {f["filename"]: f for f in job["files"]}
    assert by_name["good.txt"]["state"] == "done" and by_name["good.txt"]["chunks"] == 1
    expected = {name: code for name, (_, code) in bad.items()} | {"huge.txt": "too_large"}
    assert {n: by_name[n]["error"]["code"] for n in expected} == expected
    assert all(by_name[n]["chunks"] == 0 for n in expected)
    docs = await rag.list_documents("ns", "c")
    assert [d.filename for d in docs] == ["good.txt"]
    assert await rag.index.count(collection_key("ns", "c")) == 1
    await rag.aclose()


async def test_index_failure_leaves_no_chunks(e5: Any, tmp_path: Path) -> None:
    """An embedder configured with the wrong dimension (a real misconfiguration) fails the
    file at the index; neither the catalog nor the index keeps anything of it."""

    class WrongDim:  # stands in for a misconfigured remote embedder (none runs here)
        name, dim = "remote", e5.dim

        async def embed(self, texts: list[str], kind: str = "query") -> np.ndarray:
            return np.ones((len(texts), e5.dim + 1), np.float32)

    rag = make_service(tmp_path, e5)
    rag.embedder = WrongDim()  # type: ignore[assignment]
    await rag.create_collection("ns", "c")
    text = b"A short document that will not make it into the index."
    job = await run_job(rag, "ns", "c", [("a.txt", text, len(text))])
    assert job["state"] == "failed" and job["files"][0]["error"]["message"]
    assert await rag.list_documents("ns", "c") == []
    assert await rag.index.count(collection_key("ns", "c")) == 0
    assert (await rag.require("ns", "c")).version == 0  # nothing was added: no bump
    await rag.aclose()
