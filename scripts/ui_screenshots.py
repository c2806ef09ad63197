"""Real-browser check of the web UI: headless Chromium asks twice and must see the hit badge.

Starts the stack the way ``make run`` does (``reprise up``: llama.cpp + SmolLM2, gateway, UI)
in a scratch data directory, or with ``--fake-upstream`` the controllable test model instead
of llama.cpp. Then drives the Debian ``chromium`` package over the Chrome DevTools Protocol
(a small synchronous websocket client; no Selenium/Playwright needed):

1. Chat: ask a question (miss), ask it again (must show the *exact hit* badge), ask a
   paraphrase (semantic hit, if the guards accept it) → ``chat.png``
2. Documents: create a collection, pick two sample files with the real file input, upload,
   wait for per-file indexing → ``documents.png``
3. Chat with that collection, sources panel open → ``chat_rag.png``
4. Cache and Dashboard pages → ``cache.png``, ``dashboard.png``

Exits non-zero if the hit badge never appears. Usage::

    .venv/bin/python scripts/ui_screenshots.py [--fake-upstream] [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT.parent / "shared" / "data" / "documents"
SAMPLES = [DOCS / "pdf" / "docling_multi_page.pdf",
           DOCS / "md" / "pt_querido_diario_toolbox_README.md"]
QUESTION = "What is a distributed system?"
PARAPHRASE = "What's a distributed system?"
RAG_QUESTION = "Who made the first word processor?"
CHAT_INPUT = 'textarea[data-testid="stChatInputTextArea"]'


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, stopped (SIGTERM, then SIGKILL) on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Browser:
    """Just enough of the Chrome DevTools Protocol to drive one tab."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    def js(self, expression: str) -> Any:
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"JS error in {expression[:80]!r}: {out['exceptionDetails']}")
        return out.get("result", {}).get("value")

    def text(self) -> str:
        return str(self.js("document.body ? document.body.innerText : ''"))

    def wait(self, what: str, test: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if test():
                return
            time.sleep(0.25)
        raise TimeoutError(f"timed out waiting for {what}; page text:\n{self.text()[-1500:]}")

    def idle(self) -> bool:
        """No script run in progress and no element greyed out as stale."""
        return not (self.has('[data-testid="stStatusWidget"]')
                    or self.has('[data-stale="true"]'))

    def has(self, selector: str) -> bool:
        return bool(self.js(f"!!document.querySelector({json.dumps(selector)})"))

    def open(self, url: str, ready_text: str) -> None:
        """Load a page; ``ready_text`` is text it shows, or ``css:SELECTOR`` it contains."""
        self.send("Page.navigate", url=url)
        if ready_text.startswith("css:"):
            self.wait(f"{url} to hold {ready_text[4:]}", lambda: self.has(ready_text[4:]))
        else:
            self.wait(f"{url} to show {ready_text!r}", lambda: ready_text in self.text())
        self.settle()

    def settle(self, seconds: float = 1.0) -> None:
        """Wait until Streamlit has stopped running the script for a while."""
        quiet_since = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.idle():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= seconds:
                    return
            else:
                quiet_since = None
            time.sleep(0.2)

    def type_into(self, selector: str, text: str, enter: bool = False) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)
        if enter:
            for kind in ("keyDown", "keyUp"):
                self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                          windowsVirtualKeyCode=13, nativeVirtualKeyCode=13,
                          **({"text": "\r"} if kind == "keyDown" else {}))

    def click_button(self, label: str) -> None:
        found = self.js(f"""(() => {{
            const b = [...document.querySelectorAll('button')]
                .find(b => b.innerText.trim().endsWith({json.dumps(label)}) && !b.disabled);
            if (b) b.click();
            return !!b; }})()""")
        if not found:
            raise RuntimeError(f"no enabled button labelled {label!r}")

    def select(self, label: str, option: str) -> None:
        """Choose an option of the Streamlit selectbox labelled ``label``."""
        box = f'input[aria-label={json.dumps(label)}]'
        self.js(f"document.querySelector({json.dumps(box)}).parentElement"
                ".querySelector('button[aria-label=\"Open\"]').click()")
        pick = f"""(() => {{ const o = [...document.querySelectorAll('[role="option"]')]
            .find(o => o.innerText.trim() === {json.dumps(option)});
            if (o) o.click(); return !!o; }})()"""
        self.wait(f"option {option!r}", lambda: bool(self.js(pick)), 30)
        self.wait(f"{label} = {option}", lambda: self.js(
            f"document.querySelector({json.dumps(box)}).value") == option, 30)
        self.settle()

    def set_files(self, selector: str, paths: list[Path]) -> None:
        root = self.send("DOM.getDocument", depth=-1, pierce=True)["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])

    def screenshot(self, path: Path) -> None:
        """The whole page: the viewport grows to the height of the page's content (capped),
        then every scrolled container goes back to the top."""
        for _ in range(2):
            content = int(self.js(
                "(() => { const b = document.querySelector("
                "'[data-testid=\"stMainBlockContainer\"]');"
                " return b ? b.offsetTop + b.scrollHeight : 900; })()") or 900)
            chat_input = 140 if self.has(CHAT_INPUT) else 40
            self.send("Emulation.setDeviceMetricsOverride", width=1440,
                      height=max(900, min(content + chat_input, 4000)), deviceScaleFactor=1,
                      mobile=False)
            self.settle(0.6)
        self.js("document.querySelectorAll('section, div').forEach(e => { e.scrollTop = 0; })")
        time.sleep(0.3)
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


@contextmanager
def chromium(scratch: Path) -> Iterator[Browser]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install -y chromium)")
    port = free_port()
    argv = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-dev-shm-usage", f"--remote-debugging-port={port}",
            "--remote-allow-origins=*", f"--user-data-dir={scratch / 'chromium'}",
            "--window-size=1440,1000", "about:blank"]
    with process(argv, dict(os.environ), scratch / "chromium.log"):
        wait_http(f"http://127.0.0.1:{port}/json/version", 60)
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        target = next(p for p in pages if p.get("type") == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            browser = Browser(ws)
            browser.send("Page.enable")
            browser.send("Emulation.setDeviceMetricsOverride", width=1440, height=1000,
                         deviceScaleFactor=1, mobile=False)
            yield browser


def ask(b: Browser, question: str, answers_before: int) -> str:
    """Ask in the chat input; wait for the new answer's badge line; return that line."""
    b.type_into(CHAT_INPUT, question, enter=True)
    b.wait("the answer's badge", lambda: b.text().count("latency") > answers_before, 600)
    b.settle()
    lines = [ln for ln in b.text().splitlines() if "latency" in ln]
    return lines[-1] if lines else ""


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="reprise-ui-shots-"))
    gw_port, ui_port, llama_port = free_port(), free_port(), free_port()
    env = {**os.environ, "REPRISE_DATA_DIR": str(scratch / "data"), "REPRISE_PORT": str(gw_port),
           "REPRISE_UI_PORT": str(ui_port), "REPRISE_LLAMA_PORT": str(llama_port),
           "REPRISE_GATEWAY_URL": f"http://127.0.0.1:{gw_port}", "REPRISE_JSON_LOGS": "false"}
    env.pop("REPRISE_CONFIG", None)
    up = [sys.executable, "-m", "reprise.cli", "up", "--store", "sqlite"]
    fake_port = free_port()
    stack = []
    if args.fake_upstream:
        env.update(REPRISE_UPSTREAM_URL=f"http://127.0.0.1:{fake_port}/v1",
                   REPRISE_UPSTREAM_MODEL="fake-model")
        up.append("--no-model-server")
        stack.append([sys.executable, "-m", "reprise.testing.upstream", "--port",
                      str(fake_port), "--latency", "0.6", "--chunk-delay", "0.05"])
    stack.append(up)
    print(f"scratch dir {scratch}; starting the stack …")
    with ExitStack() as stack_ctx:
        procs = [stack_ctx.enter_context(process(argv, env, scratch / f"proc{i}.log"))
                 for i, argv in enumerate(stack)]
        wait_http(f"http://127.0.0.1:{gw_port}/healthz", 300, procs[-1])
        wait_http(f"http://127.0.0.1:{ui_port}/_stcore/health", 120, procs[-1])
        ui = f"http://127.0.0.1:{ui_port}"
        print(f"gateway :{gw_port} and UI :{ui_port} are up; driving chromium …")
        with chromium(scratch) as b:
            b.open(f"{ui}/", f"css:{CHAT_INPUT}")
            first = ask(b, QUESTION, 0)
            print(f"1st ask: {first}")
            second = ask(b, QUESTION, 1)
            print(f"2nd ask: {second}")
            if "exact hit" not in second:
                print("FAILED: the second identical question did not show the exact-hit badge")
                return 1
            third = ask(b, PARAPHRASE, 2)
            print(f"paraphrase: {third}")
            b.screenshot(out / "chat.png")

            b.open(f"{ui}/documents", "New collection")
            b.type_into('input[aria-label="New collection"]', "handbook")
            b.click_button("Create")
            b.wait("the collection", lambda: "Add documents" in b.text())
            b.settle()
            b.set_files('input[type="file"]', [p for p in SAMPLES if p.exists()])
            b.wait("the upload button", lambda: b.js(
                "[...document.querySelectorAll('button')].some(b => "
                "b.innerText.includes('Upload and index') && !b.disabled)"))
            b.click_button("Upload and index")
            b.wait("indexing to finish", lambda: "Last upload:" in b.text()
                   and "indexing …" not in b.text(), 600)
            b.settle()
            b.screenshot(out / "documents.png")

            b.open(f"{ui}/", f"css:{CHAT_INPUT}")
            b.select("Answer from documents", "handbook")
            rag = ask(b, RAG_QUESTION, 0)
            print(f"RAG question: {rag}")
            b.js("""[...document.querySelectorAll('summary')]
                .filter(s => s.innerText.includes('Sources')).forEach(s => s.click())""")
            b.screenshot(out / "chat_rag.png")

            b.open(f"{ui}/cache", "Semantic threshold")
            b.screenshot(out / "cache.png")
            b.open(f"{ui}/dashboard", "Hit rate")
            b.wait("the plots", lambda: b.js(
                "document.querySelectorAll('[data-testid=\"stImage\"] img').length") >= 2)
            b.screenshot(out / "dashboard.png")
    print("the real-browser check passed: the second identical question showed a hit badge")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fake-upstream", action="store_true",
                        help="use the controllable test model instead of llama.cpp + SmolLM2")
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
