"""Embedders: real USE and e5 models, and the remote client against a real loopback server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import typing
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from reprise.embed.base import Embedder, EmbedderError
from reprise.embed.factory import make_embedder
from reprise.embed.remote import RemoteEmbedder


@pytest.fixture(scope="module")
def use() -> Embedder:
    return make_embedder("use")


def test_use_rows_are_unit_float32(use: Embedder) -> None:
    vectors = use.embed_sync(["olá mundo", "hello world", "你好世界"])
    assert isinstance(use, Embedder)
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_use_empty_input(use: Embedder) -> None:
    assert use.embed_sync([]).shape == (0, 512)


async def test_use_async_matches_sync(use: Embedder) -> None:
    texts = ["How do I learn Python?", "O que são sistemas distribuídos?"]
    assert np.allclose(await use.embed(texts), use.embed_sync(texts), atol=1e-6)


def test_use_places_cross_lingual_paraphrases_close(use: Embedder) -> None:
    v = use.embed_sync(["What is a distributed system?", "O que é um sistema distribuído?",
                        "How do I bake bread?"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_use_batches_large_inputs(use: Embedder) -> None:
    texts = [f"question number {i}" for i in range(150)]
    many = use.embed_sync(texts)
    assert many.shape == (150, 512)
    assert np.allclose(many[140], use.embed_sync([texts[140]])[0], atol=1e-5)


def test_e5_query_and_passage_differ() -> None:
    e5 = make_embedder("e5")
    q = e5.embed_sync(["how tall is the eiffel tower"], "query")
    p = e5.embed_sync(["how tall is the eiffel tower"], "passage")
    assert q.shape == p.shape == (1, 384)
    assert np.isclose(np.linalg.norm(q), 1.0, atol=1e-5)
    assert not np.allclose(q, p)
    assert e5.embed_sync([], "passage").shape == (0, 384)


# -- remote -------------------------------------------------------------------------------------
DIM = 6


def fake_vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    vector = [float(b) + 1.0 for b in digest[:DIM]]
    if text == "server bug":  # json.dumps writes the bare NaN that Python's reader accepts
        vector[2] = float("nan")
    return vector


class Handler(BaseHTTPRequestHandler):
    requests: typing.ClassVar[list[tuple[str, dict[str, object]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        texts = body["input"]
        if self.path == "/v1/embeddings":
            payload = {"data": [{"index": i, "embedding": fake_vector(t)}
                                for i, t in reversed(list(enumerate(texts)))]}
        elif self.path == "/api/embed":
            payload = {"embeddings": [fake_vector(t) for t in texts]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def expected(texts: list[str]) -> np.ndarray:
    m = np.array([fake_vector(t) for t in texts], dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


async def test_remote_openai_batches_orders_and_discovers_dim(server: str) -> None:
    emb = RemoteEmbedder(f"{server}/v1", model="bge-m3", flavor="openai", batch_size=2)
    texts = ["a", "b", "c", "d", "e"]
    out = await emb.embed(texts)
    assert out.shape == (5, DIM) and emb.dim == DIM
    assert np.allclose(out, expected(texts), atol=1e-6)  # server answered out of order
    assert [p for p, _ in Handler.requests] == ["/v1/embeddings"] * 3
    assert Handler.requests[0][1] == {"model": "bge-m3", "input": ["a", "b"]}


def test_remote_ollama_sync(server: str) -> None:
    emb = make_embedder("remote", url=f"{server}/v1", model="nomic", flavor="ollama")
    out = emb.embed_sync(["x", "y"])
    assert np.allclose(out, expected(["x", "y"]), atol=1e-6)
    assert Handler.requests[-1][0] == "/api/embed"
    assert emb.embed_sync([]).shape == (0, DIM)


async def test_remote_pools_one_client_per_event_loop(server: str) -> None:
    """A client per call cost a TCP connection and an SSL context per question; one pooled
    client per loop instead, and a caller on another loop (a thread) still gets answers."""
    emb = RemoteEmbedder(f"{server}/v1", flavor="openai")
    first = await emb.embed(["a"])
    await emb.embed(["b"])
    assert len(emb._clients) == 1
    other: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: other.append(asyncio.run(emb.embed(["a"]))))
    thread.start()
    thread.join(30)
    assert np.allclose(other[0], first, atol=1e-6)


async def test_remote_errors_are_embedder_errors(server: str) -> None:
    emb = RemoteEmbedder(f"{server}/nope", flavor="openai", dim=DIM)
    with pytest.raises(EmbedderError):
        await emb.embed(["x"])
    with pytest.raises(EmbedderError):
        emb.embed_sync(["x"])


async def test_remote_non_finite_vectors_are_embedder_errors(server: str) -> None:
    """A vector with a NaN would make every similarity meaningless: refused, so the request
    goes on without the semantic tier rather than storing or matching it."""
    emb = RemoteEmbedder(f"{server}/v1", flavor="openai")
    assert np.isfinite(await emb.embed(["fine"])).all()
    with pytest.raises(EmbedderError, match="non-finite"):
        await emb.embed(["fine", "server bug"])


def test_factory_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        make_embedder("word2vec")
    with pytest.raises(ValueError):
        make_embedder("remote")
