"""The deployment files agree with the code: every ``REPRISE_*`` variable they set is a real
setting, nginx balances exactly the gateway services, the image is non-root with a health
check, and each service's command is a real ``reprise`` invocation.

``docker compose config`` validates the file's schema where a Compose client exists (see
docs/production.md); these checks catch what a schema cannot: a misspelt setting is
silently ignored by ``Settings`` and would only show up as a wrong default in production.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from reprise.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
NGINX = ROOT / "deploy" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def reprise_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items()
            if (svc.get("command") or [None])[0] == "reprise"}


def test_every_reprise_variable_is_a_setting(compose: dict[str, Any]) -> None:
    fields = {f"REPRISE_{name.upper()}" for name in Settings.model_fields}
    used = set()
    for svc in reprise_services(compose).values():
        used |= {k for k in (svc.get("environment") or {}) if k.startswith("REPRISE_")}
    assert used, "no REPRISE_ variables found"
    assert used - fields == set()


def test_services_and_roles(compose: dict[str, Any]) -> None:
    services = reprise_services(compose)
    gateways = [n for n, s in services.items() if s["command"] == ["reprise", "serve"]]
    assert len(gateways) == 2
    for name in gateways:
        env = services[name]["environment"]
        assert env["REPRISE_STORE"] == "redis"
        assert env["REPRISE_EMBEDDER"] == "remote"
        assert env["REPRISE_EMBEDDINGS_URL"].startswith("http://embeddings:")
        assert env["REPRISE_API_KEYS_FILE"].startswith("/run/secrets/")
        graceful = int(env["REPRISE_GRACEFUL_SHUTDOWN_SECONDS"])
        assert int(services[name]["stop_grace_period"].rstrip("s")) > graceful
    roles = {n: s["command"][s["command"].index("--role") + 1]
             for n, s in services.items() if "--role" in s["command"]}
    assert sorted(roles.values()) == ["embeddings", "ui"]
    assert "appendonly yes" in compose["services"]["redis"]["environment"]["REDIS_ARGS"]
    assert compose["services"]["redis"]["volumes"]
    pull = compose["services"]["ollama-pull"]
    assert pull["command"][0] == "pull" and pull["restart"] == "no"
    for name in gateways:
        deps = services[name]["depends_on"]
        assert deps["ollama-pull"]["condition"] == "service_completed_successfully"


def test_commands_parse_with_the_real_cli(compose: dict[str, Any]) -> None:
    from reprise.cli import app

    for svc in reprise_services(compose).values():
        args = [*svc["command"][1:], "--help"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (svc["command"], result.output)


def test_nginx_balances_the_gateway_services(compose: dict[str, Any]) -> None:
    conf = NGINX.read_text()
    servers = set(re.findall(r"^\s*server\s+([\w-]+):(\d+)", conf, re.M))
    services = reprise_services(compose)
    gateways = {(n, services[n]["environment"]["REPRISE_PORT"]) for n, s in services.items()
                if s["command"] == ["reprise", "serve"]}
    assert servers == gateways
    assert "proxy_buffering off" in conf  # SSE must stream
    assert "X-Request-Id" in conf
    if shutil.which("nginx"):
        # Syntax check with the gateway names replaced (they only resolve inside compose).
        tmp = Path(subprocess.check_output(["mktemp"], text=True).strip())
        tmp.write_text(re.sub(r"gateway-[ab]:8000", "127.0.0.1:8000", conf))
        r = subprocess.run(["nginx", "-t", "-c", str(tmp)], capture_output=True, text=True)
        tmp.unlink()
        assert r.returncode == 0, r.stderr


def test_dockerfile_is_slim_non_root_with_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) == 2 and "python:3.11-slim" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*?/healthz", text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data"} <= set(ignore)


def test_compose_config_validates_when_a_client_exists(tmp_path: Path) -> None:
    client = (["docker-compose"] if shutil.which("docker-compose") else
              ["docker", "compose"] if shutil.which("docker") and subprocess.run(
                  ["docker", "compose", "version"], capture_output=True).returncode == 0
              else None)
    if client is None:
        pytest.skip("no Docker Compose client on this machine")
    keys = tmp_path / "keys.toml"
    keys.write_text("")
    r = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                       text=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin",
                                       "REPRISE_KEYS_FILE": str(keys)})
    assert r.returncode == 0, r.stderr
