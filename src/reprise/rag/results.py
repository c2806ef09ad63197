"""One retrieved chunk, as the retriever, the rerankers and the answer packer see it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Retrieved:
    chunk_id: str
    doc_id: str
    page: int
    text: str
    score: float  # the final ranking score (after fusion and reranking); higher is better
    legs: list[str]  # the retrievers whose candidate lists held it: "dense", "bm25"
    similarity: float = 0.0  # cosine(query, passage) with the collection's embedder
    bm25: float = 0.0  # BM25 score (0 when the sparse leg did not find it)
    fused: float = 0.0  # the fusion score before reranking
    coverage: float = 0.0  # share of the question's distinct search terms in the chunk
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)
