"""Which replica already holds a request's prompt prefix: chained block hashes per replica.

A model server reuses the KV cache of a prompt prefix it processed recently (llama.cpp's
slots and prompt cache, vLLM's and SGLang's prefix caches), but only on the replica that
processed it. The router cannot see those caches, so it remembers what it sent where: the
prompt as the model will read it (tools, then each message's role and text, in order) cut
into fixed blocks of characters, each block hashed together with everything before it. Two
prompts share their first *n* block hashes exactly when they share their first *n* blocks of
text, so "how much of this prompt did replica R see" is a walk along the new prompt's hashes
while R's set holds them: a prefix tree in a flat dict, as vLLM's block hashes are.

Characters rather than tokens: the gateway has no tokenizer for the model behind it, and a
block of a few dozen characters is a few tokens either way; a match decides only where a
request goes, never what it costs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from reprise.cache.keys import content_text

BLOCK_CHARS = 64


def prompt_text(body: dict[str, Any]) -> str:
    """The request as the model will read it, stable parts first, as chat templates do."""
    parts: list[str] = []
    if body.get("tools"):
        parts.append("\x1dtools\x1f" + orjson.dumps(body["tools"]).decode())
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        text = content_text(content)
        if text is None:  # images, audio: their JSON stands for them
            text = orjson.dumps(content).decode()
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict):
                text += orjson.dumps(call.get("function") or {}).decode()
        parts.append(f"\x1e{msg.get('role', '')}\x1f{text}")
    if isinstance(body.get("prompt"), str):  # legacy completions
        parts.append(body["prompt"])
    return "".join(parts)


def block_hashes(text: str, block_chars: int = BLOCK_CHARS) -> list[bytes]:
    """One hash per whole block, each covering the block and everything before it.

    A trailing partial block is left out: it is where the next turn will differ.
    """
    out: list[bytes] = []
    state = b""
    for start in range(0, len(text) - block_chars + 1, block_chars):
        h = hashlib.blake2b(state, digest_size=12)
        h.update(text[start:start + block_chars].encode("utf-8", "surrogatepass"))
        state = h.digest()
        out.append(state)
    return out


class PrefixIndex:
    """The prompt prefixes recently routed to one replica, least recently used dropped first.

    ``capacity`` (in blocks) should be about what the replica's own cache holds: remembering
    more than the server keeps would route to a replica that has already evicted the prefix.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a prefix index needs room for at least one block")
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, hashes: Sequence[bytes]) -> int:
        """How many leading blocks of this prompt the replica was sent."""
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            n += 1
        return n

    def add(self, hashes: Sequence[bytes]) -> None:
        for h in hashes:
            if h in self._blocks:
                self._blocks.move_to_end(h)
            else:
                self._blocks[h] = None
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        """Forget everything: the replica restarted, its cache is empty."""
        self._blocks.clear()
