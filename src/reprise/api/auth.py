"""API keys: who is calling, which tenant namespace they act in, and whether they are admin.

Keys are random (``rk-`` + 256 bits), so a plain SHA-256 is enough to store them: nobody can
brute-force a preimage of a random 256-bit secret, and a fast hash keeps authentication
off the latency budget (a slow password hash would cost milliseconds per request). Only
the digest is kept, in the keys file (TOML or JSON) and/or ``Settings.api_keys``.

With keys configured every request except ``/healthz`` and ``/metrics`` needs one
(``Authorization: Bearer …`` or ``X-Api-Key``); the key pins the tenant, so
``X-Reprise-Namespace`` is ignored. Without keys the gateway is open and may only bind a
loopback address, unless ``allow_open`` says a trusted proxy in front handles access.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reprise.config import Settings

log = logging.getLogger(__name__)

Role = Literal["user", "admin"]
_ROLES = ("user", "admin")
_TENANT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY_PREFIX = "rk-"
# Paths any caller may reach: load balancer probes and the Prometheus scrape (no tenant data).
PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})


class KeyFileError(ValueError):
    """The keys file (or ``Settings.api_keys``) is malformed; the service must not start."""


class InsecureBindError(RuntimeError):
    """An open (keyless) service was asked to listen beyond loopback."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as the gateway knows it: never the secret, only its digest."""

    sha256: str
    tenant: str
    role: Role = "user"
    name: str = ""
    rpm: int | None = None  # overrides Settings.rate_limit_rpm for this key
    tpm: int | None = None

    @property
    def key_id(self) -> str:
        """Short, non-secret handle for logs and rate-limit buckets."""
        return self.sha256[:12]


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _opt_int(entry: dict[str, Any], field: str, where: str) -> int | None:
    value = entry.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KeyFileError(f"{where}: {field} must be a non-negative integer")
    return value


def parse_entry(entry: Any, where: str) -> ApiKey:
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: each key must be a table/object")
    digest = str(entry.get("sha256", "")).lower()
    if not _HEX64.match(digest):
        raise KeyFileError(f"{where}: sha256 must be 64 hex digits (the key's digest)")
    tenant = str(entry.get("tenant", ""))
    if not _TENANT.match(tenant):
        raise KeyFileError(f"{where}: tenant must be 1-64 letters, digits, '_', '.' or '-'")
    role = entry.get("role", "user")
    if role not in _ROLES:
        raise KeyFileError(f"{where}: role must be 'user' or 'admin'")
    return ApiKey(digest, tenant, role, str(entry.get("name", "")),
                  _opt_int(entry, "rpm", where), _opt_int(entry, "tpm", where))


def _read_file(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: not valid {path.suffix or 'TOML'}: {exc}") from exc
    entries = data.get("keys", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise KeyFileError(f"{path}: expected a list of keys under 'keys'")
    return entries


def load_keys(inline: Iterable[dict[str, Any]], path: Path | None) -> list[ApiKey]:
    keys = [parse_entry(e, f"api_keys[{i}]") for i, e in enumerate(inline)]
    if path is not None and path.exists():
        keys += [parse_entry(e, f"{path} key {i + 1}") for i, e in enumerate(_read_file(path))]
    elif path is not None:
        raise KeyFileError(f"keys file {path} does not exist")
    return keys


class KeyRing:
    """The configured keys, looked up by digest; the file is re-read when it changes.

    Re-reading lets ``reprise keys add`` take effect without a restart; the file is
    stat'ed at most every ``reload_seconds``. A file that became malformed keeps the last
    good set (and logs), so a half-written edit cannot lock everybody out.
    """

    def __init__(self, inline: Iterable[dict[str, Any]] = (), path: Path | None = None,
                 *, reload_seconds: float = 2.0) -> None:
        self._inline = list(inline)
        self._path = path
        self._reload_seconds = reload_seconds
        self._checked = time.monotonic()
        self._mtime = self._stat()
        self._by_digest = self._index(load_keys(self._inline, path))

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.api_keys, settings.api_keys_file)

    @staticmethod
    def _index(keys: list[ApiKey]) -> dict[str, ApiKey]:
        return {k.sha256: k for k in keys}

    def _stat(self) -> float | None:
        if self._path is None:
            return None
        try:
            return self._path.stat().st_mtime
        except OSError:
            return None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < self._reload_seconds:
            return
        self._checked = now
        mtime = self._stat()
        if mtime == self._mtime:
            return
        try:
            self._by_digest = self._index(load_keys(self._inline, self._path))
            self._mtime = mtime
            log.info("reloaded API keys: %d keys", len(self._by_digest))
        except (KeyFileError, OSError) as exc:
            log.warning("keeping the previous API keys; the keys file is unreadable: %s", exc)

    @property
    def configured(self) -> bool:
        return bool(self._by_digest) or self._path is not None

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, raw: str) -> ApiKey | None:
        self._maybe_reload()
        if not raw:
            return None
        return self._by_digest.get(hash_key(raw))


def bearer(headers: dict[str, str]) -> str:
    """The presented key: ``Authorization: Bearer K`` or ``X-Api-Key: K``."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip()


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str | None = None) -> str | None:
    """Refuse an open service on a public address; returns a warning for open loopback.

    Raises ``InsecureBindError`` when no keys are configured, the bind address is not
    loopback and ``allow_open`` is off. Returns the warning to print when the service runs
    open (on loopback, or by explicit ``allow_open``), None when keys protect it.
    """
    ring = KeyRing.from_settings(settings)
    if ring.configured:
        return None
    bind = host if host is not None else settings.host
    if not is_loopback(bind) and not settings.allow_open:
        raise InsecureBindError(
            f"refusing to serve without API keys on {bind!r}: anyone who can reach it could "
            "use the model and read every tenant's cache. Add keys (`reprise keys add`, "
            "REPRISE_API_KEYS_FILE), bind 127.0.0.1, or set REPRISE_ALLOW_OPEN=true behind a "
            "proxy that authenticates.")
    where = "loopback only" if is_loopback(bind) else f"{bind}, allowed by REPRISE_ALLOW_OPEN"
    return (f"no API keys configured: the service is OPEN ({where}); any caller chooses its "
            "namespace with X-Reprise-Namespace and may use the admin endpoints")


# ------------------------------------------------------------------------------ keys file
def _toml_string(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def add_key(path: Path, tenant: str, role: Role = "user", *, name: str = "",
            rpm: int | None = None, tpm: int | None = None) -> tuple[str, ApiKey]:
    """Create a key, append its digest to ``path`` (TOML, or JSON by suffix); return both.

    The raw key is returned once and never written anywhere. A TOML file is appended to
    (comments survive); a JSON file is rewritten. The file is created mode 0600.
    """
    raw = new_key()
    entry: dict[str, Any] = {"name": name, "tenant": tenant, "role": role,
                             "sha256": hash_key(raw)}
    if rpm is not None:
        entry["rpm"] = rpm
    if tpm is not None:
        entry["tpm"] = tpm
    key = parse_entry(entry, "new key")
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = _read_file(path) if path.exists() else []
    if any(str(e.get("name", "")) == name and name for e in existing if isinstance(e, dict)):
        raise KeyFileError(f"{path} already has a key named {name!r}")
    if path.suffix.lower() == ".json":
        data = {"keys": [*existing, entry]}
        text = json.dumps(data, indent=2) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    else:
        block = "\n[[keys]]\n" + "".join(
            f"{k} = {_toml_string(v) if isinstance(v, str) else v}\n" for k, v in entry.items())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(block)
    return raw, key


def remove_key(path: Path, match: str) -> int:
    """Drop the keys whose name equals ``match`` or whose digest starts with it (≥ 8 hex)."""
    entries = _read_file(path)

    def hit(e: Any) -> bool:
        if not isinstance(e, dict):
            return False
        digest = str(e.get("sha256", ""))
        return bool(match) and (e.get("name") == match
                                or (len(match) >= 8 and digest.startswith(match.lower())))

    kept = [e for e in entries if not hit(e)]
    removed = len(entries) - len(kept)
    if removed:
        if path.suffix.lower() == ".json":
            text = json.dumps({"keys": kept}, indent=2) + "\n"
        else:
            text = "".join(
                "[[keys]]\n" + "".join(
                    f"{k} = {_toml_string(v) if isinstance(v, str) else v}\n"
                    for k, v in e.items()) + "\n"
                for e in kept)
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return removed
