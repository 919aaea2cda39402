"""The Lark transformer that builds immutable rule objects while the LALR parser reduces.

Its callbacks are grouped by part of the language: triggers and clauses
(build_triggers.py), conditions and values (build_expressions.py), actions
(build_actions.py). This module keeps the rule itself, errors and the bounds checks."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from lark import Token, Transformer

from herald.engine.errors import Diagnostic
from herald.grammar.build_actions import ActionParts
from herald.grammar.build_expressions import ExpressionParts
from herald.grammar.build_triggers import TriggerParts
from herald.grammar.literals import (
    MAX_DEPTH, MAX_DIGITS, MAX_PATH_CHARS, MAX_PATH_PARTS, MAX_STRING, parse_duration, unquote as _unquote,
)
from herald.grammar.model import Rule, ScheduleTrigger
from herald.grammar.tree import Placeholder as _Placeholder, deeper_than as _deeper_than
from herald.grammar.tree import first_location as _first_location, loc as _loc


class RuleBuilder(TriggerParts, ExpressionParts, ActionParts, Transformer):
    """Builds model objects bottom-up while the LALR parser reduces."""

    def __init__(self) -> None:
        super().__init__(visit_tokens=False)
        self.file = "<rules>"
        self.problems: list[Diagnostic] = []
        self.lines: list[str] = []
        self.last_on: Token | None = None

    def reset(self, file: str, text: str) -> None:
        self.file, self.problems, self.lines = file, [], text.split("\n")
        self.last_on: Token | None = None
        self.oversized = False          # a token of the current rule broke a bound (see _bounded)

    def _error(self, message: str, token: Token, hint: str | None = None) -> _Placeholder:
        line = self.lines[token.line - 1] if 0 < token.line <= len(self.lines) else None
        self.problems.append(Diagnostic(message, _loc(self, token), "error", hint, line))
        return _Placeholder()

    # ---- file and rule ----
    def start(self, items: list) -> list:
        return [r for r in items if isinstance(r, Rule)]

    def rule_name(self, items: list) -> tuple[str, Token]:
        keyword, token = items
        return _unquote(token), keyword

    def rule(self, items: list) -> Rule | _Placeholder:
        if self.oversized:              # already reported; its stand-in tokens must not become a rule
            self.oversized = False
            return _Placeholder()
        name = None
        if isinstance(items[0], tuple):
            (name, name_token), items = items[0], items[1:]
            location = _loc(self, name_token)
        else:
            location = None
        on_token, trigger, rest = items[0], items[1], items[2:]
        location = location or _loc(self, on_token)
        condition = after = once = None
        actions = []
        for item in rest:
            kind = item[0] if isinstance(item, tuple) else None
            if kind == "if":
                if condition is not None:
                    return self._error("a rule has at most one `if`", item[2], "join the conditions with `and`")
                condition = item[1]
            elif kind == "after":
                if after is not None:
                    return self._error("a rule has at most one `after`", item[2])
                after = item[1]
            elif kind == "once":
                if once is not None:
                    return self._error("a rule has at most one `once per`", item[2])
                once = item[1]
            else:
                actions.append(item)
        parts = [trigger, condition, after, once, *actions]
        if any(isinstance(p, _Placeholder) for p in parts) or (once and any(isinstance(k, _Placeholder) for k in once.keys)):
            return _Placeholder()
        if after is not None and isinstance(trigger, ScheduleTrigger):
            return self._error("`after` cannot delay a schedule trigger", on_token,
                               "schedule the rule for the later time instead")
        rule = Rule("", name, trigger, condition, after, once, tuple(actions), location)
        rule_id = name or "r" + hashlib.sha1(rule.canonical().encode()).hexdigest()[:12]
        return Rule(rule_id, name, trigger, condition, after, once, tuple(actions), location)

    def _token_of(self, expr) -> Token:
        """A stand-in token at the first located place inside `expr`, for error positions."""
        location = _first_location(expr)
        if location is None:
            return self.last_on or Token("PATH", "", line=0, column=0)
        return Token("PATH", "", line=location.line, column=location.col)

    # ---- lexer callbacks: literal sizes, before any value is built from a token ----
    def _bounded(self, token: Token, message: str, hint: str, stand_in: str) -> Token:
        """Report an oversized token and hand the parser a small stand-in, so the rest of
        the file is still checked; the rule holding it is dropped (see `rule`)."""
        self._error(message, token, hint)
        self.oversized = True
        return Token.new_borrow_pos(token.type, stand_in, token)

    def saw_string(self, token: Token) -> Token:
        if len(token) - 2 > MAX_STRING:
            return self._bounded(token, f"a string is at most {MAX_STRING} characters long "
                                        f"(this one has {len(token) - 2})",
                                 'put a long text in a template and write `using "name"`', '""')
        return token

    def saw_number(self, token: Token) -> Token:
        digits = len(token) - token.count("-") - token.count(".")
        if digits > MAX_DIGITS:
            return self._bounded(token, f"a number has at most {MAX_DIGITS} digits (this one has {digits})",
                                 'compare long codes as strings: "…"', "0")
        return token

    def saw_path(self, token: Token) -> Token:
        parts = token.count(".") + 1
        if parts > MAX_PATH_PARTS:
            return self._bounded(token, f"a field path has at most {MAX_PATH_PARTS} parts (this one has {parts})",
                                 "like order.status or previous.order.props.CITY", "x")
        if len(token) > MAX_PATH_CHARS:
            return self._bounded(token, f"a field path is at most {MAX_PATH_CHARS} characters long "
                                        f"(this one has {len(token)})", "use the field's real name", "x")
        return token

    def _duration(self, token: Token) -> timedelta | _Placeholder:
        try:
            return parse_duration(token)
        except ValueError as exc:
            return self._error(str(exc), token, "write a shorter duration, like 30d")

    def _too_deep(self, expr, what: str) -> _Placeholder | None:
        """An error when `expr` nests deeper than MAX_DEPTH (checked without recursion,
        before anything walks it recursively)."""
        if isinstance(expr, _Placeholder) or not _deeper_than(expr, MAX_DEPTH):
            return None
        return self._error(f"{what} nests more than {MAX_DEPTH} levels deep", self._token_of(expr),
                           "write it flatter: a chain of `and`/`or` and a list in `in [..]` add one level each, "
                           "every `not`, parenthesised `and`/`or` and list inside a list one more")

    def saw_on(self, token: Token) -> Token:
        """Lexer callback: remember where the current rule's `on` is, for errors with no better place."""
        self.last_on = token
        return token
