"""Building blocks every page shares: the page frame and the confirm-then-run action.

Kept in one place so the pages behave alike: a gateway that is down or refuses a request
is explained the same way everywhere, and every destructive action needs the same
explicit confirmation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import streamlit as st

from reprise.ui import context, flash
from reprise.ui.client import GatewayError, GatewayUnavailable
from reprise.ui.messages import explain


def render(title: str, body: Callable[[context.UIContext], None]) -> None:
    """A page: title, the last action's result, then ``body``, or why the gateway failed."""
    ctx = context.current()
    st.title(title)
    flash.show()
    try:
        body(ctx)
    except (GatewayUnavailable, GatewayError) as exc:
        st.error(explain(exc), icon=":material/error:")


def confirmed_action(*, title: str, confirm: str, button: str, confirm_key: str,
                     button_key: str, action: Callable[[], str], failure: str,
                     forget: Iterable[str] = ()) -> None:
    """A destructive action in an expander, armed only by ticking ``confirm``.

    ``action`` returns the success message; a refusal is shown as ``failure: <why>``. Both
    are flashed, since the page reruns at once to show the new state. The confirmation is
    cleared afterwards (so the next action needs a new tick), as are the ``forget`` keys.
    """
    with st.expander(title):
        sure = st.checkbox(confirm, key=confirm_key)
        if st.button(button, type="primary", disabled=not sure, key=button_key):
            try:
                flash.flash("success", action())
            except GatewayError as exc:
                flash.flash("error", f"{failure}: {explain(exc)}")
            for key in (confirm_key, *forget):
                st.session_state.pop(key, None)
            st.rerun()
