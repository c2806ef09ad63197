"""Error responses in the shape of the protocol the caller speaks.

Every error raised anywhere (``APIError``, body limits, auth, rate limits, upstream
failures) is rendered once, here, from the request path: OpenAI's
``{"error": {"message", "type", "param", "code"}}`` by default, Ollama's
``{"error": "..."}`` under ``/api/``, and Anthropic's
``{"type": "error", "error": {"type", "message"}}`` under ``/v1/messages``, so each SDK
raises its own exception type with the gateway's message.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
    413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
    429: "rate_limit_error", 502: "upstream_error", 503: "service_unavailable",
    504: "upstream_timeout",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def error_body(status: int, message: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "api_error"),
                      "param": param, "code": code}}


# Anthropic's error types by status (its SDK maps them to exception classes); 529 is its
# "overloaded", which a gateway's 503 means too.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    503: "overloaded_error", 529: "overloaded_error",
}

Surface = Literal["openai", "ollama", "anthropic"]


def surface_of(path: str) -> Surface:
    """Which protocol a request path belongs to, for the shape of its errors."""
    if path.startswith("/api/"):
        return "ollama"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    return "openai"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def shaped_error_body(surface: Surface, status: int, message: str, code: str | None = None,
                      param: str | None = None) -> dict[str, Any]:
    if surface == "ollama":
        return {"error": message}
    if surface == "anthropic":
        return anthropic_error_body(status, message)
    return error_body(status, message, code, param)


def error_response(status: int, message: str, *, code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None,
                   surface: Surface = "openai") -> Response:
    body = shaped_error_body(surface, status, message, code, param)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param,
                              headers=exc.headers, surface=surface_of(request.url.path))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        surface = surface_of(request.url.path)
        message = str(exc.detail)
        if exc.status_code == 404 and surface == "ollama":
            message = f"{request.url.path} is not part of the Ollama API that Reprise serves"
        return error_response(exc.status_code, message, headers=dict(exc.headers or {}),
                              surface=surface)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        return error_response(400, f"{loc}: {first.get('msg', 'invalid request')}",
                              code="invalid_value", param=loc or None,
                              surface=surface_of(request.url.path))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
