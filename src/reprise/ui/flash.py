"""Messages that survive one ``st.rerun()`` (an action's result shown after the refresh)."""

from __future__ import annotations

from typing import Literal

import streamlit as st

_KEY = "ui_flash"
Kind = Literal["success", "error", "warning", "info"]


def flash(kind: Kind, text: str) -> None:
    st.session_state.setdefault(_KEY, []).append((kind, text))


def show() -> None:
    for kind, text in st.session_state.pop(_KEY, []):
        getattr(st, kind)(text)
