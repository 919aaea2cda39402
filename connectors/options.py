"""Small helpers connectors share when they validate their options."""

from __future__ import annotations

import math
from typing import Any

from engine.config import Secret


def number(value: Any) -> float | None:
    """A finite number from a number or a numeric string (so `!env` values work), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def what(value: Any) -> str:
    """How an error message names a wrong value — never echoing a secret."""
    if isinstance(value, Secret):
        return "a value from !env/!secret that does not fit"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"the number {value:g}"
    if isinstance(value, str):
        return f'"{value}"' if value.strip() else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
