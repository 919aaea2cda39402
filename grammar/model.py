"""Compiled rules: plain, immutable objects. The runtime never sees a parse tree.

Expressions evaluate against a `Scope` (anything with `get(path) -> value`) and can
explain themselves, so `simulate` and traces can say which part of an `if` was false.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from herald.engine.errors import Location
from herald.grammar.schedule import next_fire

Path = tuple[str, ...]


class Scope(Protocol):
    def get(self, path: Path) -> Any: ...


# ---- values -------------------------------------------------------------------

def as_number(value: Any) -> Decimal | None:
    """A number, or a string that reads as one ("1500.00"); bools are not numbers."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, Decimal)):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        text = value.strip().replace(",", ".") if value.count(",") == 1 and "." not in value else value.strip()
        if not text or not (text[0].isdigit() or text[0] in "+-."):
            return None
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


_BOOL_WORDS = {"y": True, "n": False, "true": True, "false": False}


def index_key(value: Any) -> tuple:
    """A hashable key under which values the language calls equal (`==`) collide.

    Numbers and numeric strings meet as numbers ("1500.00" == 1500); booleans meet the
    words Bitrix and JSON use for them ("Y"/"N", "true"/"false"), so `order.paid == "N"`
    holds for a canonical `false`.
    """
    if isinstance(value, bool):
        return ("b", value)
    number = as_number(value)
    if number is not None:
        return ("n", number.normalize())
    if value is None:
        return ("z",)
    if isinstance(value, str):
        word = _BOOL_WORDS.get(value.strip().lower())
        return ("b", word) if word is not None else ("s", value)
    return ("o", repr(value))


def values_equal(left: Any, right: Any) -> bool:
    if isinstance(left, (list, tuple, dict)) or isinstance(right, (list, tuple, dict)):
        return left == right
    return index_key(left) == index_key(right)


def show(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


# ---- expressions ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    """An evaluated condition and, when false, the part that made it false."""

    value: bool
    why: str = ""


class Expr(ABC):
    """Base of expression nodes. `evaluate` returns a value; `test` a truth Outcome."""

    __slots__ = ()

    @abstractmethod
    def evaluate(self, scope: Scope) -> Any:
        """The expression's value in `scope`."""

    def test(self, scope: Scope) -> Outcome:
        value = self.evaluate(scope)
        ok = truthy(value)
        return Outcome(ok, "" if ok else f"{self} is {show(value)}")

    def paths(self) -> tuple[Path, ...]:
        return ()


def truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value.strip().upper() not in ("", "N", "0", "FALSE")
    if isinstance(value, (int, float, Decimal)):
        return value != 0
    return bool(value)


@dataclass(frozen=True, slots=True)
class Literal(Expr):
    value: Any

    def evaluate(self, scope: Scope) -> Any:
        return self.value

    def __str__(self) -> str:
        return show(self.value)


@dataclass(frozen=True, slots=True)
class PathRef(Expr):
    path: Path
    location: Location | None = field(default=None, compare=False, repr=False)

    def evaluate(self, scope: Scope) -> Any:
        return scope.get(self.path)

    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    def __str__(self) -> str:
        return self.dotted


_ORDERING = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    op: str
    left: Expr
    right: Expr

    def evaluate(self, scope: Scope) -> Any:
        return self.test(scope).value

    def test(self, scope: Scope) -> Outcome:
        a, b = self.left.evaluate(scope), self.right.evaluate(scope)
        if self.op in ("==", "!="):
            equal = values_equal(a, b)
            ok = equal if self.op == "==" else not equal
            return Outcome(ok, "" if ok else f"{self}: {self.left} is {show(a)}")
        an, bn = as_number(a), as_number(b)
        if an is not None and bn is not None:
            ok = _ORDERING[self.op](an, bn)
        elif isinstance(a, str) and isinstance(b, str):
            ok = _ORDERING[self.op](a, b)
        else:
            return Outcome(False, f"{self}: cannot compare {show(a)} with {show(b)}")
        return Outcome(ok, "" if ok else f"{self}: {self.left} is {show(a)}")

    def paths(self) -> tuple[Path, ...]:
        return self.left.paths() + self.right.paths()

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True, slots=True)
class In(Expr):
    item: Expr
    container: Expr
    negate: bool = False

    def evaluate(self, scope: Scope) -> Any:
        return self.test(scope).value

    def test(self, scope: Scope) -> Outcome:
        item, container = self.item.evaluate(scope), self.container.evaluate(scope)
        if isinstance(container, (list, tuple, set)):
            found = any(values_equal(item, c) for c in container)
        elif isinstance(container, str) and isinstance(item, str):
            found = item in container
        elif isinstance(container, dict):
            found = item in container
        else:
            return Outcome(self.negate, "" if self.negate else f"{self}: {self.container} is {show(container)}, not a list")
        ok = found != self.negate
        return Outcome(ok, "" if ok else f"{self}: {self.item} is {show(item)}")

    def paths(self) -> tuple[Path, ...]:
        return self.item.paths() + self.container.paths()

    def __str__(self) -> str:
        return f"{self.item} {'not in' if self.negate else 'in'} {self.container}"


@dataclass(frozen=True, slots=True)
class Matches(Expr):
    subject: Expr
    pattern: str
    regex: re.Pattern = field(compare=False, repr=False, hash=False)

    def evaluate(self, scope: Scope) -> Any:
        return self.test(scope).value

    def test(self, scope: Scope) -> Outcome:
        value = self.subject.evaluate(scope)
        if value is None or isinstance(value, (dict, list, tuple)):
            return Outcome(False, f"{self}: {self.subject} is {show(value)}")
        ok = self.regex.search(str(value)) is not None
        return Outcome(ok, "" if ok else f"{self}: {self.subject} is {show(value)}")

    def paths(self) -> tuple[Path, ...]:
        return self.subject.paths()

    def __str__(self) -> str:
        return f"{self.subject} matches {show(self.pattern)}"


@dataclass(frozen=True, slots=True)
class Contains(Expr):
    subject: Expr
    needle: Expr

    def evaluate(self, scope: Scope) -> Any:
        return self.test(scope).value

    def test(self, scope: Scope) -> Outcome:
        value, needle = self.subject.evaluate(scope), self.needle.evaluate(scope)
        if isinstance(value, (list, tuple)):
            ok = any(values_equal(v, needle) for v in value)
        elif isinstance(value, str) and needle is not None:
            ok = str(needle).casefold() in value.casefold()
        else:
            ok = False
        return Outcome(ok, "" if ok else f"{self}: {self.subject} is {show(value)}")

    def paths(self) -> tuple[Path, ...]:
        return self.subject.paths() + self.needle.paths()

    def __str__(self) -> str:
        return f"{self.subject} contains {self.needle}"


@dataclass(frozen=True, slots=True)
class IsSet(Expr):
    subject: Expr
    negate: bool = False

    def evaluate(self, scope: Scope) -> Any:
        return self.test(scope).value

    def test(self, scope: Scope) -> Outcome:
        value = self.subject.evaluate(scope)
        is_set = value is not None and value != ""
        ok = is_set != self.negate
        return Outcome(ok, "" if ok else f"{self}: {self.subject} is {show(value)}")

    def paths(self) -> tuple[Path, ...]:
        return self.subject.paths()

    def __str__(self) -> str:
        return f"{self.subject} is {'not ' if self.negate else ''}set"


@dataclass(frozen=True, slots=True)
class Not(Expr):
    operand: Expr

    def evaluate(self, scope: Scope) -> Any:
        return self.test(scope).value

    def test(self, scope: Scope) -> Outcome:
        inner = self.operand.test(scope)
        return Outcome(not inner.value, f"{self}: {self.operand} is true" if inner.value else "")

    def paths(self) -> tuple[Path, ...]:
        return self.operand.paths()

    def __str__(self) -> str:
        return f"not {_group(self.operand)}"


@dataclass(frozen=True, slots=True)
class And(Expr):
    operands: tuple[Expr, ...]

    def evaluate(self, scope: Scope) -> Any:
        return self.test(scope).value

    def test(self, scope: Scope) -> Outcome:
        for operand in self.operands:
            outcome = operand.test(scope)
            if not outcome.value:
                return outcome          # the first false part is the reason
        return Outcome(True)

    def paths(self) -> tuple[Path, ...]:
        return tuple(p for o in self.operands for p in o.paths())

    def __str__(self) -> str:
        return " and ".join(_group(o) for o in self.operands)


@dataclass(frozen=True, slots=True)
class Or(Expr):
    operands: tuple[Expr, ...]

    def evaluate(self, scope: Scope) -> Any:
        return self.test(scope).value

    def test(self, scope: Scope) -> Outcome:
        reasons = []
        for operand in self.operands:
            outcome = operand.test(scope)
            if outcome.value:
                return outcome
            reasons.append(outcome.why)
        return Outcome(False, "; ".join(r for r in reasons if r))

    def paths(self) -> tuple[Path, ...]:
        return tuple(p for o in self.operands for p in o.paths())

    def __str__(self) -> str:
        return " or ".join(_group(o) for o in self.operands)


def _group(expr: Expr) -> str:
    return f"({expr})" if isinstance(expr, (And, Or)) else str(expr)


# ---- triggers ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EventTrigger:
    """`on order.created`, `on order.*`, `on *`."""

    pattern: str

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.pattern

    def matches_type(self, event_type: str) -> bool:
        if self.pattern == "*":
            return True
        want, got = self.pattern.split("."), event_type.split(".")
        return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got))

    def __str__(self) -> str:
        return self.pattern


@dataclass(frozen=True, slots=True)
class StateTrigger:
    """`on order.status == "F"`: fires when the condition becomes true for an entity."""

    entity: str
    condition: Expr

    def __str__(self) -> str:
        return str(self.condition)


@dataclass(frozen=True, slots=True)
class ChangeTrigger:
    """`on order.status changes [from X] [to Y]`."""

    entity: str
    path: Path
    from_value: Expr | None = None
    to_value: Expr | None = None

    def __str__(self) -> str:
        text = f"{'.'.join(self.path)} changes"
        if self.from_value is not None:
            text += f" from {self.from_value}"
        if self.to_value is not None:
            text += f" to {self.to_value}"
        return text


@dataclass(frozen=True, slots=True)
class ScheduleTrigger:
    """`every 15m`, `every day at 10:00`, `cron "0 10 * * 1-5"`; in each site's zone."""

    kind: str                       # "interval" | "daily" | "cron"
    interval: timedelta | None = None
    times: tuple[str, ...] = ()     # "HH:MM" for daily
    cron: str | None = None

    def next_fire(self, after: datetime) -> datetime:
        """The first firing strictly after `after` (aware, in the site's zone)."""
        return next_fire(self, after)

    def __str__(self) -> str:
        if self.kind == "interval":
            return f"every {format_duration(self.interval)}"
        if self.kind == "daily":
            return "every day at " + ", ".join(self.times)
        return f'cron "{self.cron}"'


Trigger = EventTrigger | StateTrigger | ChangeTrigger | ScheduleTrigger


# ---- actions --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Recipient:
    """kind: path | phone | user | admins | department | group | subscribers."""

    kind: str
    value: Any = None               # a Path for path/user, a str otherwise
    location: Location | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        if self.kind == "path":
            return ".".join(self.value)
        if self.kind == "phone":
            return show(self.value)
        if self.kind == "user":
            return "user " + ".".join(self.value)
        if self.kind == "admins":
            return "admins"
        return f"{self.kind} {show(self.value)}"


@dataclass(frozen=True, slots=True)
class Send:
    channel: str | None             # None: the site's default channel
    recipients: tuple[Recipient, ...]
    template: str | None = None
    text: str | None = None
    sender: str | None = None
    window: Any = None              # herald.engine.helpers.windows.SendWindow
    stale_after: timedelta | None = None
    copy_admins: bool = False
    fallback_after: timedelta | None = None  # omni (engine): how long Viber may take before the SMS
    location: Location | None = field(default=None, compare=False, repr=False)
    template_location: Location | None = field(default=None, compare=False, repr=False)
    sender_location: Location | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        parts = ["send"]
        if self.channel:
            parts.append(self.channel)
        parts += ["to", ", ".join(str(r) for r in self.recipients)]
        parts += ["using", show(self.template)] if self.template is not None else ["text", show(self.text)]
        if self.sender:
            parts += ["from", show(self.sender)]
        if self.window is not None:
            parts += ["between", self.window.text]
        if self.stale_after is not None:
            parts += ["stale after", format_duration(self.stale_after)]
        if self.fallback_after is not None:
            parts += ["fallback after", format_duration(self.fallback_after)]
        if self.copy_admins:
            parts.append("copy admins")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Subscribe:
    path: Path
    list_name: str
    subscribe: bool = True          # False: unsubscribe
    location: Location | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        verb, prep = ("subscribe", "to") if self.subscribe else ("unsubscribe", "from")
        return f"{verb} {'.'.join(self.path)} {prep} {show(self.list_name)}"


Action = Send | Subscribe


# ---- rules ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OncePer:
    keys: tuple[Expr, ...]
    within: timedelta | None = None

    def __str__(self) -> str:
        text = "once per " + ", ".join(str(k) for k in self.keys)
        return text + (f" within {format_duration(self.within)}" if self.within else "")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str                          # the name, or a hash of the normalised rule
    name: str | None
    trigger: Trigger
    condition: Expr | None
    after: timedelta | None
    once: OncePer | None
    actions: tuple[Action, ...]
    location: Location | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f'rule "{self.name}"' if self.name else f"rule {self.id}"

    def canonical(self) -> str:
        """The rule's normalised text: one line, no comments, fixed keyword spacing."""
        parts = []
        if self.name:
            parts.append(f"rule {show(self.name)}")
        parts.append(f"on {self.trigger}")
        if self.condition is not None:
            parts.append(f"if {self.condition}")
        if self.after is not None:
            parts.append(f"after {format_duration(self.after)}")
        if self.once is not None:
            parts.append(str(self.once))
        parts += [str(a) for a in self.actions]
        return " ".join(parts)


_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_duration(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = delta.total_seconds()
    if seconds != int(seconds):
        return f"{int(seconds * 1000)}ms"
    seconds, parts = int(seconds), []
    for unit, size in _UNITS:
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"
