"""Client for any OpenAI-compatible model server (llama.cpp, Ollama /v1, vLLM, OpenAI, DeepSeek).

Streaming is parsed chunk by chunk and handed on as soon as each SSE event arrives, so the
first token reaches the app with no buffering. Failures are mapped to ``UpstreamError`` with
the HTTP status the gateway should answer (502 unreachable/5xx, 504 timeout, the upstream's
own 4xx for requests it rejects). Each answer's report of reused prompt tokens, whatever the
provider calls it, is put where OpenAI clients read it (``upstream.accounting``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from reprise.upstream.accounting import normalise

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


def _error_message(resp_text: str) -> str:
    try:
        data = orjson.loads(resp_text)
    except orjson.JSONDecodeError:
        return resp_text[:500]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    return resp_text[:500]


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _map_exc(self, exc: Exception) -> UpstreamError:
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError(504, f"upstream model server at {self.base_url} timed out")
        kind = exc.__class__.__name__
        return UpstreamError(502, f"upstream at {self.base_url} is unreachable: {kind}")

    @staticmethod
    def _status_error(status: int, text: str) -> UpstreamError:
        msg = _error_message(text)
        if 400 <= status < 500 and status not in (401, 403, 429):
            # The upstream rejected the request itself: the app should see that as is.
            return UpstreamError(status, f"upstream rejected the request: {msg}")
        return UpstreamError(502, f"upstream model server answered {status}: {msg}")

    @staticmethod
    def _retryable(exc: Exception, attempt: int) -> bool:
        """One more try when the connection failed before any answer arrived.

        A pooled keep-alive connection the server closed just as it was reused fails with
        a protocol or read error although the server is fine, and the next connection
        succeeds (the likely cause of the one 502 among 37k requests of a two-replica soak,
        which went unlogged then). Timeouts are not retried: the server may be working on
        the request.
        """
        return (attempt == 0 and isinstance(exc, httpx.TransportError)
                and not isinstance(exc, httpx.TimeoutException))

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """Send, with the one retry ``_retryable`` allows; failures become UpstreamError."""
        attempt = 0
        while True:
            try:
                return await self._http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                if not self._retryable(exc, attempt):
                    raise self._map_exc(exc) from exc
                log.info("upstream connection failed (%s), retrying once", type(exc).__name__)
                attempt += 1

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        payload = {**body, "stream": False}
        payload.pop("stream_options", None)
        resp = await self._send(self._http.build_request(
            "POST", "/chat/completions", content=orjson.dumps(payload),
            headers={"Content-Type": "application/json"}), stream=False)
        if resp.status_code != 200:
            raise self._status_error(resp.status_code, resp.text)
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(502, "upstream answered with invalid JSON") from exc
        if not isinstance(data, dict) or not data.get("choices"):
            raise UpstreamError(502, "upstream answered without choices")
        normalise(data)
        return data

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield parsed chunks; raises UpstreamError, including when the stream is cut."""
        payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
        request = self._http.build_request(
            "POST", "/chat/completions", content=orjson.dumps(payload),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = await self._send(request, stream=True)
        try:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                raise self._status_error(resp.status_code, text)
            done = sent = False
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise UpstreamError(502, "upstream sent an invalid stream chunk") from exc
                if isinstance(chunk, dict) and "error" in chunk:
                    raise UpstreamError(502, f"upstream error mid-stream: {chunk['error']}")
                if isinstance(chunk, dict) and ("usage" in chunk or "timings" in chunk):
                    normalise(chunk)
                sent = True
                yield chunk
            if not done:
                cut = UpstreamError(502, "upstream closed the stream before [DONE]")
                raise (cut if sent else await self._refusal(body, cut))
        except httpx.HTTPError as exc:
            raise self._map_exc(exc) from exc
        finally:
            await resp.aclose()

    async def _refusal(self, body: dict[str, Any], cut: UpstreamError) -> UpstreamError:
        """Why a stream closed before its first chunk: the same request, not streamed.

        Some servers (llama-cpp-python's) accept a stream with 200 and only then find that
        the prompt does not fit the model's context, so the stream just ends; asked without
        streaming, they refuse with a clear 400 ("maximum context length is 2048 tokens…").
        The question is re-asked for one token only, so an answer that would be accepted
        costs its prompt, not a second answer. Nothing has reached the client yet, so the
        gateway can still answer with that status. Anything but a refusal keeps ``cut``.
        """
        try:
            probe = {k: v for k, v in body.items() if k != "max_completion_tokens"}
            await self.complete({**probe, "max_tokens": 1})
        except UpstreamError as exc:
            if 400 <= exc.status < 500:
                return exc
        return cut

    async def models(self) -> list[str]:
        try:
            resp = await self._http.get("/models", timeout=3.0)
            resp.raise_for_status()
            return [m["id"] for m in resp.json().get("data", []) if "id" in m]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.info("could not list upstream models: %s", exc)
            return []

    async def healthy(self) -> bool:
        try:
            resp = await self._http.get("/models", timeout=2.0)
            return resp.status_code < 500
        except httpx.HTTPError:
            return False
