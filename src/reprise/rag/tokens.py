"""Approximate token counts without a tokenizer model.

No tokenizer files can be downloaded here and the upstream model may change, so chunk sizes
and context budgets use a dependency-free estimate shaped like a BPE vocabulary:

* a run of letters costs one token per 6 characters (common words are one token, long or
  rare words several);
* digits cost one token per 3 (BPE vocabularies split numbers into groups of up to three);
* each CJK ideograph, kana or Hangul syllable costs one token;
* each punctuation mark or symbol costs one token, except long runs of one character
  (dot leaders in a table of contents, ``-----`` rules), which cost one per 8;
* whitespace is free (it is folded into the next token).

The text is cut into *pieces* that never straddle two tokens' characters, so splitting at a
piece boundary never cuts a word, a number or a CJK character in half.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

# Scripts written without spaces: every character is (about) one token.
_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0002ebef"  # CJK extensions B-F
)
LETTERS_PER_TOKEN = 6
DIGITS_PER_TOKEN = 3
RUN_CHARS_PER_TOKEN = 8

_PIECE = re.compile(
    rf"(?P<cjk>[{_CJK}])"
    rf"|(?P<word>[^\W\d_{_CJK}]+)"
    r"|(?P<num>\d+)"
    r"|(?P<run>(?P<rc>[^\w\s]|_)(?P=rc){3,})"
    r"|(?P<sym>[^\w\s]|_)"
    r"|(?P<space>\s+)"
)


class Piece(NamedTuple):
    """A span ``text[start:end]`` and its estimated token cost (0 for whitespace)."""

    start: int
    end: int
    cost: int


def _cost(kind: str | None, length: int) -> int:
    if kind == "word":
        return -(-length // LETTERS_PER_TOKEN)
    if kind == "num":
        return -(-length // DIGITS_PER_TOKEN)
    if kind == "run":
        return -(-length // RUN_CHARS_PER_TOKEN)
    if kind == "space":
        return 0
    return 1


def iter_pieces(text: str) -> Iterator[Piece]:
    """Token-aligned pieces of ``text`` covering it exactly, in order."""
    for match in _PIECE.finditer(text):
        yield Piece(match.start(), match.end(), _cost(match.lastgroup, match.end() - match.start()))


def count_tokens(text: str) -> int:
    """Estimated number of tokens in ``text`` (see the module docstring for the model)."""
    return sum(p.cost for p in iter_pieces(text))


def split_to_tokens(text: str, max_tokens: int) -> list[str]:
    """Cut ``text`` into consecutive parts of at most ``max_tokens`` each, at piece boundaries.

    Concatenating the parts gives back ``text``. A single word longer than the budget (a URL,
    a base64 blob) is cut inside, at a character boundary, rather than overflowing.
    """
    return [text[s:e] for s, e in split_spans(text, max_tokens)]


def split_spans(text: str, max_tokens: int, offset: int = 0) -> list[tuple[int, int]]:
    """Like :func:`split_to_tokens`, but returns ``(start, end)`` spans shifted by ``offset``."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    spans: list[tuple[int, int]] = []
    start, used = 0, 0
    for piece in iter_pieces(text):
        if piece.cost > max_tokens:  # one overlong word: cut it into budget-sized slices
            if used:
                spans.append((start, piece.start))
            step = max_tokens * (LETTERS_PER_TOKEN if text[piece.start].isalpha()
                                 else DIGITS_PER_TOKEN if text[piece.start].isdigit()
                                 else RUN_CHARS_PER_TOKEN)
            for s in range(piece.start, piece.end, step):
                spans.append((s, min(s + step, piece.end)))
            start, used = piece.end, 0
            continue
        if used + piece.cost > max_tokens:
            spans.append((start, piece.start))
            start, used = piece.start, 0
        used += piece.cost
    if start < len(text) or not spans:
        spans.append((start, len(text)))
    return [(s + offset, e + offset) for s, e in spans if e > s or not text]


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` that costs at most ``max_tokens`` (for context packing)."""
    if max_tokens <= 0:
        return ""
    return split_to_tokens(text, max_tokens)[0] if text else ""


def tail_start(text: str, max_tokens: int) -> int:
    """Index where the longest suffix of ``text`` costing at most ``max_tokens`` begins.

    The suffix starts at a non-space piece, so an overlap never begins with whitespace.
    """
    pieces = list(iter_pieces(text))
    used, start = 0, len(text)
    for piece in reversed(pieces):
        if used + piece.cost > max_tokens:
            break
        used += piece.cost
        if piece.cost:
            start = piece.start
    return start
