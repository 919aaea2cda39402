"""Herald's one exception tree, and the located diagnostics it carries.

Every input boundary (rule files, templates, config, events) reports problems as
`Diagnostic`s: where (`FILE:LINE:COL` or a JSON pointer), what, and what to do.
A load collects all of them before raising, so an author fixes everything in one go.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a text file; line and column count from 1."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One located problem. `severity` is "error" or "warning"."""

    message: str
    location: Location | None = None
    severity: str = "error"
    hint: str | None = None          # what to do: "did you mean …?", "expected …"
    source_line: str | None = None   # the offending line, for the caret display

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def headline(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.severity}: {self.message}"

    def format(self) -> str:
        """The headline, then the source line with a caret, then the hint."""
        lines = [self.headline()]
        if self.source_line is not None and self.location and self.location.col > 0:
            text = self.source_line.rstrip("\n").expandtabs(1)
            lines.append(f"    {text}")
            lines.append("    " + " " * (self.location.col - 1) + "^")
        if self.hint:
            lines.append(f"  {self.hint}")
        return "\n".join(lines)


def sort_key(d: Diagnostic) -> tuple:
    loc = d.location or Location("")
    return (loc.file, loc.line, loc.col, d.severity != "error", d.message)


class HeraldError(Exception):
    """Base of every error Herald raises on purpose."""


class LoadError(HeraldError):
    """Input could not be loaded; `diagnostics` holds every problem found, in order."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=sort_key)
        errors = [d for d in self.diagnostics if d.is_error]
        first = errors[0].headline() if errors else "no errors"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)

    def format(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)


class ConfigError(LoadError):
    """The config file (or a secret or environment variable it names) is wrong."""


class RulesError(LoadError):
    """Rule files or templates did not compile."""


class EventError(HeraldError):
    """An incoming event is malformed. `pointer` is a JSON pointer into it."""

    def __init__(self, message: str, pointer: str = ""):
        self.message = message
        self.pointer = pointer
        super().__init__(f"{pointer or '/'}: {message}")

    def as_json(self) -> dict:
        return {"error": self.message, "pointer": self.pointer}


@dataclass
class DiagnosticSink:
    """Collects diagnostics while loading; raise once at the end."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, location: Location | None = None, *,
              hint: str | None = None, source_line: str | None = None) -> None:
        self.items.append(Diagnostic(message, location, "error", hint, source_line))

    def warning(self, message: str, location: Location | None = None, *,
                hint: str | None = None, source_line: str | None = None) -> None:
        self.items.append(Diagnostic(message, location, "warning", hint, source_line))

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.items.extend(diagnostics)

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if not d.is_error]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """`did you mean "x"?` for the closest choice, or None when nothing is close."""
    choices = list(choices)
    best = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not best:
        lowered = {c.lower(): c for c in choices}
        best = [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)]
    return f'did you mean "{best[0]}"?' if best else None


def display_path(path: str | os.PathLike) -> str:
    """Paths in messages: relative to the working directory when inside it."""
    try:
        relative = Path(os.path.relpath(path))
    except ValueError:
        return str(path)
    return str(path) if relative.parts[:1] == ("..",) else str(relative)
