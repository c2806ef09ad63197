"""Per-request access to the app's components and the caller's tenant namespace."""

from __future__ import annotations

import re

from starlette.requests import Request

from reprise.api.errors import APIError
from reprise.components import Components

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def components(request: Request) -> Components:
    comp: Components = request.app.state.components
    return comp


def tenant_namespace(request: Request) -> str:
    """The cache/document namespace of this request.

    An authenticated key pins its tenant (set by the auth middleware in ``request.state``);
    otherwise ``X-Reprise-Namespace`` chooses one (open, loopback-only deployments).
    """
    pinned = getattr(request.state, "tenant", None)
    if pinned:
        return str(pinned)
    raw = request.headers.get("x-reprise-namespace")
    if raw is None or raw == "":
        return components(request).settings.default_namespace
    if not _NAMESPACE.match(raw):
        raise APIError(400, "X-Reprise-Namespace must be 1-64 letters, digits, '_', '.' or '-'",
                       code="invalid_header", param="X-Reprise-Namespace")
    return raw
