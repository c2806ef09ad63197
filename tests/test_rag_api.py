"""Document chat over real HTTP with the real sample documents and the real e5 embedder.

The chat model here is the controllable test upstream (it records the prompt it was sent,
so the test can check the numbered sources); the real llama.cpp model is exercised by
``test_rag_with_real_model``.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests_support.gateway import running_gateway, sse_events

DOCS = ["pdf/pt_diario_oficial_pratania_2020-10-26.pdf", "pdf/docling_multi_page.pdf",
        "md/zh_personal_information_protection_law_2021.md", "docx/word_sample.docx",
        "html/wiki_duck.html"]


@pytest.fixture(scope="module")
def e5() -> Any:
    from reprise.embed.e5 import E5Embedder

    return E5Embedder()


@pytest.fixture
def gw(fake_upstream: Any, tmp_path: Path, e5: Any) -> Iterator[tuple[httpx.Client, Any, Any]]:
    url, state = fake_upstream
    with running_gateway(url, tmp_path, store="sqlite", max_upload_bytes=2_000_000,
                         rag_embedder=e5) as (base, comp):
        with httpx.Client(base_url=base, timeout=120,
                          headers={"X-Reprise-Namespace": f"t{uuid.uuid4().hex[:8]}"}) as c:
            yield c, comp, state


def upload(client: httpx.Client, coll: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
    r = client.post(f"/v1/collections/{coll}/documents",
                    files=[("files", (name, io.BytesIO(data))) for name, data in files])
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "partial", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def read(data_dir: Path, rel: str) -> bytes:
    return (data_dir / "documents" / rel).read_bytes()


def chat(client: httpx.Client, coll: str, question: str, **extra: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={
        "model": "fake-model", "collection": coll,
        "messages": [{"role": "user", "content": question}], **extra})


def test_ingest_mixed_upload_per_file_errors(gw: Any, data_dir: Path) -> None:
    client, _, _ = gw
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 409
    from pypdf import PdfWriter

    enc = PdfWriter()
    enc.add_blank_page(200, 200)
    enc.encrypt("secret")
    buf = io.BytesIO()
    enc.write(buf)
    good = [(Path(p).name, read(data_dir, p)) for p in DOCS[:3]]
    bad = [("setup.pdf", b"MZ\x90\x00" + b"\x00" * 200), ("empty.txt", b""),
           ("locked.pdf", buf.getvalue()), ("big.txt", b"a " * 1_500_000)]
    job = upload(client, "docs", good + bad)
    assert job["state"] == "partial"
    by_name = {f["filename"]: f for f in job["files"]}
    for name, _ in good:
        assert by_name[name]["state"] == "done", by_name[name]
        assert by_name[name]["chunks"] > 0 and by_name[name]["pages"] >= 1
    codes = {name: by_name[name]["error"]["code"] for name, _ in bad}
    assert codes == {"setup.pdf": "unsupported_type", "empty.txt": "empty",
                     "locked.pdf": "encrypted_pdf", "big.txt": "too_large"}
    assert all(by_name[n]["error"]["message"] for n, _ in bad)
    docs = client.get("/v1/collections/docs/documents").json()["data"]
    assert sorted(d["filename"] for d in docs) == sorted(n for n, _ in good)
    pdf = next(d for d in docs if d["filename"].startswith("pt_diario"))
    assert pdf["pages"] == 8
    # the same bytes again are recognised, not ingested twice
    again = upload(client, "docs", good[:1])
    assert again["files"][0]["state"] == "duplicate"
    assert len(client.get("/v1/collections/docs/documents").json()["data"]) == 3


def test_search_and_citations_point_to_the_right_page(gw: Any, data_dir: Path) -> None:
    from reprise.rag.ingest import load_document

    client, _, state = gw
    client.post("/v1/collections", json={"name": "c"})
    upload(client, "c", [(Path(p).name, read(data_dir, p)) for p in DOCS])
    cases = [
        ("Qual feriado foi transferido pelo decreto nº 56?", DOCS[0], 2),
        ("Which word processor used the Macintosh graphical capabilities?", DOCS[1], 2),
        ("自然人的个人信息受法律保护吗？", DOCS[2], 1),
    ]
    for question, doc, page in cases:
        found = client.post("/v1/collections/c/search", json={"query": question, "k": 5}).json()
        top = found["data"][0]
        assert top["document"] == Path(doc).name and top["page"] == page, (question, top)
        assert top["legs"], "which retrieval legs found it"
        r = chat(client, "c", question)
        assert r.status_code == 200, r.text
        cites = r.json()["citations"]
        # Sources are numbered in document order (prompt-cache friendly), so the best one
        # is the one with the highest retrieval score, not necessarily [1].
        best = max(cites, key=lambda c: c["score"]) if cites else {}
        assert best and best["document"] == Path(doc).name and best["page"] == page
        assert [c["index"] for c in cites] == list(range(1, len(cites) + 1))
        loaded = load_document(doc, read(data_dir, doc), max_bytes=10**9)
        page_text = loaded.pages[page - 1].text
        for c in cites:
            if c["document"] == Path(doc).name:
                src = loaded.pages[c["page"] - 1].text
                assert c["text"].strip()[:80] in src  # the quoted chunk is on that page
        assert best["text"].strip()[:60] in page_text
        prompt = state.requests[-1]["messages"][0]["content"]
        assert f"[{best['index']}] ({best['document']}, page {page})" in prompt
        assert best["text"].strip()[:40] in prompt


def test_rag_answers_are_cached_per_collection_version(gw: Any, data_dir: Path) -> None:
    client, _comp, _state = gw
    client.post("/v1/collections", json={"name": "v"})
    upload(client, "v", [("docling.pdf", read(data_dir, DOCS[1]))])
    q = "When did word processing software become sophisticated?"
    first = chat(client, "v", q)
    assert first.headers["x-reprise-cache"] == "miss"
    hit = chat(client, "v", q)
    assert hit.headers["x-reprise-cache"] == "exact"
    assert hit.json()["citations"] == first.json()["citations"]
    streamed = sse_events(chat(client, "v", q, stream=True).text)
    assert streamed[0]["citations"] == first.json()["citations"]
    # adding a document bumps the version: the old answer is not served again
    job = upload(client, "v", [("word.docx", read(data_dir, DOCS[3]))])
    assert job["state"] == "done"
    assert chat(client, "v", q).headers["x-reprise-cache"] == "miss"
    assert chat(client, "v", q).headers["x-reprise-cache"] == "exact"
    doc_id = job["files"][0]["document_id"]
    assert client.delete(f"/v1/collections/v/documents/{doc_id}").status_code == 200
    after = chat(client, "v", q)
    assert after.headers["x-reprise-cache"] == "miss"
    found = client.post("/v1/collections/v/search", json={"query": "duck swimming lake",
                                                          "k": 10}).json()["data"]
    assert all(r["document_id"] != doc_id for r in found)


def test_recreated_collection_does_not_serve_the_old_answers(gw: Any, data_dir: Path) -> None:
    client, _, _ = gw
    client.post("/v1/collections", json={"name": "r"})
    upload(client, "r", [("docling.pdf", read(data_dir, DOCS[1]))])
    q = "Which word processor was popular among legal professionals?"
    assert chat(client, "r", q).headers["x-reprise-cache"] == "miss"
    assert chat(client, "r", q).headers["x-reprise-cache"] == "exact"
    # Same name, same number of changes (so the same version number), other content.
    assert client.delete("/v1/collections/r").status_code == 200
    client.post("/v1/collections", json={"name": "r"})
    upload(client, "r", [("word.docx", read(data_dir, DOCS[3]))])
    again = chat(client, "r", q)
    assert again.headers["x-reprise-cache"] == "miss"
    assert all(c["document"] == "word.docx" for c in again.json()["citations"])


def test_nothing_relevant_says_so_without_inventing(gw: Any, data_dir: Path) -> None:
    client, _, state = gw
    client.post("/v1/collections", json={"name": "law"})
    upload(client, "law", [("law.md", read(data_dir, DOCS[2]))])
    calls = state.calls
    r = chat(client, "law", "What is the boiling point of liquid nitrogen in Kelvin?")
    assert r.status_code == 200
    text = r.json()["choices"][0]["message"]["content"]
    assert "could not find" in text and r.json()["citations"] == []
    assert state.calls == calls, "no model call when there is nothing to ground on"


def test_unknown_collection_and_bad_requests(gw: Any) -> None:
    client, _, _ = gw
    assert chat(client, "nope", "hi").status_code == 404
    assert chat(client, "nope", "hi").json()["error"]["code"] == "collection_not_found"
    r = client.post("/v1/collections/nope/documents", files=[("files", ("a.txt", b"x"))])
    assert r.status_code == 404
    assert client.post("/v1/collections/nope/search", json={"query": "x"}).status_code == 404
    assert client.get("/v1/jobs/job_missing").status_code == 404
    assert client.post("/v1/collections", json={"name": "../x"}).status_code == 400
    client.post("/v1/collections", json={"name": "ok"})
    assert client.post("/v1/collections/ok/documents", json={"x": 1}).status_code == 415
    assert client.post("/v1/collections/ok/search", json={"query": ""}).status_code == 400
    assert client.delete("/v1/collections/ok").status_code == 200
    assert client.get("/v1/collections").json()["data"] == []


def test_rag_with_real_model(llama_url: str, tmp_path: Path, data_dir: Path, e5: Any) -> None:
    """End to end with llama.cpp + SmolLM2: a streamed grounded answer with citations."""
    from reprise.services.llama_server import MODEL_ALIAS

    with running_gateway(llama_url, tmp_path, upstream_model=MODEL_ALIAS,
                         rag_embedder=e5) as (base, _), \
            httpx.Client(base_url=base, timeout=300) as client:
        client.post("/v1/collections", json={"name": "wp"})
        upload(client, "wp", [("docling.pdf", read(data_dir, DOCS[1]))])
        r = client.post("/v1/chat/completions", json={
            "model": MODEL_ALIAS, "collection": "wp", "stream": True, "max_tokens": 48,
            "messages": [{"role": "user", "content": "What is WordPerfect?"}]})
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        assert events[0]["citations"][0]["document"] == "docling.pdf"
        text = "".join((c.get("delta") or {}).get("content") or ""
                       for e in events if isinstance(e, dict) for c in e.get("choices", []))
        assert text.strip()


def test_cli_client_ingests_with_progress_and_per_file_errors(gw: Any, data_dir: Path,
                                                              tmp_path: Path) -> None:
    """``reprise ingest``'s client against the real gateway: it creates the collection,
    uploads in batches, follows the jobs and reports every file's outcome."""
    from rich.console import Console

    from reprise.rag.client import ingest_files

    client, _, _ = gw
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "notes.md").write_text("# Notas\n\nO feriado foi transferido para segunda.\n")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")  # not a document type: not walked
    law = data_dir / "documents" / DOCS[2]
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    base = str(client.base_url)
    # The client sends no namespace header, so it works in the default namespace.
    ok = ingest_files(base, "cli", [folder, law], console, batch_files=1)
    assert ok, out.getvalue()
    text = out.getvalue()
    assert "✓ notes.md: 1 pages" in text and f"✓ {law.name}" in text
    assert "ignored.bin" not in text
    with httpx.Client(base_url=base, timeout=30) as plain:
        docs = plain.get("/v1/collections/cli/documents").json()["data"]
        assert sorted(d["filename"] for d in docs) == sorted(["notes.md", law.name])
    # again: duplicates are fine; a bad file and a missing path make it fail, with reasons
    (folder / "setup.pdf").write_bytes(b"MZ" + bytes(range(256)))
    out.seek(0)
    out.truncate()
    ok = ingest_files(base, "cli", [folder, tmp_path / "missing.pdf"], console)
    text = out.getvalue()
    assert not ok
    assert "missing.pdf: no such file or directory" in text
    assert "= notes.md: already in the collection" in text
    assert "✗ setup.pdf: unsupported_type:" in text
    # an unreachable gateway is reported, not raised
    out.seek(0)
    out.truncate()
    assert not ingest_files("http://127.0.0.1:9", "cli", [folder], console)
    assert "✗" in out.getvalue()


def test_documents_live_in_redis_when_the_store_is_redis(fake_upstream: Any, tmp_path: Path,
                                                         e5: Any, redis_url: str,
                                                         data_dir: Path) -> None:
    from reprise.rag.chunk_index_redis import RedisChunkIndex

    url, _ = fake_upstream
    prefix = f"t{uuid.uuid4().hex[:8]}"
    with running_gateway(url, tmp_path, store="redis", redis_url=redis_url,
                         redis_prefix=prefix, rag_embedder=e5) as (base, comp), \
            httpx.Client(base_url=base, timeout=120) as client:
        index = comp.extras["rag"].index
        assert isinstance(index, RedisChunkIndex) and index.prefix == f"{prefix}:rag"
        client.post("/v1/collections", json={"name": "law"})
        job = upload(client, "law", [("law.md", read(data_dir, DOCS[2]))])
        assert job["state"] == "done"
        found = client.post("/v1/collections/law/search",
                            json={"query": "敏感个人信息包括哪些？", "k": 3}).json()["data"]
        assert found[0]["document"] == "law.md" and "敏感个人信息" in found[0]["text"]
        assert set(found[0]["legs"]) == {"dense", "bm25"}
        # a second replica (own data directory, same Redis) serves the same collection
        with running_gateway(url, tmp_path / "replica", store="redis", redis_url=redis_url,
                             redis_prefix=prefix, rag_embedder=e5) as (base2, _), \
                httpx.Client(base_url=base2, timeout=120) as replica:
            assert replica.get("/v1/collections/law").json() == \
                client.get("/v1/collections/law").json()
            again = replica.post("/v1/collections/law/search",
                                 json={"query": "敏感个人信息包括哪些？", "k": 3}).json()["data"]
            assert [r["chunk_id"] for r in again] == [r["chunk_id"] for r in found]
        doc_id = job["files"][0]["document_id"]
        assert client.delete(f"/v1/collections/law/documents/{doc_id}").status_code == 200
        assert client.post("/v1/collections/law/search",
                           json={"query": "敏感个人信息", "k": 3}).json()["data"] == []


@pytest.mark.parametrize("name", ["públicos", "合同", "Verträge-2024", "e\u0301tudes"])
def test_collection_names_in_any_alphabet(gw: Any, name: str) -> None:
    """Letters of any alphabet are letters; a decomposed accent is stored composed (NFC)."""
    import unicodedata

    client, _, _ = gw
    r = client.post("/v1/collections", json={"name": name})
    assert r.status_code == 201, r.text
    stored = unicodedata.normalize("NFC", name)
    assert r.json()["name"] == stored
    assert any(c["name"] == stored for c in client.get("/v1/collections").json()["data"])
    upload(client, stored, [("a.txt", "algum texto sobre contratos públicos".encode())])
    assert client.delete(f"/v1/collections/{stored}").status_code == 200


@pytest.mark.parametrize("name", ["", "-x", "_x", "a b", "a/b", "x" * 65, "dois!"])
def test_bad_collection_names_get_the_rule(gw: Any, name: str) -> None:
    from reprise.rag import names

    client, _, _ = gw
    r = client.post("/v1/collections", json={"name": name})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == f"a collection name must be {names.RULE}"
