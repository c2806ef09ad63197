"""`reprise` command line: run the stack, inspect the cache, ingest documents, ask."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from reprise.config import Settings

app = typer.Typer(help="Reprise: an OpenAI-compatible caching gateway.", no_args_is_help=True)
cache_app = typer.Typer(help="Inspect and manage the answer cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
keys_app = typer.Typer(help="Manage API keys (tenants and roles).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()


def _logging(settings: Settings) -> None:
    from reprise.observability.logs import setup_logging

    setup_logging(settings.log_level, json_logs=settings.json_logs)


def _check_exposure(settings: Settings) -> None:
    """Refuse an open service on a public address; warn when running open on loopback."""
    from reprise.api.auth import InsecureBindError, KeyFileError, check_exposure

    try:
        warning = check_exposure(settings)
    except (InsecureBindError, KeyFileError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}")


OLLAMA_DEFAULT_PORT = 11434  # where Ollama apps look when OLLAMA_HOST is unset


def _serve_gateway(settings: Settings, *, ollama_best_effort: bool = False) -> None:
    """Run the gateway; with ``ollama_port`` also on that port (the same app).

    ``ollama_best_effort``: the port was not asked for explicitly (``reprise up`` offers
    11434 by default), so a port already taken — a real Ollama, say — is a note, not an
    error.
    """
    from reprise.api.app import create_app
    from reprise.runtime import limit_native_threads

    _check_exposure(settings)
    limit_native_threads(settings.compute_threads)
    # log_config=None: uvicorn's own records go through our (JSON, redacting) handler.
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level=settings.log_level, access_log=False, log_config=None,
                            timeout_graceful_shutdown=settings.graceful_shutdown_seconds)
    if not settings.ollama_port or settings.ollama_port == settings.port:
        uvicorn.Server(config).run()
        return
    # One app, one event loop, two listening sockets: the Ollama port is the same gateway
    # (every route answers on both), so OLLAMA_HOST=http://host:11434 reaches it.
    second = uvicorn.Config(config.app, host=settings.host, port=settings.ollama_port,
                            log_config=None, access_log=False)
    try:
        main = config.bind_socket()
    except SystemExit as exc:  # uvicorn exits when a port is taken; say which one
        console.print(f"[red]cannot listen on {settings.host}:{settings.port}: in use?[/red]")
        raise typer.Exit(1) from exc
    try:
        sockets = [main, second.bind_socket()]
    except SystemExit as exc:
        if not ollama_best_effort:
            console.print(f"[red]cannot listen on {settings.host}:{settings.ollama_port} "
                          "(the Ollama port): in use?[/red]")
            raise typer.Exit(1) from exc
        console.print(f"note: port {settings.ollama_port} is in use (a local Ollama?); Ollama "
                      f"apps can reach Reprise with OLLAMA_HOST=http://127.0.0.1:{settings.port}")
        sockets = [main]
    else:
        console.print(f"Ollama API on http://{settings.host}:{settings.ollama_port} "
                      "(OLLAMA_HOST for Ollama apps)")
    uvicorn.Server(config).run(sockets=sockets)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    role: Annotated[str, typer.Option(help="gateway | embeddings | ui")] = "gateway",
    ollama_port: Annotated[int | None, typer.Option(
        help="also listen here for Ollama apps (11434 = OLLAMA_HOST's default)")] = None,
) -> None:
    """Run one service of Reprise in the foreground."""
    overrides: dict[str, Any] = {}
    if ollama_port:
        overrides["ollama_port"] = ollama_port
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    settings = Settings(**overrides)
    _logging(settings)
    if role == "gateway":
        _serve_gateway(settings)
    elif role == "embeddings":
        from reprise.api.embeddings_app import create_embeddings_app
        from reprise.runtime import limit_native_threads

        _check_exposure(settings)
        limit_native_threads(settings.compute_threads)
        try:
            embeddings_app = create_embeddings_app(settings)
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        uvicorn.run(embeddings_app, host=settings.host, port=settings.port,
                    log_level=settings.log_level, access_log=False, log_config=None,
                    timeout_graceful_shutdown=settings.graceful_shutdown_seconds)
    elif role == "ui":
        _run_ui(settings, port or settings.ui_port)
    else:
        raise typer.BadParameter("role must be gateway, embeddings or ui")


def _ui_process(settings: Settings, port: int, gateway_url: str | None = None,
                log_file: Path | None = None) -> Any:
    from reprise.services.processes import ManagedProcess

    script = Path(__file__).parent / "ui" / "app.py"
    argv = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
            "--server.address", settings.host, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
            # The file picker refuses what the gateway would refuse anyway (MB per file).
            "--server.maxUploadSize", str(max(1, settings.max_upload_bytes >> 20))]
    return ManagedProcess("ui", argv, ready_url=f"http://127.0.0.1:{port}/_stcore/health",
                          env={"REPRISE_GATEWAY_URL": gateway_url or settings.gateway_url},
                          log_file=log_file)


def _run_ui(settings: Settings, port: int) -> None:
    proc = _ui_process(settings, port)
    with _stopping([proc]), contextlib.suppress(KeyboardInterrupt):
        proc.start().wait_ready()
        console.print(f"web UI on http://127.0.0.1:{port} (gateway {settings.gateway_url})"
                      " — Ctrl-C stops")
        proc.wait()


@app.command("ui")
def ui_command(
    port: Annotated[int | None, typer.Option(help="port (default REPRISE_UI_PORT)")] = None,
) -> None:
    """Run only the web UI, for the gateway at REPRISE_GATEWAY_URL."""
    settings = Settings()
    _run_ui(settings, port or settings.ui_port)


@contextlib.contextmanager
def _stopping(procs: list[Any]) -> Iterator[None]:
    """Stop the children on Ctrl-C *and* on SIGTERM (docker stop, systemd, kill).

    uvicorn re-raises the signal that stopped it; SIGTERM's default action would end this
    process at once and leave the children (UI, model server) running without a parent.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()
        signal.signal(signal.SIGTERM, previous)


@app.command()
def up(
    store: Annotated[str | None, typer.Option(help="sqlite | memory | redis")] = None,
    ui: Annotated[bool, typer.Option(help="also start the web UI")] = True,
    model_server: Annotated[bool, typer.Option(help="start the embedded llama.cpp server")] = True,
    ollama_port: Annotated[int | None, typer.Option(
        help="also listen here for Ollama apps (11434 = OLLAMA_HOST's default)")] = None,
) -> None:
    """Start the embedded stack: llama.cpp + SmolLM2, the gateway, and the UI."""
    overrides: dict[str, Any] = {}
    if ollama_port:
        overrides["ollama_port"] = ollama_port
    if store:
        overrides["store"] = store
    settings = Settings(**overrides)
    _logging(settings)
    procs: list[Any] = []
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _stopping(procs):
        if settings.store == "redis":
            from reprise.services.redis_stack import (
                RedisStackUnavailable,
                default_cache_dir,
                server_for_url,
            )

            try:
                redis = server_for_url(settings.redis_url, default_cache_dir(),
                                       settings.data_dir / "redis")
            except RedisStackUnavailable as exc:
                console.print(f"[red]cannot use Redis:[/red] {exc}")
                raise typer.Exit(1) from exc
            if redis is not None:
                procs.append(redis)
                console.print(f"started Redis Stack on :{redis.port} (AOF in {redis.data_dir})")
            else:
                console.print("using the Redis at REPRISE_REDIS_URL")
        if model_server:
            from reprise.services.llama_server import MODEL_ALIAS, llama_server

            llama = llama_server(settings.llama_port, model_path=settings.llama_model_path,
                                 n_ctx=settings.llama_ctx, threads=settings.llama_threads,
                                 prompt_cache_bytes=settings.llama_prompt_cache_bytes,
                                 log_file=settings.data_dir / "llama-server.log")
            console.print(f"starting llama.cpp model server on :{settings.llama_port} …")
            procs.append(llama.start())
            llama.wait_ready()
            settings = settings.model_copy(update={
                "upstream_url": f"http://127.0.0.1:{settings.llama_port}/v1",
                "upstream_model": settings.upstream_model or MODEL_ALIAS})
        if ui:
            # The UI talks to the gateway this command starts, wherever REPRISE_GATEWAY_URL
            # points other clients.
            local = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
            ui_proc = _ui_process(settings, settings.ui_port, f"http://{local}:{settings.port}",
                                  log_file=settings.data_dir / "ui.log")
            procs.append(ui_proc.start())
            console.print(f"web UI on http://127.0.0.1:{settings.ui_port}")
        console.print(f"gateway on http://{settings.host}:{settings.port}/v1 "
                      f"(store: {settings.store}, data: {settings.data_dir}) — Ctrl-C stops")
        explicit = "ollama_port" in settings.model_fields_set
        if not explicit:
            settings = settings.model_copy(update={"ollama_port": OLLAMA_DEFAULT_PORT})
        with contextlib.suppress(KeyboardInterrupt):
            _serve_gateway(settings, ollama_best_effort=not explicit)


# ---------------------------------------------------------------------------------- cache
def _store(settings: Settings) -> Any:
    from reprise.store.factory import make_store

    return make_store(settings, settings.embedding_dim)


def _with_store(fn: Any) -> Any:
    async def run() -> Any:
        store = _store(Settings())
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


@cache_app.command("stats")
def cache_stats(namespace: Annotated[str | None, typer.Option()] = None) -> None:
    """Entries, bytes and hits, per namespace."""
    stats = _with_store(lambda s: s.stats(namespace))
    table = Table("namespace", "entries")
    for ns, n in sorted(stats.namespaces.items()):
        table.add_row(ns, str(n))
    console.print(table)
    console.print(f"backend={stats.backend} entries={stats.entries} bytes={stats.bytes} "
                  f"hits={stats.hits} vectors={stats.vectors}")


@cache_app.command("ls")
def cache_ls(
    namespace: Annotated[str | None, typer.Option()] = None,
    query: Annotated[str, typer.Option("--query", "-q", help="filter by question text")] = "",
    limit: Annotated[int, typer.Option()] = 50,
) -> None:
    """Entries, most recently used first, with hits, age and TTL."""
    rows = _with_store(lambda s: s.list_entries(namespace, limit=limit, query=query))
    now = time.time()
    table = Table("key", "namespace", "question", "hits", "age", "ttl", "last access")
    for e in rows:
        ttl = "∞" if e.expires_at is None else f"{max(0, int(e.expires_at - now))}s"
        table.add_row(e.key[:16], e.namespace, e.question[:60], str(e.hits),
                      f"{int(now - e.created_at)}s", ttl,
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.last_access)))
    console.print(table)


@cache_app.command("rm")
def cache_rm(key: str, namespace: Annotated[str, typer.Option()] = "default") -> None:
    """Delete one entry (a key prefix from `cache ls` is enough)."""

    async def run(store: Any) -> bool:
        if len(key) < 64:
            matches = [e.key for e in await store.list_entries(namespace, limit=100000)
                       if e.key.startswith(key)]
            if len(matches) != 1:
                console.print(f"{len(matches)} entries match {key!r}")
                return False
            return bool(await store.delete(namespace, matches[0]))
        return bool(await store.delete(namespace, key))

    ok = _with_store(run)
    console.print("deleted" if ok else "not found")
    if not ok:
        raise typer.Exit(1)


@cache_app.command("clear")
def cache_clear(namespace: Annotated[str | None, typer.Option()] = None) -> None:
    """Delete every entry (of one namespace, or all)."""
    n = _with_store(lambda s: s.clear(namespace))
    console.print(f"cleared {n} entries")


# ---------------------------------------------------------------------------------- keys
def _keys_file(path: Path | None) -> Path:
    chosen = path or Settings().api_keys_file
    if chosen is None:
        raise typer.BadParameter("give --file or set REPRISE_API_KEYS_FILE")
    return chosen


@keys_app.command("add")
def keys_add(
    tenant: Annotated[str, typer.Option(help="namespace this key's cache and documents live in")],
    role: Annotated[str, typer.Option(help="user | admin")] = "user",
    name: Annotated[str, typer.Option(help="label, unique in the file")] = "",
    rpm: Annotated[int | None, typer.Option(help="requests/min for this key")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens/min for this key")] = None,
    file: Annotated[Path | None, typer.Option(help="keys file (default REPRISE_API_KEYS_FILE)")]
    = None,
) -> None:
    """Create a key: prints it once, stores only its SHA-256 in the keys file."""
    from reprise.api.auth import KeyFileError, add_key

    if role not in ("user", "admin"):
        raise typer.BadParameter("role must be user or admin")
    path = _keys_file(file)
    try:
        raw, key = add_key(path, tenant, role, name=name, rpm=rpm, tpm=tpm)  # type: ignore[arg-type]
    except KeyFileError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    # The secret goes to stdout alone (scriptable: KEY=$(reprise keys add …)).
    print(raw)
    Console(stderr=True).print(f"[dim]added {key.role} key {key.key_id} for tenant "
                               f"{key.tenant} to {path}; it is shown only now[/dim]")


@keys_app.command("ls")
def keys_ls(file: Annotated[Path | None, typer.Option()] = None) -> None:
    """Keys in the file: name, tenant, role, limits and digest prefix (never the key)."""
    from reprise.api.auth import load_keys

    table = Table("name", "tenant", "role", "rpm", "tpm", "id")
    for k in load_keys((), _keys_file(file)):
        table.add_row(k.name, k.tenant, k.role, str(k.rpm or "-"), str(k.tpm or "-"), k.key_id)
    console.print(table)


@keys_app.command("rm")
def keys_rm(match: str, file: Annotated[Path | None, typer.Option()] = None) -> None:
    """Remove keys by name or by id (digest prefix, 8+ hex digits)."""
    from reprise.api.auth import remove_key

    n = remove_key(_keys_file(file), match)
    console.print(f"removed {n} key(s)")
    if not n:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------- clients
@app.command()
def ask(
    question: str,
    collection: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str, typer.Option()] = "default",
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
) -> None:
    """Ask the running gateway; streams the answer and shows the cache outcome."""
    settings = Settings()
    body: dict[str, Any] = {"model": model, "stream": True,
                            "messages": [{"role": "user", "content": question}]}
    if collection:
        body["collection"] = collection
    headers = {"Cache-Control": "no-cache"} if no_cache else {}
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{settings.gateway_url}/v1/chat/completions", json=body,
                      headers=headers, timeout=300) as resp:
        if resp.status_code != 200:
            console.print(f"[red]{resp.status_code}[/red] {resp.read().decode()}")
            raise typer.Exit(1)
        tier = resp.headers.get("x-reprise-cache", "?")
        citations = None
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            citations = chunk.get("citations", citations)
            for ch in chunk.get("choices", []):
                sys.stdout.write(ch.get("delta", {}).get("content") or "")
                sys.stdout.flush()
    console.print(f"\n[dim]cache: {tier}  {1000 * (time.perf_counter() - t0):.0f} ms[/dim]")
    for i, c in enumerate(citations or [], 1):
        console.print(f"[dim][{i}] {c.get('document')} p.{c.get('page')}[/dim]")


@app.command()
def ingest(
    paths: list[Path],
    collection: Annotated[str, typer.Option(help="collection name")],
    api_key: Annotated[str | None, typer.Option(help="gateway API key (when it needs one)")]
    = None,
) -> None:
    """Upload documents (files or folders) to a collection of the running gateway."""
    from reprise.rag.client import ingest_files

    ok = ingest_files(Settings().gateway_url, collection, paths, console, api_key=api_key)
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    logging.captureWarnings(True)
    app()


if __name__ == "__main__":
    main()
