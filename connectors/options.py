"""Small helpers connectors share when they validate their options."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from herald.engine.config import ConnectorConfig, Secret, _yaml
from herald.engine.errors import Diagnostic, Location


def number(value: Any) -> float | None:
    """A finite number from a number or a numeric string (so `!env` values work), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def what(value: Any) -> str:
    """How an error message names a wrong value — never echoing a secret."""
    if isinstance(value, Secret):
        return "a value from !env/!secret that does not fit"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"the number {value:g}"
    if isinstance(value, str):
        return f'"{value}"' if value.strip() else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Locator:
    """Where a nested option is in the config file (line:col of `sources[1].mode`).
    ConnectorConfig locates only top-level options, so this re-reads the entry from the
    file; anything unexpected falls back to the top-level option's location."""

    def __init__(self, config: ConnectorConfig):
        self.config = config
        self._entry: Any = None
        self._loaded = False
        self.lines: list[str] = []

    def source_line(self, loc: Location | None) -> str | None:
        """The line a diagnostic points at, for the caret display — never one that may
        hold a secret (the URL, passwords, tokens)."""
        if loc is None or self.config.location is None or loc.file != self.config.location.file \
                or not (0 < loc.line <= len(self.lines)):
            return None
        line = self.lines[loc.line - 1]
        if re.search(r"url|pass|secret|token|key\w*\s*:\s*\S{16,}|!env|!secret|://", line, re.I):
            return None
        return line

    def _load(self) -> Any:
        loc = self.config.location
        if loc is None or loc.line <= 0:
            return None
        candidates = [Path(loc.file)]
        if self.config.base_dir is not None:
            candidates.append(self.config.base_dir / Path(loc.file).name)
        for candidate in candidates:
            try:
                text = candidate.read_text(encoding="utf-8")
                break
            except (OSError, UnicodeError):
                continue
        else:
            return None
        data = _yaml().load(text)
        self.lines = text.splitlines()
        best = None
        for item in data.get("connectors") or ():
            lc = getattr(item, "lc", None)
            if lc is not None and lc.line == loc.line - 1:
                if lc.col == loc.col - 1:
                    return item
                best = best or item
        return best

    def at(self, *path: Any, key: bool = False) -> Location | None:
        fallback = self.config.locations.get(str(path[0])) if path else None
        fallback = fallback or self.config.location
        try:
            if not self._loaded:
                self._loaded = True
                self._entry = self._load()
            node = self._entry
            if node is None:
                return fallback
            for part in path[:-1]:
                node = node[part]
            last = path[-1]
            if isinstance(last, int):
                line, col = node.lc.item(last)
            elif key:
                line, col = node.lc.key(last)
            else:
                line, col = node.lc.value(last)
            return Location(self.config.location.file, line + 1, col + 1)
        except Exception:          # a config that changed on disk, an odd shape: the coarse place
            return fallback


class OptionChecker:
    """Collects located diagnostics for one connector entry; a connector's checker adds
    its own typed readers (`number`, `text` …) and reports every problem at once."""

    kind = "connector"          # "sql connector: …", "imap connector: …"

    def __init__(self, config: ConnectorConfig):
        self.config = config
        self.where = Locator(config)
        self.problems: list[Diagnostic] = []

    def error(self, message: str, *path: Any, key: bool = False, hint: str | None = None) -> None:
        loc = self.where.at(*path, key=key) if path else self.config.location
        self.problems.append(Diagnostic(f"{self.kind} connector: {message}", loc, hint=hint,
                                        source_line=self.where.source_line(loc) if path else None))
