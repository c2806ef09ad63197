"""Cache page: the entries of a namespace (question, tier, hits, age, TTL), search, delete.

"Tier" says how an entry can be served: every entry answers the exact tier; those stored
with a question vector also answer paraphrases through the semantic tier.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from reprise.ui import context, flash, page
from reprise.ui.client import GatewayError
from reprise.ui.format import seconds
from reprise.ui.messages import explain

NAMESPACE_KEY = "cache_namespace"
QUERY_KEY = "cache_query"
DELETE_KEY = "cache_delete_choice"
DELETE_GEN_KEY = "cache_delete_gen"
LIMIT = 200


def _stats(ctx: context.UIContext) -> tuple[dict[str, Any], bool]:
    """(stats, pinned): all namespaces for an admin; a tenant's key sees only the namespace
    it is pinned to, which the gateway names in its answer."""
    try:
        return ctx.client.cache_stats(all_namespaces=True), False
    except GatewayError as exc:
        if exc.status != 403:
            raise
        return ctx.client.cache_stats(), True


def _settings_panel(stats: dict[str, Any]) -> None:
    a, b, c, d = st.columns(4)
    enabled = stats.get("semantic_enabled")
    a.metric("Semantic threshold", f"{stats.get('semantic_threshold', 0):.2f}"
             if enabled else "off",
             help="Cosine similarity a paraphrase needs before the guards check it "
                  "(REPRISE_SEMANTIC_THRESHOLD; per request: X-Reprise-Threshold)")
    b.metric("Embedder", stats.get("embedder") or "none",
             help=f"{stats.get('embedder_errors', 0)} embedder errors (each costs one "
                  "request its semantic tier, never its answer)")
    c.metric("Default TTL", seconds(stats.get("ttl_seconds")))
    d.metric("Store", stats.get("backend", "?"),
             help=f"{stats.get('entries', 0)} entries, {stats.get('bytes', 0) / 1e6:.1f} MB, "
                  f"{stats.get('store_errors', 0)} store errors")


def _rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "question": e["question"],
        "context": e.get("context", ""),
        "tier": "exact + semantic" if e.get("semantic") else "exact",
        "hits": e["hits"],
        "age": seconds(e["age_seconds"]),
        "TTL": seconds(e["ttl_seconds"]),
        "model": e.get("model", ""),
        "prompt tokens": int(e.get("prompt_tokens") or 0),
        "answer tokens": int(e.get("completion_tokens") or 0),
        "answer": e.get("answer_preview", ""),
        "votes": _votes(e.get("feedback")),
        "key": e["key"][:16],
    } for e in entries]


def _votes(fb: dict[str, Any] | None) -> str:
    """Users' thumbs on an entry, and the bar they raised (blank when nobody voted)."""
    if not fb:
        return ""
    out = f"👍 {fb.get('up', 0)} · 👎 {fb.get('down', 0)}"
    if fb.get("bar") is not None:
        out += f" · bar {fb['bar']:.2f}"
    return out


def _delete_one(ctx: context.UIContext, namespace: str, entries: list[dict[str, Any]]) -> None:
    by_key = {e["key"]: e for e in entries}
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    # A new widget after each deletion (the generation is in its key): the browser would
    # otherwise keep showing the deleted entry's question in the box.
    gen = st.session_state.get(DELETE_GEN_KEY, 0)
    key = left.selectbox("Delete one entry", list(by_key), key=f"{DELETE_KEY}_{gen}",
                         index=None, placeholder="choose an entry",
                         format_func=lambda k: f"{by_key[k]['question'][:90]}  ({k[:8]})")
    if right.button("Delete", icon=":material/delete:", disabled=key is None,
                    key="cache_delete"):
        try:
            ctx.client.delete_entry(namespace, str(key))
            flash.flash("success", f"Deleted the entry for “{by_key[str(key)]['question']}”.")
        except GatewayError as exc:
            flash.flash("error", f"Could not delete it: {explain(exc)}")
        st.session_state[DELETE_GEN_KEY] = gen + 1
        st.rerun()


def _clear(ctx: context.UIContext, namespace: str, count: int) -> None:
    def clear() -> str:
        return f"Cleared {ctx.client.clear_namespace(namespace)} entries from “{namespace}”."

    page.confirmed_action(
        title=f"Clear the namespace “{namespace}”",
        confirm=f"Yes, delete all {count} entries of “{namespace}”",
        button="Clear namespace", confirm_key="cache_confirm_clear", button_key="cache_clear",
        action=clear, failure="Could not clear it")


def _page(ctx: context.UIContext) -> None:
    stats, pinned = _stats(ctx)
    _settings_panel(stats)
    counts: dict[str, int] = dict(stats.get("namespaces") or {})
    names = sorted(counts) if pinned and counts else sorted({*counts, ctx.namespace})
    if st.session_state.get(NAMESPACE_KEY) not in names:
        st.session_state[NAMESPACE_KEY] = ctx.namespace if ctx.namespace in names else names[0]
    left, mid, right = st.columns([2, 1, 3], vertical_alignment="bottom")
    # The count is drawn next to the box, not inside its options: a browser keeps showing
    # the option text it had, so a count there stayed stale after a deletion.
    namespace = left.selectbox("Entries of namespace", names, key=NAMESPACE_KEY)
    mid.metric("Entries", counts.get(namespace, 0))
    query = right.text_input("Search questions", key=QUERY_KEY, placeholder="text to look for")
    entries = ctx.client.cache_entries(namespace, query=query.strip(), limit=LIMIT)
    if not entries:
        st.info("No entries match." if query.strip() else
                "This namespace is empty: ask something on the Chat page.")
    else:
        st.caption(f"{len(entries)} entries, most recently used first"
                   + (f" (first {LIMIT})" if len(entries) == LIMIT else ""))
        st.dataframe(_rows(entries), hide_index=True, width="stretch",
                     column_config={"hits": st.column_config.NumberColumn(format="%d"),
                                    "context": st.column_config.TextColumn(
                                        help="A digest of the rest of the request: model, "
                                             "system prompt, earlier turns, sampling, "
                                             "document collection. The same question "
                                             "asked in another context is another entry."),
                                    "question": st.column_config.TextColumn(width="large")})
        _delete_one(ctx, namespace, entries)
    _clear(ctx, namespace, counts.get(namespace, 0))


def render() -> None:
    page.render("Cache", _page)


if __name__ == "__main__":  # run as a page script by st.navigation
    render()
