"""Reprise web UI (Streamlit entry point): sidebar, gateway health, page navigation.

Run by ``reprise up`` / ``reprise serve --role ui`` as
``streamlit run src/reprise/ui/app.py``; ``REPRISE_GATEWAY_URL`` says where the gateway is.
The UI talks to the gateway over HTTP only, exactly like any application would.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from reprise.config import Settings
from reprise.ui import context
from reprise.ui.client import GatewayError, GatewayUnavailable

VIEWS = Path(__file__).parent / "views"


def _sidebar(settings: Settings) -> None:
    with st.sidebar:
        st.markdown("**Reprise** · cache-aware LLM gateway")
        # Defaults go into the session once, so tests and links can preset them.
        st.session_state.setdefault(context.NAMESPACE_KEY, settings.default_namespace)
        st.session_state.setdefault(context.PRICE_KEY, context.default_price_per_1k(settings))
        st.text_input("Namespace", key=context.NAMESPACE_KEY,
                      help="Sent as X-Reprise-Namespace: cache entries and collections are "
                           "kept per namespace (a gateway with API keys pins it per key)")
        ns = str(st.session_state.get(context.NAMESPACE_KEY) or "")
        if ns and not context.valid_namespace(ns):
            st.warning(f"“{ns}” is not a valid namespace (letters, digits, '_', '.', '-');"
                       f" using “{settings.default_namespace}”.")
        st.number_input("Price per 1k tokens", min_value=0.0, step=0.0001, format="%.6f",
                        key=context.PRICE_KEY,
                        help="Used to estimate the cost a cache hit saved")
        st.text_input("API key", type="password", key=context.API_KEY_KEY,
                      help="Only if the gateway requires one")


def _health(ctx: context.UIContext) -> bool:
    """Say clearly when the gateway is down instead of failing on every widget."""
    try:
        health = ctx.client.health()
    except GatewayUnavailable:
        st.error(f"**The gateway is not answering at {ctx.gateway_url}.**  \n"
                 "Start it with `reprise up` (or `reprise serve`), or point "
                 "`REPRISE_GATEWAY_URL` at a running gateway, then retry.",
                 icon=":material/cloud_off:")
        st.button("Retry", icon=":material/refresh:", key="retry_gateway")
        st.sidebar.caption(f":red[● gateway down] · {ctx.gateway_url}")
        return False
    except GatewayError as exc:
        st.error(f"The gateway at {ctx.gateway_url} answered its health check with an error: "
                 f"{exc.message}")
        return False
    store = health.get("store") or {}
    dot = ":green[●]" if store.get("ok", True) else ":orange[● store failing, serving uncached]"
    st.sidebar.caption(f"{dot} gateway {ctx.gateway_url} · store {store.get('backend', '?')}")
    return True


def main() -> None:
    st.set_page_config(page_title="Reprise", page_icon=":material/cached:", layout="wide")
    settings = Settings()
    nav = st.navigation([
        st.Page(VIEWS / "chat.py", title="Chat", icon=":material/chat:", default=True),
        st.Page(VIEWS / "documents.py", title="Documents", icon=":material/description:"),
        st.Page(VIEWS / "cache.py", title="Cache", icon=":material/database:"),
        st.Page(VIEWS / "dashboard.py", title="Dashboard", icon=":material/monitoring:"),
    ])
    _sidebar(settings)
    if _health(context.current()):
        nav.run()


main()
