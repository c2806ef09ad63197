"""What a collection may be called: one rule, shared by the API and the web UI.

Any alphabet's letters are allowed ("públicos", "合同", "contracts-2024"): collection names
are written by people in their own language, and no store needs ASCII (the Redis chunk
index keys collections by a digest; SQLite and URLs take UTF-8). Names are compared in NFC,
so an accented letter typed as one code point or as letter + combining accent is the same
name.
"""

from __future__ import annotations

import re
import unicodedata

RULE = ("1–64 characters: letters of any alphabet, digits, '_', '.' or '-', starting with a "
        "letter or digit")
_NAME = re.compile(r"^[^\W_][\w.\-]{0,63}$")


def normalize(name: str) -> str:
    return unicodedata.normalize("NFC", name.strip())


def is_valid(name: str) -> bool:
    return bool(_NAME.match(normalize(name)))
