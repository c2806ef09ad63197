"""Chat completions through the cache: lookup, single-flight miss, store, replay.

HTTP-free: ``api/chat_endpoint.py`` serves it to every protocol, which renders the
``ChatOutcome`` in its own wire format.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from reprise.cache.keys import RequestKeys, request_keys
from reprise.cache.semantic import Explanation
from reprise.cache.service import CachePolicy, CacheService, LookupResult, Tier
from reprise.cache.single_flight import Flight, SingleFlight
from reprise.serving.format import (
    assemble,
    cached_usage,
    estimate_usage,
    has_usage,
    is_complete,
    new_id,
    replay_chunks,
)
from reprise.upstream.base import Upstream

log = logging.getLogger(__name__)

# Body fields the gateway understands itself and never sends upstream.
GATEWAY_FIELDS = ("collection", "reprise")


@dataclass(slots=True)
class ChatOutcome:
    tier: Tier
    model: str
    keys: RequestKeys
    similarity: float | None = None
    age: int = 0
    matched_question: str | None = None
    completion: dict[str, Any] | None = None  # non-streaming answer
    chunks: AsyncIterator[dict[str, Any]] | None = None  # streaming answer
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0
    tokens_estimated: bool = False  # the saved counts are the gateway's, not the model's
    timings: dict[str, float] = field(default_factory=dict)
    # The id this answer was served under (a hit gets a fresh one per response): users
    # vote on the answer with it (``POST /v1/feedback``).
    response_id: str | None = None
    # Why the semantic tier served this answer, or why it did not (None when it did not
    # run: an exact hit, a bypass, a question it does not take).
    explanation: Explanation | None = None
    entry_key: str | None = None  # the stored entry a hit served (a semantic hit's differs)

    @property
    def hit(self) -> bool:
        return self.tier in ("exact", "semantic")

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"cache": self.tier, "key": self.keys.key}
        if self.hit:
            meta.update(similarity=self.similarity, age=self.age,
                        matched_question=self.matched_question, entry_key=self.entry_key)
        if self.explanation is not None:
            meta["lookup"] = self.explanation.as_dict()
        return meta


@dataclass(slots=True)
class Prepared:
    """What a miss sends upstream, decided only on a miss (e.g. retrieval for RAG)."""

    body: dict[str, Any]
    attach: dict[str, Any] = field(default_factory=dict)  # extra top-level fields (citations)
    direct_answer: str | None = None  # answer without asking the model


Prepare = Callable[[], Awaitable[Prepared]]


def _direct_completion(text: str, model: str) -> dict[str, Any]:
    return {"id": new_id(), "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def _fill_usage(sent: dict[str, Any], completion: dict[str, Any]) -> bool:
    """Count the tokens ourselves when the model reported none; True if it had to.

    The counts are stored with the answer, so hits on it report tokens and cost saved
    (marked ``estimated``) instead of zero.
    """
    if has_usage(completion) or not completion.get("choices"):
        return False
    completion["usage"] = estimate_usage(sent, completion)
    return True


def _usage_chunk(completion: dict[str, Any]) -> dict[str, Any]:
    return {"id": completion["id"], "object": "chat.completion.chunk",
            "created": completion["created"], "model": completion["model"], "choices": [],
            "usage": completion["usage"]}


async def _aiter(items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


class ChatService:
    def __init__(
        self,
        cache: CacheService,
        upstream: Upstream,
        *,
        distributed_lock_seconds: float | None = None,
    ) -> None:
        self.cache = cache
        self.upstream = upstream
        self.flights = SingleFlight()
        self.distributed_lock_seconds = distributed_lock_seconds
        self.upstream_calls = 0

    # -- hits --------------------------------------------------------------------------------------
    def _hit(self, res: LookupResult, keys: RequestKeys, model: str, stream: bool,
             include_usage: bool) -> ChatOutcome:
        stored = res.completion
        completion = {**stored, "id": new_id(), "created": int(time.time()), "model": model}
        usage = cached_usage(stored.get("usage"))
        if usage is not None:
            completion["usage"] = usage
        outcome = ChatOutcome(
            res.tier, model, keys, res.similarity, res.age,
            res.entry.question if res.entry else None,
            saved_prompt_tokens=res.entry.prompt_tokens if res.entry else 0,
            saved_completion_tokens=res.entry.completion_tokens if res.entry else 0,
            tokens_estimated=bool((stored.get("usage") or {}).get("estimated")),
            timings=res.timings,
            explanation=res.explanation,
            entry_key=res.entry.key if res.entry else None,
        )
        outcome.response_id = completion["id"]
        completion["reprise"] = outcome.metadata()
        if stream:
            extra = {"reprise": outcome.metadata()}
            if "citations" in stored:
                extra["citations"] = stored["citations"]
            outcome.chunks = _aiter(replay_chunks(
                completion, completion_id=completion["id"], model=model,
                include_usage=include_usage, extra_first=extra,
            ))
        else:
            outcome.completion = completion
        return outcome

    async def _served_hit(self, res: LookupResult, keys: RequestKeys, policy: CachePolicy,
                          model: str, stream: bool, include_usage: bool) -> ChatOutcome:
        """A hit, remembered under its fresh response id so users can vote on it."""
        outcome = self._hit(res, keys, model, stream, include_usage)
        if res.entry is not None and outcome.response_id:
            await self.cache.remember_served(
                outcome.response_id, policy.namespace, res.entry, keys.question, res.tier,
                1.0 if res.similarity is None else res.similarity)
        return outcome

    # -- misses ---------------------------------------------------------------------------
    def _producer(self, body: dict[str, Any], keys: RequestKeys, policy: CachePolicy,
                  res: LookupResult, model: str, stream: bool,
                  prepare: Prepare | None) -> Any:
        async def produce(flight: Flight) -> dict[str, Any]:
            try:
                prepared = await prepare() if prepare is not None else Prepared(body)
                if prepared.direct_answer is not None:
                    completion = {**_direct_completion(prepared.direct_answer, model),
                                  **prepared.attach}
                    if stream:
                        for chunk in replay_chunks(completion, completion_id=completion["id"],
                                                   model=model, include_usage=True,
                                                   extra_first=prepared.attach or None):
                            flight.push(chunk)
                elif stream:
                    self.upstream_calls += 1
                    first = True
                    async for chunk in self.upstream.stream(prepared.body):
                        flight.push({**chunk, **prepared.attach} if first else chunk)
                        first = False
                    completion = {**assemble(flight.chunks), **prepared.attach}
                    if _fill_usage(prepared.body, completion):
                        # Followers that asked for usage get it last, as from the model.
                        flight.push(_usage_chunk(completion))
                else:
                    self.upstream_calls += 1
                    completion = {**await self.upstream.complete(prepared.body),
                                  **prepared.attach}
                    _fill_usage(prepared.body, completion)
                if is_complete(completion):
                    entry = await self.cache.save(keys, policy, completion, model=model,
                                                  vector=res.vector)
                    if entry is not None:
                        # Before the answer is released (and before a stream's last chunk),
                        # so a vote right after it finds the record. Followers of this
                        # flight got the same answer, id and entry.
                        await self.cache.remember_served(
                            str(completion.get("id") or ""), policy.namespace, entry,
                            keys.question, "miss", 1.0)
                else:
                    log.info("answer not cached: incomplete or empty")
                return completion
            finally:
                if self.distributed_lock_seconds:
                    await self._unlock(policy, keys)

        return produce

    def _lock_name(self, policy: CachePolicy, keys: RequestKeys) -> str:
        return f"sf:{policy.namespace}:{keys.key}"

    async def _unlock(self, policy: CachePolicy, keys: RequestKeys) -> None:
        try:
            await self.cache.store.unlock(self._lock_name(policy, keys))
        except Exception as exc:
            self.cache.health.failed("unlock", exc)

    async def _wait_for_other_replica(
        self, keys: RequestKeys, policy: CachePolicy
    ) -> LookupResult | None:
        """If another replica is already asking upstream, wait for its stored answer."""
        assert self.distributed_lock_seconds
        try:
            if await self.cache.store.try_lock(self._lock_name(policy, keys),
                                               self.distributed_lock_seconds):
                return None
            deadline = time.monotonic() + self.distributed_lock_seconds
            delay = 0.02
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.25)
                entry = await self.cache.store.get_exact(policy.namespace, keys.key)
                if entry is not None:
                    return LookupResult("exact", entry, 1.0)
                if await self.cache.store.try_lock(self._lock_name(policy, keys),
                                                   self.distributed_lock_seconds):
                    return None  # the holder gave up or crashed: we ask ourselves
        except Exception as exc:
            self.cache.health.failed("lock", exc)
        return None

    async def complete(
        self,
        body: dict[str, Any],
        policy: CachePolicy,
        *,
        model: str,
        upstream_model: str,
        stream: bool,
        include_usage: bool,
        key_context: dict[str, Any] | None = None,
        prepare: Prepare | None = None,
    ) -> ChatOutcome:
        """Answer one chat completion from the cache or the upstream model.

        The cache key is computed from ``body`` (plus ``key_context``); on a miss,
        ``prepare`` (if given) decides what is actually sent upstream.
        """
        keys = request_keys(body, upstream_model, key_context)
        res = await self.cache.lookup(keys, policy)
        if res.hit:
            return await self._served_hit(res, keys, policy, model, stream, include_usage)
        upstream_body = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
        upstream_body["model"] = upstream_model
        tier: Tier = "bypass" if not (policy.lookup and policy.store) else "miss"
        if (
            self.distributed_lock_seconds
            and policy.store
            and keys.key not in self._running_keys()
        ):
            other = await self._wait_for_other_replica(keys, policy)
            if other is not None and other.entry is not None:
                return await self._served_hit(other, keys, policy, model, stream,
                                              include_usage)
        flight, _leader = self.flights.join_or_start(
            keys.key, self._producer(upstream_body, keys, policy, res, upstream_model, stream,
                                     self._wrap_prepare(prepare, upstream_model))
        )
        outcome = ChatOutcome(tier, model, keys, timings=res.timings,
                              explanation=res.explanation)
        if stream:
            outcome.chunks = self._follow(flight, include_usage, model, outcome.metadata())
        else:
            async with self.flights.subscribe(flight):
                completion = await flight.wait()
            outcome.completion = self._client_completion(completion, outcome)
        return outcome

    @staticmethod
    def _wrap_prepare(prepare: Prepare | None, upstream_model: str) -> Prepare | None:
        """The prepared body must also lose gateway fields and name the upstream model."""
        if prepare is None:
            return None

        async def wrapped() -> Prepared:
            p = await prepare()
            p.body = {k: v for k, v in p.body.items() if k not in GATEWAY_FIELDS}
            p.body["model"] = upstream_model
            return p

        return wrapped

    def _running_keys(self) -> set[str]:
        return set(self.flights._flights)

    @staticmethod
    def _client_completion(completion: dict[str, Any], outcome: ChatOutcome) -> dict[str, Any]:
        return {**completion, "reprise": outcome.metadata()}

    async def _follow(
        self, flight: Flight, include_usage: bool, model: str,
        meta: dict[str, Any] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The flight's chunks for one client; ``meta`` (the ``reprise`` object: tier, key,
        the lookup's explanation) rides on the first one, as on a replayed hit."""
        async with self.flights.subscribe(flight):
            sent = False
            tag = meta is not None
            async for chunk in flight.follow():
                sent = True
                if not chunk.get("choices") and chunk.get("usage") and not include_usage:
                    continue
                if tag:
                    chunk, tag = {**chunk, "reprise": meta}, False
                yield chunk
            if not sent:
                # The flight was a non-streaming call: replay its answer as chunks.
                completion = await flight.wait()
                for chunk in replay_chunks(completion, completion_id=completion.get("id")
                                           or new_id(), model=model,
                                           include_usage=include_usage):
                    yield chunk
