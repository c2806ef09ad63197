"""OpenAI-compatible ``POST /v1/embeddings``, one router for the gateway and the embeddings role.

The gateway serves it with its cache embedder; ``reprise serve --role embeddings`` serves it
alone (``embeddings_app``), so a fleet of gateways can point ``REPRISE_EMBEDDER=remote`` at
one process holding the model. Vectors are unit-norm; ``encoding_format: base64`` packs
little-endian float32, as OpenAI does; ``input_type: query|passage|document`` (a Reprise
extension, default ``query``) asks asymmetric models such as E5 for the query or passage
form; ``RemoteEmbedder`` sends it to this service (see ``reprise.embed.remote``).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from reprise.api.body import read_json
from reprise.api.errors import APIError
from reprise.api.limits import enforce
from reprise.api.schemas import EmbeddingsRequest, parse_model
from reprise.config import Settings
from reprise.embed.base import Embedder, EmbedderError, Kind

router = APIRouter()

MAX_INPUTS = 2048  # OpenAI's own cap on inputs per request


def embedder_of(request: Request) -> Embedder | None:
    """The embeddings service's own embedder, else the gateway components' one."""
    state = request.app.state
    if hasattr(state, "embedder"):
        embedder: Embedder | None = state.embedder
        return embedder
    comp = getattr(state, "components", None)
    return None if comp is None else comp.embedder


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def encode(vectors: np.ndarray, encoding_format: str) -> list[Any]:
    if encoding_format == "base64":
        return [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
                for v in vectors]
    return [v.tolist() for v in np.asarray(vectors, dtype=np.float32)]


async def embed_texts(request: Request, texts: list[str], *, kind: Kind = "query",
                      dimensions: int | None = None,
                      param: str = "input") -> tuple[Embedder, np.ndarray, int]:
    """Checked, rate-limited embedding of ``texts``: the one path of every embeddings
    surface (OpenAI's ``/v1/embeddings``, Ollama's ``/api/embed`` and ``/api/embeddings``).

    Returns the embedder (its name is the model a caller is told), unit-norm vectors cut
    to ``dimensions`` when asked, and the token count charged to the caller's limits.
    """
    embedder = embedder_of(request)
    if embedder is None:
        raise APIError(503, "no embedder is configured on this service", code="no_embedder")
    if len(texts) > MAX_INPUTS:
        raise APIError(400, f"too many inputs ({len(texts)}); the limit is {MAX_INPUTS}",
                       code="too_many_inputs", param=param)
    if any(not t.strip() for t in texts):
        raise APIError(400, f"{param} must not contain empty strings", param=param,
                       code="invalid_value")
    tokens = sum(max(1, len(t) // 4) for t in texts)
    await enforce(request, tokens)
    try:
        vectors = await embedder.embed(texts, kind)
    except EmbedderError as exc:
        raise APIError(503, f"the embedder failed: {exc}", code="embedder_error") from exc
    if dimensions is not None:
        if not 1 <= dimensions <= vectors.shape[1]:
            raise APIError(400, f"dimensions must be between 1 and {vectors.shape[1]}",
                           param="dimensions", code="invalid_value")
        vectors = vectors[:, :dimensions]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1, norms)
    return embedder, vectors, tokens


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    settings = settings_of(request)
    body = await read_json(request, settings.max_body_bytes)
    req = parse_model(EmbeddingsRequest, body)
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    kind: Kind = "passage" if req.input_type in ("passage", "document") else "query"
    embedder, vectors, tokens = await embed_texts(request, texts, kind=kind,
                                                  dimensions=req.dimensions)
    data = [{"object": "embedding", "index": i, "embedding": e}
            for i, e in enumerate(encode(vectors, req.encoding_format))]
    out = {"object": "list", "data": data, "model": req.model or embedder.name,
           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return Response(orjson.dumps(out), media_type="application/json")
