"""Token-aware chunking of the real sample documents: pages kept, CJK intact, overlap."""

from __future__ import annotations

import itertools
from functools import cache
from pathlib import Path

import pytest

from reprise.rag.chunk import chunk_document, chunk_spans
from reprise.rag.documents import Chunk, LoadedDocument, Page
from reprise.rag.ingest import load_document
from reprise.rag.tokens import count_tokens, split_to_tokens, tail_start, truncate_to_tokens

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "documents"
SAMPLES = [
    "pdf/federal-register-2020-17221.pdf",
    "pdf/nics-background-checks-2015-11.pdf",
    "pdf/docling_multi_page.pdf",
    "pdf/pt_diario_oficial_pratania_2020-10-26.pdf",
    "docx/word_sample.docx",
    "docx/word_tables.docx",
    "html/wiki_duck.html",
    "md/zh_personal_information_protection_law_2021.md",
    "md/pt_querido_diario_toolbox_README.md",
]
SIZES = [(256, 48), (64, 16), (24, 0)]
ZH_DOC = "md/zh_personal_information_protection_law_2021.md"

needs_docs = pytest.mark.skipif(
    not DOCS.is_dir(), reason=f"sample documents not found at {DOCS} (shared data is absent)")


@cache
def load(rel: str) -> LoadedDocument:
    path = DOCS / rel
    return load_document(path.name, path.read_bytes(), max_bytes=50 * 1024 * 1024)


def covered(text: str, spans: list[tuple[int, int]]) -> bool:
    mask = [False] * len(text)
    for s, e in spans:
        mask[s:e] = [True] * (e - s)
    return all(m or ch.isspace() for m, ch in zip(mask, text, strict=True))


# --- invariants on every sample document ------------------------------------------------------
@needs_docs
@pytest.mark.parametrize(("size", "overlap"), SIZES)
@pytest.mark.parametrize("rel", SAMPLES)
def test_chunks_are_page_slices_within_budget(rel: str, size: int, overlap: int) -> None:
    doc = load(rel)
    chunks = chunk_document(doc, "d1", chunk_tokens=size, overlap=overlap)
    assert chunks and [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(c.doc_id == "d1" for c in chunks)
    pages = {p.number: p.text for p in doc.pages}
    assert [c.page for c in chunks] == sorted(c.page for c in chunks)
    assert {c.page for c in chunks} == {n for n, t in pages.items() if t.strip()}
    for c in chunks:
        # Exact page text (a citation can be found in its page), never across pages.
        assert c.text and c.text in pages[c.page] and c.text == c.text.strip()
        assert c.tokens == count_tokens(c.text) <= size
    for page in doc.pages:
        spans = chunk_spans(page.text, size, overlap)
        assert covered(page.text, spans), "no text of a page may be lost between chunks"
        for (s1, e1), (s2, e2) in itertools.pairwise(spans):
            assert s1 < s2 and e1 < e2  # always progress
            if overlap == 0:
                assert s2 >= e1
            else:
                assert count_tokens(page.text[s2:e1]) <= overlap


@needs_docs
def test_consecutive_chunks_of_a_page_overlap() -> None:
    doc = load("pdf/docling_multi_page.pdf")
    chunks = chunk_document(doc, "d", chunk_tokens=96, overlap=24)
    pairs = [(a, b) for a, b in itertools.pairwise(chunks) if a.page == b.page]
    assert len(pairs) >= 10
    shared = 0
    for a, b in pairs:
        # b starts inside a: some suffix of a is a prefix of b.
        if any(b.text.startswith(a.text[i:]) for i in range(1, len(a.text))):
            shared += 1
            assert not b.text.startswith(a.text)
    assert shared >= 0.9 * len(pairs)
    # ...but never across a page break.
    for a, b in itertools.pairwise(chunks):
        if a.page != b.page:
            assert not any(b.text.startswith(a.text[i:]) for i in range(len(a.text) - 5))


@needs_docs
def test_citations_point_to_the_right_page() -> None:
    gazette = chunk_document(load("pdf/pt_diario_oficial_pratania_2020-10-26.pdf"), "g")
    hits = [c.page for c in gazette if "data consagrada às" in c.text]
    assert hits and set(hits) == {2}
    sample = chunk_document(load("docx/word_sample.docx"), "s", chunk_tokens=32, overlap=8)
    assert {c.page for c in sample if "Blueberry" in c.text} == {2}
    assert {c.page for c in sample if "cute duckling" in c.text} == {1}


# --- Chinese ----------------------------------------------------------------------------------
@needs_docs
@pytest.mark.parametrize(("size", "sentence_share"), [(256, 0.95), (128, 0.9), (64, 0.6)])
def test_chinese_chunks_end_at_punctuation(size: int, sentence_share: float) -> None:
    doc = load(ZH_DOC)
    page = doc.pages[0].text
    chunks = chunk_document(doc, "zh", chunk_tokens=size, overlap=size // 4)
    sentence = clause = 0
    for c in chunks:
        end = page.find(c.text) + len(c.text)
        at_paragraph_end = end == len(page) or page[end] == "\n"
        sentence += c.text[-1] in "。；！？：" or at_paragraph_end
        clause += c.text[-1] in "。；！？：，、" or at_paragraph_end
        # No chunk starts with punctuation that belongs to the previous sentence.
        assert c.text[0] not in "，。；！？、：）"
        assert "\ufffd" not in c.text
    # Whole sentences when they fit; a long article is cut at a comma, never mid-phrase.
    assert sentence >= sentence_share * len(chunks)
    assert clause >= 0.97 * len(chunks)
    # The estimate counts one token per ideograph, so a chunk is about ``size`` characters.
    assert max(len(c.text) for c in chunks) <= 1.25 * size


def test_cjk_without_any_boundary_is_cut_between_characters() -> None:
    text = "个人信息" * 50  # 200 ideographs, no punctuation, no spaces
    doc = LoadedDocument("x.txt", "text/plain", "0", [Page(1, text)])
    chunks = chunk_document(doc, "x", chunk_tokens=30, overlap=5)
    assert all(c.tokens <= 30 and len(c.text) == c.tokens for c in chunks)
    # Every chunk after the first repeats the last 5 characters of the one before.
    for a, b in itertools.pairwise(chunks):
        assert b.text[:5] == a.text[-5:]
    assert "".join(c.text[5:] if i else c.text for i, c in enumerate(chunks)) == text


def test_parameters_are_validated() -> None:
    doc = LoadedDocument("x.txt", "text/plain", "0", [Page(1, "text")])
    with pytest.raises(ValueError):
        chunk_document(doc, "x", chunk_tokens=16, overlap=16)
    with pytest.raises(ValueError):
        chunk_document(doc, "x", chunk_tokens=1, overlap=0)
    assert chunk_document(LoadedDocument("e", "text/plain", "0", [Page(1, "")]), "e") == []
    assert chunk_document(doc, "x") == [Chunk("x", 0, 1, "text", 1)]


# --- the token estimate -------------------------------------------------------------------------
def test_token_estimate_shape() -> None:
    assert count_tokens("") == 0
    assert count_tokens("个人信息保护法") == 7  # one per ideograph
    assert count_tokens("The cat sat on the mat.") == 7  # six short words and a period
    assert count_tokens("internationalization") == 4  # long words cost more
    assert count_tokens("2021年11月1日") == 7  # 2021 is two tokens (digits go in threes)
    assert count_tokens("PODER EXECUTIVO 1 " + "." * 80) == 4 + 10  # dot leaders are cheap
    assert count_tokens("个人信息，（一）") == 8


def test_split_and_truncate_never_lose_or_break_text() -> None:
    text = "Diário Oficial do Município de Pratânia. 个人信息处理者应当" + "x" * 100 + " fim."
    for budget in (1, 3, 7, 50):
        parts = split_to_tokens(text, budget)
        assert "".join(parts) == text
        assert all(count_tokens(p) <= budget for p in parts)
    assert truncate_to_tokens(text, 3) == "Diário Oficial "  # 1 + 2 (7 letters) tokens
    assert truncate_to_tokens(text, 0) == ""
    tail = text[tail_start(text, 2):]
    assert tail == "fim." and count_tokens(tail) <= 2
