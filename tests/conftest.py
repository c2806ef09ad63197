"""Shared fixtures: real stores, real servers over loopback, the evaluation data folder."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest_plugins = ["fixtures_redis"]

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.skip(f"evaluation data not found at {DATA}")
    return DATA


STORE_KINDS = ["memory", "sqlite", "redis", "redis-cluster"]


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[tuple[str, object]]:
    """The controllable OpenAI-compatible test upstream (stands in where control is needed)."""
    from reprise.testing.upstream import start_fake_upstream

    server, state = start_fake_upstream()
    yield server.url + "/v1", state
    server.stop()


@pytest.fixture(scope="session")
def use_embedder() -> object:
    """The real default embedder (multilingual USE), loaded once per session."""
    from reprise.embed.use import UseEmbedder

    return UseEmbedder()


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    """One fresh store of each kind, 8-dim vectors, 1 MiB bound."""
    from tests_support.stores import open_store

    kind = request.param
    redis_url = ""
    if kind == "redis":
        redis_url = request.getfixturevalue("redis_url")
    elif kind == "redis-cluster":
        redis_url = request.getfixturevalue("redis_cluster").url
    s = open_store(kind, tmp_path, dim=8, max_bytes=1 << 20, redis_url=redis_url,
                   prefix=f"t{uuid.uuid4().hex[:8]}")
    yield s
    await s.clear()
    await s.close()


@pytest.fixture(scope="session")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from reprise.services.llama_server import llama_server
    from reprise.testing.upstream import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "llama.log"
    proc = llama_server(port, n_ctx=1024, log_file=log).start()
    try:
        proc.wait_ready(timeout=180)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop()
