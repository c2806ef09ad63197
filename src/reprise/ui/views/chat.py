"""Chat page: streamed answers, each with its cache badge, sources, thumbs up/down and a
bypass button.

Each question goes to the gateway on its own by default (no history), like the cache demos
users copy: asking the same thing twice then shows the hit. Turning on "send the
conversation" makes earlier turns part of the request, and so of the cache key.

The thumbs send the answer's response id to ``POST /v1/feedback``: a thumbs-down on a
semantic hit stops that stored answer from being served for that question again, on an
exact hit or a fresh answer it removes the answer from the cache (``cache.feedback``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from reprise.ui import context, welcome
from reprise.ui.client import HIT_TIERS, ChatResult, GatewayError, GatewayUnavailable
from reprise.ui.format import badge_markdown, lookup_caption
from reprise.ui.messages import explain

TURNS_KEY = "chat_turns"
PENDING_KEY = "chat_pending"
COLLECTION_KEY = "chat_collection"
HISTORY_KEY = "chat_send_history"
NO_COLLECTION = "(no collection: plain chat)"
QUOTE_CHARS = 450
LONG_QUESTION_CHARS = 1200  # longer questions are folded in their bubble
QUESTION_PREVIEW_CHARS = 400


@dataclass
class Turn:
    question: str
    collection: str | None
    bypass: bool
    result: ChatResult = field(default_factory=ChatResult)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    vote: str | None = None  # up | down once the gateway accepted a vote
    vote_message: str | None = None  # the gateway's answer to the vote (or why it failed)
    vote_failed: bool = False


def _turns() -> list[Turn]:
    turns: list[Turn] = st.session_state.setdefault(TURNS_KEY, [])
    return turns


def _ask_again(turn_id: str) -> None:
    """Button callback: queue the same question with ``Cache-Control: no-cache``."""
    for turn in _turns():
        if turn.id == turn_id:
            st.session_state[PENDING_KEY] = Turn(turn.question, turn.collection, bypass=True)


def _ask_example(question: str) -> None:
    """Button callback of the first-run examples: ask as if typed (no collection)."""
    st.session_state[PENDING_KEY] = Turn(question, None, bypass=False)


def _vote(turn_id: str, vote: str) -> None:
    """Button callback: send a thumbs up/down for the turn's answer and keep the verdict."""
    turn = next((t for t in _turns() if t.id == turn_id), None)
    if turn is None or not turn.result.response_id:
        return
    ctx = context.current()
    try:
        verdict = ctx.client.feedback(turn.result.response_id, vote)
        turn.vote, turn.vote_failed = vote, False
        turn.vote_message = str(verdict.get("message") or "thanks — your vote was recorded")
    except (GatewayError, GatewayUnavailable) as exc:
        turn.vote_failed = True
        turn.vote_message = f"The vote was not recorded. {explain(exc)}"


def _votes(turn: Turn) -> None:
    """Thumbs under an answer that came from (or went into) the cache."""
    r = turn.result
    if r.error or not r.response_id or r.tier not in (*HIT_TIERS, "miss", "bypass"):
        return
    up, down, _ = st.columns([1, 1, 5], vertical_alignment="center")
    up.button("Good", key=f"up_{turn.id}", icon=":material/thumb_up:", on_click=_vote,
              args=(turn.id, "up"), disabled=turn.vote is not None,
              type="primary" if turn.vote == "up" else "secondary",
              help="This answer is right for my question")
    down.button("Wrong", key=f"down_{turn.id}", icon=":material/thumb_down:",
                on_click=_vote, args=(turn.id, "down"), disabled=turn.vote == "down",
                type="primary" if turn.vote == "down" else "secondary",
                help="This answer is wrong for my question: the cache will not serve it "
                     "for this question again")
    if turn.vote_message:
        if turn.vote_failed:
            st.warning(turn.vote_message, icon=":material/error:")
        else:
            st.caption(turn.vote_message)


def _sources(citations: list[dict[str, Any]]) -> None:
    with st.expander(f"Sources ({len(citations)})", expanded=False):
        for i, c in enumerate(citations, 1):
            doc = c.get("document") or c.get("filename") or c.get("document_id") or "?"
            page = c.get("page")
            st.markdown(f"**[{c.get('index', i)}] {doc}**" + (f" — page {page}" if page else ""))
            text = str(c.get("text") or "").strip()
            if len(text) > QUOTE_CHARS:
                text = text[:QUOTE_CHARS].rsplit(" ", 1)[0] + " …"
            if text:
                st.markdown("\n".join("> " + line for line in text.splitlines() if line.strip()))


def _footer(turn: Turn, ctx: context.UIContext) -> None:
    r = turn.result
    if r.error:
        st.error(r.error, icon=":material/error:")
    if r.tier != "?":
        st.markdown(badge_markdown(r, ctx.price_per_1k / 1000.0))
    if r.cut:
        st.caption("The answer reached the model's token cap and was cut there "
                   "(finish_reason “length”). Ask for a shorter answer, or send a larger "
                   "max_tokens from your own code.")
    if r.tier == "semantic" and r.matched_question:
        st.caption(f"Matched the earlier question: “{r.matched_question}”")
    if r.tier != "semantic" and (why := lookup_caption(r.lookup)):
        st.caption(why)
    if r.citations:
        _sources(r.citations)
    _votes(turn)
    if r.refused:
        return  # the same question would be refused again
    st.button("Ask again, bypassing the cache", key=f"bypass_{turn.id}",
              icon=":material/refresh:", on_click=_ask_again, args=(turn.id,),
              help="Sends Cache-Control: no-cache: the model answers and the cache is refreshed")


def _question(turn: Turn) -> None:
    """The user's bubble; a giant question shows its start and folds the rest away."""
    label = f"  \n:gray[collection **{turn.collection}**]" if turn.collection else ""
    again = "  \n:gray[asked again, bypassing the cache]" if turn.bypass else ""
    q = turn.question
    if len(q) <= LONG_QUESTION_CHARS:
        st.markdown(q + label + again)
        return
    head = q[:QUESTION_PREVIEW_CHARS].rsplit(" ", 1)[0]
    st.markdown(f"{head} … :gray[({len(q):,} characters)]" + label + again)
    with st.expander("Show the whole question"):
        st.text(q)


def _show(turn: Turn, ctx: context.UIContext) -> None:
    with st.chat_message("user"):
        _question(turn)
    with st.chat_message("assistant"):
        if turn.result.text:
            st.markdown(turn.result.text)
        _footer(turn, ctx)


def _messages(turn: Turn) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    if st.session_state.get(HISTORY_KEY):
        for past in _turns():
            if past.result.text and not past.result.error:
                msgs += [{"role": "user", "content": past.question},
                         {"role": "assistant", "content": past.result.text}]
    return [*msgs, {"role": "user", "content": turn.question}]


def _run(turn: Turn, ctx: context.UIContext) -> None:
    """Ask the gateway, streaming the answer into the page, then keep the turn."""
    with st.chat_message("user"):
        _question(turn)
    with st.chat_message("assistant"):
        stream = ctx.client.chat_stream(_messages(turn), collection=turn.collection,
                                        bypass_cache=turn.bypass)
        try:
            st.write_stream(stream)
        except GatewayUnavailable as exc:
            stream.result.error = explain(exc)
        except GatewayError as exc:
            stream.result.refused = 400 <= exc.status < 500 and exc.status not in (401, 429)
            if stream.result.refused:
                stream.result.error = f"The gateway refused this question: {exc.message}"
            else:
                stream.result.error = ("The gateway refused or failed this question. "
                                       f"{explain(exc)}")
        turn.result = stream.result
        _footer(turn, ctx)
    _turns().append(turn)


def _collection_names(ctx: context.UIContext) -> list[str]:
    try:
        return [c["name"] for c in ctx.client.collections()]
    except GatewayError as exc:
        if exc.code != "rag_disabled":
            st.warning(f"Could not list document collections. {explain(exc)}")
        return []


def render() -> None:
    ctx = context.current()
    st.title("Chat")
    try:
        names = _collection_names(ctx)
    except GatewayUnavailable as exc:
        st.error(explain(exc), icon=":material/cloud_off:")
        return
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    options = [NO_COLLECTION, *names]
    if st.session_state.get(COLLECTION_KEY) not in options:
        st.session_state[COLLECTION_KEY] = NO_COLLECTION
    choice = left.selectbox("Answer from documents", options, key=COLLECTION_KEY,
                            help="Pick a collection to chat with its documents (RAG)")
    right.toggle("Send the conversation", key=HISTORY_KEY,
                 help="Off: each question is sent alone, so a repeated question can hit "
                      "the cache. On: earlier turns are part of the request and of its key.")
    if st.button("Clear the conversation", icon=":material/delete_sweep:",
                 disabled=not _turns()):
        st.session_state[TURNS_KEY] = []
    collection = None if choice == NO_COLLECTION else choice

    pending: Turn | None = st.session_state.pop(PENDING_KEY, None)
    # Read before drawing the conversation (the input is pinned to the bottom anyway), so a
    # first typed question already hides the first-run panel.
    question = st.chat_input("Ask a question (ask it twice to see a cache hit)")
    if question and question.strip():
        pending = Turn(question.strip(), collection, bypass=False)
    if not _turns() and pending is None:
        welcome.render(ctx, _ask_example)
    else:
        welcome.examples(_ask_example, expanded=False)
    for turn in _turns():
        _show(turn, ctx)
    if pending is not None:
        _run(pending, ctx)


if __name__ == "__main__":  # run as a page script by st.navigation
    render()
