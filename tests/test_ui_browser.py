"""The web UI in a real browser: ``scripts/ui_screenshots.py``'s flow, as part of ``make test``.

Headless Chromium (Debian's ``chromium`` and ``fonts-noto-cjk``, installed with apt by the
test setup when missing, as Redis Stack's libssl is) drives the stack ``make run`` starts
(``reprise up``: gateway, UI, SQLite store, the real USE embedder and cross-encoder) through
a newcomer's first minutes; see ``reprise.testing.ui_check`` for every check. The chat model
is the controllable test model: this test is about the page, and a 2-core CI machine would
spend minutes per answer of the embedded model (which ``make run`` and the llama tests use).
Locally, without apt or root, the test skips; in CI (``CI=true``) it fails instead, so a
broken image cannot turn it green.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reprise.testing import chromium, ui_check

SAMPLES = ("pdf/docling_multi_page.pdf", "md/pt_querido_diario_toolbox_README.md")


@pytest.fixture(scope="session")
def browser_ready() -> str:
    try:
        return chromium.ensure()
    except chromium.ChromiumUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Chromium for the real-browser check: {exc}")


def test_newcomer_flow_in_a_real_browser(browser_ready: str, data_dir: Path,
                                         tmp_path: Path) -> None:
    samples = [data_dir / "documents" / rel for rel in SAMPLES]
    report = ui_check.run(tmp_path / "shots", fake_upstream=True, samples=samples)
    text = "\n".join(report.lines)
    assert "exact hit" in text and "semantic hit" in text
    assert "the upload button refuses" in text and "deleted an entry" in text
    shots = sorted(p.name for p in (tmp_path / "shots").glob("*.png"))
    assert shots == ["cache.png", "chat.png", "chat_rag.png", "dashboard.png",
                     "documents.png", "welcome.png"]
