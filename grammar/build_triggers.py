"""The triggers and clauses of a rule: `on …`, `if`, `after`, `once per`. A part of RuleBuilder."""

from __future__ import annotations

from datetime import timedelta

from herald.grammar.literals import unquote as _unquote
from herald.grammar.schedule import is_valid_cron
from herald.grammar.model import ChangeTrigger, EventTrigger, OncePer, PathRef, ScheduleTrigger, StateTrigger
from herald.grammar.tree import SPECIAL_ROOTS, Placeholder as _Placeholder



class TriggerParts:
    """Callbacks for triggers and clauses; mixed into RuleBuilder, whose `_error`, `_duration`,
    `_too_deep` and `_token_of` they use."""

    # ---- triggers ----
    def trigger_expr(self, items: list):
        (expr,) = items
        if isinstance(expr, _Placeholder):
            return expr
        if (deep := self._too_deep(expr, "this condition")) is not None:
            return deep
        if isinstance(expr, PathRef):
            if expr.path[0] in SPECIAL_ROOTS and len(expr.path) > 1:
                return self._error(f"`{expr}` is not an event type", self._token_of(expr),
                                   "write an event type like order.created, or a condition like order.status == \"F\"")
            return EventTrigger(expr.dotted)
        wild = [p for p in expr.paths() if "*" in p]
        if wild:
            return self._error("`*` matches event types only, not fields in a condition", self._token_of(expr))
        outside = [p for p in expr.paths() if p[0] in ("site", "previous")]
        if outside:
            return self._error(f"a state trigger reads the entity's own fields, not {'.'.join(outside[0])}",
                               self._token_of(expr), "move that part into an `if` after the trigger")
        entities = [p[0] for p in expr.paths() if p[0] not in SPECIAL_ROOTS]
        if not entities:
            return self._error("a state condition must read an entity's field", self._token_of(expr),
                               'e.g. on order.status == "F"')
        return StateTrigger(entities[0], expr)

    def trigger_changes(self, items: list):
        path, from_value, to_value = items[0], None, None
        for item in items[1:]:
            if item[0] == "from":
                from_value = item[1]
            else:
                to_value = item[1]
        if isinstance(path, _Placeholder):
            return path
        for value in (from_value, to_value):
            if (broken := self._too_deep(value, "this value")) is not None or isinstance(value, _Placeholder):
                return broken or value
        if len(path.path) < 2 or path.path[0] in SPECIAL_ROOTS or "*" in path.path:
            return self._error("`changes` needs an entity's field, like order.status", self._token_of(path))
        return ChangeTrigger(path.path[0], path.path, from_value, to_value)

    def change_from(self, items: list):
        return ("from", items[0])

    def change_to(self, items: list):
        return ("to", items[0])

    def every_interval(self, items: list):
        (token,) = items
        interval = self._duration(token)
        if isinstance(interval, _Placeholder):
            return interval
        if interval < timedelta(minutes=1) or interval.total_seconds() % 60:
            return self._error("a schedule interval must be whole minutes (at least 1m)", token)
        if interval > timedelta(days=1) or (86400 % int(interval.total_seconds())):
            return self._error(f"`every {token}` does not divide a day evenly", token,
                               'use `every day at HH:MM` or `cron "…"` for longer or irregular periods')
        return ScheduleTrigger("interval", interval=interval)

    def every_day(self, items: list):
        times = []
        for token in items:
            hour, minute = map(int, token.split(":"))
            if hour > 23 or minute > 59:
                return self._error(f"{token} is not a time of day", token, "use 00:00 to 23:59")
            times.append(f"{hour:02d}:{minute:02d}")
        return ScheduleTrigger("daily", times=tuple(times))

    def cron(self, items: list):
        (token,) = items
        expression = _unquote(token).strip()
        if not is_valid_cron(expression):
            return self._error(f'"{expression}" is not a valid cron expression', token,
                               'five fields: minute hour day-of-month month day-of-week, e.g. "0 10 * * 1-5"')
        return ScheduleTrigger("cron", cron=expression)

    # ---- clauses ----
    def if_clause(self, items: list):
        condition = self._too_deep(items[0], "this condition") or items[0]
        return ("if", condition, self._token_of(items[0]))

    def after_clause(self, items: list):
        (token,) = items
        return ("after", self._duration(token), token)

    def once_clause(self, items: list):
        within = None
        if items and isinstance(items[-1], tuple) and items[-1][0] == "within":
            within, items = items[-1][1], items[:-1]
        keys = tuple(self._too_deep(k, "this value") or k for k in items)
        if isinstance(within, _Placeholder):
            keys = (within,)            # the rule is dropped: its error is reported
        return ("once", OncePer(keys, within), self._token_of(items[0]))

    def within(self, items: list):
        return ("within", self._duration(items[0]))
