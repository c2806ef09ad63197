"""The sparse leg: an Okapi BM25 index over the search terms of one collection's chunks.

Built with ``bm25s`` (scores precomputed into a sparse matrix, so a query costs a few sparse
row sums) from terms the chunk index stored at ingestion (``reprise.rag.tokenize``), so a
rebuild never re-runs the tokenizer. An index is built once per collection version and
cached by :class:`Bm25Cache`; queries never rebuild it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

# Lucene's defaults; the best of the grid tried on SciFact train (bench/retrieval.py).
K1 = 1.2
B = 0.75


class Bm25Index:
    """BM25 over ``docs`` (lists of terms) addressed by ``ids``; immutable once built."""

    def __init__(self, ids: Sequence[str], docs: Sequence[Sequence[str]], *,
                 k1: float = K1, b: float = B) -> None:
        import bm25s

        self.ids = list(ids)
        self._model: bm25s.BM25 | None = None
        if any(docs):
            model = bm25s.BM25(k1=k1, b=b, method="lucene")
            # bm25s wants at least one token per document; "" never occurs in a query.
            model.index([list(d) or [""] for d in docs], show_progress=False)
            self._model = model

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, terms: Sequence[str], k: int) -> list[tuple[str, float]]:
        """Ids and BM25 scores of the best ``k`` chunks that share a term with the query."""
        if self._model is None or k <= 0:
            return []
        known = [t for t in dict.fromkeys(terms) if t in self._model.vocab_dict and t]
        if not known:
            return []
        scores = np.asarray(self._model.get_scores(known), dtype=np.float32)
        positive = np.flatnonzero(scores > 0)
        if len(positive) > k:
            positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
        order = positive[np.argsort(-scores[positive], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in order]


class Bm25Cache:
    """Built indexes by collection key, valid for one collection version each (LRU-bounded).

    Thread-safe, and a build for one key happens once even when several queries ask at the
    same moment: the others wait for it instead of building their own copy.
    """

    def __init__(self, max_collections: int = 32) -> None:
        self.max_collections = max_collections
        self._items: OrderedDict[str, tuple[int, Bm25Index]] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self.builds = 0  # how many indexes were built (tests check queries never rebuild)

    def peek(self, key: str, version: int) -> Bm25Index | None:
        """The cached index of ``key`` if it was built for ``version``."""
        with self._lock:
            hit = self._items.get(key)
            return hit[1] if hit is not None and hit[0] == version else None

    def get(self, key: str, version: int,
            load: Callable[[], tuple[list[str], list[list[str]]]]) -> Bm25Index:
        """The index of ``key`` at ``version``, built from ``load()`` if not cached."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] == version:
                self._items.move_to_end(key)
                return hit[1]
            gate = self._building.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                hit = self._items.get(key)
                if hit is not None and hit[0] == version:
                    return hit[1]
            ids, docs = load()
            index = Bm25Index(ids, docs)
            with self._lock:
                self.builds += 1
                self._items[key] = (version, index)
                self._items.move_to_end(key)
                while len(self._items) > self.max_collections:
                    self._items.popitem(last=False)
            return index

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)
