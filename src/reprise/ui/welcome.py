"""The chat page's first-run panel: what Reprise is, the model in use, examples to try, and
the words the badges and the sidebar use.

A newcomer lands on an empty chat; without this they do not know that asking twice is the
point, nor what "exact" and "semantic" mean. Each example question has a paraphrase, so
three clicks show a miss (the model answers), an exact hit (the same question again) and
a semantic hit (the paraphrase), in Portuguese, Chinese or English.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from reprise.ui import context
from reprise.ui.client import GatewayError

# (language, question, paraphrase): pairs the semantic tier serves (tests/test_ui.py walks
# them through a real gateway).
EXAMPLES = (
    ("Português", "O que são sistemas distribuídos?", "Explique sistemas distribuídos"),
    ("中文", "为什么天空是蓝色的？", "天空为什么是蓝色的？"),
    ("English", "What is a distributed system?", "What's a distributed system?"),
)

TERMS = """
- **miss**: nothing suitable was cached; the model answered (seconds) and the answer was stored.
- **exact hit**: the very same request was answered before; served from the cache in
  milliseconds.
- **semantic hit**: a question that means the same as a stored one (a paraphrase); served
  with its similarity and the question it matched. Under a miss, the line "closest: …" says
  which stored question came nearest and why it was not served.
- **bypass**: *Ask again, bypassing the cache* makes the model answer afresh and refreshes
  the cache.
- **cut at N tokens**: the answer reached the model's answer cap and stops there.
- **Namespace** (sidebar): a separate cache and document space, e.g. one per app or team.
- **Price per 1k tokens** (sidebar): what your model would charge, used to show what a hit
  saved.
- **API key** (sidebar): only when the gateway was started with keys.
- **Answer from documents**: pick a collection (upload files on the *Documents* page) and
  the answer cites its sources as [1], [2] with a *Sources* panel.
"""


def model_in_use(ctx: context.UIContext) -> str | None:
    try:
        names = ctx.client.models()
    except GatewayError:
        return None
    return names[0] if names else None


def render(ctx: context.UIContext, ask: Callable[[str], None]) -> None:
    """The panel for an empty conversation; ``ask`` queues a question (a button callback)."""
    model = model_in_use(ctx)
    st.markdown(
        "**Reprise** is a gateway in front of a language model: it answers like the "
        "OpenAI API and remembers answers, so a question asked again, or said differently, "
        "comes back from its cache in milliseconds instead of seconds. It can also answer "
        "from your documents and cite them.")
    if model:
        st.caption(f"Model in use: **{model}**. With `make run` it is a small model "
                   "embedded for a first try: short answers in a few seconds, often wrong, "
                   "weakest in Portuguese and Chinese (`bench/results/chat_models.md`). "
                   "Point `REPRISE_UPSTREAM_URL` at any OpenAI-compatible server for a "
                   "larger one.")
    examples(ask, expanded=True)
    with st.expander("What the words mean", icon=":material/help:"):
        st.markdown(TERMS)


def examples(ask: Callable[[str], None], *, expanded: bool) -> None:
    with st.expander("Try it: a miss, an exact hit, a semantic hit", expanded=expanded,
                     icon=":material/lightbulb:"):
        st.caption("Click a question: the model answers (a **miss**). Click it again: an "
                   "**exact hit**. Then click its paraphrase: a **semantic hit**.")
        for i, (lang, question, paraphrase) in enumerate(EXAMPLES):
            left, right, label = st.columns([3, 3, 1], vertical_alignment="center")
            left.button(question, key=f"example_q_{i}", on_click=ask, args=(question,),
                        width="stretch")
            right.button(paraphrase, key=f"example_p_{i}", on_click=ask, args=(paraphrase,),
                         width="stretch")
            label.caption(lang)
