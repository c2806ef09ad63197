"""Builds the configured store; the only place that maps ``Settings.store`` to a class."""

from __future__ import annotations

from reprise.config import Settings
from reprise.store.base import Store


def make_store(settings: Settings, dim: int) -> Store:
    if settings.store == "memory":
        from reprise.store.memory import MemoryStore

        return MemoryStore(dim, settings.cache_max_bytes)
    if settings.store == "redis":
        from reprise.store.base import StoreError
        from reprise.store.redis import RedisStore
        from reprise.store.redis_conn import MissingSearch, is_cluster, require_search

        cluster = is_cluster(settings.redis_url)
        if cluster:
            try:
                require_search(settings.redis_url)
            except MissingSearch as exc:
                raise StoreError(str(exc)) from exc
        return RedisStore(settings.redis_url, dim, settings.cache_max_bytes,
                          prefix=settings.redis_prefix, cluster=cluster,
                          groups=settings.redis_cluster_groups)
    from reprise.store.sqlite import SQLiteStore

    return SQLiteStore(settings.data_dir / "cache.sqlite3", dim, settings.cache_max_bytes)
