"""The Streamlit web UI, driven by Streamlit's ``AppTest`` against a real running gateway.

The gateway runs over loopback (uvicorn in a thread) with the real multilingual USE embedder
and a real SQLite store; the chat model is the controllable test upstream, whose answers are
numbered per upstream call ("Answer #N to: …"), so a replayed answer is recognisable. The
one widget ``AppTest`` cannot drive is the browser's file picker: the upload tests queue the
file bytes in the session exactly as the page's "Upload and index" button does, and
``scripts/ui_screenshots.py`` exercises the real picker in headless Chromium.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from reprise.ui import context
from reprise.ui.views import documents
from tests_support.gateway import running_gateway

APP = str(Path(__file__).resolve().parents[1] / "src" / "reprise" / "ui" / "app.py")
SAMPLE = "md/pt_querido_diario_toolbox_README.md"
TIMEOUT = 120


@pytest.fixture
def gateway(fake_upstream: Any, use_embedder: Any, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    url, _ = fake_upstream
    with running_gateway(url, tmp_path, embedder=use_embedder, store="sqlite",
                         rag_embedder=use_embedder) as (base, comp):
        monkeypatch.setenv("REPRISE_GATEWAY_URL", base)
        yield base, comp


def app(namespace: str | None = None) -> AppTest:
    """A fresh UI session in its own namespace (the test upstream is shared)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[context.NAMESPACE_KEY] = namespace or f"ui{uuid.uuid4().hex[:10]}"
    return at.run()


def texts(at: AppTest) -> list[str]:
    """Every markdown/caption/alert text on the page."""
    out: list[str] = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success"):
        out += [str(e.value) for e in getattr(at, kind)]
    return out


def page_text(at: AppTest) -> str:
    return "\n".join(texts(at))


def assert_no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def ask(at: AppTest, question: str) -> AppTest:
    at.chat_input[0].set_value(question).run()
    assert_no_exception(at)
    return at


def badges(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown
            if "first token" in str(m.value) or "latency" in str(m.value)]


def answers(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if str(m.value).startswith("Answer #")]


def test_gateway_down_shows_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from reprise.testing.upstream import free_port

    monkeypatch.setenv("REPRISE_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    at = app()
    assert_no_exception(at)
    assert any("The gateway is not answering" in e.value for e in at.error)
    assert at.button(key="retry_gateway").label == "Retry"
    at.button(key="retry_gateway").click().run()  # retrying while still down stays calm
    assert_no_exception(at)
    assert any("not answering" in e.value for e in at.error)


def test_gateway_stopping_mid_session_is_reported(fake_upstream: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = fake_upstream
    with running_gateway(url, tmp_path, store="memory") as (base, _):
        monkeypatch.setenv("REPRISE_GATEWAY_URL", base)
        at = app()
        assert_no_exception(at)
        assert not at.error
    # The gateway is gone now: the next question must explain that, not raise.
    ask(at, "Is anybody there?")
    assert any("not answering" in e.value for e in at.error)


def test_chat_miss_then_exact_hit_then_bypass(gateway: Any) -> None:
    at = app()
    ask(at, "O que são sistemas distribuídos?")
    assert len(badges(at)) == 1 and "miss" in badges(at)[0]
    first = answers(at)[0]
    assert re.match(r"Answer #\d+ to: O que são sistemas distribuídos\?", first)

    ask(at, "O que são sistemas distribuídos?")
    assert "exact hit" in badges(at)[1]
    saved = re.search(r"\*\*(\d+) tokens\*\* saved", badges(at)[1])  # usage the model reported
    assert saved and int(saved.group(1)) > 0
    assert answers(at)[1] == first  # replayed, not asked again

    # Ask it again, bypassing the cache: a fresh upstream answer.
    next(b for b in at.button if str(b.key).startswith("bypass_")).click().run()
    assert_no_exception(at)
    assert "bypass" in badges(at)[2]
    assert answers(at)[2] != first
    assert answers(at)[2].endswith("O que são sistemas distribuídos?")
    # The conversation survives reruns with its badges.
    at.run()
    assert len(badges(at)) == 3


def test_hit_on_an_answer_without_model_usage_shows_the_gateway_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp sends no usage when streaming: the gateway counts, the badge says so."""
    from reprise.testing.upstream import FakeUpstreamState, start_fake_upstream

    server, _ = start_fake_upstream(FakeUpstreamState(stream_usage=False))
    try:
        with running_gateway(server.url + "/v1", tmp_path, store="memory") as (base, _):
            monkeypatch.setenv("REPRISE_GATEWAY_URL", base)
            at = app()
            ask(at, "Quanto tempo demora a entrega no Porto?")
            assert "~" in badges(at)[0] and "(estimated)" in badges(at)[0]
            ask(at, "Quanto tempo demora a entrega no Porto?")
            hit = next(e for e in httpx.get(base + "/admin/events?all=true").json()["data"]
                       if e["tier"] == "exact")
    finally:
        server.stop()
    assert "exact hit" in badges(at)[1]
    saved = re.search(r"\*\*~(\d+) tokens \(estimated\)\*\* saved", badges(at)[1])
    assert saved and hit["tokens_estimated"]
    assert int(saved.group(1)) == hit["saved_tokens"] > 0  # the gateway's count, not chars/4


def test_chat_semantic_hit_shows_similarity_and_matched_question(gateway: Any) -> None:
    """The paraphrase pair the semantic tier's own tests promise to serve from the cache."""
    at = app()
    ask(at, "What is a distributed system?")
    first = answers(at)[0]
    ask(at, "What's a distributed system?")
    assert "semantic hit" in badges(at)[1]
    sim = re.search(r"similarity \*\*([\d.]+)\*\*", badges(at)[1])
    assert sim and 0.0 < float(sim.group(1)) <= 1.0
    assert answers(at)[1] == first
    assert any("Matched the earlier question" in c.value
               and "What is a distributed system?" in c.value for c in at.caption)


def test_chat_upstream_failure_is_shown(gateway: Any) -> None:
    at = app()
    ask(at, "please [fail:503]")
    assert any("refused or failed" in e.value for e in at.error)
    ask(at, "and now a normal question")
    assert "miss" in badges(at)[-1]


def upload(at: AppTest, collection: str, files: list[tuple[str, bytes]]) -> AppTest:
    """Queue files as the page's upload button does; the run uploads and follows the job."""
    at.session_state[documents.UPLOAD_KEY] = {"collection": collection, "files": files}
    at.run()
    assert_no_exception(at)
    return at


def create_collection(at: AppTest, name: str) -> None:
    at.text_input(key="docs_new_name").input(name)
    next(b for b in at.button if b.label == "Create").click().run()
    assert_no_exception(at)
    assert any(f"Collection “{name}” created" in s.value for s in at.success)


def test_documents_create_upload_list_delete(gateway: Any, data_dir: Path) -> None:
    at = app()
    at.switch_page("views/documents.py").run()
    assert_no_exception(at)
    assert any("Create a collection" in i.value for i in at.info)
    create_collection(at, "manuals")
    sample = data_dir / "documents" / SAMPLE
    upload(at, "manuals", [(sample.name, sample.read_bytes()),
                           ("setup.pdf", b"MZ\x90\x00" + b"\x00" * 200)])
    # Per-file progress: both files reached a final state; the bad one says why.
    assert any(f"{sample.name}: done" in str(p.proto.text) for p in at.get("progress"))
    assert any("setup.pdf" in e.value and "executable" in e.value for e in at.error)
    doc_rows = [m.value for m in at.markdown if str(m.value).startswith(sample.name)]
    assert doc_rows, page_text(at)
    delete = [b for b in at.button if str(b.key).startswith("del_doc_")]
    assert len(delete) == 1
    delete[0].click().run()
    assert_no_exception(at)
    assert any(f"Deleted {sample.name}" in s.value for s in at.success)
    assert not [b for b in at.button if str(b.key).startswith("del_doc_")]
    assert any("No documents yet" in i.value for i in at.info)


def test_upload_refused_is_explained(gateway: Any) -> None:
    base, _ = gateway
    at = app()
    at.switch_page("views/documents.py").run()
    create_collection(at, "gone")
    # The collection disappears behind the UI's back: the upload must be refused politely.
    ns = at.session_state[context.NAMESPACE_KEY]
    httpx.delete(f"{base}/v1/collections/gone", headers={"X-Reprise-Namespace": ns})
    upload(at, "gone", [("a.txt", b"some text")])
    assert any("Upload refused" in e.value and "does not exist" in e.value for e in at.error)


def entry_count(at: AppTest) -> int:
    return int(next(m for m in at.metric if m.label == "Entries").value)


def test_cache_page_lists_searches_deletes_and_clears(gateway: Any) -> None:
    base, _ = gateway
    ns = f"ui{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=base, headers={"X-Reprise-Namespace": ns}, timeout=60) as c:
        for q in ("What is the capital of France?", "How do vaccines work?",
                  "Why is the sky blue?"):
            body = {"model": "default", "messages": [{"role": "user", "content": q}]}
            assert c.post("/v1/chat/completions", json=body).status_code == 200
        body["messages"][0]["content"] = "Why is the sky blue?"
        assert c.post("/v1/chat/completions", json=body).headers["x-reprise-cache"] == "exact"
    at = app(ns)
    at.switch_page("views/cache.py").run()
    assert_no_exception(at)
    threshold = next(m for m in at.metric if m.label == "Semantic threshold")
    assert threshold.value == f"{gateway[1].settings.semantic_threshold:.2f}"
    df = at.dataframe[0].value
    assert set(df["question"]) == {"What is the capital of France?", "How do vaccines work?",
                                   "Why is the sky blue?"}
    sky = df[df["question"] == "Why is the sky blue?"].iloc[0]
    assert sky["hits"] == 1 and sky["tier"] == "exact + semantic" and sky["TTL"] == "6 d 23 h"

    at.text_input(key="cache_query").input("vaccines").run()
    assert list(at.dataframe[0].value["question"]) == ["How do vaccines work?"]
    entries = httpx.get(f"{base}/admin/cache", params={"namespace": ns, "q": "vaccines"}).json()
    assert entry_count(at) == 3
    at.selectbox(key="cache_delete_choice_0").set_value(entries["data"][0]["key"]).run()
    at.button(key="cache_delete").click().run()
    assert_no_exception(at)
    assert any("Deleted the entry" in s.value for s in at.success)
    # Every box on the page follows at once: the namespace count, the delete choices.
    assert entry_count(at) == 2
    at.text_input(key="cache_query").input("").run()
    assert len(at.dataframe[0].value) == 2
    box = at.selectbox(key="cache_delete_choice_1")
    assert box.value is None and not any("vaccines" in o for o in box.options)

    at.checkbox(key="cache_confirm_clear").check().run()
    at.button(key="cache_clear").click().run()
    assert_no_exception(at)
    assert any("Cleared 2 entries" in s.value for s in at.success)
    assert any("namespace is empty" in i.value for i in at.info)
    left = httpx.get(f"{base}/admin/cache", params={"namespace": ns}).json()["data"]
    assert left == []


def test_dashboard_plots_hits_and_misses(gateway: Any) -> None:
    at = app()
    for q in ("What is a cache?", "What is a cache?", "What is a cache?", "What is RAG?"):
        ask(at, q)
    at.switch_page("views/dashboard.py").run()
    assert_no_exception(at)
    hit_rate = next(m for m in at.metric if m.label == "Hit rate")
    assert hit_rate.value == "50%"
    saved = next(m for m in at.metric if m.label == "Tokens saved")
    assert int(saved.value.replace(",", "")) > 0
    # The test upstream reports 2 cached prompt tokens per answer, as OpenAI does.
    reused = next(m for m in at.metric if m.label == "Prefix reused")
    assert reused.value.endswith(" tokens") and int(reused.value.split()[0]) > 0
    assert len(at.get("image")) == 3  # hit rate by tier, latency hit vs miss, savings


def test_rag_answer_shows_sources(gateway: Any, data_dir: Path) -> None:
    """Chat with a collection: the answer carries a sources panel (document, page, quote)."""
    pytest.importorskip("reprise.rag.retrieve", reason="RAG retrieval is not installed yet")
    at = app()
    at.switch_page("views/documents.py").run()
    create_collection(at, "gazette")
    pdf = data_dir / "documents" / "pdf" / "docling_multi_page.pdf"
    upload(at, "gazette", [(pdf.name, pdf.read_bytes())])
    at.switch_page("views/chat.py").run()
    at.selectbox(key="chat_collection").set_value("gazette").run()
    ask(at, "Who developed the first word processor?")
    assert "miss" in badges(at)[0]
    sources = [e for e in at.expander if str(e.label).startswith("Sources")]
    assert sources, page_text(at)
    quoted = [m.value for m in sources[0].markdown]
    assert any(pdf.name in q and "page" in q for q in quoted)
    assert any(q.startswith("> ") for q in quoted)
    ask(at, "Who developed the first word processor?")
    assert "exact hit" in badges(at)[1]
    sources = [e for e in at.expander if str(e.label).startswith("Sources")]
    assert len(sources) == 2  # the replayed answer keeps its citations


def test_dashboard_buckets_requests_by_tier_over_time() -> None:
    """The hit-rate plot's data: requests per tier per round time bucket."""
    from reprise.ui import charts

    t0 = 1_700_000_000.0  # a multiple of 10 s
    events = [{"ts": t0 + dt, "tier": tier, "latency_ms": 5.0, "saved_tokens": 0}
              for dt, tier in [(0, "miss"), (1, "exact"), (12, "semantic"), (13, "miss"),
                               (95, "bypass")]]
    starts, counts, size = charts.tier_shares(events)
    assert size == 10 and starts[0] == t0 and len(starts) == 10
    assert (counts["miss"][0], counts["exact"][0]) == (1, 1)
    assert (counts["semantic"][1], counts["miss"][1]) == (1, 1)
    assert counts["bypass"][9] == 1 and sum(counts["bypass"]) == 1
    assert charts.bucket_seconds(3 * 3600) == 300  # 36 bars of 5 min
    summary = charts.summarize(events)
    assert summary.hit_rate == 2 / 5 and summary.by_tier["miss"] == 2


def test_api_keys_missing_key_is_explained_and_user_key_is_limited(
        fake_upstream: Any, use_embedder: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway with API keys: no key → told to enter one; a user key chats and reads its
    cache but may not clear it (an admin key's job), and the page says so."""
    from reprise.api.auth import add_key

    keys = tmp_path / "keys.toml"
    user_key, _ = add_key(keys, "acme", "user", name="acme-app")
    url, _ = fake_upstream
    with running_gateway(url, tmp_path, rag_embedder=use_embedder,
                         api_keys_file=keys) as (base, _):
        monkeypatch.setenv("REPRISE_GATEWAY_URL", base)
        at = app()
        ask(at, "Who needs a key?")
        assert any("needs an API key" in e.value for e in at.error)
        at.text_input(key=context.API_KEY_KEY).input(user_key).run()
        ask(at, "Who needs a key?")
        assert "miss" in badges(at)[-1]
        at.switch_page("views/cache.py").run()
        assert_no_exception(at)
        assert list(at.dataframe[0].value["question"]) == ["Who needs a key?"]
        at.checkbox(key="cache_confirm_clear").check().run()
        at.button(key="cache_clear").click().run()
        assert_no_exception(at)
        assert any("admin key" in e.value for e in at.error)
        assert len(at.dataframe[0].value) == 1  # nothing was cleared


def test_first_run_page_and_its_examples_show_miss_exact_and_semantic(gateway: Any) -> None:
    """The empty chat says what Reprise is and which model answers; each example question
    then gives a miss, asked again an exact hit, and its paraphrase a semantic hit."""
    from reprise.ui.welcome import EXAMPLES

    at = app()
    intro = page_text(at)
    assert "Reprise" in intro and "gateway" in intro
    assert any("Model in use: **fake-model**" in c.value for c in at.caption)
    assert any("What the words mean" in e.label for e in at.expander)
    for i, (_lang, question, paraphrase) in enumerate(EXAMPLES):
        at.button(key=f"example_q_{i}").click().run()
        assert_no_exception(at)
        assert "miss" in badges(at)[-1], question
        at.button(key=f"example_q_{i}").click().run()
        assert "exact hit" in badges(at)[-1], question
        at.button(key=f"example_p_{i}").click().run()
        assert "semantic hit" in badges(at)[-1], (question, paraphrase, at.caption)
    assert not any("What the words mean" in e.label for e in at.expander)


def test_capped_answer_says_where_it_was_cut(fake_upstream: Any, use_embedder: Any,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = fake_upstream
    with running_gateway(url, tmp_path, store="memory",
                         model_defaults={"fake-model": {"max_tokens": 3}}) as (base, _):
        monkeypatch.setenv("REPRISE_GATEWAY_URL", base)
        at = app()
        assert any("is a gateway in front" in str(m.value) for m in at.markdown)
        ask(at, f"Tell me everything about the sea {uuid.uuid4().hex[:6]}")
        # The first typed question hides the first-run panel in the same run.
        assert not any("is a gateway in front" in str(m.value) for m in at.markdown)
        assert "cut at 3 tokens" in badges(at)[0]
        assert any("token cap" in c.value for c in at.caption)


def test_question_too_long_for_the_model_is_refused_clearly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 400 the model gives (here the test model with a 50-token context, which closes a
    stream it cannot take, as llama.cpp's server does) reaches the page before any answer;
    the giant question is folded and no "ask again" is offered."""
    from reprise.testing.upstream import FakeUpstreamState, start_fake_upstream

    server, _ = start_fake_upstream(FakeUpstreamState(context_tokens=50))
    try:
        with running_gateway(server.url + "/v1", tmp_path, store="memory") as (base, _):
            monkeypatch.setenv("REPRISE_GATEWAY_URL", base)
            at = app()
            question = "Why is the sea blue? " * 400
            ask(at, question)
            assert any("refused this question" in e.value
                       and "maximum context length is 50 tokens" in e.value for e in at.error)
            assert not any(str(b.key).startswith("bypass_") for b in at.button)
            shown = [m.value for m in at.markdown if "Why is the sea blue?" in str(m.value)]
            assert shown and all(len(v) < 1000 for v in shown)
            assert any(f"({len(question.strip()):,} characters)" in v for v in shown)
            assert any(e.label == "Show the whole question" for e in at.expander)
    finally:
        server.stop()


def test_collection_names_in_any_alphabet_and_a_refused_name_is_kept(gateway: Any) -> None:
    from reprise.rag import names

    at = app()
    at.switch_page("views/documents.py").run()
    assert any(names.RULE in c.value for c in at.caption)  # the rule, before any submit
    create_collection(at, "públicos")
    create_collection(at, "合同")
    at.text_input(key="docs_new_name").input("contratos 2024!")
    next(b for b in at.button if b.label == "Create").click().run()
    assert_no_exception(at)
    assert any("not a valid collection name" in e.value and names.RULE in e.value
               for e in at.error)
    assert at.text_input(key="docs_new_name").value == "contratos 2024!"


def test_upload_lines_read_well() -> None:
    """One page is "1 page"; a failed file names itself once and shows no error code; the
    picker's unsupported files are named (the button refuses while they are chosen)."""
    done = {"filename": "a.md", "state": "done", "pages": 1, "chunks": 3}
    assert documents._file_line(done) == "a.md: done (1 page, 3 chunks)"
    empty = {"filename": "empty.md", "state": "failed",
             "error": {"code": "empty", "message": "empty.md is empty"}}
    assert documents.file_error(empty) == "empty.md is empty"
    exe = {"filename": "setup.pdf", "state": "failed",
           "error": {"code": "unsupported", "message": "an executable, not a document"}}
    assert documents.file_error(exe) == "setup.pdf: an executable, not a document"
    assert documents.rejected_files(["a.pdf", "setup.exe", "notes.MD", "README"]) == [
        "setup.exe", "README"]


def test_dashboard_counts_failed_requests_once_whatever_the_path(gateway: Any) -> None:
    """A failure of the model server is one failed request on the dashboard, streamed (the
    chat page) or not (an app), and the same number as the model server's errors."""
    base, _ = gateway
    ns = f"ui{uuid.uuid4().hex[:10]}"
    at = app(ns)
    ask(at, f"please [fail:503] {uuid.uuid4().hex[:6]}")
    r = httpx.post(f"{base}/v1/chat/completions", headers={"X-Reprise-Namespace": ns},
                   json={"model": "fake-model", "messages": [
                       {"role": "user", "content": f"[fail:503] {uuid.uuid4().hex[:6]}"}]})
    assert r.status_code == 502
    at.switch_page("views/dashboard.py").run()
    assert_no_exception(at)
    failed = next(m for m in at.metric if m.label == "Failed requests")
    events = httpx.get(f"{base}/admin/events", params={"all": "true"}).json()["data"]
    assert int(failed.value) == sum(1 for e in events if e["status"] >= 400) >= 2
    assert len(at.get("image")) == 3  # hit rate, latency, failed requests by status


def test_charts_count_whole_requests_in_one_style() -> None:
    from reprise.ui import charts

    events = [{"ts": 1000.0 + i, "tier": "exact" if i % 2 else "miss",
               "latency_ms": 5.0 + i, "saved_tokens": 10, "status": 200} for i in range(3)]
    figures = [charts.hit_rate_figure(events), charts.latency_figure(events),
               charts.savings_figure(events, 0.001), charts.errors_figure({"502": 1})]
    assert {tuple(f.get_size_inches()) for f in figures[:3]} == {charts.WIDE}
    for fig in figures[1:]:
        fig.canvas.draw()
        ax = fig.axes[0]
        ticks = ax.get_xticks() if fig is figures[3] else ax.get_yticks()
        assert all(float(t).is_integer() for t in ticks), ticks


def test_cache_rows_of_one_question_say_how_they_differ(gateway: Any) -> None:
    base, _ = gateway
    ns = f"ui{uuid.uuid4().hex[:10]}"
    q = "Why is the sky blue?"
    with httpx.Client(base_url=base, headers={"X-Reprise-Namespace": ns}, timeout=60) as c:
        for messages in ([{"role": "user", "content": q}],
                         [{"role": "system", "content": "Answer like a pirate."},
                          {"role": "user", "content": q}]):
            r = c.post("/v1/chat/completions", json={"model": "default", "messages": messages})
            assert r.status_code == 200
    at = app(ns)
    at.switch_page("views/cache.py").run()
    assert_no_exception(at)
    df = at.dataframe[0].value
    rows = df[df["question"] == q]
    assert len(rows) == 2 and rows["context"].nunique() == 2
    assert all(len(c) == 8 for c in rows["context"])
    assert {"prompt tokens", "answer tokens"} <= set(df.columns)


def test_miss_explanations_read_as_sentences() -> None:
    from reprise.ui.format import lookup_caption

    assert lookup_caption({"stage": "empty", "hit": False,
                           "reason": "no stored question in this partition yet"}) == (
        "Semantic cache: nothing comparable asked before (same model, system prompt and "
        "conversation)")
    caption = lookup_caption({"stage": "verifier", "hit": False, "similarity": 0.727,
                              "nearest": "什么是光合作用？",
                              "reason": "verifier 0.05 < cutoff 0.83: judged a different "
                                        "question"})
    assert caption == ("closest: “什么是光合作用？” 0.73 — verifier 0.05 < cutoff 0.83: "
                       "judged a different question")
    assert lookup_caption(None) is None
