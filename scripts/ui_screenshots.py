"""Real-browser check of the web UI, and the README's screenshots.

Runs the flow of ``reprise.testing.ui_check`` (also run by ``make test``, with the test
model: ``tests/test_ui_browser.py``): starts the stack like ``make run`` in a scratch
directory, drives headless Chromium (Debian's ``chromium``, installed with apt when missing)
through chat (miss, exact hit, semantic hit), an upload (an unsupported file must make the
button refuse), answers from documents with their sources, deleting a cache entry (the
counts must follow) and the dashboard, and writes the screenshots to ``docs/screenshots/``.
Exits non-zero at the first thing a user would find broken. Usage::

    .venv/bin/python scripts/ui_screenshots.py [--fake-upstream] [--out docs/screenshots]

Without ``--fake-upstream`` the answers come from the embedded model (the README's
screenshots are taken that way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reprise.testing import ui_check

DOCS = ui_check.ROOT.parent / "shared" / "data" / "documents"
SAMPLES = [DOCS / "pdf" / "docling_multi_page.pdf",
           DOCS / "md" / "pt_querido_diario_toolbox_README.md"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fake-upstream", action="store_true",
                        help="use the controllable test model instead of llama.cpp")
    parser.add_argument("--out", default=str(ui_check.ROOT / "docs" / "screenshots"))
    args = parser.parse_args()
    samples = [p for p in SAMPLES if p.exists()]
    if not samples:
        sys.exit(f"no sample documents under {DOCS} (shared/data)")
    try:
        ui_check.run(Path(args.out).resolve(), fake_upstream=args.fake_upstream,
                     samples=samples)
    except (ui_check.CheckFailed, TimeoutError) as exc:
        print(f"FAILED: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
