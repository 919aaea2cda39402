"""Rule files → immutable `Rule` objects, with every error of a file located.

The Lark parser (LALR, contextual lexer) is built once per process, with the
`RuleBuilder` transformer plugged into it so that no parse tree is ever kept.
A file that parses cleanly costs one parse; a file with errors is re-parsed rule by
rule so that each broken rule yields exactly one error and the good ones still load.
"""

from __future__ import annotations

import gc
import hashlib
import re
import threading
from contextlib import contextmanager
from types import SimpleNamespace
from dataclasses import dataclass
from functools import lru_cache
from datetime import timedelta
from pathlib import Path as FsPath
from typing import Any, Iterable

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from herald.engine.errors import Diagnostic, Location, did_you_mean
from herald.engine.helpers.windows import parse_window
from herald.grammar.schedule import is_valid_cron
from herald.grammar.model import (
    And, ChangeTrigger, Compare, Contains, EventTrigger, In, IsSet, Literal, Matches, Not,
    OncePer, Or, PathRef, Recipient, Rule, ScheduleTrigger, Send, StateTrigger, Subscribe,
)

GRAMMAR_FILE = FsPath(__file__).with_name("rules.lark")

# Roots of paths that are not an entity's own fields.
SPECIAL_ROOTS = frozenset({"event", "previous", "site"})

KEYWORDS = (
    "rule", "on", "if", "after", "once", "per", "within", "send", "to", "using", "text",
    "from", "between", "stale", "fallback", "copy", "admins", "user", "department", "group",
    "subscribers", "subscribe", "unsubscribe", "changes", "every", "day", "at", "cron",
    "and", "or", "not", "in", "matches", "contains", "is", "set", "true", "false", "null",
    "sms", "viber", "omni",
)

# What the parser expected, in words a rule author knows (never token names).
TERMINAL_WORDS = {
    "PATH": "a field path (like order.status)",
    "STAR": "*",
    "STRING": 'a string in double quotes',
    "NUMBER": "a number",
    "DURATION": "a duration (like 15m, 2h or 1d)",
    "TIME": "a time (like 10:00)",
    "WINDOW": "a window (like 09:00-21:00)",
    "COMPARE": "a comparison (==, !=, <, <=, >, >=)",
    "ON": "`on`",
    "RULE": "`rule`",
    "SEND": "`send`",
    "COMMA": "`,`",
    "LPAR": "`(`",
    "RPAR": "`)`",
    "LSQB": "`[`",
    "RSQB": "`]`",
    "$END": "the end of the file",
}


class _Placeholder:
    """Stands in for a piece that already produced an error, so parsing goes on."""


@dataclass(frozen=True, slots=True)
class CompiledFile:
    path: str
    rules: tuple[Rule, ...]
    diagnostics: tuple[Diagnostic, ...]


def _loc(builder: "RuleBuilder", token: Token) -> Location:
    return Location(builder.file, token.line, token.column)


# ---- bounds (docs/rules.md "Limits") ------------------------------------------------------
# Every rule that compiles can be evaluated, printed, hashed and stored: nothing in it is
# deeper than Python's stack allows, bigger than an int converts, or later than a datetime holds.
MAX_DEPTH = 32                        # levels of not/and/or/comparison/list in one condition
MAX_STRING = 10_000                   # characters of one string literal
MAX_DIGITS = 30                       # digits of one number literal
MAX_PATH_PARTS = 16                   # parts of a field path or event type (a.b.c)
MAX_PATH_CHARS = 256                  # characters of one field path
MAX_DURATION = timedelta(days=36500)  # 100 years: now ± it is a datetime for centuries to come
MAX_DURATION_TEXT = "36500d (100 years)"

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_MAX_DURATION_MS = MAX_DURATION // timedelta(milliseconds=1)


def parse_duration(text: str) -> timedelta:
    """`1h30m` → timedelta. Raises ValueError past MAX_DURATION (digits are checked before
    any int conversion, so a 5,000-digit count costs nothing)."""
    total = 0
    for digits, unit in _DURATION_PART.findall(text):
        digits = digits.lstrip("0") or "0"
        if len(digits) > 15:
            raise ValueError(_too_long(text))
        total += int(digits) * _DURATION_MS[unit]
        if total > _MAX_DURATION_MS:
            raise ValueError(_too_long(text))
    return timedelta(milliseconds=total)


def _too_long(text: str) -> str:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"`{shown}` is too long: a duration is at most {MAX_DURATION_TEXT}"


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def _unquote(token: Token) -> str:
    """The string's text. Only \\" \\\\ \\n \\t are escapes; any other backslash stays, so a
    regex like "^\\s*stop" means what it says."""
    body = token[1:-1]
    if "\\" not in body:
        return body
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), body)


class RuleBuilder(Transformer):
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
        from decimal import Decimal
        return Literal(int(text) if "." not in text else Decimal(text))

    def true(self, items: list):
        return Literal(True)

    def false(self, items: list):
        return Literal(False)

    def null(self, items: list):
        return Literal(None)

    def list(self, items: list):
        return Literal(tuple(i.value for i in items if i is not None))

    # ---- actions ----
    def sms(self, items: list):
        return ("channel", "sms")

    def viber(self, items: list):
        return ("channel", "viber")

    def omni(self, items: list):
        return ("channel", "omni")

    def send(self, items: list):
        send_token, items = items[0], items[1:]
        channel = None
        if isinstance(items[0], tuple) and items[0][0] == "channel":
            channel, items = items[0][1], items[1:]
        recipients, content, options = items[0], items[1], items[2:]
        fields: dict[str, Any] = {}
        for name, value, token in options:
            if name in fields:
                return self._error(f"`{_OPTION_WORDS[name]}` is given twice", token or send_token)
            fields[name] = value
            if name in ("sender", "window"):
                fields[name + "_token"] = token
        if _broken(recipients) or any(isinstance(v, _Placeholder) for v in fields.values()):
            return _Placeholder()
        kind, value, content_token = content
        sender_token = fields.get("sender_token")
        return Send(
            channel=channel, recipients=tuple(recipients),
            template=value if kind == "using" else None,
            text=value if kind == "text" else None,
            sender=fields.get("sender"), window=fields.get("window"),
            stale_after=fields.get("stale"), copy_admins=fields.get("copy", False),
            fallback_after=fields.get("fallback"),
            location=_loc(self, send_token), template_location=_loc(self, content_token),
            sender_location=_loc(self, sender_token) if sender_token is not None else None,
        )

    def subscribe(self, items: list):
        path, token = items
        return Subscribe(path.path, _unquote(token), True, path.location)

    def unsubscribe(self, items: list):
        path, token = items
        return Subscribe(path.path, _unquote(token), False, path.location)

    def using(self, items: list):
        return ("using", _unquote(items[0]), items[0])

    def text(self, items: list):
        return ("text", _unquote(items[0]), items[0])

    def from_sender(self, items: list):
        return ("sender", _unquote(items[0]), items[0])

    def between(self, items: list):
        (token,) = items
        text = _unquote(token) if token.type == "STRING" else str(token)
        try:
            return ("window", _window(text), token)
        except ValueError as exc:
            return ("window", self._error(f"invalid window {text!r}: {exc}", token), token)

    def stale_after(self, items: list):
        return ("stale", self._duration(items[0]), items[0])

    def fallback_after(self, items: list):
        return ("fallback", self._duration(items[0]), items[0])

    def copy_admins(self, items: list):
        return ("copy", True, None)

    def recipients(self, items: list):
        return items

    def to_path(self, items: list):
        path = items[0]
        if "*" in path.path or path.path[0] in ("event",):
            return self._error(f"`{path}` cannot hold a phone number", self._token_of(path))
        return Recipient("path", path.path, path.location)

    def to_literal(self, items: list):
        return Recipient("phone", _unquote(items[0]), _loc(self, items[0]))

    def to_user(self, items: list):
        return Recipient("user", items[0].path, items[0].location)

    def to_admins(self, items: list):
        return Recipient("admins")

    def to_department(self, items: list):
        return Recipient("department", _unquote(items[0]), _loc(self, items[0]))

    def to_group(self, items: list):
        return Recipient("group", _unquote(items[0]), _loc(self, items[0]))

    def to_subscribers(self, items: list):
        return Recipient("subscribers", _unquote(items[0]), _loc(self, items[0]))


@lru_cache(maxsize=1024)
def _window(text: str):
    return parse_window(text)          # the same few windows recur in every file


_OPTION_WORDS = {"sender": "from", "window": "between", "stale": "stale after", "copy": "copy admins",
                 "fallback": "fallback after"}


_CHILD_FIELDS = ("left", "item", "subject", "operand", "right", "container", "needle")


def _children(node) -> tuple:
    """An expression's sub-expressions in reading order; a list literal's lists inside it."""
    if isinstance(node, Literal):
        return (node.value,) if isinstance(node.value, tuple) else ()
    if isinstance(node, tuple):
        return tuple(v for v in node if isinstance(v, tuple))
    fields = tuple(c for c in (getattr(node, name, None) for name in _CHILD_FIELDS) if c is not None)
    return fields + tuple(getattr(node, "operands", ()))


def _first_location(node) -> Location | None:
    """The first path's place in `node` (a loop, not recursion: the tree may be deep)."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, PathRef):
            return node.location
        stack.extend(reversed(_children(node)))
    return None


def _deeper_than(node, limit: int) -> bool:
    stack = [(node, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in _children(node))
    return False


def _broken(items: Iterable) -> bool:
    return any(isinstance(i, _Placeholder) for i in items)


# ---- the parser, built once --------------------------------------------------------

_lock = threading.Lock()
_builder: RuleBuilder | None = None
_parser: Lark | None = None


def _get_parser() -> tuple[Lark, RuleBuilder]:
    global _parser, _builder
    if _parser is None:
        _builder = RuleBuilder()
        _parser = Lark(GRAMMAR_FILE.read_text(encoding="utf-8"), parser="lalr", lexer="contextual",
                       transformer=_builder, maybe_placeholders=False,
                       lexer_callbacks={"ON": _builder.saw_on, "STRING": _builder.saw_string,
                                        "NUMBER": _builder.saw_number, "PATH": _builder.saw_path})
    return _parser, _builder


def compile_text(text: str, file: str = "<rules>") -> CompiledFile:
    """Compile one rule file's text. Never raises on bad input: see `diagnostics`."""
    if (bad := _not_unicode(text, file)) is not None:
        return CompiledFile(file, (), (bad,))
    with _lock, _gc_paused():
        parser, builder = _get_parser()
        builder.reset(file, text)
        try:
            rules = parser.parse(text)
            problems = builder.problems
        except Exception:                   # a syntax error, or a bug of ours: find its rule
            rules, problems = _compile_rule_by_rule(parser, builder, text, file)
    return CompiledFile(file, tuple(rules), tuple(problems))


def _not_unicode(text: str, file: str) -> Diagnostic | None:
    """A lone surrogate (only possible in text handed over as str, never read from a
    UTF-8 file) would fail later, in SQLite or on the wire: refuse it here, located."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        col = exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1
        return Diagnostic("the text holds a lone surrogate, which is not a character", Location(file, line, col),
                          "error", "save rule files as UTF-8")
    return None


@contextmanager
def _gc_paused():
    """The parse allocates millions of short-lived objects and no cycles: GC passes are waste."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def compile_file(path: str | FsPath, display: str | None = None) -> CompiledFile:
    path = FsPath(path)
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        return CompiledFile(name, (), (Diagnostic("the file is not UTF-8", Location(name, line, 1), "error",
                                                  "save rule files as UTF-8"),))
    except OSError as exc:
        return CompiledFile(name, (), (Diagnostic(f"cannot read the file: {exc.strerror}", Location(name)),))
    return compile_text(text, name)


# ---- error recovery: one clean error per broken rule -------------------------------------

_RULE_START = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\b(rule|on)\b')


def _rule_starts(text: str) -> list[int]:
    """Offsets where a rule begins: `rule "…"` or an `on` not right after a rule name."""
    starts, pending_name = [], False
    for m in _RULE_START.finditer(text):
        word = m.group(1)
        if word == "rule":
            starts.append(m.start())
            pending_name = True
        elif word == "on":
            if not pending_name:
                starts.append(m.start())
            pending_name = False
        elif m.group(0).startswith('"') and pending_name:
            continue                      # the rule's name; its `on` follows
        elif not m.group(0).startswith("#"):
            pending_name = False
    return starts


def _compile_rule_by_rule(parser: Lark, builder: RuleBuilder, text: str, file: str):
    lines = text.split("\n")
    starts = _rule_starts(text)
    if not starts or text[: starts[0]].strip(" \t\r\n") and not _only_comments(text[: starts[0]]):
        starts = [0] + starts
    rules, problems = [], []
    for i, begin in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        chunk = _blank_prefix(text[:begin]) + text[begin:end]
        builder.reset(file, text)
        try:
            rules.extend(parser.parse(chunk))
            problems.extend(builder.problems)
        except UnexpectedInput as exc:
            problems.extend(builder.problems)
            problems.append(_syntax_diagnostic(exc, parser, file, lines, chunk))
        except Exception as exc:            # a bug of ours: reported at its rule, the others still load
            cause = exc.orig_exc if isinstance(exc, VisitError) else exc
            line = text.count("\n", 0, begin) + 1
            problems.append(Diagnostic(f"internal error: {type(cause).__name__}: {cause}",
                                       Location(file, line, 1), "error",
                                       "please report this with the rule; the rest of the file is checked"))
    return rules, problems


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("#") for line in text.split("\n"))


def _blank_prefix(prefix: str) -> str:
    """Keeps line and column numbers right when parsing a slice of the file (the same
    line breaks, and the last line's width: linear in the file, not in every rule)."""
    return "\n" * prefix.count("\n") + " " * (len(prefix) - prefix.rfind("\n") - 1)


# ---- syntax errors in words ---------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*|\S")


def _syntax_diagnostic(exc: UnexpectedInput, parser: Lark, file: str, lines: list[str], chunk: str) -> Diagnostic:
    line, col = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        expected = _precise_accepts(exc) or getattr(exc, "expected", None) or getattr(exc, "accepts", None) or set()
        last = chunk.rstrip()
        line = last.count("\n") + 1
        col = len(last) - (last.rfind("\n") + 1) + 1
        found, expected_set = "the end of the file", set(expected)
    elif isinstance(exc, UnexpectedToken):
        expected_set = _precise_accepts(exc) or set(exc.accepts or exc.expected)
        found = exc.token
    else:
        assert isinstance(exc, UnexpectedCharacters)
        expected_set = _precise_accepts(exc) or set(exc.allowed or ())
        match = _WORD.match(chunk, exc.pos_in_stream)
        found = match.group(0) if match else chunk[exc.pos_in_stream:exc.pos_in_stream + 1]
    source = lines[line - 1] if 0 < line <= len(lines) else None
    location = Location(file, line, col)
    words = _expected_words(parser, expected_set)
    found_text = found if isinstance(found, str) else str(found)
    message, hint = _explain(found_text, words, expected_set, parser)
    return Diagnostic(message, location, "error", hint, source)


def _precise_accepts(exc: UnexpectedInput) -> set[str]:
    """What the parser could really take here: LALR's own sets merge contexts."""
    from lark.parsers.lalr_interactive_parser import InteractiveParser
    from lark.parsers.lalr_parser_state import ParserState

    state = getattr(exc, "state", None)
    if not isinstance(state, ParserState):
        interactive = getattr(exc, "interactive_parser", None)
        state = getattr(interactive, "parser_state", None)
    if state is None or _builder is None:
        return set()
    kept = len(_builder.problems)      # trial reductions run our callbacks; undo their notes
    probe = InteractiveParser(None, state, SimpleNamespace(_Token=Token))
    accepted = set()
    try:
        for name in probe.choices():
            if not name.isupper() or name in ("COMMENT", "WS"):
                continue
            trial = probe.copy()
            try:
                trial.feed_token(Token(name, ""))
            except Exception:          # this terminal cannot come next
                continue
            accepted.add(name)
    finally:
        del _builder.problems[kept:]
    return accepted


def _expected_words(parser: Lark, names: set[str]) -> list[str]:
    by_name = {t.name: t for t in parser.terminals}
    words = set()
    for name in names:
        terminal = by_name.get(name)
        if name in TERMINAL_WORDS:
            words.add(TERMINAL_WORDS[name])
        elif terminal is not None and terminal.pattern.type == "str":
            words.add(f"`{terminal.pattern.value}`")
        elif terminal is not None and (keyword := re.match(r"[a-z]+(?=\(\?!)", terminal.pattern.value)):
            words.add(f"`{keyword.group(0)}`")
        else:
            words.add(name.lower())
    return sorted(words, key=lambda w: (not w.startswith("`"), w))


def _explain(found: str, words: list[str], names: set[str], parser: Lark) -> tuple[str, str | None]:
    shown = "the end of the file" if found == "the end of the file" else f"`{found}`"
    expected = _join_or(words)
    message = f"unexpected {shown}; expected {expected}"
    keywords = [w.strip("`") for w in words if w.startswith("`") and w.strip("`").isalpha()]
    hint = None
    if found == "=":
        hint = "compare with `==`"
    elif found == "'":
        hint = "strings use double quotes: \"like this\""
    elif found == '"':
        hint = "a string must close on the same line with a double quote"
    elif found.isidentifier() and keywords:
        hint = did_you_mean(found.lower(), keywords)
        if hint is None and found.lower() in KEYWORDS and "PATH" in names:
            hint = f"`{found}` is a keyword here; use another field name or write it in another form"
    elif found.isidentifier() and not keywords and "STRING" in names:
        hint = f'put it in double quotes: "{found}"'
    return message, hint


def _join_or(words: list[str]) -> str:
    if not words:
        return "nothing more"
    if len(words) == 1:
        return words[0]
    if len(words) > 16:
        return ", ".join(words[:16]) + f" or {len(words) - 16} more"
    return ", ".join(words[:-1]) + " or " + words[-1]
