"""Conditions and values: `and`, `or`, comparisons, `in`, `matches`, literals. A part of RuleBuilder."""

from __future__ import annotations

import re
from decimal import Decimal

from herald.grammar.literals import unquote as _unquote
from herald.grammar.model import And, Compare, Contains, In, IsSet, Literal, Matches, Not, Or, PathRef
from herald.grammar.tree import loc as _loc
from herald.grammar.tree import Placeholder as _Placeholder, broken as _broken



class ExpressionParts:
    """Callbacks for conditions and values; mixed into RuleBuilder."""

    # ---- expressions ----
    def or_(self, items: list):
        if len(items) == 1:
            return items[0]
        return _Placeholder() if _broken(items) else Or(tuple(items))

    def and_(self, items: list):
        if len(items) == 1:
            return items[0]
        return _Placeholder() if _broken(items) else And(tuple(items))

    def not_(self, items: list):
        return _Placeholder() if _broken(items) else Not(items[0])

    def compare(self, items: list):
        left, op, right = items
        return _Placeholder() if _broken((left, right)) else Compare(str(op), left, right)

    def in_(self, items: list):
        return _Placeholder() if _broken(items) else In(items[0], items[1])

    def not_in(self, items: list):
        return _Placeholder() if _broken(items) else In(items[0], items[1], negate=True)

    def matches(self, items: list):
        subject, token = items
        pattern = _unquote(token)
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            return self._error(f"invalid regular expression: {exc.msg}", token)
        except RecursionError:          # sre_parse recurses once per group
            return self._error("the regular expression nests too deep", token, "use fewer nested groups")
        except (OverflowError, ValueError) as exc:   # e.g. a{4294967295}
            return self._error(f"invalid regular expression: {exc}", token)
        return _Placeholder() if _broken((subject,)) else Matches(subject, pattern, regex)

    def contains(self, items: list):
        return _Placeholder() if _broken(items) else Contains(items[0], items[1])

    def is_set(self, items: list):
        return _Placeholder() if _broken(items) else IsSet(items[0])

    def is_not_set(self, items: list):
        return _Placeholder() if _broken(items) else IsSet(items[0], negate=True)

    def path(self, items: list):
        (token,) = items
        return PathRef(tuple(str(token).split(".")), _loc(self, token))

    def string(self, items: list):
        return Literal(_unquote(items[0]))

    def number(self, items: list):
        text = str(items[0])
        return Literal(int(text) if "." not in text else Decimal(text))

    def true(self, items: list):
        return Literal(True)

    def false(self, items: list):
        return Literal(False)

    def null(self, items: list):
        return Literal(None)

    def list(self, items: list):
        return Literal(tuple(i.value for i in items if i is not None))
