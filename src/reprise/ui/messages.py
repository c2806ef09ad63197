"""Gateway failures in words a user can act on (shared by every page)."""

from __future__ import annotations

from reprise.ui.client import GatewayError, GatewayUnavailable


def explain(exc: GatewayError | GatewayUnavailable) -> str:
    if isinstance(exc, GatewayUnavailable):
        return (f"The gateway is not answering at {exc.url}. Is it running? Start it with "
                "`reprise up`, or point `REPRISE_GATEWAY_URL` at it.")
    if exc.status == 401:
        return f"The gateway needs an API key: enter one in the sidebar. ({exc.message})"
    if exc.status == 403:
        return f"Your API key may not do this; it takes an admin key. ({exc.message})"
    if exc.status == 429:
        return f"Rate limited by the gateway; try again in a moment. ({exc.message})"
    return f"The gateway answered with an error ({exc.status}): {exc.message}"
