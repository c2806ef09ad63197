"""The shared C build step of the native engines: CPU check, compile, atomic install.

Real components only: the system C compiler and /proc/cpuinfo-format text.
"""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import pytest

from reprise.embed import native_build

CAN_BUILD = native_build.cpu_supported() and shutil.which("cc") is not None


def test_cpu_check(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = "flags\t\t: fpu sse2 avx avx2 bmi1 bmi2 f16c fma movbe abm popcnt\n"
    monkeypatch.setattr(native_build.platform, "machine", lambda: "x86_64")
    assert native_build.cpu_supported("processor\t: 0\n" + flags)
    assert not native_build.cpu_supported(flags.replace(" avx2", ""))
    assert not native_build.cpu_supported("processor\t: 0\n")
    monkeypatch.setattr(native_build.platform, "machine", lambda: "aarch64")
    assert not native_build.cpu_supported(flags)


@pytest.mark.skipif(not CAN_BUILD, reason="needs x86-64-v3 and a C compiler")
def test_compile_installs_and_clears_only_stale_builds(tmp_path: Path) -> None:
    src = b'#include "two.h"\nint answer(void) { return TWO * 21; }\n'
    out_dir = tmp_path / "share"
    out_dir.mkdir()
    (out_dir / "k-old.so").write_bytes(b"old build")
    (out_dir / "other-lib.so").write_bytes(b"someone else's")
    out = native_build.compile_library(
        {"k.c": src, "two.h": b"#define TWO 2\n"}, "k.c", ("-O2", "-shared", "-fPIC"),
        out_dir / "k-new.so", stale=lambda p: p.name.startswith("k-"))
    assert ctypes.CDLL(str(out)).answer() == 42
    assert not (out_dir / "k-old.so").exists()
    assert (out_dir / "other-lib.so").exists()
    assert sorted(p.name for p in out_dir.iterdir()) == ["k-new.so", "other-lib.so"]


@pytest.mark.skipif(not CAN_BUILD, reason="needs x86-64-v3 and a C compiler")
def test_compile_error_is_reported_and_installs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "broken.so"
    with pytest.raises(native_build.EngineBuildError, match=r"(?s)failed:.*b\.c:1:.*error"):
        native_build.compile_library({"b.c": b"int broken( {\n"}, "b.c",
                                     ("-shared", "-fPIC"), out)
    assert not out.exists()
