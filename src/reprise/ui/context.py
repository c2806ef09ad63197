"""What every page needs: the gateway client and the sidebar's choices.

The sidebar is drawn once per run by ``app.py``; pages read its values through
``current()`` instead of global variables, so each browser session has its own namespace,
price and API key (Streamlit keeps them in that session's ``st.session_state``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import streamlit as st

from reprise.config import Settings
from reprise.ui.client import GatewayClient

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# Session-state keys of the sidebar widgets.
NAMESPACE_KEY = "ui_namespace"
PRICE_KEY = "ui_price_per_1k"
API_KEY_KEY = "ui_api_key"


@dataclass(frozen=True)
class UIContext:
    client: GatewayClient
    gateway_url: str
    namespace: str
    price_per_1k: float  # currency units per 1000 tokens, to estimate what a hit saved

    def cost(self, tokens: int) -> float:
        return tokens * self.price_per_1k / 1000.0


@st.cache_resource(show_spinner=False)
def _http(base_url: str, namespace: str, api_key: str) -> httpx.Client:
    """One pooled connection set per (gateway, namespace, key), shared by the reruns."""
    headers = {"X-Reprise-Namespace": namespace}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.Client(base_url=base_url, headers=headers,
                        timeout=httpx.Timeout(300.0, connect=3.0))


def default_price_per_1k(settings: Settings) -> float:
    """The gateway's own prices (per 1M prompt / completion tokens), averaged, per 1k."""
    return round((settings.price_prompt_per_mtok + settings.price_completion_per_mtok)
                 / 2 / 1000, 6)


def valid_namespace(value: str) -> bool:
    return bool(_NAMESPACE.match(value))


def current() -> UIContext:
    settings = Settings()
    namespace = str(st.session_state.get(NAMESPACE_KEY) or settings.default_namespace).strip()
    if not valid_namespace(namespace):
        namespace = settings.default_namespace
    price = float(st.session_state.get(PRICE_KEY, default_price_per_1k(settings)))
    api_key = str(st.session_state.get(API_KEY_KEY) or "")
    url = settings.gateway_url
    client = GatewayClient(url, http=_http(url, namespace, api_key))
    return UIContext(client, url, namespace, price)
