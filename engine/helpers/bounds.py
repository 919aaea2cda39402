"""Bounds on what enters over HTTP (docs/http-api.md "Limits"): JSON read with a depth
bound, whole numbers within 64 bits, finite floats, text without lone surrogates.

Everything is checked where the body is read, so the code behind it (events, rules, the
store, the JSON answers) never meets a value it cannot hold: a 5,000-digit number, a
`\\ud800` escape (not encodable as UTF-8), 10,000 nested lists. Errors are EventErrors
with a JSON pointer to the offending value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from herald.engine.errors import EventError

MAX_DEPTH = 64                        # nested objects/arrays in a body
MIN_INT, MAX_INT = -2**63, 2**63 - 1  # what SQLite's INTEGER holds
_MAX_DIGITS = len(str(MAX_INT))       # longer literals are refused before int() reads them
_LONE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class _OutOfRange:
    """A number literal that does not fit, kept as text until its place is known."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _parse_int(text: str) -> int | _OutOfRange:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        return _OutOfRange(text)
    value = int(text)
    return value if MIN_INT <= value <= MAX_INT else _OutOfRange(text)


def _parse_float(text: str) -> float | _OutOfRange:
    value = float(text)
    return value if math.isfinite(value) else _OutOfRange(text)


def loads(data: bytes | str) -> Any:
    """JSON within the bounds. Raises EventError (pointer "" for text that is not JSON,
    else the offending value's pointer); ValueError never escapes."""
    try:
        value = json.loads(data, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_OutOfRange)
    except RecursionError as exc:
        raise EventError(f"the body is nested deeper than {MAX_DEPTH} levels; flatten it", "") from exc
    except json.JSONDecodeError as exc:
        raise EventError(f"the body is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                         "") from exc
    except UnicodeDecodeError as exc:
        raise EventError(f"the body is not valid UTF-8 (byte {exc.start}); send JSON in UTF-8", "") from exc
    check(value)
    return value


def check(value: Any) -> None:
    """Walk a parsed body (iteratively: no recursion on deep input) and raise at the
    first value out of bounds. Only containers are stacked (a campaign's list of a
    million numbers costs no million entries), and pointers are built only for the error."""
    if not isinstance(value, (dict, list)):
        _check_scalar(value, None)
        return
    stack: list[tuple[Any, tuple | None, int]] = [(value, None, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise EventError(f"nested deeper than {MAX_DEPTH} levels; flatten the body", pointer(path))
        is_dict = isinstance(item, dict)
        if not is_dict and _flat_and_clean(item):
            continue
        for key, child in (item.items() if is_dict else enumerate(item)):
            if is_dict and not key.isascii() and _LONE.search(key):
                raise EventError("the key " + _SURROGATE, pointer((path, key)))
            if isinstance(child, (dict, list)):
                stack.append((child, (path, key), depth + 1))
            elif not isinstance(child, (int, float, bool)) and child is not None:
                _check_scalar(child, (path, key))


_SURROGATE = ("holds a lone surrogate (an escape such as \\ud800 that is not half of a pair); "
              "send valid UTF-8 text")


_PLAIN = {str, int, float, bool, type(None)}


def _flat_and_clean(items: list) -> bool:
    """True for a list of plain values whose text is clean, checked at C speed (a campaign's
    million phone numbers); False when the item-by-item walk must look (and locate)."""
    if not set(map(type, items)) <= _PLAIN:
        return False
    text = "".join([i for i in items if type(i) is str])
    return text.isascii() or not _LONE.search(text)


def _check_scalar(value: Any, path: tuple | None) -> None:
    if isinstance(value, str):
        if not value.isascii() and _LONE.search(value):
            raise EventError("the text " + _SURROGATE, pointer(path))
    elif isinstance(value, _OutOfRange):
        raise EventError(f"the number {_short(value.text)} is out of range: whole numbers go from {MIN_INT} to "
                         f"{MAX_INT}, others must be finite; send a larger one as a string", pointer(path))


def pointer(path: tuple | None) -> str:
    """The JSON pointer (RFC 6901) of a (parent, key) chain."""
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(str(key).replace("~", "~0").replace("/", "~1"))
    return "".join("/" + p for p in reversed(parts))


def _short(text: str) -> str:
    return text if len(text) <= 30 else f"{text[:12]}…{text[-6:]} ({len(text)} characters)"


def text_problem(value: str, *, max_length: int | None = None, controls: bool = False) -> str | None:
    """Why a piece of text (a path or query parameter, an id) cannot be used, or None."""
    if max_length is not None and len(value) > max_length:
        return f"is longer than {max_length} characters"
    if not value.isascii() and _LONE.search(value):
        return "holds a lone surrogate (not valid UTF-8)"
    if not controls and _CONTROL.search(value):
        return "holds a control character"
    return None
