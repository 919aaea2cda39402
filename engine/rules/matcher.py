"""Which rules an event fires: an index, never a scan of every rule.

Event-type triggers are found by exact type, then through a trie of wildcard
patterns. State triggers (`on order.status == "F"`) are indexed per entity by the
path and value of one equality (or `in`) in the condition, so an event only meets
the rules its own field values can satisfy; conditions with nothing to index on are
checked for events of their entity only. Become-true: a state trigger fires when
its condition holds for the new state and did not hold for the previous one.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Mapping

from herald.grammar.model import (
    And, ChangeTrigger, Compare, EventTrigger, In, Literal, PathRef, Rule, ScheduleTrigger,
    as_number, index_key, values_equal,
)
from herald.engine.events import Event, EventScope, lookup

SPECIAL_ROOTS = ("event", "previous", "site")


@dataclass(slots=True)
class _Trie:
    rules: list[Rule] = field(default_factory=list)
    children: dict[str, "_Trie"] = field(default_factory=dict)

    def add(self, segments: list[str], rule: Rule) -> None:
        node = self
        for segment in segments:
            node = node.children.setdefault(segment, _Trie())
        node.rules.append(rule)

    def find(self, segments: list[str], depth: int = 0) -> list[Rule]:
        if depth == len(segments):
            return self.rules
        found: list[Rule] = []
        for key in (segments[depth], "*"):
            child = self.children.get(key)
            if child is not None:
                found += child.find(segments, depth + 1)
        return found


@dataclass(slots=True)
class _EntityIndex:
    # path → index key of a value → [(rule, exact, key)]; exact: the condition IS that test
    equal: dict[tuple, dict[tuple, list[tuple[Rule, bool, tuple]]]] = field(default_factory=dict)
    # (path, op) → thresholds sorted ascending, and the (rule, exact) entries in the same order
    ordered: dict[tuple, "_Thresholds"] = field(default_factory=dict)
    unindexed: list[Rule] = field(default_factory=list)
    changes: dict[tuple, list[Rule]] = field(default_factory=dict)


@dataclass(slots=True)
class _Thresholds:
    """`path OP number` rules of one path and operator, sorted by their number."""

    op: str
    values: list[Decimal] = field(default_factory=list)
    entries: list[tuple[Rule, bool]] = field(default_factory=list)

    def add(self, threshold: Decimal, rule: Rule, exact: bool) -> None:
        at = bisect_right(self.values, threshold)
        self.values.insert(at, threshold)
        self.entries.insert(at, (rule, exact))

    def true_for(self, value: Decimal) -> range:
        """Positions whose `value OP threshold` holds."""
        n = len(self.values)
        if self.op == ">":
            return range(0, bisect_left(self.values, value))
        if self.op == ">=":
            return range(0, bisect_right(self.values, value))
        if self.op == "<":
            return range(bisect_right(self.values, value), n)
        return range(bisect_left(self.values, value), n)


_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}


def _ordered(expr) -> tuple[tuple, str, Decimal] | None:
    """(path, op, number) when `expr` compares an entity path with a number: `order.price > 1000`."""
    if not isinstance(expr, Compare) or expr.op not in _FLIP:
        return None
    for a, b, op in ((expr.left, expr.right, expr.op), (expr.right, expr.left, _FLIP[expr.op])):
        if isinstance(a, PathRef) and isinstance(b, Literal) and a.path[0] not in SPECIAL_ROOTS \
                and not isinstance(b.value, (bool, str)):
            number = as_number(b.value)
            if number is not None:
                return a.path, op, number
    return None


def _indexable(expr) -> tuple[tuple, tuple[Any, ...]] | None:
    """(path, values) when `expr` is `path == literal` or `path in [literals]`."""
    if isinstance(expr, Compare) and expr.op == "==":
        for a, b in ((expr.left, expr.right), (expr.right, expr.left)):
            if isinstance(a, PathRef) and isinstance(b, Literal) and a.path[0] not in SPECIAL_ROOTS:
                return a.path, (b.value,)
    if isinstance(expr, In) and not expr.negate and isinstance(expr.item, PathRef) \
            and isinstance(expr.container, Literal) and isinstance(expr.container.value, tuple) \
            and expr.item.path[0] not in SPECIAL_ROOTS and expr.container.value:
        return expr.item.path, expr.container.value
    return None


class Matcher:
    """Built once per rule set (immutable afterwards); `match` is the hot path."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules = tuple(rules)
        self.by_type: dict[str, list[Rule]] = {}
        self.patterns = _Trie()
        self.any_type: list[Rule] = []
        self.entities: dict[str, _EntityIndex] = {}
        self.schedules: list[Rule] = []
        for rule in self.rules:
            self._add(rule)
        self._has_patterns = bool(self.patterns.children)

    def _add(self, rule: Rule) -> None:
        trigger = rule.trigger
        if isinstance(trigger, EventTrigger):
            if trigger.pattern == "*":
                self.any_type.append(rule)
            elif trigger.is_wildcard:
                self.patterns.add(trigger.pattern.split("."), rule)
            else:
                self.by_type.setdefault(trigger.pattern, []).append(rule)
        elif isinstance(trigger, ScheduleTrigger):
            self.schedules.append(rule)
        elif isinstance(trigger, ChangeTrigger):
            index = self.entities.setdefault(trigger.entity, _EntityIndex())
            index.changes.setdefault(trigger.path, []).append(rule)
        else:
            index = self.entities.setdefault(trigger.entity, _EntityIndex())
            condition = trigger.condition
            conjuncts = condition.operands if isinstance(condition, And) else (condition,)
            for conjunct in conjuncts:
                ordered = _ordered(conjunct)
                if ordered:
                    path, op, number = ordered
                    table = index.ordered.setdefault((path, op), _Thresholds(op))
                    table.add(number, rule, conjunct is condition)
                    return
                found = _indexable(conjunct)
                if found:
                    path, values = found
                    exact = conjunct is condition and len(values) == 1
                    table = index.equal.setdefault(path, {})
                    # one bucket per distinct key, so a rule is found at most once per event
                    for key in dict.fromkeys(index_key(v) for v in values):
                        table.setdefault(key, []).append((rule, exact, key))
                    return
            index.unindexed.append(rule)

    def type_rules(self, event_type: str) -> list[Rule]:
        """Rules whose event-type trigger matches this type."""
        found = self.by_type.get(event_type, [])
        if self._has_patterns:
            found = found + self.patterns.find(event_type.split("."))
        if self.any_type:
            found = found + self.any_type
        return found

    def match(self, event: Event, previous: Mapping | None) -> list[Rule]:
        """Rules whose trigger fires on `event`. `previous` is the entity's previous
        state (data shaped like `event.data`), or None when it is unknown."""
        fired = self.type_rules(event.type)
        index = self.entities.get(event.type.split(".", 1)[0])
        if index is None:
            return fired
        fired = list(fired)
        data = event.data
        for path, table in index.equal.items():
            bucket = table.get(index_key(lookup(data, path)))
            if not bucket:
                continue
            for rule, exact, key in bucket:
                if exact:
                    if previous is None or index_key(lookup(previous, path)) != key:
                        fired.append(rule)
                elif self._becomes_true(rule, event, previous):
                    fired.append(rule)
        for (path, op), table in index.ordered.items():
            value = as_number(lookup(data, path))
            if value is None:
                continue                  # an ordering with a non-number is false
            before = as_number(lookup(previous, path)) if previous is not None else None
            for i in table.true_for(value):
                rule, exact = table.entries[i]
                if exact:
                    if before is None or not _holds(op, before, table.values[i]):
                        fired.append(rule)
                elif self._becomes_true(rule, event, previous):
                    fired.append(rule)
        for rule in index.unindexed:
            if self._becomes_true(rule, event, previous):
                fired.append(rule)
        if index.changes and previous is not None:
            for path, rules in index.changes.items():
                new, old = lookup(data, path), lookup(previous, path)
                if values_equal(new, old):
                    continue
                for rule in rules:
                    if changed_as_asked(rule.trigger, event, previous, new, old):
                        fired.append(rule)
        return fired

    @staticmethod
    def _becomes_true(rule: Rule, event: Event, previous: Mapping | None) -> bool:
        condition = rule.trigger.condition
        if not condition.test(EventScope(event)).value:
            return False
        if previous is None:
            return True
        return not condition.test(EventScope(event, data=previous)).value


def _holds(op: str, value: Decimal, threshold: Decimal) -> bool:
    if op == ">":
        return value > threshold
    if op == ">=":
        return value >= threshold
    if op == "<":
        return value < threshold
    return value <= threshold


def changed_as_asked(trigger: ChangeTrigger, event: Event, previous: Mapping, new: Any, old: Any) -> bool:
    scope = EventScope(event, previous=previous)
    if trigger.from_value is not None and not values_equal(old, trigger.from_value.evaluate(scope)):
        return False
    if trigger.to_value is not None and not values_equal(new, trigger.to_value.evaluate(scope)):
        return False
    return True


def why_not(rule: Rule, event: Event, previous: Mapping | None) -> str:
    """Why `rule`'s trigger did not fire on `event` — for simulate and traces."""
    trigger = rule.trigger
    if isinstance(trigger, EventTrigger):
        return f"event type {event.type} does not match {trigger.pattern}"
    if isinstance(trigger, ScheduleTrigger):
        return "a schedule trigger fires on its own time, not on events"
    if isinstance(trigger, ChangeTrigger):
        if previous is None:
            return f"{'.'.join(trigger.path)} has no known previous value, so no change can be seen"
        new, old = lookup(event.data, trigger.path), lookup(previous, trigger.path)
        if values_equal(new, old):
            return f"{'.'.join(trigger.path)} did not change (still {_show(new)})"
        return f"{'.'.join(trigger.path)} changed from {_show(old)} to {_show(new)}, not as the trigger asks"
    now = trigger.condition.test(EventScope(event))
    if not now.value:
        return f"trigger is false: {now.why}"
    return "trigger was already true before this event (it fires when the condition becomes true)"


def _show(value: Any) -> str:
    from herald.grammar.model import show
    return show(value)
