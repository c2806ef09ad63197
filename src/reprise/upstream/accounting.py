"""Prompt tokens the model server reused from its own prompt cache, one figure per answer.

Every provider reports its prompt (context) cache differently, when at all:

| provider | where |
| --- | --- |
| OpenAI, vLLM, recent ``llama-server`` | ``usage.prompt_tokens_details.cached_tokens`` |
| DeepSeek | ``usage.prompt_cache_hit_tokens`` (and ``prompt_cache_miss_tokens``) |
| Anthropic (through an OpenAI-compatible proxy) | ``usage.cache_read_input_tokens`` |
| llama.cpp's ``llama-server`` | ``timings.cache_n`` (reused), ``timings.prompt_n`` (computed) |
| llama-cpp-python's server (Reprise's embedded one), Ollama ``/v1`` | nothing |

``normalise`` writes the one figure where OpenAI clients read it,
``usage.prompt_tokens_details.cached_tokens``, and leaves answers that report nothing
untouched: "not reported" must stay distinguishable from "reused nothing".
"""

from __future__ import annotations

from typing import Any


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return max(0, int(value))


def reused_prompt_tokens(usage: dict[str, Any] | None,
                         timings: dict[str, Any] | None = None) -> int | None:
    """The provider's count of prompt tokens served from its cache; None when not reported."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        found = _int(details.get("cached_tokens"))
        if found is not None:
            return found
    for field in ("prompt_cache_hit_tokens", "cache_read_input_tokens"):
        found = _int(usage.get(field))
        if found is not None:
            return found
    if isinstance(timings, dict):
        return _int(timings.get("cache_n"))
    return None


def prompt_tokens_total(usage: dict[str, Any] | None,
                        timings: dict[str, Any] | None = None) -> int | None:
    """All prompt tokens of the answer, reused or evaluated, where the provider says."""
    usage = usage if isinstance(usage, dict) else {}
    found = _int(usage.get("prompt_tokens"))
    if found:
        return found
    if isinstance(timings, dict):
        cache_n, prompt_n = _int(timings.get("cache_n")), _int(timings.get("prompt_n"))
        if cache_n is not None and prompt_n is not None:
            return cache_n + prompt_n
    return None


def normalise(payload: dict[str, Any]) -> int | None:
    """Put the reused-token figure of a completion or a stream chunk into its usage.

    llama.cpp's server reports ``timings`` beside ``usage`` (or without one, when
    streaming), so a usage object is created from the timings when needed. Returns the
    figure, or None when the payload reports none.
    """
    usage = payload.get("usage")
    timings = payload.get("timings")
    reused = reused_prompt_tokens(usage, timings)
    if reused is None:
        return None
    if not isinstance(usage, dict):
        prompt = prompt_tokens_total(None, timings) or 0
        completion = _int((timings or {}).get("predicted_n")) or 0
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
    details = usage.get("prompt_tokens_details")
    details = dict(details) if isinstance(details, dict) else {}
    details["cached_tokens"] = reused
    payload["usage"] = {**usage, "prompt_tokens_details": details}
    return reused
