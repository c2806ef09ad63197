"""Users' votes on served answers, and what they change in later lookups (pure logic).

A semantic cache learns from its users which paraphrases an answer really fits. The rules
below follow one principle: **feedback never makes a wrong answer more likely**. A vote
can only block, raise a bar, evict, or confirm one exact question; it never lowers any
threshold, and a single vote moves an entry's bar by a bounded step (per-entry thresholds
as in vCache, arXiv 2502.03771, but learned from explicit verdicts and only upwards).

* Thumbs-down on a **semantic** hit: the stored answer is wrong for that question. The
  question's digest is *blocked* on the entry (never served that entry again), and the
  entry's own *bar* rises to just above the refused similarity, by at most ``max_step``
  per vote and never past 1.0, so close paraphrases of the refused question need a closer
  match too. Repeated downs from one question count once; ``evict_after`` distinct
  down-voted questions evict the entry: an answer that many paraphrases got wrong is too
  generic to keep serving.
* Thumbs-down on an **exact** hit, or on the fresh answer of a **miss**: the answer is wrong
  for its own question, hence for every paraphrase of it. The entry is marked bad and
  evicted at once (the store deletes it in the same atomic step); the next ask gets a new
  answer from the model, which replaces it.
* Thumbs-up on a semantic hit records the (question, entry) pair as *confirmed*: that exact
  question may be served that entry even if a later vote raised the bar above its
  similarity. Only that question, only the entry's own bar: the global floor, the guards
  and the verifier still apply, and a block always wins over a confirmation. A thumbs-up
  on an exact hit or a miss only counts.

"That exact question" means equal after ``embedding_text`` (case, spacing and closing
punctuation removed): the same text the semantic tier embeds, so it cannot be told apart
by the cache anyway.

``EntryFeedback`` (the persisted state) lives in ``store.base`` beside ``CacheEntry``, since
stores persist it; it is re-exported here with the rules that change it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Literal

from reprise.cache.text import embedding_text
from reprise.store.base import CacheEntry, EntryFeedback

__all__ = ["EntryFeedback", "FeedbackPolicy", "Vote", "apply_vote", "describe",
           "question_hash", "refusal"]

Vote = Literal["up", "down"]
VOTES: tuple[Vote, ...] = ("up", "down")
# Confirmations are permissions: past this many the oldest is forgotten (only ever
# stricter). Blocks are never forgotten: reaching this many evicts the entry instead.
MAX_CONFIRMED = 32
MAX_BLOCKED = 32


@dataclass(frozen=True, slots=True)
class FeedbackPolicy:
    """How far votes move an entry (from ``Settings``: ``feedback_*``)."""

    evict_after: int = 3  # distinct down-voted questions that evict an entry
    margin: float = 0.01  # the bar goes this far above a refused similarity...
    max_step: float = 0.05  # ...but one vote raises it by at most this much
    default_bar: float = 0.81  # where the step starts for an entry without its own bar


def question_hash(question: str) -> str:
    """Digest of a question as the semantic tier sees it (16 hex characters: collisions
    among the few questions voted on one entry are out of reach, and entries stay small)."""
    text = embedding_text(question)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _raised_bar(fb: EntryFeedback, similarity: float, policy: FeedbackPolicy) -> float:
    """The bar after a refused hit at ``similarity``: just above it, by a bounded step."""
    base = fb.bar if fb.bar is not None else min(similarity, policy.default_bar)
    target = min(1.0, similarity + policy.margin, base + policy.max_step)
    return target if fb.bar is None else max(fb.bar, target)


def apply_vote(feedback: EntryFeedback, vote: Vote, question_hash: str, similarity: float,
               tier: str, policy: FeedbackPolicy | None = None) -> EntryFeedback:
    """The entry's feedback after one vote (a new value; ``feedback`` is unchanged).

    ``question_hash`` is the voted question's digest (``question_hash()``), ``similarity``
    the cosine the answer was served at (1.0 for exact hits) and ``tier`` how it was served
    (``exact``, ``semantic`` or ``miss``: a fresh answer that was stored). The result has
    ``evicted`` set when the entry must go.
    """
    p = policy or FeedbackPolicy()
    if vote not in VOTES:
        raise ValueError(f"vote must be 'up' or 'down', not {vote!r}")
    if vote == "up":
        fb = replace(feedback, up=feedback.up + 1)
        if tier == "semantic" and question_hash not in fb.blocked \
                and question_hash not in fb.confirmed:
            fb = replace(fb, confirmed=(*fb.confirmed, question_hash)[-MAX_CONFIRMED:])
        return replace(fb, evicted=fb.bad)
    fb = replace(feedback, down=feedback.down + 1)
    if tier != "semantic":
        return replace(fb, bad=True, evicted=True)
    confirmed = tuple(h for h in fb.confirmed if h != question_hash)
    if question_hash not in fb.blocked:
        fb = replace(fb, blocked=(*fb.blocked, question_hash),
                     bar=_raised_bar(fb, similarity, p))
    blocks_evict = len(fb.blocked) >= min(max(p.evict_after, 1), MAX_BLOCKED)
    return replace(fb, confirmed=confirmed, evicted=fb.bad or blocks_evict)


def refusal(entry: CacheEntry, question: str, similarity: float) -> str | None:
    """Why votes forbid serving ``entry`` for ``question`` at ``similarity``, or None.

    For the candidate choice of the semantic tier (and the exact tier, at similarity 1.0):
    a refused entry is skipped as if the verifier had rejected it, so the next candidate
    may still win. The reason is short and meant for humans (lookup explanations, logs).
    """
    fb = entry.feedback
    if fb.empty:
        return None
    if fb.bad:
        return "a user marked this answer wrong"
    digest = question_hash(question)
    if digest in fb.blocked:
        return "a user marked this answer wrong for this question"
    if digest in fb.confirmed:
        return None
    if fb.bar is not None and similarity < fb.bar:
        return f"below this entry's own bar {fb.bar:.2f} (raised by feedback)"
    return None


def describe(before: EntryFeedback, after: EntryFeedback, vote: Vote, tier: str,
             question_hash: str) -> tuple[str, str]:
    """(effect, message) of one applied vote, for the voter: what it changed."""
    if after.evicted:
        if tier == "semantic":
            return ("evicted", f"thanks — this answer was removed from the cache: "
                               f"{len(after.blocked)} questions were marked wrong for it")
        return ("evicted", "thanks — this answer was removed from the cache; asking again "
                           "gets a fresh answer")
    if vote == "down":
        if question_hash in after.blocked and question_hash not in before.blocked:
            msg = "thanks — this answer will not be served again for this question"
            if after.bar is not None:
                msg += f"; similar questions now need similarity {after.bar:.2f}"
            return "blocked", msg
        return "recorded", "thanks — this question was already marked wrong for this answer"
    if tier == "semantic" and question_hash in after.confirmed:
        return "confirmed", "thanks — this answer is confirmed for this question"
    if tier == "semantic" and question_hash in after.blocked:
        return "recorded", ("thanks — your vote was recorded; another vote marked this answer "
                            "wrong for this question, and that stands")
    return "recorded", "thanks — your vote was recorded"
