"""Dashboard: hit rate over time by tier, latency of hits vs misses, savings, errors, votes.

The gateway keeps its recent chat requests in memory (``/admin/events``, since it started);
upstream failures, users' votes on answers, the prompt tokens the model server reused from
its own prompt cache and the replicas' state come from its Prometheus counters
(``/metrics``), which also count the failures that never produced an answer event.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from reprise.ui import charts, context
from reprise.ui.client import GatewayError, GatewayUnavailable
from reprise.ui.format import duration, money
from reprise.ui.messages import explain

AUTO_KEY = "dash_auto_refresh"
REFRESH_SECONDS = 5


def _events(ctx: context.UIContext) -> tuple[list[dict[str, Any]], str]:
    """Every namespace for an admin; a tenant key sees its own requests only."""
    try:
        return ctx.client.events(all_namespaces=True), "all namespaces"
    except GatewayError as exc:
        if exc.status != 403:
            raise
        return ctx.client.events(all_namespaces=False), "your namespace only"


def _upstream_errors(ctx: context.UIContext) -> dict[str, float]:
    samples = ctx.client.metric_samples("reprise_upstream_errors_total")
    return {labels.get("status", "?"): value for labels, value in samples if value}


def _feedback(ctx: context.UIContext) -> tuple[dict[str, float], float, float]:
    """Votes by kind, entries they evicted, and lookups they refused (since start)."""
    votes: dict[str, float] = {"up": 0.0, "down": 0.0}
    for labels, value in ctx.client.metric_samples("reprise_feedback_votes_total"):
        vote = labels.get("vote", "?")
        votes[vote] = votes.get(vote, 0.0) + value
    evicted = sum(v for _, v in ctx.client.metric_samples("reprise_feedback_evictions_total"))
    refused = sum(v for _, v in ctx.client.metric_samples("reprise_feedback_refusals_total"))
    return votes, evicted, refused


def _prefix_reuse(ctx: context.UIContext) -> tuple[dict[str, float], dict[str, float]]:
    """Prompt tokens of misses by kind (reused, computed, unreported), answers by report."""
    tokens = {labels.get("kind", "?"): value for labels, value in
              ctx.client.metric_samples("reprise_upstream_prompt_tokens_total")}
    answers = {labels.get("prompt_cache", "?"): value for labels, value in
               ctx.client.metric_samples("reprise_upstream_answers_total")}
    return tokens, answers


def _replicas(ctx: context.UIContext) -> list[dict[str, Any]]:
    """One row per model replica (only when the gateway routes over several)."""
    rows: dict[str, dict[str, Any]] = {}
    for labels, value in ctx.client.metric_samples("reprise_upstream_replica_up"):
        rows[labels.get("replica", "?")] = {"replica": labels.get("replica", "?"),
                                            "in rotation": bool(value), "requests": 0,
                                            "by prefix": 0}
    for labels, value in ctx.client.metric_samples("reprise_upstream_routed_total"):
        row = rows.get(labels.get("replica", "?"))
        if row is not None:
            row["requests"] += int(value)
            if labels.get("reason") == "prefix":
                row["by prefix"] += int(value)
    return list(rows.values())


def _body(ctx: context.UIContext) -> None:
    events, scope = _events(ctx)
    summary = charts.summarize(events)
    errors = _upstream_errors(ctx)
    votes, evicted, refused = _feedback(ctx)
    prefix_tokens, prefix_answers = _prefix_reuse(ctx)
    note = ""
    if summary.by_tier["exact"] + summary.by_tier["semantic"] and not summary.saved_tokens:
        note = (" Hits saved no counted tokens: the model reports no token usage (llama.cpp's"
                " server does not when streaming).")
    st.caption(f"{summary.requests} chat requests since the gateway started ({scope})."
               + note)
    # Rows of three and four: seven in one row cut values such as "$0.000016" to "$0.000…".
    a, b, c = st.columns(3)
    d, e, f, g = st.columns(4)
    a.metric("Hit rate", f"{summary.hit_rate:.0%}",
             help=f"exact {summary.by_tier['exact']}, semantic {summary.by_tier['semantic']},"
                  f" miss {summary.by_tier['miss']}, bypass {summary.by_tier['bypass']}")
    b.metric("Tokens saved", f"{summary.saved_tokens:,}")
    c.metric("≈ Cost saved", money(ctx.cost(summary.saved_tokens)),
             help=f"at the sidebar's price; the gateway's own estimate (its prompt and "
                  f"completion prices) is {money(summary.gateway_saved_cost)}")
    d.metric("Median hit latency",
             duration(summary.p50_hit_ms) if summary.p50_hit_ms is not None else "–",
             delta=(f"miss {duration(summary.p50_miss_ms)}"
                    if summary.p50_miss_ms is not None else None), delta_color="off",
             delta_arrow="off",
             help="at the gateway, first byte to last: the median of cache hits; the small "
                  "print is the median of misses (the chat badge's \"first token\" is the "
                  "same clock seen from the browser)")
    failed = summary.errors
    e.metric("Failed requests", failed,
             help="chat requests answered with an error status since the gateway started. "
                  "Model server errors by status: "
                  + (", ".join(f"HTTP {s}: {int(n)}" for s, n in sorted(errors.items()))
                     or "none"))
    f.metric("Votes 👍 / 👎", f"{int(votes['up'])} / {int(votes['down'])}",
             help=f"users' thumbs on answers (POST /v1/feedback): {int(evicted)} entries "
                  f"evicted by them, {int(refused)} lookups found an answer they refused")
    reused = int(prefix_tokens.get("reused", 0))
    reported_prompt = reused + int(prefix_tokens.get("computed", 0))
    g.metric("Prefix reused", f"{reused:,} tokens",
             help=f"on misses, prompt tokens the model server took from its own prompt "
                  f"cache: {reused:,} of {reported_prompt:,} in "
                  f"{int(prefix_answers.get('reported', 0))} answers that reported it; "
                  f"{int(prefix_answers.get('unreported', 0))} answers reported no figure "
                  f"(llama-cpp-python's server and Ollama never do). Reprise's own hits "
                  f"are in Tokens saved.")

    # One plot per row, full width: drawn near 1:1, so their text reads like the page's.
    st.pyplot(charts.hit_rate_figure(events), width="stretch")
    st.pyplot(charts.latency_figure(events), width="stretch")
    if summary.saved_tokens:
        st.pyplot(charts.savings_figure(events, ctx.price_per_1k / 1000.0), width="stretch")
    else:
        st.info("No counted tokens saved yet: the plot of tokens and cost saved appears "
                "with the first cache hit on an answer whose usage the model reported.")
    if failed:
        st.pyplot(charts.errors_figure(summary.errors_by_status), width="stretch")
    else:
        st.success("No failed requests since the gateway started.")
    replicas = _replicas(ctx)
    if replicas:
        st.markdown("**Model replicas** (prefix-aware routing)")
        st.dataframe(replicas, hide_index=True)


def render() -> None:
    ctx = context.current()
    st.title("Dashboard")
    auto = st.toggle(f"Refresh every {REFRESH_SECONDS} s", key=AUTO_KEY, value=True)

    @st.fragment(run_every=REFRESH_SECONDS if auto else None)
    def live() -> None:
        try:
            _body(ctx)
        except (GatewayUnavailable, GatewayError) as exc:
            st.error(explain(exc), icon=":material/error:")

    live()


if __name__ == "__main__":  # run as a page script by st.navigation
    render()
