"""Canonical cache keys.

* The **exact key** hashes everything that can change the answer. Two bodies that differ
  only in JSON key order, whitespace, number spelling (1 vs 1.0), ``stream`` /
  ``stream_options`` or fields that never reach the model (``user``, ``metadata``) get the
  same key; any other difference gets another key (a wrong hit is worse than a miss, so
  unknown fields count).
* The **fingerprint** hashes the same thing minus the content of the last user message: it
  names the *context* a question was asked in (tenant, model, system prompt, history, tools,
  sampling, response format, document-set version). Semantic search never leaves it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

# Fields that never reach the model or only change the transport.
_IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})
# Aliases that mean the same thing to the model.
_ALIASES = {"max_completion_tokens": "max_tokens"}


@dataclass(frozen=True, slots=True)
class RequestKeys:
    key: str  # exact
    fingerprint: str  # semantic partition
    question: str | None  # last user message text, None when not semantic-eligible


def _norm_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    return int(value) if value.is_integer() else value


def _norm(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    return _norm_number(value)


def content_text(content: Any) -> str | None:
    """The text of a message content, or None if it has non-text parts (images, audio)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    return None


def _norm_message(msg: dict[str, Any]) -> dict[str, Any]:
    out = _norm(msg)
    text = content_text(msg.get("content"))
    if text is not None:
        # A list of only text parts means the same as the joined string.
        out["content"] = text
    return out


def canonical_request(body: dict[str, Any], model: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes the answer, normalised; ``extra`` adds gateway context."""
    canon: dict[str, Any] = {}
    for field, value in body.items():
        if field in _IGNORED or field == "messages" or field == "model" or value is None:
            continue
        canon[_ALIASES.get(field, field)] = _norm(value)
    stop = canon.get("stop")
    if isinstance(stop, str):
        canon["stop"] = [stop]
    canon["model"] = model
    canon["messages"] = [_norm_message(m) for m in body.get("messages", [])]
    canon["reprise"] = _norm(extra)
    return canon


def _digest(obj: Any) -> str:
    data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    return hashlib.sha256(data).hexdigest()


def request_keys(
    body: dict[str, Any], model: str, extra: dict[str, Any] | None = None
) -> RequestKeys:
    """Exact key, fingerprint and the question for the semantic tier."""
    canon = canonical_request(body, model, extra or {})
    key = _digest(canon)
    messages = canon["messages"]
    last = messages[-1] if messages else None
    question: str | None = None
    if last is not None and last.get("role") == "user":
        text = content_text(body["messages"][-1].get("content"))
        question = text if text is not None else None
    context = dict(canon)
    if question is not None and last is not None:
        # The last user turn's text is what the semantic tier compares; any other field of
        # that message (a name, say) stays part of the context.
        context["messages"] = [*messages[:-1], {k: v for k, v in last.items() if k != "content"}]
    fingerprint = _digest(context)
    return RequestKeys(key=key, fingerprint=fingerprint, question=question)
