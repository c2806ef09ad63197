"""Merging the ranked lists of the dense and the sparse leg into one.

Two standard rules, both measured in ``bench/retrieval.py`` (tuned on SciFact train):

* reciprocal rank fusion, ``sum 1 / (k + rank)``: needs no score calibration;
* a convex combination of min-max normalised scores, ``w * dense + (1 - w) * bm25``: uses
  how *far* apart scores are, not only their order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Ranked = Sequence[tuple[str, float]]  # (id, score), best first


@dataclass
class Fused:
    score: float = 0.0
    legs: list[str] = field(default_factory=list)
    dense: float | None = None
    bm25: float | None = None


def rrf(legs: Mapping[str, Ranked], k: int = 60) -> dict[str, Fused]:
    out: dict[str, Fused] = {}
    for leg, ranked in legs.items():
        for rank, (item, score) in enumerate(ranked, 1):
            f = out.setdefault(item, Fused())
            f.score += 1.0 / (k + rank)
            f.legs.append(leg)
            setattr(f, leg, score)
    return out


def _minmax(ranked: Ranked) -> dict[str, float]:
    if not ranked:
        return {}
    scores = [s for _, s in ranked]
    lo, hi = min(scores), max(scores)
    span = hi - lo
    return {item: (s - lo) / span if span > 0 else 1.0 for item, s in ranked}


def convex(legs: Mapping[str, Ranked], weights: dict[str, float]) -> dict[str, Fused]:
    out: dict[str, Fused] = {}
    for leg, ranked in legs.items():
        norm = _minmax(ranked)
        for item, score in ranked:
            f = out.setdefault(item, Fused())
            f.score += weights.get(leg, 0.0) * norm[item]
            f.legs.append(leg)
            setattr(f, leg, score)
    return out
