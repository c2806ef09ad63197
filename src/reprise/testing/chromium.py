"""Debian's Chromium for the real-browser check, installed with apt when it is missing.

The UI's browser test (``tests/test_ui_browser.py``, the flow of ``scripts/ui_screenshots.py``)
needs a real browser; no registry package ships one that runs here, Debian's ``chromium``
does, and ``fonts-noto-cjk`` (``fonts-noto-color-emoji``) make Chinese text (and the vote
thumbs) render instead of boxes. Like Redis Stack's
libssl (``services.redis_stack``), the test setup installs them itself, so ``make test`` on a
fresh machine runs the check instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CJK_FONT_DIR = Path("/usr/share/fonts/opentype/noto")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
APT_TIMEOUT_SECONDS = 1200


class ChromiumUnavailable(RuntimeError):
    """Chromium is not here and could not be installed (no apt, not root, no network)."""


def find() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _missing() -> list[str]:
    missing = [] if find() else ["chromium"]
    if not any(CJK_FONT_DIR.glob("NotoSansCJK*")):
        missing.append("fonts-noto-cjk")
    if not EMOJI_FONT.exists():
        missing.append("fonts-noto-color-emoji")  # the 👍/👎 of votes
    return missing


def _apt(*args: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=600", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=APT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ChromiumUnavailable(f"apt-get {args[0]} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ChromiumUnavailable(f"`{' '.join(cmd)}` exited {proc.returncode}: {tail}")


def ensure() -> str:
    """The chromium executable, installing it (and the CJK fonts) first when missing."""
    missing = _missing()
    if missing:
        if shutil.which("apt-get") is None:
            raise ChromiumUnavailable(f"{', '.join(missing)} missing and apt-get not found")
        if os.geteuid() != 0:
            raise ChromiumUnavailable(f"{', '.join(missing)} missing; installing them with "
                                      "apt-get needs root")
        _apt("update")
        _apt("install", "--no-install-recommends", *missing)
    exe = find()
    if exe is None:
        raise ChromiumUnavailable("apt-get installed chromium but no executable was found")
    return exe
