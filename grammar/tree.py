"""Walking compiled expressions without recursion, and the stand-in for a broken piece."""

from __future__ import annotations

from typing import Iterable

from lark import Token

from herald.engine.errors import Location
from herald.grammar.model import Literal, PathRef

# Roots of paths that are not an entity's own fields.
SPECIAL_ROOTS = frozenset({"event", "previous", "site"})


class Placeholder:
    """Stands in for a piece that already produced an error, so parsing goes on."""


def loc(builder, token: Token) -> Location:
    return Location(builder.file, token.line, token.column)


_CHILD_FIELDS = ("left", "item", "subject", "operand", "right", "container", "needle")


def children(node) -> tuple:
    """An expression's sub-expressions in reading order; a list literal's lists inside it."""
    if isinstance(node, Literal):
        return (node.value,) if isinstance(node.value, tuple) else ()
    if isinstance(node, tuple):
        return tuple(v for v in node if isinstance(v, tuple))
    fields = tuple(c for c in (getattr(node, name, None) for name in _CHILD_FIELDS) if c is not None)
    return fields + tuple(getattr(node, "operands", ()))


def first_location(node) -> Location | None:
    """The first path's place in `node` (a loop, not recursion: the tree may be deep)."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, PathRef):
            return node.location
        stack.extend(reversed(children(node)))
    return None


def deeper_than(node, limit: int) -> bool:
    stack = [(node, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children(node))
    return False


def broken(items: Iterable) -> bool:
    return any(isinstance(i, Placeholder) for i in items)
