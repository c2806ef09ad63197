"""The embeddings role: ``reprise serve --role embeddings`` as a real process, called by the
official OpenAI SDK, and used by a real gateway process through ``REPRISE_EMBEDDER=remote``.

Everything runs over loopback; the model is the real USE embedder in both processes, and the
real E5 one where query and passage vectors must differ.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from fixtures_redis import GatewayProcess
from reprise.api.auth import add_key
from reprise.embed.base import Kind
from reprise.embed.factory import make_embedder
from reprise.embed.remote import RemoteEmbedder
from reprise.testing.upstream import free_port


class EmbeddingsProcess:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = tmp / "embeddings.log"
        self.env = {**os.environ, "REPRISE_EMBEDDER": "use", "REPRISE_DATA_DIR": str(tmp),
                    "REPRISE_LOG_LEVEL": "warning", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmbeddingsProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reprise.cli", "serve", "--role", "embeddings",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(self.log.read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddingsProcess,
                                                                        str]]:
    tmp = tmp_path_factory.mktemp("emb")
    keys = tmp / "keys.toml"
    raw, _ = add_key(keys, "gateways")
    proc = EmbeddingsProcess(tmp, {"REPRISE_API_KEYS_FILE": str(keys)}).start()
    try:
        yield proc, raw
    finally:
        proc.stop()


def requests_served(url: str, key: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (s.name == "reprise_http_requests_total"
                    and s.labels == {"route": "/v1/embeddings", "status": "200"}):
                return float(s.value)
    return 0.0


def test_openai_sdk_gets_the_local_model_vectors(service: Any, use_embedder: Any) -> None:
    proc, key = service
    client = OpenAI(base_url=proc.url + "/v1", api_key=key)
    texts = ["How do I reset my password?", "Como redefinir minha senha?"]
    res = client.embeddings.create(model="use", input=texts)  # SDK asks for base64
    got = np.asarray([d.embedding for d in res.data], dtype=np.float32)
    want = use_embedder.embed_sync(texts)
    assert got.shape == (2, 512)
    assert np.allclose(got, want, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert res.usage.prompt_tokens > 0 and res.usage.total_tokens == res.usage.prompt_tokens
    assert [d.index for d in res.data] == [0, 1]
    single = client.embeddings.create(model="use", input="hello")
    assert len(single.data) == 1


def test_float_and_base64_encodings_agree(service: Any) -> None:
    proc, key = service
    h = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=proc.url, headers=h, timeout=30) as c:
        f = c.post("/v1/embeddings", json={"input": "olá mundo", "encoding_format": "float"})
        b = c.post("/v1/embeddings", json={"input": "olá mundo", "encoding_format": "base64"})
        d = c.post("/v1/embeddings", json={"input": "olá mundo", "dimensions": 64})
    assert f.status_code == b.status_code == d.status_code == 200
    as_float = np.asarray(f.json()["data"][0]["embedding"], dtype=np.float32)
    as_b64 = np.frombuffer(base64.b64decode(b.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(as_float, as_b64)
    short = np.asarray(d.json()["data"][0]["embedding"])
    assert short.shape == (64,) and abs(np.linalg.norm(short) - 1.0) < 1e-5
    assert f.json()["object"] == "list" and f.json()["data"][0]["object"] == "embedding"


@pytest.mark.parametrize(("body", "status"), [
    ({"input": []}, 400),
    ({"input": [1, 2]}, 400),
    ({"input": ["ok", ""]}, 400),
    ({"input": "x", "encoding_format": "int8"}, 400),
    ({"input": "x", "dimensions": 4096}, 400),
    ({"input": "x", "input_type": "question"}, 400),
    ({}, 400),
])
def test_bad_requests_get_openai_errors(service: Any, body: dict[str, Any],
                                        status: int) -> None:
    proc, key = service
    r = httpx.post(proc.url + "/v1/embeddings", json=body, timeout=30,
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_keys_protect_the_embeddings_service(service: Any) -> None:
    proc, _ = service
    r = httpx.post(proc.url + "/v1/embeddings", json={"input": "x"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(proc.url + "/healthz", timeout=10).json()["dim"] == 512


def test_gateway_uses_the_embeddings_service_for_its_semantic_tier(
        service: Any, fake_upstream: Any, tmp_path: Path) -> None:
    proc, key = service
    url, _ = fake_upstream
    gw = GatewayProcess("remote-emb", tmp_path, {
        "REPRISE_UPSTREAM_URL": url, "REPRISE_UPSTREAM_MODEL": "fake-model",
        "REPRISE_EMBEDDER": "remote", "REPRISE_EMBEDDINGS_URL": proc.url + "/v1",
        "REPRISE_EMBEDDINGS_API_KEY": key, "REPRISE_EMBEDDINGS_MODEL": "use"}).start()
    try:
        gw.wait_ready()
        before = requests_served(proc.url, key)
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            def ask(q: str) -> httpx.Response:
                return c.post("/v1/chat/completions", json={
                    "model": "fake-model", "messages": [{"role": "user", "content": q}]})

            first = ask("What is the refund policy for annual plans?")
            assert first.headers["x-reprise-cache"] == "miss"
            second = ask("What's the refund policy for annual plans?")
            assert second.headers["x-reprise-cache"] == "semantic"
            assert (second.json()["choices"][0]["message"]["content"]
                    == first.json()["choices"][0]["message"]["content"])
            # The gateway's own /v1/embeddings (same router) answers through the service.
            via_gw = c.post("/v1/embeddings", json={"input": "hello", "model": "use"})
            assert via_gw.status_code == 200
            direct = httpx.post(proc.url + "/v1/embeddings", json={"input": "hello"},
                                headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert np.allclose(via_gw.json()["data"][0]["embedding"],
                               direct.json()["data"][0]["embedding"], atol=1e-6)
        # Lookup + store of the miss, lookup of the hit, the explicit call (+ dim probe).
        assert requests_served(proc.url, key) - before >= 4
        health = httpx.get(gw.url + "/admin/cache/stats", timeout=10).json()
        assert health["embedder"] == "remote"
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def e5_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddingsProcess]:
    proc = EmbeddingsProcess(tmp_path_factory.mktemp("e5"), {"REPRISE_EMBEDDER": "e5"})
    try:
        yield proc.start()
    finally:
        proc.stop()


async def test_remote_client_gets_e5_query_and_passage_forms(
        e5_service: EmbeddingsProcess) -> None:
    """The gateway's remote client says which side it embeds; the service honours it."""
    local = make_embedder("e5")
    remote = make_embedder("remote", url=e5_service.url + "/v1", model="e5")
    assert isinstance(remote, RemoteEmbedder) and remote.sends_input_type
    texts = ["how tall is the eiffel tower", "a torre eiffel tem 330 metros de altura"]
    kinds: tuple[Kind, ...] = ("query", "passage")
    for kind in kinds:
        got = await remote.embed(texts, kind)
        assert np.allclose(got, local.embed_sync(texts, kind), atol=1e-5)
        assert np.allclose(remote.embed_sync(texts, kind), got, atol=1e-6)
    assert not np.allclose(await remote.embed(texts, "query"),
                           await remote.embed(texts, "passage"), atol=1e-3)
    # "document" is accepted as a synonym; no input_type stays the query form (OpenAI clients).
    async with httpx.AsyncClient(base_url=e5_service.url, timeout=30) as c:
        doc = await c.post("/v1/embeddings", json={"input": texts, "input_type": "document"})
        plain = await c.post("/v1/embeddings", json={"input": texts})
    assert np.allclose(doc.json()["data"][1]["embedding"],
                       local.embed_sync(texts, "passage")[1], atol=1e-5)
    assert np.allclose(plain.json()["data"][1]["embedding"],
                       local.embed_sync(texts, "query")[1], atol=1e-5)
    # A server that is not Reprise's gets the plain OpenAI body unless told otherwise.
    other = make_embedder("remote", url=e5_service.url + "/v1", model="text-embedding-3-small")
    assert isinstance(other, RemoteEmbedder) and not other.sends_input_type


def test_embeddings_role_needs_a_local_model(tmp_path: Path) -> None:
    env = {**os.environ, "REPRISE_EMBEDDER": "remote", "REPRISE_DATA_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "reprise.cli", "serve", "--role", "embeddings",
                        "--port", str(free_port())], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert "serves a local model" in r.stdout + r.stderr
