"""A real Redis Stack server for the test session, and real gateway replica processes.

Loaded via ``pytest_plugins``. The server is started once per session on a free loopback
port from ``<project>/.cache/redis-stack``. When it cannot be installed (no apt, no network)
the Redis tests skip locally and fail in CI, so a broken CI image cannot silently turn them
green.

``GatewayProcess`` runs ``python -m reprise.cli serve`` as a separate OS process: the
multi-replica and fault tests need replicas that share nothing but Redis (no in-process
single-flight registry, no shared event loop), and one that can be killed mid-request.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from reprise.services.redis_cluster import LocalCluster, start_cluster
from reprise.services.redis_stack import (
    RedisServer,
    RedisStackUnavailable,
    free_port,
    start_server,
)

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "redis-stack"


def _unavailable(message: str) -> NoReturn:
    """CI installs Redis Stack itself, so there its absence is a failure; locally a skip."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def start_or_skip(data_dir: Path | None = None) -> RedisServer:
    """A new server; skip locally (fail in CI) when Redis Stack cannot run here."""
    try:
        return start_server(CACHE_DIR, data_dir=data_dir)
    except RedisStackUnavailable as exc:
        _unavailable(f"Redis Stack server unavailable: {exc}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_or_skip()
    with server:
        yield server


def start_cluster_or_skip(primaries: int = 3, replicas: int = 1) -> LocalCluster:
    """A new local Redis Cluster; skip locally (fail in CI) when Redis Stack cannot run."""
    try:
        return start_cluster(CACHE_DIR, primaries=primaries, replicas=replicas)
    except RedisStackUnavailable as exc:
        _unavailable(f"Redis Stack cluster unavailable: {exc}")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """3 primaries + 3 replicas for the session; tests that kill or reshard nodes start
    their own (``start_cluster_or_skip``) so this one stays whole."""
    cluster = start_cluster_or_skip()
    with cluster:
        yield cluster


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session server, restarted first if an earlier test stopped it."""
    if not redis_server.running:
        redis_server.start()
    return redis_server.url


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class GatewayProcess:
    """One gateway replica: ``python -m reprise.cli serve`` with its own settings."""

    def __init__(self, name: str, data_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir / f"{name}.log"
        self.env = {
            **os.environ,
            "REPRISE_DATA_DIR": str(data_dir),
            "REPRISE_LOG_LEVEL": "warning",
            "REPRISE_JSON_LOGS": "false",
            # Document chat shares the cache's embedder instead of loading a second model.
            "REPRISE_RAG_EMBEDDER": env.get("REPRISE_EMBEDDER", "use"),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "reprise.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        return self

    def wait_ready(self, timeout: float = 180.0) -> GatewayProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"replica {self.name} not ready after {timeout:.0f}s: "
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown hook runs (locks it holds are not released)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def gateway_replicas(count: int, base_dir: Path, env: dict[str, str]) -> Iterator[
        list[GatewayProcess]]:
    """Start ``count`` replicas (in parallel: each loads its own embedder) and stop them."""
    replicas = [GatewayProcess(chr(ord("a") + i), base_dir / f"replica-{i}", env)
                for i in range(count)]
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        yield replicas
    finally:
        for r in replicas:
            r.stop()
