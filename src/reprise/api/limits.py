"""Per-key rate limits: requests per minute and tokens per minute, as token buckets.

Each limit is a bucket holding up to one minute's allowance and refilling continuously, so
a key may burst up to its limit and then gets a steady rate. A request is admitted only if
*both* buckets can pay for it (then both are debited, atomically); otherwise it gets a 429
with ``Retry-After`` = seconds until they can.

The token cost is known before the model runs, like OpenAI's own limiter: an estimate of
the prompt (characters / 4) plus the ``max_tokens`` the caller asked for. Cache hits pay
too: the limit is about a tenant's share of the gateway, not only of the model.

With the Redis store the buckets live in Redis (one Lua script, Redis' clock), so replicas
enforce one shared limit; otherwise they live in the process. A limiter failure (Redis
down) admits the request: limits protect capacity, they must not take the service down.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from typing import Any, Protocol

from starlette.requests import Request

from reprise.api.errors import APIError
from reprise.config import Settings

log = logging.getLogger(__name__)


class Limiter(Protocol):
    async def acquire(self, identity: str, rpm: int, tpm: int, tokens: int) -> float:
        """0.0 when admitted (and charged), else the seconds to wait before retrying."""

    async def aclose(self) -> None: ...


def _refill(level: float, last: float, now: float, cap: int) -> float:
    return min(float(cap), level + (now - last) * cap / 60.0)


class LocalLimiter:
    """Buckets in this process; idle identities are forgotten past ``max_identities``."""

    def __init__(self, max_identities: int = 10_000) -> None:
        # identity -> (requests level, tokens level, last refill time)
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()
        self._max = max_identities

    async def acquire(self, identity: str, rpm: int, tpm: int, tokens: int) -> float:
        now = time.monotonic()
        req, tok, last = self._buckets.get(identity, (float(rpm), float(tpm), now))
        req, tok = _refill(req, last, now, rpm), _refill(tok, last, now, tpm)
        cost = min(tokens, tpm)
        wait = 0.0
        if rpm > 0 and req < 1.0:
            wait = (1.0 - req) * 60.0 / rpm
        if tpm > 0 and tok < cost:
            wait = max(wait, (cost - tok) * 60.0 / tpm)
        if wait == 0.0:
            req, tok = req - (1 if rpm > 0 else 0), tok - (cost if tpm > 0 else 0)
        self._buckets[identity] = (req, tok, now)
        self._buckets.move_to_end(identity)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    async def aclose(self) -> None:
        return None


# KEYS[1] bucket hash. ARGV: rpm, tpm, token cost. Returns "0" or the wait in seconds.
_ACQUIRE = """
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'r', 'k', 't')
local req = tonumber(v[1]) or rpm
local tok = tonumber(v[2]) or tpm
local last = tonumber(v[3]) or now
req = math.min(rpm, req + (now - last) * rpm / 60)
tok = math.min(tpm, tok + (now - last) * tpm / 60)
if cost > tpm then cost = tpm end
local wait = 0
if rpm > 0 and req < 1 then wait = (1 - req) * 60 / rpm end
if tpm > 0 and tok < cost then wait = math.max(wait, (cost - tok) * 60 / tpm) end
if wait == 0 then
  if rpm > 0 then req = req - 1 end
  if tpm > 0 then tok = tok - cost end
end
redis.call('HSET', KEYS[1], 'r', tostring(req), 'k', tostring(tok), 't', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return tostring(wait)
"""


class RedisLimiter:
    """Buckets shared by every replica through Redis; fails open when Redis is down."""

    def __init__(self, url: str, prefix: str, *, cluster: bool | None = None) -> None:
        from reprise.store.redis_conn import make_client, plain_url

        # On a cluster each bucket is one key, so its script runs on the shard owning it.
        self._redis = make_client(url, {"socket_timeout": 2.0, "socket_connect_timeout": 2.0},
                                  cluster=plain_url(url)[1] if cluster is None else cluster)
        self._script: Any = self._redis.register_script(_ACQUIRE)
        self._prefix = f"{prefix}:rl:"
        self.errors = 0
        self._warned_at = -1e9

    async def acquire(self, identity: str, rpm: int, tpm: int, tokens: int) -> float:
        from redis.exceptions import RedisError

        try:
            raw = await self._script(keys=[self._prefix + identity], args=[rpm, tpm, tokens])
        except (RedisError, OSError) as exc:
            self.errors += 1
            now = time.monotonic()
            if now - self._warned_at > 30.0:  # one line per outage, not one per request
                self._warned_at = now
                log.warning("rate limiter unavailable, admitting requests: %s", exc)
            return 0.0
        return float(raw.decode() if isinstance(raw, bytes) else raw)

    async def aclose(self) -> None:
        close = getattr(self._redis, "aclose", None) or self._redis.close  # redis-py ≥ 5
        await close()


def make_limiter(settings: Settings) -> Limiter:
    if settings.store == "redis":
        from reprise.store.redis_conn import is_cluster

        return RedisLimiter(settings.redis_url, settings.redis_prefix,
                            cluster=is_cluster(settings.redis_url))
    return LocalLimiter()


def estimate_tokens(messages: list[Any], max_tokens: int | None) -> int:
    """Prompt estimate (4 characters per token, 4 per message) plus the asked completion."""
    chars = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return chars // 4 + 4 * len(messages) + (max_tokens or 0)


async def enforce(request: Request, tokens: int) -> None:
    """Charge this request to its key's buckets, or raise a 429 with ``Retry-After``."""
    limiter: Limiter | None = getattr(request.app.state, "limiter", None)
    settings: Settings | None = getattr(request.app.state, "settings", None)
    if limiter is None or settings is None:
        return
    state = request.state
    rpm = getattr(state, "rpm", None)
    tpm = getattr(state, "tpm", None)
    rpm = settings.rate_limit_rpm if rpm is None else rpm
    tpm = settings.rate_limit_tpm if tpm is None else tpm
    if rpm <= 0 and tpm <= 0:
        return
    key_id = getattr(state, "key_id", None)
    identity = f"k:{key_id}" if key_id else "ns:" + (
        request.headers.get("x-reprise-namespace") or settings.default_namespace)
    wait = await limiter.acquire(identity, max(rpm, 0), max(tpm, 0), tokens)
    if wait <= 0:
        return
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rate_limited.inc()
    seconds = max(1, math.ceil(wait))
    raise APIError(429, f"rate limit reached for this key ({rpm} requests/min, {tpm} "
                   f"tokens/min); retry in {seconds}s", code="rate_limit_exceeded",
                   headers={"Retry-After": str(seconds)})
