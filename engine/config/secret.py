"""`Secret`: a string that never prints, and `reveal` for connector options."""

from __future__ import annotations

import hmac
from typing import Any

__all__ = ["Secret", "reveal"]


class Secret:
    """A secret string. It prints as `Secret('****')` everywhere; `.reveal()` is the
    only way to the value, so call it only where the value leaves the process."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not isinstance(value, str):
            raise TypeError("Secret wraps a string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> "Secret":
        return self

    def __deepcopy__(self, memo: dict) -> "Secret":  # immutable; keeps dataclasses.asdict working
        return self

    def __reduce__(self):  # no pickling: pickles end up in files and logs
        raise TypeError("a Secret cannot be pickled")


def reveal(value: Any) -> Any:
    """`value.reveal()` for a Secret, anything else unchanged (for connector options)."""
    return value.reveal() if isinstance(value, Secret) else value

