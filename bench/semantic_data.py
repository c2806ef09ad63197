"""Labelled question pairs for the semantic-cache benchmark and the verifier's training.

One loader per data set in ``<project>/../shared/data``; each returns ``Pair`` rows with a
binary "same answer" label. Which split is tuning and which is report-only is fixed here, so
the training script can only ever see the tuning splits (``TUNING``) and the benchmark
reports on the others (``REPORT``).

Also holds an on-disk embedding cache (text hash -> vector), so the benchmark and the
training script do not pay the embedder twice for the same texts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CACHE_DIR = ROOT / ".cache" / "bench"  # embeddings of benchmark texts (gitignored)
ASSIN_POSITIVE_SIMILARITY = 4.5


@dataclass(frozen=True, slots=True)
class Pair:
    q1: str  # stored question
    q2: str  # incoming question
    label: int  # 1 = same answer
    lang: str  # en | zh | pt


def _qqp_40k() -> list[Pair]:
    with open(DATA / "qqp" / "qqp_pairs_40k.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    return [Pair(r[1], r[2], int(r[3]), "en") for r in rows]


def _qqp_40k_indices() -> set[int]:
    with open(DATA / "qqp" / "qqp_pairs_40k.tsv", encoding="utf-8", newline="") as fh:
        return {int(r[0]) for r in list(csv.reader(fh, delimiter="\t"))[1:]}


def _qqp_full() -> list[dict[str, object]]:
    path = DATA / "gptcache_benchmark" / "similiar_qqp_full.json.gz"
    with tarfile.open(path, "r:gz") as tar:
        member = tar.extractfile("examples/benchmark/similiar_qqp_full.json")
        assert member is not None
        rows: list[dict[str, object]] = json.load(io.TextIOWrapper(member, encoding="utf-8"))
    return rows


def _qqp_report() -> list[Pair]:
    """QQP pairs of GPTCache's full file that are not in the 40k tuning sample."""
    tuning = _qqp_40k_indices()
    return [
        Pair(str(r["text_a"]), str(r["text_b"]), int(str(r["label"])), "en")
        for i, r in enumerate(_qqp_full())
        if i not in tuning
    ]


def _lcqmc(split: str) -> list[Pair]:
    out = []
    with open(DATA / "lcqmc" / f"{split}.txt", encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3 and parts[2] in ("0", "1"):
                out.append(Pair(parts[0], parts[1], int(parts[2]), "zh"))
    return out


def _bq(split: str) -> list[Pair]:
    with open(DATA / "bq_corpus" / f"{split}.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [Pair(r["sentence1"], r["sentence2"], int(r["label"]), "zh") for r in rows]


def _assin(files: list[str]) -> list[Pair]:
    """A pair is a duplicate when annotators rated it ``similarity >= 4.5`` (of 5).

    ASSIN 2 has no "Paraphrase" label and entailment is one-directional, so the similarity
    score is the one definition that works for ASSIN 1 and 2 alike.
    """
    out = []
    for name in files:
        root = ET.parse(DATA / "assin" / name).getroot()
        for pair in root.iter("pair"):
            t, h = pair.findtext("t") or "", pair.findtext("h") or ""
            sim = float(pair.get("similarity", "0"))
            out.append(Pair(t.strip(), h.strip(), int(sim >= ASSIN_POSITIVE_SIMILARITY), "pt"))
    return out


def mock_pairs() -> list[Pair]:
    """GPTCache's mock_data.json: an LLM paraphrase of each origin; all positives."""
    rows = json.loads((DATA / "gptcache_benchmark" / "mock_data.json").read_text("utf-8"))
    return [Pair(r["origin"], r["similar"], 1, "en") for r in rows]


def squad_pt_questions() -> list[str]:
    """Portuguese questions (SQuAD dev, machine-translated): filler for the ASSIN store."""
    data = json.loads((DATA / "squad_v2_dev_subset" / "pt" / "dev-v2.0-pt.json").read_text())
    return [qa["question"] for art in data["data"] for p in art["paragraphs"] for qa in p["qas"]]


TUNING: dict[str, Callable[[], list[Pair]]] = {
    "qqp": _qqp_40k,
    "lcqmc": lambda: _lcqmc("dev"),
    "bq": lambda: _bq("dev"),
    "assin": lambda: _assin(["assin2-dev.xml"]),
}
REPORT: dict[str, Callable[[], list[Pair]]] = {
    "qqp": _qqp_report,
    "lcqmc": lambda: _lcqmc("test"),
    "bq": lambda: _bq("test"),
    "assin": lambda: _assin(["assin2-test.xml", "assin-ptbr-test.xml", "assin-ptpt-test.xml"]),
}


def sample(pairs: list[Pair], n: int | None, seed: int = 13) -> list[Pair]:
    """A fixed-seed sample (all pairs when ``n`` is None or larger than the set)."""
    if n is None or n >= len(pairs):
        return list(pairs)
    return random.Random(seed).sample(pairs, n)


class EmbeddingCache:
    """Vectors of already embedded texts, kept in one ``.npz`` per embedder name."""

    def __init__(self, directory: Path, name: str, dim: int, autosave: bool = True) -> None:
        """``autosave=False`` for many small lookups: call ``save`` when done instead of
        rewriting the file after every miss."""
        directory.mkdir(parents=True, exist_ok=True)
        self.autosave = autosave
        self.path = directory / f"{name}.npz"
        self.dim = dim
        self._vectors: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path) as npz:
                keys, mat = npz["keys"], npz["vectors"]
            self._vectors = {str(k): v for k, v in zip(keys, mat, strict=True)}
        self._dirty = False

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()

    def get_many(
        self, texts: list[str], embed: Callable[[list[str]], np.ndarray], chunk: int = 2048
    ) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if self._key(t) not in self._vectors))
        for i in range(0, len(missing), chunk):
            part = missing[i : i + chunk]
            for text, vec in zip(part, embed(part), strict=True):
                self._vectors[self._key(text)] = np.asarray(vec, dtype=np.float32)
            self._dirty = True
            if self.autosave:
                self.save()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vectors[self._key(t)] for t in texts])

    def save(self) -> None:
        if not self._dirty:
            return
        keys = np.array(list(self._vectors.keys()))
        mat = np.stack(list(self._vectors.values())).astype(np.float32)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=mat)
        tmp.replace(self.path)
        self._dirty = False


def fillers(name: str, pool: list[Pair], evaluated: list[Pair], n: int, seed: int = 7) -> list[str]:
    """``n`` distinct questions from the same set's *other* pairs (same language, same style,
    so they are realistic near-misses), never a text of an evaluated pair. ASSIN has too few
    sentences, so Portuguese SQuAD questions top it up."""
    banned = {t.strip().casefold() for p in evaluated for t in (p.q1, p.q2)}
    texts = [t for p in pool for t in (p.q1, p.q2)]
    if name == "assin":
        texts += squad_pt_questions()
    seen: set[str] = set()
    unique = []
    for t in texts:
        k = t.strip().casefold()
        if t.strip() and k not in banned and k not in seen:
            seen.add(k)
            unique.append(t)
    random.Random(seed).shuffle(unique)
    return unique[:n]
