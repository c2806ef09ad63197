"""OpenAI chat-completion wire format: chunks ⇄ completion, and replaying a cached answer.

A cached answer is stored once, in the non-streaming form, and replayed either as JSON or as
a stream of chunks that an OpenAI client cannot tell from a live model (text in small
deltas, tool calls with their index/id/arguments, the original finish_reason, usage last).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

from reprise.cache.keys import content_text
from reprise.rag.tokens import count_tokens

_PIECE = re.compile(r"\S+\s*|\s+")


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def assemble(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Merge streamed chunks into the completion a non-streaming call would have returned."""
    choices: dict[int, dict[str, Any]] = {}
    first: dict[str, Any] = {}
    usage: dict[str, Any] | None = None
    for chunk in chunks:
        if not first:
            first = chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or []:
            idx = int(ch.get("index", 0))
            acc = choices.setdefault(
                idx, {"index": idx, "message": {"role": "assistant", "content": None},
                      "finish_reason": None, "logprobs": None},
            )
            delta = ch.get("delta") or {}
            msg = acc["message"]
            if delta.get("role"):
                msg["role"] = delta["role"]
            if delta.get("content") is not None:
                msg["content"] = (msg["content"] or "") + delta["content"]
            for key in ("reasoning_content", "refusal"):
                if delta.get(key) is not None:
                    msg[key] = (msg.get(key) or "") + delta[key]
            for tc in delta.get("tool_calls") or []:
                calls = msg.setdefault("tool_calls", [])
                ti = int(tc.get("index", len(calls)))
                while len(calls) <= ti:
                    calls.append({"id": "", "type": "function",
                                  "function": {"name": "", "arguments": ""}})
                call = calls[ti]
                if tc.get("id"):
                    call["id"] = tc["id"]
                if tc.get("type"):
                    call["type"] = tc["type"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    call["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    call["function"]["arguments"] += fn["arguments"]
            if ch.get("finish_reason"):
                acc["finish_reason"] = ch["finish_reason"]
            if ch.get("logprobs"):
                acc["logprobs"] = ch["logprobs"]
    out: dict[str, Any] = {
        "id": first.get("id") or new_id(),
        "object": "chat.completion",
        "created": first.get("created") or int(time.time()),
        "model": first.get("model", ""),
        "choices": [choices[i] for i in sorted(choices)],
    }
    if first.get("system_fingerprint"):
        out["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        out["usage"] = usage
    return out


def is_complete(completion: dict[str, Any]) -> bool:
    """Only whole, successful answers are cacheable."""
    choices = completion.get("choices") or []
    if not choices:
        return False
    for ch in choices:
        msg = ch.get("message") or {}
        if not ch.get("finish_reason"):
            return False
        if not msg.get("content") and not msg.get("tool_calls"):
            return False
    return True


# What a chat template adds around each message (role markers, separators) and before the
# reply: OpenAI's own counting recipe charges 3 and 3; open models' templates are similar.
MESSAGE_OVERHEAD_TOKENS = 3
REPLY_OVERHEAD_TOKENS = 3


def has_usage(completion: dict[str, Any]) -> bool:
    """Whether the model reported token counts (llama.cpp's server does not when streaming)."""
    usage = completion.get("usage") or {}
    return bool(usage.get("prompt_tokens") or usage.get("completion_tokens"))


def estimate_usage(body: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """Token usage counted by the gateway when the model reported none, marked ``estimated``.

    Without it a streamed miss from llama.cpp is stored with 0 tokens and every later hit on
    it reports nothing saved. The counts use the project's tokenizer-free estimate
    (``rag.tokens.count_tokens``) over what was actually sent upstream (RAG context
    included) and what came back (text, reasoning, tool calls); non-text parts count 0.
    """
    prompt = REPLY_OVERHEAD_TOKENS
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        prompt += MESSAGE_OVERHEAD_TOKENS + count_tokens(content_text(msg.get("content")) or "")
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            prompt += count_tokens(f"{fn.get('name', '')} {fn.get('arguments', '')}")
    answer = 0
    cap = body.get("max_tokens") or body.get("max_completion_tokens")
    for ch in completion.get("choices") or []:
        msg = ch.get("message") or {}
        if ch.get("finish_reason") == "length" and isinstance(cap, int) and cap > 0:
            # Cut by the cap: the model wrote exactly that many tokens (the UI shows
            # "cut at N tokens", so N must be the real cap, not an estimate near it).
            answer += cap
            continue
        parts = [msg.get("content"), msg.get("reasoning_content"), msg.get("refusal")]
        parts += [f"{c['function']['name']} {c['function']['arguments']}"
                  for c in msg.get("tool_calls") or []]
        answer += sum(count_tokens(p) for p in parts if isinstance(p, str))
    return {"prompt_tokens": prompt, "completion_tokens": answer,
            "total_tokens": prompt + answer, "estimated": True}


def cached_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Usage of a replay: every prompt token was served from cache."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    out = dict(usage)
    details = dict(out.get("prompt_tokens_details") or {})
    details["cached_tokens"] = prompt
    out["prompt_tokens_details"] = details
    out["prompt_cache_hit_tokens"] = prompt
    out["prompt_cache_miss_tokens"] = 0
    return out


def replay_chunks(
    completion: dict[str, Any], *, completion_id: str, model: str, include_usage: bool,
    extra_first: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """A stored completion as the chunk sequence a live stream would have produced."""
    created = int(time.time())
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model}
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    out: list[dict[str, Any]] = []
    for ch in completion.get("choices") or []:
        idx = ch.get("index", 0)
        msg = ch.get("message") or {}
        head: dict[str, Any] = {**base, "choices": [
            {"index": idx, "delta": {"role": msg.get("role", "assistant"), "content": ""},
             "logprobs": None, "finish_reason": None}]}
        if extra_first and not out:
            head.update(extra_first)
        out.append(head)
        for piece in _PIECE.findall(msg.get("content") or ""):
            out.append({**base, "choices": [
                {"index": idx, "delta": {"content": piece}, "logprobs": None,
                 "finish_reason": None}]})
        for ti, call in enumerate(msg.get("tool_calls") or []):
            out.append({**base, "choices": [{"index": idx, "logprobs": None,
                                             "finish_reason": None, "delta": {"tool_calls": [
                {"index": ti, "id": call.get("id"), "type": call.get("type", "function"),
                 "function": {"name": call["function"]["name"],
                              "arguments": call["function"]["arguments"]}}]}}]})
        out.append({**base, "choices": [
            {"index": idx, "delta": {}, "logprobs": None,
             "finish_reason": ch.get("finish_reason", "stop")}]})
    if include_usage and completion.get("usage"):
        out.append({**base, "choices": [], "usage": completion["usage"]})
    return out
