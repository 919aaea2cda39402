"""The YAML document: ruamel round-trip loading with `!env`/`!secret` kept as references,
constructor errors located, and bounds on depth and size checked before anything is built.

Bounds (docs/configuration.md "Limits"): Herald's own walks, and the connectors' walks of
their options, stay shallow and small however the YAML nests or aliases.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import CollectionNode, MappingNode, ScalarNode

from herald.engine.errors import Diagnostic, Location

@dataclass(frozen=True, slots=True)
class _Ref:
    """A `!env NAME` / `!secret NAME` (or an unknown tag) found while parsing."""

    tag: str
    name: str | None                   # None: the tag was not on a plain name
    line: int                          # 0-based, from ruamel
    col: int


class _Constructor(RoundTripConstructor):
    pass


def _construct_tag(self: RoundTripConstructor, node: Any) -> _Ref:
    tag = str(node.tag)
    name = None
    if type(node).__name__ == "ScalarNode" and isinstance(node.value, str) and node.value.strip():
        name = node.value.strip()
    return _Ref(tag, name, node.start_mark.line, node.start_mark.column)


_Constructor.add_constructor("!env", _construct_tag)
_Constructor.add_constructor("!secret", _construct_tag)
_Constructor.add_constructor(None, _construct_tag)   # any other tag: reported later

MAX_CONFIG_DEPTH = 32
MAX_CONFIG_VALUES = 10_000             # values, with every alias expanded (a "billion laughs" stops here)


def _located_constructor(construct: Any) -> Any:
    """ruamel's constructors raise bare ValueError/TypeError (a 5,000-digit int, `!!float x`,
    2001-02-30, a list as a mapping key): re-raise them as YAML errors with the node's mark."""

    def guarded(gen: Any, node: Any) -> Any:
        try:
            return (yield from gen)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise _constructor_error(exc, node) from exc

    def located(self: RoundTripConstructor, node: Any) -> Any:
        try:
            result = construct(self, node)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise _constructor_error(exc, node) from exc
        return guarded(result, node) if inspect.isgenerator(result) else result
    return located


def _constructor_error(exc: Exception, node: Any) -> MarkedYAMLError:
    text = str(exc).split(";")[0]
    if "Exceeds the limit" in text:
        text = "a number with too many digits"
    tag = str(getattr(node, "tag", "") or "")
    what = {"map": "a mapping", "seq": "a list", "set": "a set", "omap": "a mapping"}.get(tag.rsplit(":", 1)[-1])
    return ConstructorError(None, None, f"cannot read {what or 'this value'}: {text}", node.start_mark)


for _tag, _construct in list(RoundTripConstructor.yaml_constructors.items()):
    if _tag not in ("!env", "!secret", None):
        _Constructor.add_constructor(_tag, _located_constructor(_construct))


class _Oversized(MarkedYAMLError):
    """The document is too deep or too big, or holds a lone surrogate: `problem` says which."""

    def __init__(self, problem: str, mark: Any, hint: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


def _check_nodes(root: Any) -> None:
    """Before anything is constructed (ruamel's constructor hashes keys and formats
    duplicate-key errors with the whole value): one pass without recursion over the distinct
    nodes. Aliases may not nest deeper than MAX_CONFIG_DEPTH nor expand past
    MAX_CONFIG_VALUES values, no alias may sit inside its own anchor, and no string may hold
    a lone surrogate (a "\\ud800" escape)."""

    def children(node: Any) -> list:
        if isinstance(node, MappingNode):
            return [n for pair in node.value for n in pair]
        return list(node.value) if isinstance(node, CollectionNode) else []

    def check_text(node: Any) -> None:
        if isinstance(node, ScalarNode) and isinstance(node.value, str) and _has_surrogate(node.value):
            raise _Oversized("a string holds a lone surrogate, which is not a character", node.start_mark,
                             "write the character itself (the file is UTF-8), not a \\ud800-style escape")

    check_text(root)
    sized: dict[int, tuple[int, int, Any]] = {}        # id → (height, expanded size, deepest mark)
    inside: set[int] = set()                           # being walked: an alias to one is a cycle
    stack: list[tuple[Any, bool]] = [(root, False)] if isinstance(root, CollectionNode) else []
    while stack:
        node, done = stack.pop()
        if done:
            inside.discard(id(node))
            height, size, deepest = 1, 1, node.start_mark
            for child in children(node):
                if isinstance(child, CollectionNode):
                    h, n, d = sized[id(child)]
                    if h + 1 > height:
                        height, deepest = h + 1, d
                    size += n
                else:
                    size += 1
            if size > MAX_CONFIG_VALUES:
                raise _Oversized(f"the config holds more than {MAX_CONFIG_VALUES} values once its aliases are "
                                 "expanded", node.start_mark,
                                 "use aliases (*name) for shared settings, not to multiply them")
            if height > MAX_CONFIG_DEPTH:
                raise _Oversized(f"the config nests more than {MAX_CONFIG_DEPTH} levels deep (counting what "
                                 "its aliases hold)", deepest, "no Herald setting needs that many")
            sized[id(node)] = (height, size, deepest)
            continue
        if id(node) in sized:
            continue
        inside.add(id(node))
        stack.append((node, True))
        for child in children(node):
            if id(child) in inside:
                raise _Oversized("an alias refers to a mapping or list it is inside of", child.start_mark,
                                 "an alias may only repeat a finished mapping or list")
            check_text(child)
            if isinstance(child, CollectionNode) and id(child) not in sized:
                stack.append((child, False))


def _construct_document(self: RoundTripConstructor, node: Any) -> Any:
    _check_nodes(node)
    return RoundTripConstructor.construct_document(self, node)


_Constructor.construct_document = _construct_document


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.Constructor = _Constructor
    y.max_depth = MAX_CONFIG_DEPTH + 1      # the composer recurses per level: stop it early, located
    y.composer.warn_double_anchors = False   # legal YAML; ruamel's warning would go to stderr
    return y


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _problem(exc: MarkedYAMLError) -> str:
    problem = (exc.problem or exc.context or "syntax error").strip()
    m = re.match(r'found duplicate key "(.*?)" with value', problem)
    if m:  # ruamel quotes both values; they may be secrets
        return f'duplicate key "{m.group(1)}"'
    return problem


def _reader_problem(exc: YAMLError, text: str, display: str) -> Diagnostic:
    """ruamel's ReaderError (a control character, a lone surrogate) carries an offset, not a mark."""
    position = getattr(exc, "position", None)
    if not isinstance(position, int) or not 0 <= position <= len(text):
        return Diagnostic(f"invalid YAML: {type(exc).__name__}", Location(display))
    line = text.count("\n", 0, position) + 1
    col = position - (text.rfind("\n", 0, position) + 1) + 1
    character = getattr(exc, "character", None)
    if isinstance(character, str) and len(character) == 1:
        character = ord(character)
    what = f"U+{character:04X}" if isinstance(character, int) else "a character"
    return Diagnostic(f"invalid YAML: {what} is not allowed in a YAML file", Location(display, line, col),
                      hint="remove it; write special characters as escapes in double quotes (\"\\t\")")

