"""ASGI middleware shared by the gateway and the embeddings service.

Plain ASGI rather than ``BaseHTTPMiddleware``: it must not buffer or re-task streaming
responses (SSE answers flow through untouched) and it runs on every request, so it stays
cheap. Two layers, outermost first:

* ``RequestContext`` — request id (the client's ``X-Request-Id`` when it is sane, else a new
  one), echoed on the response and put in every log line of the request; Prometheus
  requests by route template and status; one access-log line with no key and no prompt.
* ``Authenticate`` — with API keys configured, resolves the key to tenant + role (or
  answers 401) and pins them in ``request.state``; the rate limiter and the namespace
  dependency read them from there.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reprise.api.auth import PUBLIC_PATHS, KeyRing, bearer
from reprise.api.errors import shaped_error_body, surface_of
from reprise.observability.logs import request_id_var

access_log = logging.getLogger("reprise.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _route_of(scope: Scope) -> str:
    """The route template (a bounded label set), never the raw path.

    Requests answered before routing (401s) are matched here so they are counted under
    their route too; paths no route serves share the label ``unmatched``.
    """
    path = getattr(scope.get("route"), "path", None)
    if path:
        return str(path)
    return _match_template(getattr(getattr(scope.get("app"), "router", None), "routes", ()),
                           scope) or "unmatched"


def _match_template(routes: Any, scope: Scope) -> str | None:
    """Walk the routes (and included routers, which FastAPI wraps) for a full match."""
    for route in routes:
        try:
            match, _ = route.matches(scope)
        except (KeyError, AttributeError):
            continue
        if match != Match.FULL:
            continue
        path = getattr(route, "path", None)
        if path:
            return str(path)
        inner = getattr(getattr(route, "original_router", route), "routes", None)
        if inner:
            found = _match_template(inner, scope)
            if found:
                return found
    return None


async def send_json_error(send: Send, status: int, message: str, code: str,
                          headers: list[tuple[bytes, bytes]] | None = None,
                          path: str = "") -> None:
    import orjson

    body = orjson.dumps(shaped_error_body(surface_of(path), status, message, code))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        metrics = getattr(scope["app"].state, "metrics", None) if "app" in scope else None
        started = time.perf_counter()
        status = 500
        tier = ""

        async def send_wrapper(message: Message) -> None:
            nonlocal status, tier
            if message["type"] == "http.response.start":
                status = int(message["status"])
                raw = list(message.get("headers", []))
                for k, v in raw:
                    if k.lower() == b"x-reprise-cache":
                        tier = v.decode("latin-1")
                raw.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": raw}
            await send(message)

        if metrics is not None:
            metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_of(scope)
            if metrics is not None:
                metrics.inflight.dec()
                metrics.http(route, status, elapsed)
            state: dict[str, Any] = scope.get("state", {})
            access_log.info(
                "%s %s %d %.1fms%s", scope["method"], route, status, elapsed * 1000,
                f" tier={tier}" if tier else "",
                extra={"http": {"method": scope["method"], "route": route, "status": status,
                                "ms": round(elapsed * 1000, 2), "tier": tier or None,
                                "tenant": state.get("tenant"), "key_id": state.get("key_id")}})
            request_id_var.reset(token)


class Authenticate:
    """401 without a valid key (when keys are configured); pins tenant and role."""

    def __init__(self, app: ASGIApp, keyring: KeyRing) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keyring.configured:
            await self.app(scope, receive, send)
            return
        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        raw = bearer(_headers(scope))
        key = self.keyring.authenticate(raw)
        if key is None:
            metrics = getattr(scope["app"].state, "metrics", None) if "app" in scope else None
            if metrics is not None:
                metrics.auth_failures.labels("missing" if not raw else "invalid").inc()
            message = ("missing API key: send Authorization: Bearer <key>" if not raw
                       else "invalid API key")
            await send_json_error(send, 401, message, "invalid_api_key",
                                  [(b"www-authenticate", b"Bearer")], path=scope["path"])
            return
        state = scope.setdefault("state", {})
        state.update(tenant=key.tenant, role=key.role, key_id=key.key_id, rpm=key.rpm,
                     tpm=key.tpm)
        await self.app(scope, receive, send)


def install_operations(app: Any, settings: Any) -> None:
    """Keys, rate limiter and the two middlewares, on the gateway or the embeddings app.

    The keys file is read now, so a malformed one stops the service at start instead of
    locking clients out later. ``app.state.limiter`` must be closed by the app's lifespan.
    """
    from reprise.api.limits import make_limiter

    keyring = KeyRing.from_settings(settings)
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.limiter = make_limiter(settings)
    app.add_middleware(Authenticate, keyring=keyring)
    app.add_middleware(RequestContext)
    if keyring.configured:
        logging.getLogger(__name__).info("API keys required: %d keys loaded", len(keyring))
    else:
        logging.getLogger(__name__).warning(
            "no API keys configured: this service is OPEN to anyone who can reach it; any "
            "caller picks a namespace with X-Reprise-Namespace and may use /admin. Bind "
            "127.0.0.1 only, or add keys with `reprise keys add`.")
