"""``POST /v1/feedback``: users' thumbs up/down on answers the gateway served.

A vote names an answer by the ``id`` of the chat completion it came in (every answer
served from or into the cache is remembered for ``feedback_window_seconds``, in the store,
so any replica finds it) or by the cache entry's ``cache_key``. What a vote changes is
decided by ``cache.feedback`` and applied atomically to the entry in the store.

Tenancy: records and entries are looked up in the caller's own namespace only, so a vote
for another tenant's answer finds nothing (404, the same answer as an unknown id: nobody
learns which ids exist elsewhere). A thumbs-down by ``cache_key`` can evict any entry of
the tenant, like ``DELETE /admin/cache/{key}``, so with API keys it takes an admin key; by
response id any key of the tenant votes on answers it was served. Votes are charged to the
caller's rate limits like every other request, so a flood of thumbs-down gets 429.

One vote per response id: repeating it changes nothing, turning an up into a down applies
the down, and a down cannot be turned into an up (409): feedback never makes an answer
more likely to be served.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from reprise.api.body import read_json
from reprise.api.canonical import chat_id_of
from reprise.api.deps import components, tenant_namespace
from reprise.api.errors import APIError
from reprise.api.limits import enforce
from reprise.api.schemas import parse_model
from reprise.cache.feedback import (
    EntryFeedback,
    FeedbackPolicy,
    apply_vote,
    describe,
    question_hash,
)
from reprise.components import Components
from reprise.store.base import StoreError

log = logging.getLogger(__name__)
router = APIRouter()

# A vote is a few hundred bytes; no reason to read more whatever the chat body limit is.
_MAX_BODY = 64 * 1024


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    response_id: str | None = Field(default=None, min_length=1, max_length=200)
    cache_key: str | None = Field(default=None, min_length=1, max_length=200)
    vote: Literal["up", "down"]
    reason: str | None = Field(default=None, max_length=2000)


def policy_from(comp: Components) -> FeedbackPolicy:
    s = comp.settings
    return FeedbackPolicy(evict_after=s.feedback_evict_after, margin=s.feedback_bar_margin,
                          max_step=s.feedback_bar_step, default_bar=s.semantic_threshold)


def feedback_view(fb: EntryFeedback) -> dict[str, Any]:
    """An entry's feedback as the API and the admin endpoints show it."""
    return {"up": fb.up, "down": fb.down, "bar": fb.bar, "blocked_questions": len(fb.blocked),
            "confirmed_questions": len(fb.confirmed), "bad": fb.bad}


def _store_down(exc: StoreError) -> APIError:
    return APIError(503, f"the cache store is unavailable, the vote was not recorded: {exc}",
                    code="store_unavailable")


def _not_found(what: str) -> APIError:
    return APIError(404, what, code="not_found")


@router.post("/v1/feedback")
async def feedback(request: Request) -> Response:
    comp = components(request)
    body = await read_json(request, min(comp.settings.max_body_bytes, _MAX_BODY))
    req = parse_model(FeedbackRequest, body)
    if (req.response_id is None) == (req.cache_key is None):
        raise APIError(400, "give exactly one of response_id (the chat completion's id) or "
                       "cache_key (the cache entry's key)", code="missing_required_parameter",
                       param="response_id")
    await enforce(request, 1 + len(req.reason or "") // 4)
    namespace = tenant_namespace(request)
    store = comp.store
    vote = req.vote
    try:
        if req.response_id is not None:
            rid = chat_id_of(req.response_id)
            record = await store.get_served(namespace, rid)
            if record is None:
                raise _not_found(
                    f"no answer with id {rid!r} was served in namespace {namespace!r} within "
                    f"the last {comp.settings.feedback_window_seconds} s (unknown, expired, "
                    "or not from the cache); vote sooner, or by cache_key")
            if record.vote == vote:
                entry = await store.get_exact(namespace, record.key)
                if entry is None or entry.created_at != record.entry_created:
                    raise _not_found(f"the answer of {rid!r} is no longer in the cache")
                return _answer(rid, record.key, namespace, vote, record.tier, "unchanged",
                               "this vote on this answer was already counted", entry.feedback)
            if record.vote == "down":
                raise APIError(409, f"{rid!r} already has a thumbs-down; it cannot become a "
                               "thumbs-up (feedback never makes an answer more likely)",
                               code="vote_conflict")
            if not await store.set_served_vote(namespace, rid, vote, record.vote):
                raise APIError(409, f"another vote on {rid!r} arrived at the same time",
                               code="vote_conflict")
            key, digest, tier = record.key, record.question_hash, record.tier
            similarity, version = record.similarity, record.entry_created
        else:
            assert req.cache_key is not None
            key = req.cache_key
            if vote == "down" and getattr(request.state, "role", "admin") != "admin":
                raise APIError(403, "a thumbs-down by cache_key can evict the entry, which "
                               "needs an admin API key; vote with the response_id instead",
                               code="admin_required")
            entry = await store.get_exact(namespace, key)
            if entry is None:
                raise _not_found(f"no cache entry {key!r} in namespace {namespace!r}")
            rid = None
            digest, tier, similarity = question_hash(entry.question), "exact", 1.0
            version = entry.created_at

        policy = policy_from(comp)
        seen: list[EntryFeedback] = []

        def change(fb: EntryFeedback) -> EntryFeedback:
            seen.append(fb)  # may run more than once (optimistic retries): the last counts
            return apply_vote(fb, vote, digest, similarity, tier, policy)

        new = await store.update_feedback(namespace, key, change, created_at=version)
    except StoreError as exc:
        raise _store_down(exc) from exc
    if new is None:
        raise _not_found(f"the answer {'of ' + repr(rid) if rid else repr(key)} is no longer "
                         "in the cache (expired, evicted or replaced by a newer answer)")
    effect, message = describe(seen[-1], new, vote, tier, digest)
    comp.metrics.feedback(vote=vote, tier=tier, evicted=new.evicted)
    # The reason is the user's own text: logged only in debug mode, like prompts.
    reason = req.reason or ""
    log.info("feedback %s on a %s answer in %s: %s%s", vote, tier, namespace, effect,
             f" (reason: {reason!r})" if comp.settings.debug and reason
             else f" (reason: {len(reason)} chars)" if reason else "")
    return _answer(rid, key, namespace, vote, tier, effect, message, new)


def _answer(rid: str | None, key: str, namespace: str, vote: str, tier: str, effect: str,
            message: str, fb: EntryFeedback) -> Response:
    body = {"object": "feedback", "response_id": rid, "cache_key": key,
            "namespace": namespace, "vote": vote, "tier": tier, "effect": effect,
            "message": message, "entry": {**feedback_view(fb), "evicted": fb.evicted}}
    return Response(orjson.dumps(body), media_type="application/json")
