"""One Redis client per event loop, and closing it quietly: shared by every Redis user.

``redis.asyncio`` connections belong to the loop that opened them, and the cache store,
the document index and the catalog are used from successive loops (tests, CLI commands,
the LangChain integration's own loop), so each keeps a client for the running loop and
makes a new one when the loop changes. Closing must survive a loop that is already gone.

A Redis Cluster is named by a ``redis+cluster://`` (``rediss+cluster://``) URL, or found by
:func:`is_cluster`, which asks a plain ``redis://`` URL's server once at start-up; either way
the client is then a ``RedisCluster``, which follows the slot map (``MOVED``/``ASK``) itself.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis as sync_redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def plain_url(url: str) -> tuple[str, bool]:
    """``url`` with a ``+cluster`` scheme turned into the plain one, and whether it had it."""
    parts = urlsplit(url)
    plain = _CLUSTER_SCHEMES.get(parts.scheme)
    if plain is None:
        return url, False
    return urlunsplit(parts._replace(scheme=plain)), True


def is_cluster(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` names a Redis Cluster: by its scheme, else by asking the server (a
    start-up check, blocking; an unreachable server counts as a single one, and the store
    fails open until it answers)."""
    plain, explicit = plain_url(url)
    if explicit:
        return True
    client = sync_redis.Redis.from_url(plain, socket_timeout=timeout,
                                       socket_connect_timeout=timeout)
    try:
        info = client.info("cluster")
    except (RedisError, OSError):
        return False
    finally:
        client.close()
    return bool(info.get("cluster_enabled"))


def require_search(url: str, timeout: float = 2.0) -> None:
    """Start-up check of a cluster: every primary must answer the search commands (each
    shard indexes its own keys). Raises ``MissingSearch`` naming the first node without
    them; an unreachable cluster passes (the store fails open until it answers)."""
    try:
        cluster: Any = sync_redis.RedisCluster.from_url(node_url(url), socket_timeout=timeout,
                                                   socket_connect_timeout=timeout)
    except (RedisError, OSError):
        return
    try:
        for node in cluster.get_primaries():
            try:
                cluster.execute_command("FT._LIST", target_nodes=node)
            except sync_redis.ResponseError as exc:
                raise MissingSearch(
                    f"Redis Cluster node {node.host}:{node.port} has no search module"
                    f" (FT._LIST: {exc}): every shard needs Redis Stack 7.4 or Redis 8,"
                    " since each one indexes its own cache entries") from exc
            except (RedisError, OSError):
                continue
    finally:
        cluster.close()


class MissingSearch(RuntimeError):
    """A Redis node that Reprise would store vectors on cannot search them."""


def node_url(url: str) -> str:
    """A cluster URL as ``RedisCluster.from_url`` takes it: plain scheme, no database."""
    parts = urlsplit(plain_url(url)[0])
    return urlunsplit(parts._replace(path=""))


def make_client(url: str, options: dict[str, Any], *, cluster: bool) -> Redis:
    """A single-node client, or a cluster client typed as one: both answer the commands
    Reprise sends (the store routes its search commands itself on a cluster)."""
    if not cluster:
        return Redis.from_url(url, **options)
    opts = dict(options)
    retry = opts.pop("retry", None)
    if "topology_refresh_min_interval" in inspect.signature(RedisCluster.__init__).parameters:
        # After a failover the client learns the new primary at its next refresh; its
        # default pacing (1 s) leaves the cache failing open that long once the cluster is
        # whole again. A quarter second still collapses a burst of errors into one refresh.
        opts["topology_refresh_min_interval"] = 0.25
    client: Any = RedisCluster.from_url(node_url(url), **opts)
    if retry is not None:
        client.set_retry(retry)
    return client


async def close_quietly(client: Redis) -> None:
    """Close ``client``; a client of a finished loop has nothing left to release."""
    aclose = getattr(client, "aclose", None) or client.close  # redis-py 5 renamed it
    try:
        await aclose()
    except (RedisError, OSError, RuntimeError):
        pass


class LoopClient:
    """A ``Redis.from_url(url, **options)`` client for the running event loop.

    ``on_new`` runs on every new client (e.g. to register Lua scripts, which are bound to
    their client). A client left behind by an earlier loop is dropped, not closed: closing
    needs the loop it belongs to.
    """

    def __init__(self, url: str, options: dict[str, Any],
                 on_new: Callable[[Redis], None] | None = None, *,
                 cluster: bool = False) -> None:
        # A plain dict: the installed redis stubs predate ``protocol``.
        self.url = url
        self.cluster = cluster
        self.options = options
        self._on_new = on_new
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = make_client(self.url, self.options, cluster=self.cluster)
            self._loop = loop
            if self._on_new is not None:
                self._on_new(self._client)
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await close_quietly(client)
