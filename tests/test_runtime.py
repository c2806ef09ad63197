"""Server processes limit native thread pools (see reprise.runtime for the measurement)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _probe(env: dict[str, str]) -> dict[str, object]:
    code = (
        "import json, os, threadpoolctl\n"
        "from reprise.runtime import limit_native_threads\n"
        "limit_native_threads(1)\n"
        "blas = [p['num_threads'] for p in threadpoolctl.threadpool_info()"
        " if p['user_api'] == 'blas']\n"
        "print(json.dumps({'blas': blas, 'wait': os.environ.get('OMP_WAIT_POLICY'),"
        " 'omp': os.environ.get('OMP_NUM_THREADS')}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "OPENBLAS_"))}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True,
                         capture_output=True, text=True, timeout=60)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_server_processes_run_one_native_thread_per_call() -> None:
    got = _probe({})
    assert got["blas"] and all(n == 1 for n in got["blas"])  # type: ignore[union-attr]
    assert got["wait"] == "PASSIVE" and got["omp"] == "1"


def test_an_explicit_environment_wins() -> None:
    got = _probe({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "2"})
    assert got["wait"] == "ACTIVE" and got["omp"] == "2"
