"""Second-stage rerankers: reorder the fused candidates before the best are kept.

* :class:`FeatureReranker` (the default): a linear scorer over signals the first stage
  already has for every candidate, computed exactly here rather than taken from whichever
  leg happened to find it: the query-passage cosine of the collection's embedder (also for
  candidates only BM25 found), the BM25 score relative to the best candidate's, and the
  share of the question's terms the passage holds (``Retrieved.coverage``). Its weights
  were fitted on the SciFact *train* split (``bench/retrieval.py --tune``); the gain on
  *test* is in ``bench/results/retrieval.md``. It costs no model call.
* :class:`CrossEncoderReranker`: a cross-encoder (query and passage read together, e.g. an
  ONNX export of ``cross-encoder/ms-marco-MiniLM-L-6-v2`` or ``BAAI/bge-reranker-base``)
  loaded from a local directory the user supplies. No such model ships on PyPI, so it is
  never the default; it needs ``onnxruntime`` and ``tokenizers`` (``pip install
  'reprise[rerank]'``).
* :class:`NoReranker`: keeps the fusion order.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reprise.rag.results import Retrieved


class RerankerError(RuntimeError):
    """A reranker that cannot run (model files missing, runtime not installed)."""


@runtime_checkable
class Reranker(Protocol):
    name: str

    async def rerank(self, query: str, terms: Sequence[str],
                     candidates: list[Retrieved]) -> list[Retrieved]:
        """The candidates reordered best first, ``score`` set to the reranker's score."""


class NoReranker:
    name = "none"

    async def rerank(self, query: str, terms: Sequence[str],
                     candidates: list[Retrieved]) -> list[Retrieved]:
        for c in candidates:
            c.score = c.fused
        return sorted(candidates, key=lambda c: -c.score)


@dataclass(frozen=True)
class FeatureWeights:
    similarity: float
    bm25: float
    coverage: float


# Grid-searched on SciFact train (full corpus) with multilingual-e5-small
# (bench/retrieval.py --tune): +0.007 nDCG@10 over the convex fusion it reranks; term
# coverage added nothing there.
E5_WEIGHTS = FeatureWeights(similarity=1.0, bm25=0.06, coverage=0.0)


class FeatureReranker:
    """Linear rescoring by cosine, relative BM25 and query-term coverage (see module doc)."""

    name = "features"

    def __init__(self, weights: FeatureWeights = E5_WEIGHTS) -> None:
        self.weights = weights

    def scores(self, candidates: list[Retrieved]) -> list[float]:
        best_bm25 = max((c.bm25 for c in candidates), default=0.0)
        w = self.weights
        return [w.similarity * c.similarity
                + w.bm25 * (c.bm25 / best_bm25 if best_bm25 > 0 else 0.0)
                + w.coverage * c.coverage for c in candidates]

    async def rerank(self, query: str, terms: Sequence[str],
                     candidates: list[Retrieved]) -> list[Retrieved]:
        for c, s in zip(candidates, self.scores(candidates), strict=True):
            c.score = float(s)
        return sorted(candidates, key=lambda c: -c.score)


class CrossEncoderReranker:
    """A local ONNX cross-encoder: ``model.onnx`` + ``tokenizer.json`` in ``path``.

    The score is the model's relevance logit (the last output column), so it ranks; it is
    not a probability and ``is_relevant`` keeps judging by the embedder's cosine.
    """

    name = "cross-encoder"

    def __init__(self, path: str | Path, *, max_length: int = 512, batch_size: int = 16,
                 threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise RerankerError(f"cross-encoder model directory {self.path} does not exist")
        model, vocab = self.path / "model.onnx", self.path / "tokenizer.json"
        missing = [p.name for p in (model, vocab) if not p.is_file()]
        if missing:
            raise RerankerError(f"cross-encoder directory {self.path} lacks {', '.join(missing)}"
                                " (export the model to ONNX with its tokenizer.json)")
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise RerankerError("the cross-encoder needs onnxruntime and tokenizers: "
                                "pip install 'reprise[rerank]'") from exc
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session: Any = onnxruntime.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer: Any = Tokenizer.from_file(str(vocab))
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding()
        self._batch = batch_size

    def score_sync(self, query: str, passages: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for i in range(0, len(passages), self._batch):
            pairs = [(query, p) for p in passages[i:i + self._batch]]
            enc = self._tokenizer.encode_batch(pairs)
            feeds = {
                "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
            }
            out = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})
            logits = np.asarray(out[0], dtype=np.float32)
            column = logits.reshape(len(pairs), -1)[:, -1]
            scores.extend(float(x) for x in column)
        return scores

    async def rerank(self, query: str, terms: Sequence[str],
                     candidates: list[Retrieved]) -> list[Retrieved]:
        scores = await asyncio.to_thread(self.score_sync, query, [c.text for c in candidates])
        for c, s in zip(candidates, scores, strict=True):
            c.score = s if math.isfinite(s) else -math.inf
        return sorted(candidates, key=lambda c: -c.score)


def default_reranker(embedder: Any) -> Reranker:
    """The best stage that runs offline here: feature rescoring (weights fitted for e5).

    For other embedders the cosine scale differs, so only the order of the fused lists is
    kept (``NoReranker``) until weights are fitted for them.
    """
    if getattr(embedder, "name", "") == "e5":
        return FeatureReranker(E5_WEIGHTS)
    return NoReranker()
