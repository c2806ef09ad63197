"""Documents page: collections, multi-file upload with per-file progress, deletion.

An upload is a list of (name, bytes) sent in one multipart request, then the ingestion job
is followed with one progress bar per file. It comes from the file picker's button or from
``UPLOAD_KEY`` in the session (how tests hand over files: ``AppTest`` has no file picker).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import streamlit as st

from reprise.rag import names
from reprise.ui import context, flash, page
from reprise.ui.client import TERMINAL_JOB_STATES, GatewayError
from reprise.ui.messages import explain

COLLECTION_KEY = "docs_collection"
UPLOAD_KEY = "docs_pending_upload"  # {"collection": str, "files": [(name, bytes), ...]}
JOB_KEY = "docs_last_job"  # {"collection": str, "job_id": str}
UPLOADER_GEN_KEY = "docs_uploader_gen"
NEW_NAME_KEY = "docs_new_name"
FILE_TYPES = ["pdf", "docx", "html", "htm", "md", "markdown", "txt"]
POLL_SECONDS = 0.4
POLL_LIMIT_SECONDS = 900.0
_FILE_PROGRESS = {"queued": 0.0, "running": 0.5, "done": 1.0, "duplicate": 1.0, "failed": 1.0}


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _file_line(f: dict[str, Any]) -> str:
    state = f.get("state", "?")
    text = f"{f.get('filename')}: {state}"
    if state in ("done", "duplicate"):
        text += (f" ({plural(int(f.get('pages') or 0), 'page')}, "
                 f"{plural(int(f.get('chunks') or 0), 'chunk')})")
    return text


def file_error(f: dict[str, Any]) -> str:
    """"setup.pdf: an executable, not a document": the gateway's message, naming the file
    once (its message often names it already), without the code meant for programs."""
    name = str(f.get("filename") or "?")
    message = str((f.get("error") or {}).get("message") or "failed")
    return message if message.startswith(name) else f"{name}: {message}"


def _show_file(f: dict[str, Any], slot: Any) -> None:
    """A bar while a file is queued, running or done; a failed file shows its error
    instead (a full bar would read as success)."""
    state = f.get("state", "queued")
    if state == "failed":
        slot.error(file_error(f), icon=":material/error:")
    elif state == "duplicate":
        slot.info(f"{f.get('filename')}: already in the collection, not added again",
                  icon=":material/content_copy:")
    else:
        slot.progress(_FILE_PROGRESS.get(state, 0.0), text=_file_line(f))


def _show_job(job: dict[str, Any], slots: list[Any] | None = None) -> None:
    """One line per file: its progress bar, or why it failed."""
    for i, f in enumerate(job.get("files") or []):
        _show_file(f, slots[i] if slots is not None and i < len(slots) else st.empty())


def _follow(ctx: context.UIContext, job: dict[str, Any]) -> dict[str, Any]:
    """Poll the job until it ends, redrawing one progress bar per file."""
    files = job.get("files") or []
    names = [f if isinstance(f, str) else f.get("filename") for f in files]
    with st.status(f"Indexing {len(names)} file(s) …", expanded=True) as status:
        bars = [st.empty() for _ in names]
        for bar, n in zip(bars, names, strict=True):
            bar.progress(0.0, text=f"{n}: queued")
        deadline = time.monotonic() + POLL_LIMIT_SECONDS
        current = job
        while time.monotonic() < deadline:
            current = ctx.client.job(job["job_id"])
            _show_job(current, bars)
            if current.get("state") in TERMINAL_JOB_STATES:
                break
            time.sleep(POLL_SECONDS)
        state = current.get("state")
        label = {"done": "Indexed", "partial": "Indexed with errors",
                 "failed": "Indexing failed"}.get(str(state), "Still indexing")
        status.update(label=f"{label}: {len(names)} file(s)",
                      state="complete" if state == "done" else
                      ("error" if state in ("failed", "partial") else "running"))
    return current


def rejected_files(filenames: list[str]) -> list[str]:
    """The chosen files whose extension the gateway does not ingest."""
    return [n for n in filenames if n.rsplit(".", 1)[-1].lower() not in FILE_TYPES
            or "." not in n]


def _upload(ctx: context.UIContext, pending: dict[str, Any]) -> None:
    collection, files = pending["collection"], pending["files"]
    size = sum(len(data) for _, data in files)
    try:
        with st.spinner(f"Uploading {len(files)} file(s), {size / 1e6:.1f} MB …"):
            job = ctx.client.upload(collection, files)
    except GatewayError as exc:
        st.error(f"Upload refused. {explain(exc)}", icon=":material/error:")
        return
    st.session_state[JOB_KEY] = {"collection": collection, "job_id": job["job_id"],
                                 "fresh": True}
    st.session_state[UPLOADER_GEN_KEY] = st.session_state.get(UPLOADER_GEN_KEY, 0) + 1
    _follow(ctx, job)
    # Redraw with the new documents, counts and an empty file picker; the job's outcome
    # stays on screen (``_last_job``).
    st.rerun()


def _last_job(ctx: context.UIContext, collection: str) -> None:
    """The latest upload's outcome stays visible (and live, if it is still running)."""
    last = st.session_state.get(JOB_KEY)
    if not last or last["collection"] != collection:
        return
    try:
        job = ctx.client.job(last["job_id"])
    except GatewayError:
        return
    fresh = last.pop("fresh", False)
    label = {"done": "indexed", "partial": "indexed with errors",
             "failed": "failed"}.get(str(job.get("state")), "indexing …")
    with st.expander(f"Last upload: {len(job.get('files') or [])} file(s) {label}",
                     expanded=fresh or job.get("state") not in TERMINAL_JOB_STATES):
        _show_job(job)
        if job.get("state") not in TERMINAL_JOB_STATES:
            st.button("Refresh", key="docs_job_refresh")


def _create(ctx: context.UIContext) -> None:
    """Form callback (runs before the page is drawn, so it may empty the field): the name
    is checked against the gateway's own rule first, and kept in the field on any error so
    it can be corrected rather than retyped."""
    name = names.normalize(str(st.session_state.get(NEW_NAME_KEY) or ""))
    if not name:
        return
    if not names.is_valid(name):
        flash.flash("error", f"“{name}” is not a valid collection name: use {names.RULE}.")
        return
    try:
        ctx.client.create_collection(name)
    except GatewayError as exc:
        flash.flash("error", f"Could not create “{name}”: {explain(exc)}")
        return
    st.session_state[COLLECTION_KEY] = name
    st.session_state[NEW_NAME_KEY] = ""
    flash.flash("success", f"Collection “{name}” created.")


def _create_form(ctx: context.UIContext) -> None:
    with st.form("new_collection", clear_on_submit=False, border=False):
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        left.text_input("New collection", placeholder="e.g. contracts, públicos, 合同",
                        key=NEW_NAME_KEY, help=f"A collection name is {names.RULE}.")
        right.form_submit_button("Create", icon=":material/add:", on_click=_create,
                                 args=(ctx,))
        st.caption(f"Names: {names.RULE}.")


def _documents(ctx: context.UIContext, collection: str) -> None:
    docs = ctx.client.documents(collection)
    st.subheader(f"Documents in “{collection}”")
    if not docs:
        st.info("No documents yet: upload some above.")
        return
    head = st.columns([4, 1, 1, 2, 2, 1])
    for col, label in zip(head, ["file", "pages", "chunks", "type", "added"], strict=False):
        col.markdown(f"**{label}**")
    for d in docs:
        row = st.columns([4, 1, 1, 2, 2, 1], vertical_alignment="center")
        row[0].markdown(d["filename"] + (f"  \n:gray[{d['title']}]" if d.get("title") else ""))
        row[1].markdown(str(d["pages"]))
        row[2].markdown(str(d["chunks"]))
        row[3].markdown(str(d.get("mime", "")).split("/")[-1])
        row[4].markdown(datetime.fromtimestamp(d["created_at"]).strftime("%Y-%m-%d %H:%M"))
        if row[5].button("", key=f"del_doc_{d['id']}", icon=":material/delete:",
                         help=f"Delete {d['filename']}"):
            try:
                ctx.client.delete_document(collection, d["id"])
                flash.flash("success", f"Deleted {d['filename']}.")
            except GatewayError as exc:
                flash.flash("error", f"Could not delete {d['filename']}: {explain(exc)}")
            st.rerun()


def _danger_zone(ctx: context.UIContext, collection: str) -> None:
    def drop() -> str:
        ctx.client.delete_collection(collection)
        return f"Collection “{collection}” deleted."

    page.confirmed_action(
        title="Delete this collection",
        confirm=f"Yes, delete “{collection}” and all its documents",
        button="Delete collection", confirm_key="docs_confirm_drop", button_key="docs_drop",
        action=drop, failure=f"Could not delete “{collection}”", forget=[COLLECTION_KEY])


def _page(ctx: context.UIContext) -> None:
    try:
        collections = ctx.client.collections()
    except GatewayError as exc:
        if exc.code == "rag_disabled":
            st.info("Document chat is not enabled on this gateway (install the `rag` extra).")
            return
        raise
    _create_form(ctx)
    pending = st.session_state.pop(UPLOAD_KEY, None)
    if not collections:
        if pending:  # its collection was deleted meanwhile: the gateway says so
            _upload(ctx, pending)
        st.info("Create a collection to upload documents into.")
        return
    names = [c["name"] for c in collections]
    if st.session_state.get(COLLECTION_KEY) not in names:
        st.session_state[COLLECTION_KEY] = names[0]
    collection = st.selectbox("Collection", names, key=COLLECTION_KEY)
    info = next(c for c in collections if c["name"] == collection)
    a, b, c = st.columns(3)
    a.metric("Documents", info.get("documents", 0))
    b.metric("Chunks", info.get("chunks", 0))
    c.metric("Version", info.get("version", 0),
             help="Bumped by every change; answers cached on older versions are not reused")

    gen = st.session_state.get(UPLOADER_GEN_KEY, 0)
    # The picker takes any file, so the page can name the ones it will not upload and refuse
    # to go on while they are chosen; Streamlit's own type filter dropped them silently.
    chosen = st.file_uploader("Add documents (PDF, DOCX, HTML, Markdown, text)",
                              accept_multiple_files=True, key=f"docs_uploader_{gen}")
    refused = rejected_files([f.name for f in chosen or []])
    for name in refused:
        st.error(f"{name}: not a supported document type. Remove it from the list above to "
                 f"upload the others (supported: {', '.join(FILE_TYPES)}).",
                 icon=":material/block:")
    if st.button("Upload and index", icon=":material/upload:",
                 disabled=not chosen or bool(refused), type="primary", key="docs_upload",
                 help="Remove the files marked as unsupported first" if refused else None):
        pending = {"collection": collection,
                   "files": [(f.name, f.getvalue()) for f in chosen or []]}
    if pending:
        _upload(ctx, pending)
    else:
        _last_job(ctx, collection)
    _documents(ctx, collection)
    _danger_zone(ctx, collection)


def render() -> None:
    page.render("Documents", _page)


if __name__ == "__main__":  # run as a page script by st.navigation
    render()
