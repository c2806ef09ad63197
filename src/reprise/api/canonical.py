"""Reading the canonical answer (an OpenAI chat completion, or its chunks) for renderers.

Every non-OpenAI protocol renders the same few things: the text, the tool calls, why the
model stopped, the token counts (with the prompt tokens a hit served from cache) and the
gateway's ``reprise`` metadata. They are read here once, so each protocol module only maps
them onto its own field names.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(slots=True)
class Usage:
    prompt: int = 0
    completion: int = 0
    cached: int = 0  # prompt tokens served from a cache (all of them on a Reprise hit)

    @classmethod
    def of(cls, usage: dict[str, Any] | None) -> Usage:
        usage = usage or {}
        details = usage.get("prompt_tokens_details") or {}
        return cls(int(usage.get("prompt_tokens") or 0),
                   int(usage.get("completion_tokens") or 0),
                   int(details.get("cached_tokens") or 0))


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it

    def arguments_object(self) -> Any:
        """Arguments as a JSON value (Ollama and Anthropic carry objects, not text)."""
        try:
            return orjson.loads(self.arguments) if self.arguments.strip() else {}
        except orjson.JSONDecodeError:
            return {"_raw": self.arguments}


@dataclass(slots=True)
class Answer:
    """The first choice of a completion, as every renderer needs it."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    id: str = ""
    meta: dict[str, Any] | None = None  # the gateway's ``reprise`` object
    citations: Any = None  # RAG sources, when the answer came from a collection

    @classmethod
    def of(cls, completion: dict[str, Any]) -> Answer:
        choices = completion.get("choices") or [{}]
        choice = choices[0]
        msg = choice.get("message") or {}
        calls = [ToolCall(str(c.get("id") or f"call_{i}"),
                          str((c.get("function") or {}).get("name") or ""),
                          str((c.get("function") or {}).get("arguments") or ""))
                 for i, c in enumerate(msg.get("tool_calls") or [])]
        return cls(text=msg.get("content") or "", tool_calls=calls,
                   finish_reason=choice.get("finish_reason") or "stop",
                   usage=Usage.of(completion.get("usage")), id=str(completion.get("id") or ""),
                   meta=completion.get("reprise"), citations=completion.get("citations"))


@dataclass(slots=True)
class Delta:
    """One step of a stream: a piece of text, or nothing (a chunk carrying only metadata)."""

    text: str


class StreamReader:
    """Follows canonical chunks, yielding text deltas and remembering everything else.

    After the stream ends, ``answer`` holds the finish reason, usage, accumulated tool calls
    and metadata: what the protocols' closing events need.
    """

    def __init__(self) -> None:
        self.answer = Answer()
        self._calls: dict[int, dict[str, str]] = {}
        self.first_token_at: float | None = None

    async def deltas(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[Delta]:
        async for chunk in chunks:
            if not self.answer.id and chunk.get("id"):
                self.answer.id = str(chunk["id"])
            if chunk.get("reprise") is not None:
                self.answer.meta = chunk["reprise"]
            if chunk.get("citations") is not None:
                self.answer.citations = chunk["citations"]
            if chunk.get("usage"):
                self.answer.usage = Usage.of(chunk["usage"])
            for choice in chunk.get("choices") or []:
                if int(choice.get("index") or 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                for tc in delta.get("tool_calls") or []:
                    acc = self._calls.setdefault(int(tc.get("index") or 0),
                                                 {"id": "", "name": "", "arguments": ""})
                    acc["id"] = tc.get("id") or acc["id"]
                    fn = tc.get("function") or {}
                    acc["name"] += fn.get("name") or ""
                    acc["arguments"] += fn.get("arguments") or ""
                if choice.get("finish_reason"):
                    self.answer.finish_reason = choice["finish_reason"]
                text = delta.get("content")
                if text:
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
                    self.answer.text += text
                    yield Delta(text)
        self.answer.tool_calls = [
            ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"])
            for i, c in sorted(self._calls.items())]


# The id prefixes of answers rendered in other protocols. Their ids keep the chat
# completion's own suffix, so a vote (``POST /v1/feedback``) with an Anthropic ``msg_…``,
# a Responses ``resp_…`` or a text completion's ``cmpl-…`` id finds the answer it names.
_CHAT_PREFIX = "chatcmpl-"
_PROTOCOL_PREFIXES = ("msg_", "resp_", "cmpl-")


def protocol_id(prefix: str, chat_id: str) -> str:
    """The id of an answer in another protocol's format (``msg_…``, ``resp_…``)."""
    return prefix + chat_id.removeprefix(_CHAT_PREFIX) if chat_id else prefix + "0"


def chat_id_of(any_id: str) -> str:
    """The chat completion id behind an id rendered by ``protocol_id``."""
    for prefix in _PROTOCOL_PREFIXES:
        if any_id.startswith(prefix):
            return _CHAT_PREFIX + any_id.removeprefix(prefix)
    return any_id


def data_uri(b64: str) -> str:
    """A base64 image without a media type (Ollama's form) as a data URI, typed by its
    magic bytes so vision upstreams accept it."""
    head = b64[:12]
    media = ("image/jpeg" if head.startswith("/9j/") else
             "image/gif" if head.startswith("R0lGOD") else
             "image/webp" if head.startswith("UklGR") else "image/png")
    return f"data:{media};base64,{b64}"
