"""Uploading files to a running gateway's collection, with progress (``reprise ingest``).

A client of the public HTTP API only (``POST /v1/collections``, ``POST
/v1/collections/{name}/documents``, ``GET /v1/jobs/{id}``), so it works against any
gateway, local or remote. Files go up in batches (at most ``batch_files`` files or
``batch_bytes`` bytes per request) and each batch's job is polled until it finishes; a
progress bar counts files and every file gets one line with its outcome, the error code and
message for the ones the gateway refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

SUPPORTED = {".pdf", ".docx", ".html", ".htm", ".xhtml", ".md", ".markdown", ".txt", ".text",
             ".mdown", ".mkd"}
FINISHED = ("done", "partial", "failed")


class IngestClientError(RuntimeError):
    """The gateway refused the request as a whole (unknown collection, bad name, down)."""


def expand(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Files to upload (directories walked for supported types) and problems with paths."""
    files: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in SUPPORTED))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or directory")
    return list(dict.fromkeys(files)), problems


def batches(files: Sequence[Path], max_files: int, max_bytes: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    size = 0
    for path in files:
        n = path.stat().st_size
        if batch and (len(batch) >= max_files or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += n
    if batch:
        yield batch


def _error(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return f"{resp.status_code} {err.get('code')}: {err.get('message')}"
    except ValueError:
        return f"{resp.status_code}: {resp.text[:200]}"


def ensure_collection(client: httpx.Client, name: str) -> None:
    resp = client.post("/v1/collections", json={"name": name})
    if resp.status_code not in (201, 409):
        raise IngestClientError(f"cannot create collection {name!r}: {_error(resp)}")


def upload(client: httpx.Client, collection: str, batch: Sequence[Path]) -> str:
    """Sends one batch; returns its job id."""
    with ExitStack() as stack:
        parts = [("files", (p.name, stack.enter_context(p.open("rb")))) for p in batch]
        resp = client.post(f"/v1/collections/{collection}/documents", files=parts)
    if resp.status_code != 202:
        raise IngestClientError(f"upload to {collection!r} refused: {_error(resp)}")
    return str(resp.json()["job_id"])


def ingest_files(gateway_url: str, collection: str, paths: Sequence[Path],
                 console: Console | None = None, *, api_key: str | None = None,
                 batch_files: int = 16, batch_bytes: int = 64 * 1024 * 1024,
                 poll_seconds: float = 0.3, timeout: float = 3600.0,
                 transport: httpx.BaseTransport | None = None) -> bool:
    """Uploads ``paths`` into ``collection`` (created if missing); True if every file is in.

    A file the gateway already holds (same bytes) counts as in. Problems are printed to
    ``console``, never raised, except that a gateway that cannot be reached at all returns
    False after saying so.
    """
    console = console or Console(stderr=True)
    files, problems = expand(paths)
    for problem in problems:
        console.print(f"[red]✗[/red] {problem}")
    if not files:
        console.print("[red]no files to ingest[/red]")
        return False
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    ok = not problems
    kwargs: dict[str, Any] = {"base_url": gateway_url.rstrip("/"), "headers": headers,
                              "timeout": httpx.Timeout(60.0, write=600.0)}
    if transport is not None:
        kwargs["transport"] = transport
    try:
        with httpx.Client(**kwargs) as client, Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                console=console, transient=False) as progress:
            ensure_collection(client, collection)
            task = progress.add_task(f"ingest → {collection}", total=len(files), detail="")
            for batch in batches(files, batch_files, batch_bytes):
                job_id = upload(client, collection, batch)
                ok &= _follow(client, job_id, progress, task, console, poll_seconds, timeout)
    except (httpx.HTTPError, IngestClientError) as exc:
        console.print(f"[red]✗ {exc}[/red]")
        return False
    return ok


def _follow(client: httpx.Client, job_id: str, progress: Progress, task: Any,
            console: Console, poll_seconds: float, timeout: float) -> bool:
    """Polls one job, advancing the bar as its files finish; True if all of them are in."""
    reported: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/v1/jobs/{job_id}")
        if resp.status_code != 200:
            raise IngestClientError(f"job {job_id}: {_error(resp)}")
        job = resp.json()
        running = [f["filename"] for f in job["files"] if f["state"] == "running"]
        progress.update(task, detail=running[0] if running else "")
        for i, f in enumerate(job["files"]):
            if i in reported or f["state"] in ("queued", "running"):
                continue
            reported.add(i)
            progress.advance(task)
            if f["state"] == "done":
                console.print(f"[green]✓[/green] {f['filename']}: {f['pages']} pages, "
                              f"{f['chunks']} chunks")
            elif f["state"] == "duplicate":
                console.print(f"[yellow]=[/yellow] {f['filename']}: already in the collection"
                              f" ({f['document_id']})")
            else:
                err = f.get("error") or {}
                console.print(f"[red]✗[/red] {f['filename']}: {err.get('code')}: "
                              f"{err.get('message')}")
        if job["state"] in FINISHED:
            return all(f["state"] in ("done", "duplicate") for f in job["files"])
        if time.monotonic() > deadline:
            console.print(f"[red]✗ job {job_id} did not finish in {timeout:.0f}s[/red]")
            return False
        time.sleep(poll_seconds)
