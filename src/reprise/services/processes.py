"""Child processes that `reprise up` supervises: start, wait until ready, stop cleanly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


class ManagedProcess:
    def __init__(self, name: str, argv: Sequence[str], *, ready_url: str | None = None,
                 env: dict[str, str] | None = None, log_file: Path | None = None) -> None:
        self.name, self.argv, self.ready_url = name, list(argv), ready_url
        self.env = {**os.environ, **(env or {})}
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.info("started %s (pid %s)", self.name, self.proc.pid)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        if self.ready_url is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                hint = f"; see {self.log_file}" if self.log_file else ""
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}{hint}")
            try:
                if httpx.get(self.ready_url, timeout=2.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f}s ({self.ready_url})")

    def wait(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        log.info("stopped %s", self.name)
