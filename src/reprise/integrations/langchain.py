"""LangChain cache backed by Reprise: exact + semantic tiers, in-process, no gateway needed.

    from langchain_core.globals import set_llm_cache
    from reprise.integrations.langchain import RepriseCache

    set_llm_cache(RepriseCache())                       # SQLite in ./data, USE embedder
    set_llm_cache(RepriseCache(Settings(store="redis", redis_url="redis://…")))  # shared

Every chat model and LLM of the app then answers repeated prompts from the exact tier and
paraphrased questions from the semantic tier, with the same guards and verifier as the
gateway (a paraphrase that changes a number, an entity or a negation still misses).

How LangChain's ``(prompt, llm_string)`` maps onto Reprise's keys: the prompt of a chat
model is its serialized message list, turned back into OpenAI-style messages; a plain LLM
prompt is one user message. ``llm_string`` (model class, name and every sampling
parameter) joins the key context, so the semantic tier only compares questions asked of the
same model with the same settings, system prompt and history, exactly as in the gateway.

The store, the semantic lookup and the embedder are Reprise's own (``build_components``).
They are async and a Redis connection belongs to one event loop, so the cache runs them on
one private loop thread; the sync methods block on it and the async ones await it. That
keeps LangChain's sync ``invoke`` and async ``ainvoke`` on the same connections.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np
import orjson
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.messages import message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, Generation

from reprise.cache.keys import RequestKeys, request_keys
from reprise.cache.service import CachePolicy
from reprise.components import Components, build_components
from reprise.config import Settings
from reprise.embed.base import Embedder
from reprise.store.base import Store

T = TypeVar("T")

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool",
          "function": "function", "chat": "user"}
_PAYLOAD = "reprise_langchain"  # where the generations live inside the stored completion


def prompt_messages(prompt: str) -> list[dict[str, Any]]:
    """LangChain's prompt string → OpenAI-style messages (what Reprise keys on).

    Chat models pass ``dumps(messages)``: a JSON list of serialized messages. Anything
    else is an LLM's plain text prompt: one user message.
    """
    try:
        data = json.loads(prompt)
    except ValueError:
        data = None
    if not (isinstance(data, list) and data
            and all(isinstance(m, dict) and m.get("lc") == 1 for m in data)):
        return [{"role": "user", "content": prompt}]
    out: list[dict[str, Any]] = []
    for item in data:
        kwargs = dict(item.get("kwargs") or {})
        kind = str(kwargs.pop("type", "") or (item.get("id") or ["", "human"])[-1])
        kwargs.pop("id", None)  # a per-message random id must not change the key
        message: dict[str, Any] = {"role": _ROLES.get(kind, kind),
                                   "content": kwargs.pop("content", "")}
        # Tool calls, names, extra kwargs: part of the context, like in the gateway.
        message.update({k: v for k, v in kwargs.items() if v not in (None, [], {})})
        out.append(message)
    return out


def encode_generations(generations: Sequence[Generation]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for g in generations:
        if isinstance(g, ChatGeneration):
            out.append({"kind": "chat", "message": message_to_dict(g.message),
                        "info": g.generation_info})
        else:
            out.append({"kind": "text", "text": g.text, "info": g.generation_info})
    return out


def decode_generations(items: list[dict[str, Any]]) -> list[Generation]:
    out: list[Generation] = []
    for item in items:
        if item.get("kind") == "chat":
            message = messages_from_dict([item["message"]])[0]
            out.append(ChatGeneration(message=message, generation_info=item.get("info")))
        else:
            out.append(Generation(text=item.get("text", ""), generation_info=item.get("info")))
    return out


def _loop_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="reprise-langchain-cache",
                              daemon=True)
    thread.start()
    return loop, thread


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread,
              comp: Components) -> None:
    """Close the components on their loop, then stop it (finalizer: no reference to self)."""
    if loop.is_closed():
        return
    if thread.is_alive():
        fut = asyncio.run_coroutine_threadsafe(comp.aclose(), loop)
        try:
            fut.result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
    loop.close()


class RepriseCache(BaseCache):
    """LangChain ``BaseCache`` over Reprise's exact + semantic cache (SQLite, memory, Redis).

    ``settings`` chooses the store (``store``, ``data_dir``, ``redis_url``), the embedder and
    the semantic threshold, like the gateway's; ``embedder`` / ``store`` pass ready-made
    ones (tests share a loaded model). ``namespace`` keeps this app's entries apart from
    other tenants of the same store. ``semantic=False`` keeps only the exact tier.
    """

    def __init__(self, settings: Settings | None = None, *, namespace: str = "langchain",
                 semantic: bool = True, threshold: float | None = None,
                 embedder: Embedder | None = None, store: Store | None = None) -> None:
        self.settings = settings or Settings()
        self.namespace = namespace
        self.semantic = semantic
        self.threshold = threshold
        self._loop, self._thread = _loop_thread()
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

        async def build() -> Components:
            if self.settings.store == "sqlite":
                self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            return build_components(self.settings, embedder=embedder, store=store)

        try:
            self.components = self._run(build())
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            raise
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._thread,
                                           self.components)

    # -- plumbing --------------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def _keys(self, prompt: str, llm_string: str) -> tuple[RequestKeys, CachePolicy]:
        keys = request_keys({"messages": prompt_messages(prompt)}, "langchain",
                            {"llm_string": llm_string})
        policy = CachePolicy(namespace=self.namespace, semantic=self.semantic,
                             threshold=self.threshold)
        return keys, policy

    def _remember_vector(self, key: str, vector: np.ndarray | None) -> None:
        """Keep a miss's query vector until its ``update`` so it is not embedded twice."""
        if vector is None:
            return
        with self._lock:
            self._vectors[key] = vector
            while len(self._vectors) > 256:
                self._vectors.popitem(last=False)

    def _take_vector(self, key: str) -> np.ndarray | None:
        with self._lock:
            return self._vectors.pop(key, None)

    async def _lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        keys, policy = self._keys(prompt, llm_string)
        res = await self.components.cache.lookup(keys, policy)
        if res.entry is None:
            self._remember_vector(keys.key, res.vector)
            return None
        try:
            payload = orjson.loads(res.entry.response)[_PAYLOAD]
            return decode_generations(payload)
        except (KeyError, TypeError, ValueError):
            return None  # an entry the gateway stored under the same key: not ours to decode

    async def _update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        keys, policy = self._keys(prompt, llm_string)
        first = return_val[0].text if return_val else ""
        completion = {
            "object": "chat.completion", "model": "langchain",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": first}}],
            _PAYLOAD: encode_generations(return_val),
        }
        await self.components.cache.save(keys, policy, completion, model="langchain",
                                         vector=self._take_vector(keys.key))

    async def _clear(self) -> None:
        await self.components.store.clear(self.namespace)

    # -- BaseCache -------------------------------------------------------------------------------
    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return self._run(self._lookup(prompt, llm_string))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self._run(self._update(prompt, llm_string, return_val))

    def clear(self, **kwargs: Any) -> None:
        self._run(self._clear())

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return await self._arun(self._lookup(prompt, llm_string))

    async def aupdate(self, prompt: str, llm_string: str,
                      return_val: RETURN_VAL_TYPE) -> None:
        await self._arun(self._update(prompt, llm_string, return_val))

    async def aclear(self, **kwargs: Any) -> None:
        await self._arun(self._clear())

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the store and stop the cache's loop thread (also runs at garbage collection)."""
        self._finalizer()

    def __enter__(self) -> RepriseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
