"""Per-model request defaults: what a small embedded model needs to answer well and fast.

A request that names no answer length, sampling or system prompt gets the defaults
configured for its upstream model (``Settings.model_defaults``): for the embedded model an
answer cap (so a miss answers in seconds and says it was cut, ``finish_reason: "length"``),
a repeat penalty that stops loops, and a system prompt written in the question's own
language (``serving.prompts``). Whatever the request sets wins. The defaults are applied
before the cache key is computed, so the key says what the model was really asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reprise.serving.prompts import chat_prompt

# The value of ``system_prompt`` that asks for the language-matched prompt.
AUTO = "auto"
_CAP_FIELDS = ("max_tokens", "max_completion_tokens")


def _last_user_text(messages: list[Any]) -> str:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text") or "") for p in content
                                if isinstance(p, dict))
    return ""


def apply_model_defaults(body: dict[str, Any], defaults: Mapping[str, Any] | None, *,
                         grounded: bool = False) -> dict[str, Any]:
    """``body`` with the model's defaults filled in where the request left them unset.

    ``system_prompt`` is special: ``"auto"`` adds the language-matched prompt, any other
    string is added as is, and only when the conversation has no system or developer
    message of its own; answers from documents (``grounded``) get their own prompt from
    the RAG service instead.
    """
    if not defaults:
        return body
    out = dict(body)
    for name, value in defaults.items():
        if name == "system_prompt":
            continue
        if name in _CAP_FIELDS and any(out.get(f) is not None for f in _CAP_FIELDS):
            continue
        if out.get(name) is None:
            out[name] = value
    prompt = defaults.get("system_prompt")
    messages = list(out.get("messages") or [])
    has_system = any(isinstance(m, dict) and m.get("role") in ("system", "developer")
                     for m in messages)
    if prompt and not grounded and not has_system:
        text = chat_prompt(_last_user_text(messages)) if prompt == AUTO else str(prompt)
        out["messages"] = [{"role": "system", "content": text}, *messages]
    return out
