"""API keys and tenants: isolation under adversarial prompts, admin-only endpoints, 401s.

A real gateway over loopback with the real USE embedder (the semantic tier is on, so a
near-identical prompt of another tenant is a real candidate for a wrong hit) and keys
created by the same code as ``reprise keys add``. The upstream is the controllable fake: it
numbers its answers, so an answer that came from another tenant's cache is recognisable.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from reprise.api.auth import (
    InsecureBindError,
    KeyFileError,
    KeyRing,
    add_key,
    check_exposure,
    hash_key,
    load_keys,
)
from reprise.config import Settings
from reprise.testing.upstream import free_port
from tests_support.gateway import running_gateway, sse_events, stream_text

TENANTS = ("acme", "globex", "initech")

# Identical and near-identical prompts: a paraphrase ("What's" for "What is", a semantic hit
# inside one tenant), a case/punctuation variant and exact copies. Every tenant asks all of
# them, round-robin, so each asks after the others stored the same text.
PROMPTS = [
    "What is the refund policy for annual plans?",
    "What's the refund policy for annual plans?",
    "what is the refund policy for annual plans",
    "What is a vector database?",
    "What's a vector database?",
    "How do I reset my password?",
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    raw: dict[str, str] = {}
    for tenant in TENANTS:
        raw[tenant], _ = add_key(path, tenant, "user", name=f"{tenant}-app")
    raw["admin"], _ = add_key(path, "ops", "admin", name="ops")
    return path, raw


def _gateway(upstream: Any, embedder: Any, keys: Any, tmp: Path,
             semantic: bool) -> Iterator[tuple[str, Any]]:
    url, _ = upstream
    path, _ = keys
    with running_gateway(url, tmp, embedder=embedder if semantic else None,
                         rag_embedder=embedder, api_keys_file=path) as (base, comp):
        yield base, comp


@pytest.fixture(scope="module")
def gw(fake_upstream: Any, use_embedder: Any, keys: Any,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """Exact tier only: enough for keys, roles and documents."""
    yield from _gateway(fake_upstream, use_embedder, keys, tmp_path_factory.mktemp("auth-gw"),
                        semantic=False)


@pytest.fixture(scope="module")
def gw_semantic(fake_upstream: Any, use_embedder: Any, keys: Any,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """Semantic tier on: a near-identical prompt of another tenant is a real candidate."""
    yield from _gateway(fake_upstream, use_embedder, keys,
                        tmp_path_factory.mktemp("auth-gw-sem"), semantic=True)


def client(base: str, key: str | None = None, **headers: str) -> httpx.Client:
    h = dict(headers)
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=base, headers=h, timeout=60)


def ask(c: httpx.Client, q: str, **extra: Any) -> httpx.Response:
    return c.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": q}], **extra})


def test_the_key_file_stores_only_digests(keys: Any) -> None:
    path, raw = keys
    text = path.read_text()
    for secret in raw.values():
        assert secret not in text
        assert hash_key(secret) in text
    assert {k.tenant for k in load_keys((), path)} == {*TENANTS, "ops"}
    assert path.stat().st_mode & 0o077 == 0


def test_no_cross_tenant_hits_with_identical_and_near_identical_prompts(gw_semantic: Any,
                                                                         keys: Any) -> None:
    base, _ = gw_semantic
    _, raw = keys
    answers: dict[str, dict[str, str]] = {t: {} for t in TENANTS}
    tiers: dict[str, dict[str, str]] = {t: {} for t in TENANTS}
    cross_hits = 0
    # Round-robin so each tenant asks after the others already stored the same question.
    for q in PROMPTS:
        for tenant in TENANTS:
            # Adversarial: also claim another tenant's namespace in the header.
            victim = TENANTS[(TENANTS.index(tenant) + 1) % len(TENANTS)]
            with client(base, raw[tenant], **{"X-Reprise-Namespace": victim}) as c:
                r = ask(c, q)
            assert r.status_code == 200, r.text
            body = r.json()
            answers[tenant][q] = body["choices"][0]["message"]["content"]
            tiers[tenant][q] = r.headers["x-reprise-cache"]
            others = {a for t in TENANTS if t != tenant for a in answers[t].values()}
            if answers[tenant][q] in others:
                cross_hits += 1
    # Near-identical variants of a question only one tenant has asked.
    sla = "What is the SLA for enterprise customers?"
    with client(base, raw["acme"]) as c:
        owner = ask(c, sla).json()["choices"][0]["message"]["content"]
    # (Each tenant asks once: its own first ask is then stored in its own namespace.)
    for tenant, variant in (("globex", sla),
                            ("initech", "What's the SLA for enterprise customers?")):
        with client(base, raw[tenant], **{"X-Reprise-Namespace": "acme"}) as c:
            r = ask(c, variant)
        assert r.headers["x-reprise-cache"] == "miss"
        if r.json()["choices"][0]["message"]["content"] == owner:
            cross_hits += 1
    assert cross_hits == 0
    for tenant in TENANTS:
        # The first question of each group is a miss in every tenant …
        assert tiers[tenant][PROMPTS[0]] == "miss"
        assert tiers[tenant][PROMPTS[3]] == "miss"
        assert tiers[tenant][PROMPTS[5]] == "miss"
        # … and its variants hit inside the tenant: the cache works, it is just fenced.
        assert tiers[tenant][PROMPTS[1]] == "semantic"
        assert answers[tenant][PROMPTS[1]] == answers[tenant][PROMPTS[0]]
        assert tiers[tenant][PROMPTS[2]] == "semantic"
        assert tiers[tenant][PROMPTS[4]] == "semantic"
    # The owner's own variant is the control: it does hit.
    with client(base, raw["acme"]) as c:
        r = ask(c, "What's the SLA for enterprise customers?")
    assert r.headers["x-reprise-cache"] == "semantic"
    assert r.json()["choices"][0]["message"]["content"] == owner
    # Exact repeats, streamed: each tenant gets its own answer back.
    for tenant in TENANTS:
        with client(base, raw[tenant]) as c:
            r = ask(c, PROMPTS[5], stream=True)
        assert r.headers["x-reprise-cache"] == "exact"
        assert stream_text(sse_events(r.text)) == answers[tenant][PROMPTS[5]]


def test_user_key_sees_only_its_tenant_in_admin_reads(gw: Any, keys: Any) -> None:
    base, _ = gw
    _, raw = keys
    with client(base, raw["acme"]) as c:
        ask(c, "Which plan includes SSO for acme?")
        rows = c.get("/admin/cache").json()["data"]
        assert rows and {r["namespace"] for r in rows} == {"acme"}
        stats = c.get("/admin/cache/stats").json()
        assert set(stats["namespaces"]) == {"acme"}
        events = c.get("/admin/events").json()["data"]
        assert events and {e["namespace"] for e in events} == {"acme"}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/admin/cache?all=true"),
    ("GET", "/admin/cache/stats?all=true"),
    ("GET", "/admin/cache?namespace=globex"),
    ("GET", "/admin/events?all=true"),
    ("POST", "/admin/cache/clear"),
    ("POST", "/admin/cache/clear?all=true"),
    ("POST", "/admin/cache/clear?namespace=globex"),
    ("DELETE", "/admin/cache/0123456789abcdef"),
])
def test_admin_endpoints_refuse_user_keys(gw: Any, keys: Any, method: str, path: str) -> None:
    base, _ = gw
    _, raw = keys
    with client(base, raw["acme"]) as c:
        r = c.request(method, path)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "permission_error"
    assert r.json()["error"]["code"] == "admin_required"


def test_admin_key_sees_and_clears_every_tenant(gw: Any, keys: Any) -> None:
    base, _ = gw
    _, raw = keys
    for tenant in TENANTS:
        with client(base, raw[tenant]) as c:
            assert ask(c, f"Admin test question for {tenant} number 7").status_code == 200
    with client(base, raw["admin"]) as admin:
        stats = admin.get("/admin/cache/stats", params={"all": "true"}).json()
        assert set(TENANTS) <= set(stats["namespaces"])
        before = stats["namespaces"]["initech"]
        assert before > 0
        r = admin.post("/admin/cache/clear", params={"namespace": "initech"})
        assert r.status_code == 200 and r.json()["cleared"] == before
        after = admin.get("/admin/cache/stats", params={"all": "true"}).json()["namespaces"]
        assert after.get("initech", 0) == 0 and after["acme"] > 0


def test_documents_are_per_tenant(gw: Any, keys: Any) -> None:
    base, _ = gw
    _, raw = keys
    with client(base, raw["acme"]) as a, client(base, raw["globex"]) as g:
        assert a.post("/v1/collections", json={"name": "handbook"}).status_code == 201
        names_a = [c["name"] for c in a.get("/v1/collections").json()["data"]]
        names_g = [c["name"] for c in g.get("/v1/collections").json()["data"]]
        assert "handbook" in names_a and "handbook" not in names_g
        assert g.get("/v1/collections/handbook").status_code == 404
        # The header cannot reach into another tenant's documents either.
        g.headers["X-Reprise-Namespace"] = "acme"
        assert g.get("/v1/collections/handbook").status_code == 404


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer rk-not-a-real-key"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"X-Api-Key": "wrong"},
])
def test_missing_or_invalid_key_is_401(gw: Any, headers: dict[str, str]) -> None:
    base, comp = gw
    with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
        for r in (ask(c, "hello"), c.get("/v1/models"), c.get("/admin/cache"),
                  c.post("/v1/embeddings", json={"input": "x"}), c.get("/v1/collections")):
            assert r.status_code == 401, r.text
            err = r.json()["error"]
            assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.headers["x-request-id"]
    assert comp.metrics.auth_failures.labels("missing")._value.get() >= 1


def test_x_api_key_header_and_public_paths(gw: Any, keys: Any) -> None:
    base, _ = gw
    _, raw = keys
    with httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.get("/v1/models", headers={"X-Api-Key": raw["globex"]}).status_code == 200


def test_new_key_is_picked_up_without_restart(gw: Any, keys: Any) -> None:
    base, _ = gw
    path, _ = keys
    with client(base, "rk-not-yet") as c:
        assert c.get("/v1/models").status_code == 401
    raw, _ = add_key(path, "umbrella", "user", name="late")
    deadline = time.monotonic() + 10
    status = 401
    while status == 401 and time.monotonic() < deadline:
        time.sleep(0.5)
        with client(base, raw) as c:
            status = c.get("/v1/models").status_code
    assert status == 200


def test_cli_keys_add_prints_the_key_once(tmp_path: Path) -> None:
    from reprise.cli import app

    path = tmp_path / "k.json"
    result = CliRunner().invoke(app, ["keys", "add", "--tenant", "acme", "--role", "admin",
                                      "--name", "root", "--rpm", "60", "--file", str(path)])
    assert result.exit_code == 0, result.output
    raw = result.stdout.strip().splitlines()[0]
    assert raw.startswith("rk-") and len(raw) > 40
    assert raw not in path.read_text()
    ring = KeyRing((), path)
    key = ring.authenticate(raw)
    assert key is not None and key.tenant == "acme" and key.role == "admin" and key.rpm == 60
    dup = CliRunner().invoke(app, ["keys", "add", "--tenant", "x", "--name", "root",
                                   "--file", str(path)])
    assert dup.exit_code == 1
    rm = CliRunner().invoke(app, ["keys", "rm", "root", "--file", str(path)])
    assert rm.exit_code == 0
    assert KeyRing((), path).authenticate(raw) is None


def test_malformed_keys_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[keys]]\ntenant = "a b"\nsha256 = "' + "0" * 64 + '"\n')
    with pytest.raises(KeyFileError):
        load_keys((), bad)
    with pytest.raises(KeyFileError):
        load_keys([{"tenant": "a", "sha256": "xyz"}], None)
    with pytest.raises(KeyFileError):
        load_keys((), tmp_path / "missing.toml")


def test_open_service_only_on_loopback(tmp_path: Path) -> None:
    assert "OPEN" in (check_exposure(Settings(), "127.0.0.1") or "")
    assert check_exposure(Settings(), "::1") is not None
    with pytest.raises(InsecureBindError):
        check_exposure(Settings(), "0.0.0.0")
    assert "ALLOW_OPEN" in (check_exposure(Settings(allow_open=True), "0.0.0.0") or "")
    path = tmp_path / "k.toml"
    add_key(path, "acme")
    assert check_exposure(Settings(api_keys_file=path), "0.0.0.0") is None


def test_cli_refuses_to_serve_open_on_a_public_address(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "REPRISE_DATA_DIR": str(tmp_path), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "reprise.cli", "serve", "--host", "0.0.0.0",
         "--port", str(free_port())], env=env, capture_output=True, timeout=120, text=True)
    assert proc.returncode == 2
    assert "refusing to serve without API keys" in proc.stdout + proc.stderr
