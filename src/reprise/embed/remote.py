"""Embeddings from another server: any OpenAI-compatible ``/v1/embeddings`` or Ollama.

Lets a deployment move embedding off the gateway's CPU (a GPU box running vLLM, TEI,
llama.cpp or Ollama with e.g. bge-m3). The vector size is whatever the model returns, so it
is taken from the first answer unless the operator states it.

Asymmetric models (E5) embed questions and passages differently. OpenAI's API has no field
for that and rejects unknown ones, so the client sends Reprise's ``input_type`` extension
(``query``/``passage``) only to a Reprise embeddings service (``reprise serve --role
embeddings``), recognised by the model names that service answers to (``use``, ``e5``), or
when told to (``input_type=True``). Other servers get the plain OpenAI body; for them the
``query_prefix``/``passage_prefix`` texts (e.g. ``"query: "``) do the same job.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Literal

import httpx
import numpy as np

from reprise.embed.base import EmbedderError, Kind
from reprise.embed.use import normalize_rows

Flavor = Literal["openai", "ollama"]

# The names `reprise serve --role embeddings` serves its local models under (Embedder.name).
REPRISE_MODELS = frozenset({"use", "e5"})


class RemoteEmbedder:
    """HTTP embedder; ``embed`` is truly async (httpx), ``embed_sync`` blocks."""

    name = "remote"

    def __init__(
        self,
        url: str,
        *,
        model: str = "bge-m3",
        api_key: str = "",
        flavor: Flavor = "openai",
        dim: int | None = None,
        batch_size: int = 64,
        timeout: float = 30.0,
        query_prefix: str = "",
        passage_prefix: str = "",
        input_type: bool | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if flavor not in ("openai", "ollama"):
            raise ValueError(f"unknown flavor {flavor!r}: use 'openai' or 'ollama'")
        base = url.rstrip("/")
        if flavor == "ollama" and base.endswith("/v1"):
            # Ollama's native endpoint lives at the server root, not under /v1.
            base = base[: -len("/v1")]
        self.url = base
        self.model = model
        self.flavor: Flavor = flavor
        self._dim = dim
        self._batch = batch_size
        self._timeout = timeout
        self._prefix = {"query": query_prefix, "passage": passage_prefix}
        if input_type is None:  # auto: only a Reprise embeddings service understands it
            input_type = flavor == "openai" and model in REPRISE_MODELS
        self.sends_input_type = input_type
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport = transport
        # One pooled client per event loop: a client per call paid a new TCP connection and
        # an SSL context (tens of ms of CPU) on every question, which capped a gateway using
        # the embeddings role at ~8 req/s under load (bench/vs_litellm.py).
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                 httpx.AsyncClient] = weakref.WeakKeyDictionary()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(timeout=self._timeout, headers=self._headers,
                                       transport=self._transport,
                                       limits=httpx.Limits(max_connections=64,
                                                           max_keepalive_connections=64))
            self._clients[loop] = client
        return client

    # -- wire format ---------------------------------------------------------------------------
    @property
    def _endpoint(self) -> str:
        return f"{self.url}/embeddings" if self.flavor == "openai" else f"{self.url}/api/embed"

    def _body(self, texts: list[str], kind: Kind) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": texts}
        if self.sends_input_type:
            body["input_type"] = kind
        return body

    def _parse(self, payload: Any, expected: int) -> list[list[float]]:
        try:
            if self.flavor == "openai":
                rows = sorted(payload["data"], key=lambda d: d.get("index", 0))
                vectors = [r["embedding"] for r in rows]
            else:
                vectors = payload["embeddings"]
        except (KeyError, TypeError) as exc:
            raise EmbedderError(f"unexpected embeddings response from {self._endpoint}") from exc
        if len(vectors) != expected:
            raise EmbedderError(f"asked for {expected} embeddings, got {len(vectors)}")
        return [list(map(float, v)) for v in vectors]

    def _finish(self, rows: list[list[float]]) -> np.ndarray:
        matrix = np.asarray(rows, dtype=np.float32)
        if self._dim is None:
            self._dim = int(matrix.shape[1])
        elif matrix.shape[1] != self._dim:
            raise EmbedderError(f"server returned {matrix.shape[1]}-dim vectors, want {self._dim}")
        return normalize_rows(matrix, self._dim)

    def _batches(self, texts: list[str], kind: Kind) -> list[list[str]]:
        prefix = self._prefix[kind]
        prefixed = [prefix + t for t in texts]
        return [prefixed[i : i + self._batch] for i in range(0, len(prefixed), self._batch)]

    # -- Embedder ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Vector size; asks the server once (a one-word probe) if it was not given."""
        if self._dim is None:
            self.embed_sync(["dimension probe"])
        assert self._dim is not None
        return self._dim

    @dim.setter
    def dim(self, value: int) -> None:
        self._dim = value

    def embed_sync(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows: list[list[float]] = []
        try:
            with httpx.Client(timeout=self._timeout, headers=self._headers) as client:
                for batch in self._batches(texts, kind):
                    resp = client.post(self._endpoint, json=self._body(batch, kind))
                    resp.raise_for_status()
                    rows.extend(self._parse(resp.json(), len(batch)))
        except httpx.HTTPError as exc:
            raise EmbedderError(f"embedding server {self.url} failed: {exc}") from exc
        return self._finish(rows)

    async def embed(self, texts: list[str], kind: Kind = "query") -> np.ndarray:
        if not texts:
            if self._dim is None:
                await self.embed(["dimension probe"])
            assert self._dim is not None
            return np.zeros((0, self._dim), dtype=np.float32)
        rows: list[list[float]] = []
        client = self._client()
        try:
            for batch in self._batches(texts, kind):
                resp = await client.post(self._endpoint, json=self._body(batch, kind))
                resp.raise_for_status()
                rows.extend(self._parse(resp.json(), len(batch)))
        except httpx.HTTPError as exc:
            raise EmbedderError(f"embedding server {self.url} failed: {exc}") from exc
        return self._finish(rows)
