"""A real Redis Stack server for the test session (loaded via ``pytest_plugins``).

Started once per session on a free loopback port from ``<project>/.cache/redis-stack``. When
it cannot be installed (no apt, no network) the Redis tests skip locally and fail in CI, so a
broken CI image cannot silently turn them green.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reprise.services.redis_stack import RedisServer, RedisStackUnavailable, start_server

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "redis-stack"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = start_server(CACHE_DIR)
    except RedisStackUnavailable as exc:
        message = f"Redis Stack server unavailable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session server, restarted first if an earlier test stopped it."""
    if not redis_server.running:
        redis_server.start()
    return redis_server.url
