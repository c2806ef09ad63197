"""The text form of a question that the embedders see, for lookup and storage alike."""

from __future__ import annotations

import unicodedata

_TRAILING = " \t\n?？.。!！;；:：…"


def embedding_text(question: str) -> str:
    """The form of a question that is embedded, for lookup and storage alike.

    USE is case- and punctuation-sensitive (a case-only difference scores cosine 0.90), so
    "How do I X?" and "how do i x" would look like different questions. Case, spacing
    and closing punctuation never change what a question asks, so they are removed before
    embedding; the guards and the verifier still see the original text. The stored vector
    and the query vector must both come from here, which ``SemanticLookup.embed`` ensures.
    """
    text = " ".join(unicodedata.normalize("NFKC", question).split()).casefold()
    return text.rstrip(_TRAILING) or text
