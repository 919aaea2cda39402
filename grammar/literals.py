"""Literal values in rule text and the bounds on them (docs/rules.md "Limits")."""

from __future__ import annotations

import re
from datetime import timedelta

from lark import Token

# ---- bounds (docs/rules.md "Limits") ------------------------------------------------------
# Every rule that compiles can be evaluated, printed, hashed and stored: nothing in it is
# deeper than Python's stack allows, bigger than an int converts, or later than a datetime holds.
MAX_DEPTH = 32                        # levels of not/and/or/comparison/list in one condition
MAX_STRING = 10_000                   # characters of one string literal
MAX_DIGITS = 30                       # digits of one number literal
MAX_PATH_PARTS = 16                   # parts of a field path or event type (a.b.c)
MAX_PATH_CHARS = 256                  # characters of one field path
MAX_DURATION = timedelta(days=36500)  # 100 years: now ± it is a datetime for centuries to come
MAX_DURATION_TEXT = "36500d (100 years)"

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_MAX_DURATION_MS = MAX_DURATION // timedelta(milliseconds=1)


def parse_duration(text: str) -> timedelta:
    """`1h30m` → timedelta. Raises ValueError past MAX_DURATION (digits are checked before
    any int conversion, so a 5,000-digit count costs nothing)."""
    total = 0
    for digits, unit in _DURATION_PART.findall(text):
        digits = digits.lstrip("0") or "0"
        if len(digits) > 15:
            raise ValueError(_too_long(text))
        total += int(digits) * _DURATION_MS[unit]
        if total > _MAX_DURATION_MS:
            raise ValueError(_too_long(text))
    return timedelta(milliseconds=total)


def _too_long(text: str) -> str:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"`{shown}` is too long: a duration is at most {MAX_DURATION_TEXT}"


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def unquote(token: Token) -> str:
    """The string's text. Only \\" \\\\ \\n \\t are escapes; any other backslash stays, so a
    regex like "^\\s*stop" means what it says."""
    body = token[1:-1]
    if "\\" not in body:
        return body
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), body)
