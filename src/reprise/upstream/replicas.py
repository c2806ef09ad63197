"""Several replicas of one model: route each miss to the replica that holds its prefix.

A model server answers a prompt whose beginning it processed recently much sooner (and a
hosted one bills it at a fraction): the KV cache of that prefix is reused. Behind a plain
balancer the next turn of a conversation, or the next question about the same documents,
lands on a replica that must recompute the whole prefix. ``ReplicaRouter`` remembers which
prompt prefixes it sent to which replica (``upstream.prefix``) and sends a request to the one
that was sent the longest part of it, unless that replica is busier than the least busy one
by more than ``max_imbalance`` requests: one hot prefix (a popular document) then spills over
to the others instead of queueing on one server. A match shorter than ``min_match`` of the
prompt (a preamble every request shares) counts as none: such requests are balanced. Round
robin and least-busy routing are there to compare against (``bench/prefix_routing.py``) and
for servers without a prefix cache.

Health: a replica that cannot be reached, times out or answers 5xx before the first token
is taken out of rotation, the request goes to the next replica, and every ``cooldown``
seconds a background task probes it (``GET /models``, which must list the same models as
before) until it answers; only then does it get traffic again. A replica that restarted
lost its cache, so its prefix record is cleared when it comes back. Replicas serving
different models are refused at start-up (``verify``): a prefix cache is only shared by
identical models, and a request must not get a different model depending on where it lands.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from reprise.upstream.base import Upstream
from reprise.upstream.client import UpstreamError
from reprise.upstream.prefix import BLOCK_CHARS, PrefixIndex, block_hashes, prompt_text

log = logging.getLogger(__name__)

Policy = Literal["prefix", "least_busy", "round_robin"]
RETRYABLE = frozenset({502, 503, 504})


class ReplicaMismatch(ValueError):
    """The configured replicas do not all serve the same models."""


@dataclass
class Replica:
    name: str
    client: Upstream
    prefixes: PrefixIndex
    inflight: int = 0
    up: bool = True
    down_until: float = 0.0
    probe: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes and why (``prefix``, ``balance``, ``least_busy``, …)."""

    replica: Replica
    reason: str
    matched_chars: int


RouteListener = Callable[[str, str, int], None]  # replica name, reason, matched chars
HealthListener = Callable[[str, bool], None]  # replica name, now up


class ReplicaRouter:
    def __init__(
        self,
        replicas: list[tuple[str, Upstream]],
        *,
        policy: Policy = "prefix",
        max_imbalance: int = 2,
        min_match: float = 0.5,
        cooldown_seconds: float = 30.0,
        prefix_capacity_blocks: int = 16384,
        block_chars: int = BLOCK_CHARS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("ReplicaRouter needs at least one replica")
        names = [name for name, _ in replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"a replica is listed twice: {names}")
        self.replicas = [Replica(name, client, PrefixIndex(prefix_capacity_blocks))
                         for name, client in replicas]
        self.policy: Policy = policy
        self.max_imbalance = max_imbalance
        self.min_match = min_match
        self.cooldown_seconds = cooldown_seconds
        self.block_chars = block_chars
        self._clock = clock
        self._turn = itertools.count()
        self.expected_models: frozenset[str] | None = None
        self.route_listeners: list[RouteListener] = []
        self.health_listeners: list[HealthListener] = []
        self.failovers = 0
        self.resumed = 0  # cut streams finished on another replica

    # -- start-up ------------------------------------------------------------------------------
    async def verify(self) -> None:
        """Refuse replicas that serve different models; note the ones not answering yet.

        Raises ``ReplicaMismatch`` naming every replica and its models. A replica that does
        not answer is taken out of rotation and probed like one that failed.
        """
        listed = await asyncio.gather(*(r.client.models() for r in self.replicas))
        answered = {r.name: frozenset(m) for r, m in zip(self.replicas, listed, strict=True)
                    if m}
        if len(set(answered.values())) > 1:
            detail = "; ".join(f"{name} serves {sorted(models)}"
                               for name, models in answered.items())
            raise ReplicaMismatch(f"upstream replicas must serve the same model: {detail}")
        if answered:
            self.expected_models = next(iter(answered.values()))
        for replica in self.replicas:
            if replica.name not in answered:
                log.warning("upstream replica %s did not list its models; out of rotation "
                            "until a probe succeeds", replica.name)
                self._mark_down(replica)

    # -- routing -------------------------------------------------------------------------------
    def _available(self) -> list[Replica]:
        return [r for r in self.replicas if r.up]

    def _rotate(self, candidates: list[Replica]) -> list[Replica]:
        """Candidates in round-robin order: ties then spread instead of piling on the first."""
        start = next(self._turn) % len(candidates)
        return candidates[start:] + candidates[:start]

    def route(self, hashes: list[bytes], exclude: frozenset[str] = frozenset()) -> Route | None:
        """The replica for a prompt with these block hashes, or None if none is left."""
        candidates = [r for r in self._available() if r.name not in exclude]
        if not candidates:
            # Every replica is down or cooling: try the ones not tried yet, soonest back first.
            candidates = sorted((r for r in self.replicas if r.name not in exclude),
                                key=lambda r: r.down_until)
            return Route(candidates[0], "last_resort", 0) if candidates else None
        ordered = self._rotate(candidates)
        if self.policy == "round_robin":
            return Route(ordered[0], "round_robin", 0)
        least = min(ordered, key=lambda r: r.inflight)
        if self.policy == "least_busy":
            return Route(least, "least_busy", 0)
        best, matched = least, 0
        for replica in ordered:
            n = replica.prefixes.match(hashes)
            if n > matched or (n == matched and n and replica.inflight < best.inflight):
                best, matched = replica, n
        if matched == 0 or matched < self.min_match * len(hashes):
            # Nothing, or only a preamble every prompt shares (RAG instructions, a
            # company-wide system prompt): any replica has it, balance instead.
            return Route(least, "least_busy", 0)
        if best.inflight - least.inflight > self.max_imbalance:
            return Route(least, "balance", 0)
        return Route(best, "prefix", matched * self.block_chars)

    def _dispatch(self, hashes: list[bytes], exclude: frozenset[str]) -> Route | None:
        route = self.route(hashes, exclude)
        if route is None:
            return None
        route.replica.inflight += 1
        route.replica.prefixes.add(hashes)
        for listener in self.route_listeners:
            listener(route.replica.name, route.reason, route.matched_chars)
        return route

    # -- health --------------------------------------------------------------------------------
    def _mark_down(self, replica: Replica) -> None:
        """Out of rotation; a background task probes it back in (traffic or none)."""
        was_up = replica.up
        replica.up = False
        replica.down_until = self._clock() + self.cooldown_seconds
        if replica.probe is None:
            replica.probe = asyncio.get_running_loop().create_task(self._probe_until_up(replica))
        if was_up:
            for listener in self.health_listeners:
                listener(replica.name, False)

    async def _probe_until_up(self, replica: Replica) -> None:
        try:
            while not replica.up:
                await asyncio.sleep(max(0.0, replica.down_until - self._clock()))
                if not await self._probe(replica):
                    replica.down_until = self._clock() + self.cooldown_seconds
        finally:
            replica.probe = None

    def _failed(self, replica: Replica, exc: UpstreamError) -> None:
        self.failovers += 1
        log.warning("upstream replica %s failed (%s); out of rotation, trying another",
                    replica.name, exc.message)
        self._mark_down(replica)

    async def _probe(self, replica: Replica) -> bool:
        """Back into rotation only when the replica lists the expected models again."""
        models = frozenset(await replica.client.models())
        if not models:
            return False
        if self.expected_models is not None and models != self.expected_models:
            log.error("upstream replica %s now serves %s, not %s: kept out of rotation",
                      replica.name, sorted(models), sorted(self.expected_models))
            return False
        if self.expected_models is None:
            self.expected_models = models
        replica.up = True
        replica.prefixes.clear()  # a replica that was down may have restarted
        log.info("upstream replica %s is back in rotation", replica.name)
        for listener in self.health_listeners:
            listener(replica.name, True)
        return True

    # -- the Upstream protocol -------------------------------------------------------------------
    def _hashes(self, body: dict[str, Any]) -> list[bytes]:
        if self.policy != "prefix":
            return []
        return block_hashes(prompt_text(body), self.block_chars)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        hashes = self._hashes(body)
        tried: set[str] = set()
        last: UpstreamError | None = None
        while (route := self._dispatch(hashes, frozenset(tried))) is not None:
            replica = route.replica
            tried.add(replica.name)
            try:
                return await replica.client.complete(body)
            except UpstreamError as exc:
                if exc.status not in RETRYABLE:
                    raise
                self._failed(replica, exc)
                last = exc
            finally:
                replica.inflight -= 1
        assert last is not None
        raise last

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Chunks from one replica; another is tried while nothing was sent yet, or, for a
        deterministic request, to finish a stream its replica cut (``_Sent``)."""
        hashes = self._hashes(body)
        tried: set[str] = set()
        last: UpstreamError | None = None
        sent = _Sent(_deterministic(body))
        while (route := self._dispatch(hashes, frozenset(tried))) is not None:
            replica = route.replica
            tried.add(replica.name)
            try:
                async for chunk in sent.follow(replica.client.stream(body)):
                    yield chunk
                return
            except _Diverged:
                raise
            except UpstreamError as exc:
                if exc.status not in RETRYABLE:
                    raise
                self._failed(replica, exc)
                if sent.started and not sent.resumable:
                    raise
                if sent.started:
                    self.resumed += 1
                    log.warning("resuming a cut deterministic stream on another replica after "
                                "%d characters", len(sent.text))
                last = exc
            finally:
                replica.inflight -= 1
        assert last is not None
        raise last

    async def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for replica in self.replicas:
            if replica.up:
                for name in await replica.client.models():
                    seen.setdefault(name, None)
        return list(seen)

    async def healthy(self) -> bool:
        for replica in self._available():
            if await replica.client.healthy():
                return True
        return False

    async def aclose(self) -> None:
        for replica in self.replicas:
            if replica.probe is not None:
                replica.probe.cancel()
            await replica.client.aclose()


def _deterministic(body: dict[str, Any]) -> bool:
    """Greedy decoding of one choice: every replica of the model writes the same answer."""
    return (body.get("temperature") == 0 and int(body.get("n") or 1) == 1
            and not body.get("logprobs"))


class _Diverged(UpstreamError):
    """The replica finishing a cut stream wrote a different answer: it cannot be spliced."""


class _Sent:
    """What one streamed answer has delivered so far, across the replicas that produced it.

    A replica killed mid-answer cuts the stream. For a deterministic request (temperature 0,
    one choice) another replica writes the same text from the start; ``follow`` checks that
    it repeats what was already delivered, character for character, and passes on only what
    comes after it, under the first stream's id. Anything else (a different text, a tool
    call, sampling) is not resumed: the cut reaches the client as before, and the cache never
    stores it.
    """

    def __init__(self, resumable: bool) -> None:
        self.resumable = resumable
        self.started = False
        self.text = ""
        self.head: dict[str, Any] = {}

    async def follow(self, chunks: AsyncIterator[dict[str, Any]]
                     ) -> AsyncIterator[dict[str, Any]]:
        resuming = self.started
        seen = ""  # this attempt's text
        async for chunk in chunks:
            if not self.head:
                self.head = {k: chunk[k] for k in ("id", "created") if k in chunk}
            choices = chunk.get("choices") or []
            deltas = [c.get("delta") or {} for c in choices]
            if any(d.get("tool_calls") or d.get("function_call") for d in deltas):
                self.resumable = False
            content = "".join(d.get("content") or "" for d in deltas)
            before = len(seen)
            seen += content
            overlap = min(len(seen), len(self.text))
            if resuming and seen[:overlap] != self.text[:overlap]:
                raise _Diverged(502, "upstream replica died mid-answer and another one "
                                     "wrote a different answer: cannot resume")
            fresh = content[max(0, len(self.text) - before):]
            finish = any(c.get("finish_reason") for c in choices)
            if resuming and finish and len(seen) < len(self.text):
                raise _Diverged(502, "upstream replica died mid-answer and another one "
                                     "wrote a shorter answer: cannot resume")
            if resuming:
                if choices and not fresh and not finish:
                    continue  # the part the client already has, or the role chunk
                chunk = {**chunk, **self.head}
                if choices and fresh != content:
                    delta = {k: v for k, v in deltas[0].items() if k != "role"}
                    chunk["choices"] = [{**choices[0], "delta": {**delta, "content": fresh}}]
            self.text += fresh
            self.started = True
            yield chunk
