"""Connectors: modules that bring events into Herald.

`find(type)` gives the class for a `connectors:` entry's `type:` — an in-tree module
`connectors/<type>.py` that sets `CONNECTOR = TheClass`, or a third-party class
registered under the entry-point group `herald.connectors` (name = the type).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "herald.connectors"


def find(type_name: str):
    """The connector class for `type_name`, or None when nothing provides it."""
    if type_name.isidentifier() and type_name != "base":
        try:
            module = importlib.import_module(f"{__name__}.{type_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{type_name}":
                raise
        else:
            return getattr(module, "CONNECTOR", None)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == type_name:
            return entry.load()
    return None


def available() -> list[str]:
    """Every connector type this installation knows, for did-you-mean hints."""
    import pkgutil
    names = {m.name for m in pkgutil.iter_modules(__path__)
             if m.name != "base" and getattr(importlib.import_module(f"{__name__}.{m.name}"), "CONNECTOR", None)}
    names |= {e.name for e in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)
