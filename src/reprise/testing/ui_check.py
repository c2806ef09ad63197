"""The real-browser check of the web UI, shared by ``make test`` and the screenshot script.

Starts the stack the way ``make run`` does (``reprise up``: gateway and UI, with llama.cpp or,
with ``fake_upstream``, the controllable test model) in a scratch data directory, drives the
Debian ``chromium`` package over the Chrome DevTools Protocol (a small synchronous websocket
client; no Selenium/Playwright needed) through a newcomer's first minutes, and fails with
what it saw whenever the page does not do what a user expects:

1. Chat: the first-run panel says what Reprise is and which model answers (``welcome.png``);
   a question is a *miss*, the same again an *exact hit*, a paraphrase a *semantic hit* →
   ``chat.png``
2. Documents: a collection named with an accent; a file of an unsupported type in the real
   file picker makes the upload button refuse, with the file named; two documents upload and
   index → ``documents.png``
3. Chat with that collection, sources panel open → ``chat_rag.png``
4. Cache: deleting an entry updates the namespace's count and the delete box at once →
   ``cache.png``; Dashboard plots → ``dashboard.png``
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from reprise.testing import chromium as chromium_exe

ROOT = Path(__file__).resolve().parents[3]
QUESTION = "What is a distributed system?"
PARAPHRASE = "What's a distributed system?"
RAG_QUESTION = "Who made the first word processor?"
COLLECTION = "públicos"
CHAT_INPUT = 'textarea[data-testid="stChatInputTextArea"]'
BADGE = "first token"  # every answer's badge line holds it


class CheckFailed(AssertionError):
    """The UI did not do what a user expects; the message says what was seen."""


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

    def select_first(self, label: str) -> None:
        """Choose the first option of the selectbox labelled ``label``."""
        box = f'input[aria-label={json.dumps(label)}]'
        self.js(f"document.querySelector({json.dumps(box)}).parentElement"
                ".querySelector('button[aria-label=\"Open\"]').click()")
        pick = """(() => { const o = document.querySelector('[role="option"]');
            if (o) o.click(); return !!o; })()"""
        self.wait(f"an option of {label}", lambda: bool(self.js(pick)), 30)
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
    exe = chromium_exe.ensure()
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


def badge_lines(b: Browser) -> list[str]:
    return [ln for ln in b.text().splitlines() if BADGE in ln]


def ask(b: Browser, question: str, timeout: float = 600) -> str:
    """Ask in the chat input; wait for the new answer's badge line; return that line."""
    before = len(badge_lines(b))
    b.type_into(CHAT_INPUT, question, enter=True)
    b.wait("the answer's badge", lambda: len(badge_lines(b)) > before, timeout)
    b.settle()
    lines = badge_lines(b)
    return lines[-1] if lines else ""


def expect(ok: bool, what: str, b: Browser | None = None) -> None:
    if not ok:
        seen = f"\npage text:\n{b.text()[-2000:]}" if b is not None else ""
        raise CheckFailed(what + seen)


def button_enabled(b: Browser, label: str) -> bool:
    return bool(b.js(f"""[...document.querySelectorAll('button')].some(x =>
        x.innerText.includes({json.dumps(label)}) && !x.disabled)"""))


def selectbox_value(b: Browser, label: str) -> str:
    box = f'input[aria-label={json.dumps(label)}]'
    return str(b.js(f"(document.querySelector({json.dumps(box)}) || {{}}).value || ''"))


def entries_shown(b: Browser) -> int:
    """The entry count drawn next to the cache page's namespace box."""
    metrics = b.js("""[...document.querySelectorAll('[data-testid="stMetric"]')]
        .map(m => m.innerText)""") or []
    for text in metrics:
        lines = [ln for ln in str(text).splitlines() if ln.strip()]
        if lines and lines[0].strip() == "Entries":
            return int(lines[-1].replace(",", ""))
    raise CheckFailed(f"the cache page shows no entry count (metrics: {metrics!r})")


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


def _chat(b: Browser, ui: str, out: Path, r: Report) -> None:
    b.open(f"{ui}/", f"css:{CHAT_INPUT}")
    text = b.text()
    expect("Reprise is a gateway" in text and "Model in use" in text,
           "the empty chat page does not say what Reprise is and which model answers", b)
    b.screenshot(out / "welcome.png")
    first = ask(b, QUESTION)
    r.say(f"1st ask: {first}")
    expect("miss" in first, "the first question did not show the miss badge", b)
    second = ask(b, QUESTION)
    r.say(f"2nd ask: {second}")
    expect("exact hit" in second, "the same question again did not show the exact-hit badge",
           b)
    third = ask(b, PARAPHRASE)
    r.say(f"paraphrase: {third}")
    expect("semantic hit" in third, "the paraphrase did not show the semantic-hit badge", b)
    b.screenshot(out / "chat.png")


def _documents(b: Browser, ui: str, out: Path, samples: list[Path], scratch: Path,
               r: Report) -> None:
    b.open(f"{ui}/documents", "New collection")
    b.type_into('input[aria-label="New collection"]', COLLECTION)
    b.click_button("Create")
    b.wait("the collection", lambda: "Add documents" in b.text())
    b.settle()
    bad = scratch / "setup.exe"
    bad.write_bytes(b"MZ\x90\x00" + b"\x00" * 200)
    b.set_files('input[type="file"]', [*samples, bad])
    b.wait("the unsupported file to be named", lambda: "setup.exe: not a supported" in b.text())
    b.settle()
    expect(not button_enabled(b, "Upload and index"),
           "the upload button stays enabled while an unsupported file is chosen", b)
    r.say("a rejected file: named, and the upload button refuses")
    # As a user would: remove it from the picker's list with its ✕.
    removed = b.js("""(() => { const f = [...document.querySelectorAll(
        '[data-testid="stFileChip"]')].find(x => x.innerText.includes('setup.exe'));
        const x = f && (f.querySelector('[data-testid="stFileChipDeleteBtn"] button')
                        || f.querySelector('[data-testid="stFileChipDeleteBtn"]'));
        if (x) x.click(); return !!x; })()""")
    expect(bool(removed), "the unsupported file has no remove button in the picker", b)
    b.wait("the upload button", lambda: button_enabled(b, "Upload and index"))
    b.click_button("Upload and index")
    b.wait("indexing to finish", lambda: "Last upload:" in b.text()
           and "indexing …" not in b.text(), 600)
    b.settle()
    expect(f"{len(samples)} file(s) indexed" in b.text(), "the upload did not index", b)
    r.say(f"uploaded {len(samples)} documents into “{COLLECTION}”")
    b.screenshot(out / "documents.png")


def _rag(b: Browser, ui: str, out: Path, r: Report) -> None:
    b.open(f"{ui}/", f"css:{CHAT_INPUT}")
    b.select("Answer from documents", COLLECTION)
    rag = ask(b, RAG_QUESTION)
    r.say(f"RAG question: {rag}")
    b.js("""[...document.querySelectorAll('summary')]
        .filter(s => s.innerText.includes('Sources')).forEach(s => s.click())""")
    b.wait("the sources panel", lambda: "page" in b.text() and "[1]" in b.text(), 30)
    b.settle()
    b.screenshot(out / "chat_rag.png")


def _cache(b: Browser, ui: str, out: Path, r: Report) -> None:
    b.open(f"{ui}/cache", "Semantic threshold")
    count = entries_shown(b)
    b.screenshot(out / "cache.png")
    b.select_first("Delete one entry")
    chosen = selectbox_value(b, "Delete one entry")
    b.click_button("Delete")
    b.wait("the deletion", lambda: "Deleted the entry" in b.text(), 60)
    b.settle()
    after = entries_shown(b)
    expect(after == count - 1,
           f"after deleting one of {count} entries the page counts {after}", b)
    left = selectbox_value(b, "Delete one entry")
    expect(left != chosen, f"the delete box still shows the deleted entry {chosen!r}", b)
    expect(chosen.split("  (")[0] not in b.text().split("Delete one entry")[-1],
           f"the deleted entry {chosen!r} is still offered", b)
    r.say(f"deleted an entry: the page counts {count} → {after} entries")


def _dashboard(b: Browser, ui: str, out: Path) -> None:
    b.open(f"{ui}/dashboard", "Hit rate")
    b.wait("the plots", lambda: b.js(
        "document.querySelectorAll('[data-testid=\"stImage\"] img').length") >= 2)
    b.settle()
    b.screenshot(out / "dashboard.png")


def run(out: Path, *, fake_upstream: bool, samples: list[Path]) -> Report:
    """The whole check; raises ``CheckFailed`` (or TimeoutError) at the first surprise."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="reprise-ui-check-"))
    gw_port, ui_port, llama_port = free_port(), free_port(), free_port()
    env = {**os.environ, "REPRISE_DATA_DIR": str(scratch / "data"),
           "REPRISE_PORT": str(gw_port), "REPRISE_UI_PORT": str(ui_port),
           "REPRISE_LLAMA_PORT": str(llama_port),
           "REPRISE_GATEWAY_URL": f"http://127.0.0.1:{gw_port}", "REPRISE_JSON_LOGS": "false"}
    env.pop("REPRISE_CONFIG", None)
    up = [sys.executable, "-m", "reprise.cli", "up", "--store", "sqlite"]
    stack = []
    if fake_upstream:
        fake_port = free_port()
        env.update(REPRISE_UPSTREAM_URL=f"http://127.0.0.1:{fake_port}/v1",
                   REPRISE_UPSTREAM_MODEL="fake-model")
        up.append("--no-model-server")
        stack.append([sys.executable, "-m", "reprise.testing.upstream", "--port",
                      str(fake_port), "--latency", "0.6", "--chunk-delay", "0.05"])
    stack.append(up)
    report = Report()
    report.say(f"scratch dir {scratch}; starting the stack …")
    with ExitStack() as stack_ctx:
        procs = [stack_ctx.enter_context(process(argv, env, scratch / f"proc{i}.log"))
                 for i, argv in enumerate(stack)]
        wait_http(f"http://127.0.0.1:{gw_port}/healthz", 300, procs[-1])
        wait_http(f"http://127.0.0.1:{ui_port}/_stcore/health", 120, procs[-1])
        ui = f"http://127.0.0.1:{ui_port}"
        report.say(f"gateway :{gw_port} and UI :{ui_port} are up; driving chromium …")
        with chromium(scratch) as b:
            _chat(b, ui, out, report)
            _documents(b, ui, out, samples, scratch, report)
            _rag(b, ui, out, report)
            _cache(b, ui, out, report)
            _dashboard(b, ui, out)
    report.say("the real-browser check passed")
    return report
