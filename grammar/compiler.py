"""Rule files → immutable `Rule` objects, with every error of a file located.

The Lark parser (LALR, contextual lexer) is built once per process, with the
`RuleBuilder` transformer plugged into it so that no parse tree is ever kept.
A file that parses cleanly costs one parse; a file with errors is re-parsed rule by
rule so that each broken rule yields exactly one error and the good ones still load.
"""

from __future__ import annotations

import gc
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path as FsPath

from lark import Lark
from lark.exceptions import UnexpectedInput, VisitError

from herald.engine.errors import Diagnostic, Location
from herald.grammar.builder import RuleBuilder
from herald.grammar.literals import (  # noqa: F401  (the bounds are part of the compiler's public surface)
    MAX_DEPTH, MAX_DIGITS, MAX_DURATION, MAX_DURATION_TEXT, MAX_PATH_CHARS, MAX_PATH_PARTS, MAX_STRING,
    parse_duration,
)
from herald.grammar.model import Rule
from herald.grammar.syntax_errors import KEYWORDS, TERMINAL_WORDS, syntax_diagnostic  # noqa: F401
from herald.grammar.tree import SPECIAL_ROOTS  # noqa: F401

GRAMMAR_FILE = FsPath(__file__).with_name("rules.lark")


@dataclass(frozen=True, slots=True)
class CompiledFile:
    path: str
    rules: tuple[Rule, ...]
    diagnostics: tuple[Diagnostic, ...]


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
            problems.append(syntax_diagnostic(exc, parser, builder, file, lines, chunk))
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
