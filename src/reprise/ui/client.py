"""Typed HTTP client of the gateway, for the web UI: the only module that knows its URLs.

The UI is a plain client of the gateway's public API (OpenAI-compatible chat, the
collections API and ``/admin``), so it runs as its own service and shows exactly what any
application would see. Every failure reaches the pages as one of two exceptions:
``GatewayUnavailable`` (nothing answers at the address) or ``GatewayError`` (the gateway
answered with an OpenAI-style error), so a page can say what went wrong instead of crashing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

TERMINAL_JOB_STATES = frozenset({"done", "partial", "failed"})
HIT_TIERS = frozenset({"exact", "semantic"})


class GatewayUnavailable(Exception):
    """Nothing answered at the gateway's address (refused, timed out, DNS)."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach the gateway at {url}: {cause.__class__.__name__}"
                         f"{': ' + str(cause) if str(cause) else ''}")
        self.url = url


class GatewayError(Exception):
    """The gateway answered with an error (its OpenAI-style message is kept)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.code = status, message, code


@dataclass
class ChatResult:
    """What the UI shows under one answer, filled in while the stream is read."""

    question: str = ""
    text: str = ""
    tier: str = "?"  # exact | semantic | miss | bypass
    similarity: float | None = None
    matched_question: str | None = None
    age_seconds: int = 0
    key: str | None = None
    response_id: str | None = None  # the completion's id: what a vote names
    lookup: dict[str, Any] | None = None  # the semantic tier's explanation (reprise.lookup)
    citations: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    latency_ms: float = 0.0  # request sent → last byte
    first_token_ms: float | None = None
    finish_reason: str | None = None  # "length": the answer was cut at its token cap
    error: str | None = None
    # The gateway refused the question itself (4xx before any answer, e.g. too long for the
    # model's context): asking it again cannot help, so the page offers no retry.
    refused: bool = False

    @property
    def hit(self) -> bool:
        return self.tier in HIT_TIERS

    @property
    def _counted(self) -> bool:
        return bool(self.usage and (self.usage.get("prompt_tokens")
                                    or self.usage.get("completion_tokens")))

    @property
    def tokens_estimated(self) -> bool:
        """True when the model reported no usage (llama.cpp's server does not when
        streaming): the gateway's own count (usage marked ``estimated``) or, from an older
        gateway with no usage at all, an estimate from the text."""
        return not self._counted or bool((self.usage or {}).get("estimated"))

    @property
    def completion_tokens(self) -> int:
        return int((self.usage or {}).get("completion_tokens") or 0)

    @property
    def cut(self) -> bool:
        return self.finish_reason == "length"

    @property
    def tokens(self) -> int:
        """Prompt + completion tokens of the answer (what a hit did not pay for)."""
        if not self._counted:
            # About four characters per token in English; an estimate, and labelled so.
            return round((len(self.question) + len(self.text)) / 4) if self.text else 0
        assert self.usage is not None
        return int(self.usage.get("prompt_tokens") or 0) + int(
            self.usage.get("completion_tokens") or 0)


def _error_from(resp: httpx.Response) -> GatewayError:
    try:
        err = orjson.loads(resp.read()).get("error") or {}
        return GatewayError(resp.status_code, str(err.get("message") or resp.reason_phrase),
                            err.get("code"))
    except (orjson.JSONDecodeError, AttributeError):
        return GatewayError(resp.status_code, resp.text[:300] or resp.reason_phrase)


class ChatStream:
    """Iterate to get the answer's text pieces; ``result`` is complete once iteration ends.

    Built for ``st.write_stream``: the pieces render as they arrive while the cache tier,
    matched question, citations and usage are collected on the side.
    """

    def __init__(self, client: GatewayClient, body: dict[str, Any],
                 headers: dict[str, str]) -> None:
        self._client, self._body, self._headers = client, body, headers
        last = (body.get("messages") or [{}])[-1]
        self.result = ChatResult(question=str(last.get("content") or ""))

    def _headers_to_result(self, resp: httpx.Response) -> None:
        h, r = resp.headers, self.result
        r.tier = h.get("x-reprise-cache", "?")
        if sim := h.get("x-reprise-similarity"):
            r.similarity = float(sim)
        if matched := h.get("x-reprise-matched-question"):
            r.matched_question = unquote(matched)
        r.age_seconds = int(h.get("age") or 0)

    def _chunk_to_result(self, chunk: dict[str, Any]) -> str:
        r = self.result
        if r.response_id is None and chunk.get("id"):
            r.response_id = str(chunk["id"])
        meta = chunk.get("reprise")
        if isinstance(meta, dict):
            r.key = meta.get("key", r.key)
            if meta.get("matched_question"):
                r.matched_question = meta["matched_question"]
            if meta.get("similarity") is not None:
                r.similarity = float(meta["similarity"])
            if isinstance(meta.get("lookup"), dict):
                r.lookup = meta["lookup"]
        if isinstance(chunk.get("citations"), list):
            r.citations = chunk["citations"]
        if chunk.get("usage"):
            r.usage = chunk["usage"]
        for ch in chunk.get("choices") or []:
            r.finish_reason = ch.get("finish_reason") or r.finish_reason
        return "".join((ch.get("delta") or {}).get("content") or ""
                       for ch in chunk.get("choices") or [])

    def __iter__(self) -> Iterator[str]:
        started = time.perf_counter()
        try:
            with self._client.http.stream("POST", "/v1/chat/completions", json=self._body,
                                          headers=self._headers) as resp:
                if resp.status_code != 200:
                    raise _error_from(resp)
                self._headers_to_result(resp)
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = orjson.loads(line[6:])
                    if "error" in chunk and not chunk.get("choices"):
                        err = chunk["error"] or {}
                        raise GatewayError(502, str(err.get("message", "upstream error")),
                                           err.get("code"))
                    piece = self._chunk_to_result(chunk)
                    if piece:
                        if self.result.first_token_ms is None:
                            self.result.first_token_ms = 1000 * (time.perf_counter() - started)
                        self.result.text += piece
                        yield piece
        except httpx.TransportError as exc:
            raise self._client.unavailable(exc) from exc
        finally:
            self.result.latency_ms = 1000 * (time.perf_counter() - started)


class GatewayClient:
    """Synchronous client (Streamlit scripts are synchronous) of one gateway.

    ``namespace`` goes out as ``X-Reprise-Namespace`` (ignored by a gateway that pins the
    tenant from an API key); ``api_key`` as a bearer token when the gateway requires one.
    """

    def __init__(self, base_url: str, *, namespace: str | None = None, api_key: str = "",
                 timeout: float = 300.0, http: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers: dict[str, str] = {}
        if namespace:
            headers["X-Reprise-Namespace"] = namespace
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = http or httpx.Client(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(timeout, connect=3.0))

    def close(self) -> None:
        self.http.close()

    def unavailable(self, exc: Exception) -> GatewayUnavailable:
        return GatewayUnavailable(self.base_url, exc)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unavailable(exc) from exc
        if resp.status_code >= 400:
            raise _error_from(resp)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return orjson.loads(resp.content)
        return resp.text

    # -- health and metrics ------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/healthz")
        return out

    def metric_samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Samples of one Prometheus metric from ``/metrics`` as (labels, value)."""
        text = self._request("GET", "/metrics")
        out: list[tuple[dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    out.append((dict(sample.labels), float(sample.value)))
        return out

    def models(self) -> list[str]:
        """Model names the gateway serves, its default (``upstream_model``) first."""
        return [str(m["id"]) for m in self._request("GET", "/v1/models")["data"]]

    # -- chat ----------------------------------------------------------------------------------
    def chat_stream(self, messages: list[dict[str, Any]], *, collection: str | None = None,
                    bypass_cache: bool = False, model: str = "default") -> ChatStream:
        """A streamed chat completion; ``bypass_cache`` sends ``Cache-Control: no-cache``."""
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                                "stream_options": {"include_usage": True}}
        if collection:
            body["collection"] = collection
        headers = {"Cache-Control": "no-cache"} if bypass_cache else {}
        return ChatStream(self, body, headers)

    def feedback(self, response_id: str, vote: str, reason: str | None = None) -> dict[
            str, Any]:
        """Thumbs up/down on a served answer (``POST /v1/feedback``); returns the verdict
        with a ``message`` for the user."""
        body: dict[str, Any] = {"response_id": response_id, "vote": vote}
        if reason:
            body["reason"] = reason
        out: dict[str, Any] = self._request("POST", "/v1/feedback", json=body)
        return out

    # -- collections and documents -------------------------------------------------------------
    def collections(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/collections")["data"])

    def create_collection(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._request("POST", "/v1/collections", json={"name": name})
        return out

    def delete_collection(self, name: str) -> None:
        self._request("DELETE", f"/v1/collections/{name}")

    def upload(self, collection: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Send files as one multipart request; returns the ingestion job (202)."""
        parts = [("files", (name, data)) for name, data in files]
        out: dict[str, Any] = self._request("POST", f"/v1/collections/{collection}/documents",
                                            files=parts)
        return out

    def job(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", f"/v1/jobs/{job_id}")
        return out

    def documents(self, collection: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/v1/collections/{collection}/documents")["data"])

    def delete_document(self, collection: str, doc_id: str) -> None:
        self._request("DELETE", f"/v1/collections/{collection}/documents/{doc_id}")

    # -- cache administration -------------------------------------------------------------------
    def cache_stats(self, namespace: str | None = None, *,
                    all_namespaces: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = {"all": "true"} if all_namespaces else {}
        if namespace and not all_namespaces:
            params["namespace"] = namespace
        out: dict[str, Any] = self._request("GET", "/admin/cache/stats", params=params)
        return out

    def cache_entries(self, namespace: str, query: str = "", limit: int = 100) -> list[
            dict[str, Any]]:
        params = {"namespace": namespace, "q": query, "limit": limit}
        return list(self._request("GET", "/admin/cache", params=params)["data"])

    def delete_entry(self, namespace: str, key: str) -> None:
        self._request("DELETE", f"/admin/cache/{key}", params={"namespace": namespace})

    def clear_namespace(self, namespace: str) -> int:
        out = self._request("POST", "/admin/cache/clear", params={"namespace": namespace})
        return int(out["cleared"])

    def events(self, since: float = 0.0, *, all_namespaces: bool = True) -> list[
            dict[str, Any]]:
        params: dict[str, Any] = {"since": since}
        if all_namespaces:
            params["all"] = "true"
        return list(self._request("GET", "/admin/events", params=params)["data"])
