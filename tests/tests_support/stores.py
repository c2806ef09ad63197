"""Opening a store of any kind the same way, for contract tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_store(kind: str, tmp: Path, *, dim: int, max_bytes: int, redis_url: str = "",
               prefix: str = "reprise") -> Any:
    if kind == "memory":
        from reprise.store.memory import MemoryStore

        return MemoryStore(dim, max_bytes)
    if kind == "sqlite":
        from reprise.store.sqlite import SQLiteStore

        return SQLiteStore(tmp / "cache.sqlite3", dim, max_bytes)
    if kind == "redis":
        from reprise.store.redis import RedisStore

        return RedisStore(redis_url, dim, max_bytes, prefix=prefix)
    if kind == "redis-cluster":
        from reprise.store.redis import RedisStore

        # Four key groups, each with the bound the other kinds have for the whole store
        # (on a cluster the bound is split evenly between the groups).
        groups = 4
        return RedisStore(redis_url, dim, max_bytes * groups, prefix=prefix, groups=groups)
    raise ValueError(kind)
