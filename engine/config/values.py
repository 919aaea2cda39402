"""Typed values: the reader every section reader is given.

`ValueReader` adds to the reader base (reader.py) one method per kind of value — a
string, a number, a duration, a secret, a URL … — each reporting a located error and
falling back to the default when the value does not fit.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml.comments import CommentedSeq

from herald.engine.config.model import DEFAULT_BSG_URL
from herald.engine.config.reader import _MISSING, _Reader, _Ref, _Val, _is_bool, _plain, _url_password, _what
from herald.engine.config.secret import Secret
from herald.engine.errors import did_you_mean
from herald.grammar.compiler import MAX_DURATION, MAX_DURATION_TEXT, parse_duration


class ValueReader(_Reader):
    """The reader base plus typed values; see the module docstring."""

    def string(self, v: _Val | None, default: str, *, what: str = "a string",
               allow_empty: bool = True, hint: str | None = None) -> str:
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING:
            return default
        if raw is None:
            return default
        if not isinstance(raw, str) or _is_bool(raw):
            self.error(f"{v.path}: expected {what}, got {self.what(raw, origin)}", v.loc, hint)
            return default
        if not allow_empty and not raw.strip():
            self.error(f"{v.path}: expected {what}, got an empty string", v.loc)
            return default
        return str(raw)

    def phone(self, v: _Val | None, default: str, *, what: str = "a phone number") -> str:
        example = 'write phone numbers in quotes, e.g. "+79001234567"'
        if v is not None and isinstance(v.raw, int) and not _is_bool(v.raw):
            self.error(f"{v.path}: expected {what} in quotes, got a number", v.loc, example)
            return default
        return self.string(v, default, what=what, hint=example)

    def email(self, v: _Val | None, default: str) -> str:
        value = self.string(v, default, what="an e-mail address")
        if v is not None and value and value != default and "@" not in value:
            self.error(f"{v.path}: {self.show(value, self.origin_of(v))} is not an e-mail address",
                       v.loc, "expected something like shop@example.com")
        return value

    def origin_of(self, v: _Val) -> str | None:
        return f"{v.raw.tag} {v.raw.name}" if isinstance(v.raw, _Ref) else None

    def boolean(self, v: _Val | None, default: bool) -> bool:
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return default
        if origin and isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.strip().lower() in ("true", "1", "yes")
        if not _is_bool(raw):
            self.error(f"{v.path}: expected true or false, got {self.what(raw, origin)}", v.loc,
                       "write true or false (yes/no/on/off are strings in YAML 1.2)"
                       if isinstance(raw, str) else None)
            return default
        return bool(raw)

    def number(self, v: _Val | None, default: float, *, what: str, integer: bool = False,
               positive: bool = False, maximum: float | None = None) -> Any:
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return default
        if origin and isinstance(raw, str):
            try:
                raw = int(raw.strip()) if integer else float(raw.strip())
            except ValueError:
                self.error(f"{v.path}: expected {what}, got a string that is not a number "
                           f"(from {origin})", v.loc)
                return default
        if _is_bool(raw) or not isinstance(raw, (int, float)) or (integer and not isinstance(raw, int)):
            self.error(f"{v.path}: expected {what}, got {self.what(raw, origin)}", v.loc)
            return default
        if isinstance(raw, float) and not math.isfinite(raw):      # .inf, .nan, 1e999
            self.error(f"{v.path}: expected {what}, got {'the value of ' + origin if origin else raw}", v.loc)
            return default
        if not integer and isinstance(raw, int) and abs(raw) > 1e300:   # float() would overflow
            self.error(f"{v.path}: expected {what}, got a number too large to use", v.loc)
            return default
        if (positive and raw <= 0) or (maximum is not None and raw > maximum):
            shown = f"the value of {origin}" if origin else str(_plain(raw))
            rng = f" up to {maximum:g}" if maximum is not None else ""
            self.error(f"{v.path}: expected {what}{rng}, got {shown}", v.loc)
            return default
        return int(raw) if integer else float(raw)

    def path(self, v: _Val | None, default: str) -> Path:
        text = self.string(v, default, what="a path", allow_empty=False)
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def timezone(self, v: _Val | None, default: str) -> str:
        name = self.string(v, default, what="a time zone name such as Europe/Moscow",
                           allow_empty=False)
        if v is None or name == default:
            return name
        try:
            zoneinfo.ZoneInfo(name)
            return name
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
        origin = self.origin_of(v)
        hint = None if origin else did_you_mean(name, zoneinfo.available_timezones())
        message = (f"the value of {origin} is not a known time zone" if origin
                   else f'unknown time zone "{name}"')
        self.error(f"{v.path}: {message}", v.loc,
                   hint or "use an IANA name such as Europe/Moscow or Asia/Yekaterinburg")
        return default

    def choice(self, v: _Val | None, default: str, choices: tuple[str, ...], what: str) -> str:
        value = self.string(v, default, what=what)
        if v is None or value in choices:
            return value
        if value == default and v.raw is None:
            return default
        origin = self.origin_of(v)
        hint = (None if origin else did_you_mean(value, choices)) or ("expected " + " | ".join(choices))
        self.error(f"{v.path}: {self.show(value, origin)} is not {what}", v.loc, hint)
        return default

    def secret(self, v: _Val | None, *, unset_ok: bool = False) -> Secret | None:
        """A secret value. A plain string in the file works but draws a warning."""
        if v is None:
            return None
        raw, origin = self.resolve(v, unset_ok=unset_ok)
        if raw is _MISSING or raw is None:
            return None
        if _is_bool(raw) or not isinstance(raw, (str, int)):
            self.error(f"{v.path}: expected a string, got {_what(raw)}", v.loc, secret=True)
            return None
        value = str(raw)
        if not value.strip():
            return None
        if origin is None:
            self.plain_secret_warning(v)
        return Secret(value)

    def plain_secret_warning(self, v: _Val) -> None:
        self.warning(f"{v.path} is written in the config file in plain text", v.loc,
                     "move it to an environment variable (!env NAME) or to "
                     "secrets.yaml (!secret NAME)", secret=True)

    def str_list(self, v: _Val | None, default: tuple[str, ...], *, what: str,
                 allow_empty: bool = False) -> tuple[str, ...]:
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return default
        if not isinstance(raw, CommentedSeq):
            self.error(f"{v.path}: expected a list of {what}, got {self.what(raw, origin)}", v.loc,
                       f"write a list: [{', '.join(default) or '...'}]" if default else None)
            return default
        out = []
        for item in self.items(v):
            s = self.string(item, "", what=f"one of {what} (a string)", allow_empty=False)
            if s:
                out.append(s)
        if not out and not allow_empty:
            self.error(f"{v.path}: expected at least one of {what}, got an empty list", v.loc)
            return default
        return tuple(out)

    def url(self, v: _Val | None, default: str) -> str:
        value = self.string(v, default, what="a URL", allow_empty=False)
        if v is None or value == default:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            origin = self.origin_of(v)
            self.error(f"{v.path}: {self.show(value, origin)} is not an http(s) URL", v.loc,
                       f"e.g. {DEFAULT_BSG_URL}")
            return default
        if _url_password(value) and self.origin_of(v) is None:
            # https://user:PASSWORD@host/ written literally: warned like any plain-text secret
            # (engine/redaction.py keeps the password out of logs either way)
            self.warning(f"{v.path} holds a password written in the config file in plain text", v.loc,
                         "move the URL to an environment variable (!env NAME) or to secrets.yaml "
                         "(!secret NAME)", secret=True)
        return value

    def rate(self, v: _Val | None, default: float, *, what: str, maximum: float | None = None) -> float:
        """A positive number per second (.nan is no number: it would stop the BSG client)."""
        value = self.number(v, default, what=what, positive=True, maximum=maximum)
        if math.isnan(value):
            self.error(f"{v.path}: expected {what}, got .nan", v.loc)
            return default
        return value

    def wait_or_never(self, v: _Val | None, default: float | None) -> float | None:
        """A duration, or `never` (math.inf): how long an unknown outcome may wait."""
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if isinstance(raw, str) and raw.strip().lower() == "never":
            return math.inf
        numeric = isinstance(raw, (int, float)) and not _is_bool(raw)
        if raw is _MISSING or raw is None or (numeric and math.isfinite(raw) and raw > 0) or (
                isinstance(raw, str) and re.fullmatch(r"(\d+(ms|s|m|h|d|w))+", raw.strip())):
            return self.duration(v, default)
        self.error(f"{v.path}: expected a duration such as 30s, 10m or 1h, or never, got "
                   f"{self.what(raw, origin)}", v.loc)
        return default

    def duration(self, v: _Val | None, default: float) -> float:
        """Seconds, from a number of seconds or a duration like `90s`, `10m`, `1h`."""
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return default
        if isinstance(raw, (int, float)) and not _is_bool(raw) and raw > 0:
            if raw > MAX_DURATION.total_seconds():      # also .inf; a timedelta or deadline must hold it
                self.error(f"{v.path}: a duration is at most {MAX_DURATION_TEXT}", v.loc)
                return default
            return float(raw)
        if isinstance(raw, str) and re.fullmatch(r"(\d+(ms|s|m|h|d|w))+", raw.strip()):
            try:
                return parse_duration(raw.strip()).total_seconds()
            except ValueError:
                self.error(f"{v.path}: a duration is at most {MAX_DURATION_TEXT}", v.loc)
                return default
        self.error(f"{v.path}: expected a duration such as 30s, 10m or 1h, got {self.what(raw, origin)}", v.loc)
        return default
