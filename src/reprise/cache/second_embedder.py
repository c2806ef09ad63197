"""The semantic verifier's second embedder (multilingual-e5-small): vectors on demand.

Kept apart from ``semantic`` because its job is scheduling a shared native model among
concurrent requests (an LRU of vectors, in-flight tracking, lookups before prefetches),
not deciding whether two questions match.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from reprise.cache.text import embedding_text
from reprise.embed.base import Embedder

log = logging.getLogger(__name__)

# Stored questions whose e5 pass may wait for an idle model (see SemanticLookup.remember).
WARM_BACKLOG = 256


class _ModelGate:
    """Turns at the e5 model: a lookup waiting for a vector goes before a prefetch.

    Prefetches are speculative; under load they would otherwise queue in front of the
    lookups that need an answer now (measured: semantic hits waiting seconds behind other
    requests' prefetches at concurrency 64).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._urgent = 0

    @contextmanager
    def turn(self, urgent: bool) -> Iterator[None]:
        with self._cond:
            if urgent:
                self._urgent += 1
            try:
                while self._busy or (not urgent and self._urgent):
                    self._cond.wait()
            finally:
                if urgent:
                    self._urgent -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class E5Similarity:
    """Second-embedder similarity for the verifier: the model is loaded on first use and
    vectors are kept in an LRU keyed by ``embedding_text`` (stored questions come back as
    candidates again and again, and a question looked up as a miss is stored next).

    ``prefetch`` embeds the incoming question while the first embedder and the index search
    run, so a candidate that needs e5 finds the question's side ready; the stored side was
    embedded the same way when it was asked. Prefetches yield the model to lookups that are
    waiting (``_ModelGate``) and are skipped while ``max_backlog`` of them already wait: under
    load the vector is then computed when, and only if, a lookup needs it. A text being
    embedded is tracked, so a lookup that needs it waits for that pass instead of repeating it.

    Thread-safe. Model calls are serialised: the engine spreads one call over its threads.
    """

    def __init__(self, factory: Callable[[], Embedder], cache_size: int = 16384,
                 max_backlog: int = 2) -> None:
        self._factory = factory
        self._embedder: Embedder | None = None
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._inflight: dict[str, Future[dict[str, np.ndarray]]] = {}
        self._size = cache_size
        self._lock = threading.Lock()  # the LRU, the in-flight table, the backlog count
        self._load_lock = threading.Lock()
        self._gate = _ModelGate()
        self._failed: Exception | None = None
        self._backlog = 0
        self._max_backlog = max_backlog
        # Own threads, so waiting for the model never holds the event loop's shared workers
        # (the USE pass and store calls run there).
        self._prefetch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reprise-e5p")
        self._lookup_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="reprise-e5")
        self.calls = 0  # texts embedded (for benchmarks and tests)
        self.skipped = 0  # prefetches dropped under load

    def _model(self) -> Embedder:
        with self._load_lock:
            if self._failed is not None:
                raise self._failed
            if self._embedder is None:
                try:
                    self._embedder = self._factory()
                except Exception as exc:  # not installed: remembered, not retried
                    self._failed = exc
                    raise
            return self._embedder

    def _split(self, texts: Sequence[str], found: dict[str, np.ndarray]
               ) -> tuple[list[str], list[Future[dict[str, np.ndarray]]]]:
        """Under ``_lock``: fill ``found`` from the LRU; return (to embed, passes to wait for)."""
        todo: list[str] = []
        waits: list[Future[dict[str, np.ndarray]]] = []
        for t in dict.fromkeys(texts):
            if t in found:
                continue
            if t in self._vectors:
                self._vectors.move_to_end(t)
                found[t] = self._vectors[t]
            elif t in self._inflight:
                waits.append(self._inflight[t])
            else:
                todo.append(t)
        return todo, waits

    def vectors(self, texts: Sequence[str], urgent: bool = True) -> dict[str, np.ndarray]:
        """e5 vectors of ``texts`` (already in ``embedding_text`` form), by text."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            if self._failed is not None:
                raise self._failed
            todo, waits = self._split(texts, found)
        if todo:
            model = self._model()
            with self._gate.turn(urgent):
                mine: Future[dict[str, np.ndarray]] = Future()
                with self._lock:  # others may have embedded some while this one waited
                    todo, more = self._split(todo, found)
                    waits += more
                    for t in todo:
                        self._inflight[t] = mine
                if todo:
                    try:
                        vecs = model.embed_sync(todo, "query")
                    except Exception as exc:
                        with self._lock:
                            for t in todo:
                                self._inflight.pop(t, None)
                        mine.set_exception(exc)
                        raise
                    done = {t: np.asarray(v, dtype=np.float32)
                            for t, v in zip(todo, vecs, strict=True)}
                    with self._lock:
                        self.calls += len(todo)
                        for t, v in done.items():
                            self._vectors[t] = v
                            self._inflight.pop(t, None)
                        while len(self._vectors) > self._size:
                            self._vectors.popitem(last=False)
                    mine.set_result(done)
                    found.update(done)
        for fut in waits:
            found.update(fut.result())
        return found

    def _prefetch_job(self, text: str) -> None:
        """Embed ``text`` ahead of need; failures are left for the lookup to meet."""
        try:
            self.vectors([text], urgent=False)
        except Exception as exc:
            log.debug("e5 prefetch failed: %s", exc)
        finally:
            with self._lock:
                self._backlog -= 1

    async def prefetch_async(self, question: str, backlog: int | None = None) -> None:
        """Embed ``question`` on the prefetch thread unless ``backlog`` (default
        ``max_backlog``) prefetches already wait, or its vector is known or on its way."""
        limit = self._max_backlog if backlog is None else backlog
        text = embedding_text(question)
        with self._lock:
            if text in self._vectors or text in self._inflight:
                return
            if self._backlog >= limit or self._failed is not None:
                self.skipped += 1
                return
            self._backlog += 1
        await asyncio.get_running_loop().run_in_executor(
            self._prefetch_pool, self._prefetch_job, text)

    async def similarities_async(self, question: str, candidates: Sequence[str]) -> list[float]:
        return await asyncio.get_running_loop().run_in_executor(
            self._lookup_pool, self.similarities, question, list(candidates))

    def similarities(self, question: str, candidates: Sequence[str]) -> list[float]:
        q = embedding_text(question)
        texts = [embedding_text(c) for c in candidates]
        vecs = self.vectors([q, *texts])
        return [float(vecs[q] @ vecs[t]) for t in texts]
