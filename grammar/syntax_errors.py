"""Syntax errors in words a rule author knows: what was found, what could come, a hint."""

from __future__ import annotations

import re
from types import SimpleNamespace

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.parsers.lalr_interactive_parser import InteractiveParser
from lark.parsers.lalr_parser_state import ParserState

from herald.engine.errors import Diagnostic, Location, did_you_mean

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


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*|\S")


def syntax_diagnostic(exc: UnexpectedInput, parser: Lark, builder, file: str, lines: list[str],
                     chunk: str) -> Diagnostic:
    line, col = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        expected = _precise_accepts(exc, builder) or getattr(exc, "expected", None) or getattr(exc, "accepts", None) or set()
        last = chunk.rstrip()
        line = last.count("\n") + 1
        col = len(last) - (last.rfind("\n") + 1) + 1
        found, expected_set = "the end of the file", set(expected)
    elif isinstance(exc, UnexpectedToken):
        expected_set = _precise_accepts(exc, builder) or set(exc.accepts or exc.expected)
        found = exc.token
    else:
        assert isinstance(exc, UnexpectedCharacters)
        expected_set = _precise_accepts(exc, builder) or set(exc.allowed or ())
        match = _WORD.match(chunk, exc.pos_in_stream)
        found = match.group(0) if match else chunk[exc.pos_in_stream:exc.pos_in_stream + 1]
    source = lines[line - 1] if 0 < line <= len(lines) else None
    location = Location(file, line, col)
    words = _expected_words(parser, expected_set)
    found_text = found if isinstance(found, str) else str(found)
    message, hint = _explain(found_text, words, expected_set, parser)
    return Diagnostic(message, location, "error", hint, source)


def _precise_accepts(exc: UnexpectedInput, builder) -> set[str]:
    """What the parser could really take here: LALR's own sets merge contexts."""
    state = getattr(exc, "state", None)
    if not isinstance(state, ParserState):
        interactive = getattr(exc, "interactive_parser", None)
        state = getattr(interactive, "parser_state", None)
    if state is None or builder is None:
        return set()
    kept = len(builder.problems)      # trial reductions run our callbacks; undo their notes
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
        del builder.problems[kept:]
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
