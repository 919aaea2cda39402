"""The reader base: walks the YAML tree, resolves `!env`/`!secret` (and `secrets.yaml`),
and collects located diagnostics that never show a secret.

Section readers (bsg.py, sites.py, http.py, …) are functions of a `ValueReader`
(values.py), which adds the typed values to this base.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from herald.engine.config.document import _Ref, _has_surrogate, _problem, _yaml
from herald.engine.config.model import SECRETS_FILE
from herald.engine.errors import DiagnosticSink, Location, did_you_mean

_KNOWN_TAGS = ("!env", "!secret")
_SECRETISH = re.compile(
    r"passw|passphrase|secret|token|api_?key|apikey|credential|private_?key|(^|_)(pass|pwd)$", re.I)
_SECRET_LINE = re.compile(r"(pass|secret|token|api_?key|apikey|credential|private)\w*\s*:", re.I)
_MISSING = object()


@dataclass(slots=True)
class _Val:
    """A value in the tree with where it is and its dotted path for messages."""

    raw: Any
    loc: Location
    path: str
    key_loc: Location | None = None


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, ScalarBoolean))


def _what(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if _is_bool(v):
        return "true/false"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, CommentedSeq)):
        return "a list"
    if isinstance(v, (dict, CommentedMap)):
        return "a mapping"
    if isinstance(v, dt.datetime):
        return "a date"
    if isinstance(v, dt.date):
        return "a date"
    return type(v).__name__


def _plain(v: Any) -> Any:
    """ruamel's scalar subclasses → plain Python values."""
    if _is_bool(v):
        return bool(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, TaggedScalar):
        return v.value
    return v


def _url_password(text: str) -> bool:
    """Does this look like a URL with a password in it (scheme://user:password@host)?"""
    if "://" not in text or "@" not in text:
        return False
    try:
        return bool(urlsplit(text.strip()).password)
    except ValueError:                  # e.g. a bad [IPv6] host: not a URL we can read
        return False


class _Reader:
    """Walks the YAML tree once, collecting diagnostics: where things are, what the
    tags resolve to, and how a value is named in a message without showing a secret."""

    def __init__(self, file: str, base_dir: Path, lines: list[str], env: Mapping[str, str],
                 lenient: bool = False):
        self.file = file
        self.base_dir = base_dir
        self.lines = lines
        self.env = env
        # lenient (store-only commands): an unset !env / missing !secret becomes a placeholder,
        # and nothing is reported about a value that is one (see load_config)
        self.lenient = lenient
        self._placeholders: set[Location] = set()
        self.sink = DiagnosticSink()
        self._secrets: dict[str, Any] | None = None
        self._secrets_problem: str | None = None
        self._secret_locs: dict[str, Location] = {}

    # ---- diagnostics

    def _src(self, loc: Location | None, secret: bool) -> str | None:
        if secret or loc is None or loc.file != self.file or not (0 < loc.line <= len(self.lines)):
            return None
        line = self.lines[loc.line - 1]
        if _SECRET_LINE.search(line) or self._in_secret_list(loc.line):
            return None  # the line may hold a secret written in plain text
        return line

    def _in_secret_list(self, line_no: int) -> bool:
        """Is this line an item of a block list under a secret-ish key (e.g. tokens:)?"""
        line = self.lines[line_no - 1]
        if not line.lstrip().startswith("-"):
            return False
        indent = len(line) - len(line.lstrip())
        for prev in reversed(self.lines[: line_no - 1]):
            stripped = prev.lstrip()
            if not stripped or stripped.startswith("#"):
                continue
            if len(prev) - len(stripped) < indent or not stripped.startswith("-"):
                return bool(_SECRET_LINE.search(prev))
        return False

    def error(self, message: str, loc: Location | None, hint: str | None = None,
              *, secret: bool = False) -> None:
        if loc is not None and loc in self._placeholders:
            return          # about a placeholder of an unset secret: known unusable, not this command's concern
        self.sink.error(message, loc, hint=hint, source_line=self._src(loc, secret))

    def warning(self, message: str, loc: Location | None, hint: str | None = None,
                *, secret: bool = False) -> None:
        self.sink.warning(message, loc, hint=hint, source_line=self._src(loc, secret))

    def loc(self, line0: int, col0: int) -> Location:
        return Location(self.file, line0 + 1, col0 + 1)

    # ---- walking

    def child(self, parent: _Val | None, key: str) -> _Val | None:
        """parent[key] as a _Val, or None when the key is absent."""
        if parent is None or not isinstance(parent.raw, CommentedMap) or key not in parent.raw:
            return None
        return self.entry(parent, key)

    def entry(self, parent: _Val, key: Any) -> _Val:
        m: CommentedMap = parent.raw
        raw = m[key]
        key_loc = self.located(m.lc.key, key) or parent.loc
        loc = self.located(m.lc.value, key) or key_loc
        if isinstance(raw, _Ref):
            loc = self.loc(raw.line, raw.col)
        path = f"{parent.path}.{key}" if parent.path else str(key)
        return _Val(raw, loc, path, key_loc)

    def items(self, seq: _Val) -> list[_Val]:
        s: CommentedSeq = seq.raw
        out = []
        for i, raw in enumerate(s):
            loc = self.located(s.lc.item, i) or seq.loc
            if isinstance(raw, _Ref):
                loc = self.loc(raw.line, raw.col)
            out.append(_Val(raw, loc, f"{seq.path}[{i}]", loc))
        return out

    def located(self, fn, key) -> Location | None:
        try:
            line, col = fn(key)
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return self.loc(line, col)

    def check_keys(self, node: _Val, known: Iterable[str], where: str) -> None:
        known = tuple(known)
        for key in node.raw:
            if isinstance(key, str) and key in known:
                continue
            kloc = self.located(node.raw.lc.key, key) or node.loc
            name = str(key)
            hint = did_you_mean(name, known) or ("known keys: " + ", ".join(known))
            self.error(f'unknown key "{name}" in {where}', kloc, hint)

    def section(self, parent: _Val, key: str) -> _Val | None:
        """A mapping under parent[key]; None when absent, null, or wrong (reported)."""
        v = self.child(parent, key)
        if v is None:
            return None
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return None
        if not isinstance(raw, CommentedMap):
            self.error(f"{v.path}: expected a mapping of keys, got {self.what(raw, origin)}", v.loc)
            return None
        return v

    # ---- tags and secrets

    def resolve(self, v: _Val, *, unset_ok: bool = False,
                unset_hint: str | None = None) -> tuple[Any, str | None]:
        """The value of v with `!env`/`!secret` resolved: (value, origin). origin is the
        tag text (e.g. "!env BSG_API_KEY") when the value came through one, and the value
        must then never be shown. Reports and returns _MISSING on a problem; with
        unset_ok, an unset environment variable returns (None, origin) silently."""
        raw = v.raw
        if not isinstance(raw, _Ref):
            return raw, None
        if raw.tag not in _KNOWN_TAGS:
            hint = did_you_mean(raw.tag, _KNOWN_TAGS) or "Herald knows !env NAME and !secret NAME"
            self.error(f"{v.path}: unknown tag {raw.tag}", v.loc, hint)
            return _MISSING, None
        if raw.name is None:
            example = "!env BSG_API_KEY" if raw.tag == "!env" else "!secret backup_key"
            self.error(f"{v.path}: {raw.tag} needs a name after it, e.g. {example}", v.loc)
            return _MISSING, None
        origin = f"{raw.tag} {raw.name}"
        if raw.tag == "!env":
            value = self.env.get(raw.name)
            if value is None:
                if unset_ok:
                    return None, origin
                if self.lenient:
                    return self._placeholder(v, origin), origin
                self.error(f"{v.path}: environment variable {raw.name} is not set", v.loc,
                           unset_hint or f"set it before starting Herald: export {raw.name}=...")
                return _MISSING, origin
            if _has_surrogate(value):       # undecodable bytes in the environment (surrogateescape)
                self.error(f"{v.path}: the value of {origin} is not valid UTF-8 text", v.loc, secret=True)
                return _MISSING, origin
            return value, origin
        if self.lenient:
            path = self.base_dir / SECRETS_FILE
            if self._secrets is None and self._secrets_problem is None:
                self._load_secrets(path)
            if self._secrets is None or raw.name not in self._secrets:
                return self._placeholder(v, origin), origin
        return self._secret(v, raw.name), origin

    def _placeholder(self, v: _Val, origin: str) -> str:
        """An unusable stand-in for an unset secret (lenient loading only)."""
        self._placeholders.add(v.loc)
        return f"<unset: {origin}>"

    def _secret(self, v: _Val, name: str) -> Any:
        path = self.base_dir / SECRETS_FILE
        if self._secrets is None and self._secrets_problem is None:
            self._load_secrets(path)
        if self._secrets is None:
            self.error(f"{v.path}: cannot read secret \"{name}\": {self._secrets_problem}", v.loc,
                       f"put `{name}: VALUE` in {path} (keep that file out of git)")
            return _MISSING
        if name not in self._secrets:
            hint = did_you_mean(name, self._secrets) or f"add `{name}: VALUE` to {path}"
            self.error(f'{v.path}: secret "{name}" is not in {path}', v.loc, hint)
            return _MISSING
        value = self._secrets[name]
        if not isinstance(value, str) or _has_surrogate(value):
            where = self._secret_locs.get(name, Location(str(path)))
            got = "text with a lone surrogate" if isinstance(value, str) else _what(value)
            self.error(f'secret "{name}" must be a string (write it in quotes), '
                       f"got {got}", where, secret=True)
            return _MISSING
        return value

    def _load_secrets(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._secrets_problem = f"{path} does not exist"
            return
        except (OSError, UnicodeDecodeError) as exc:
            self._secrets_problem = f"{path} cannot be read ({type(exc).__name__})"
            return
        try:
            data = _yaml().load(text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = Location(str(path), mark.line + 1, mark.column + 1) if mark else Location(str(path))
            # No source line and no ruamel text beyond the problem: this file holds secrets.
            self.sink.error(f"invalid YAML: {_problem(exc)}", where)
            self._secrets_problem = f"{path} is not valid YAML"
            return
        except YAMLError:
            self._secrets_problem = f"{path} is not valid YAML"
            return
        if data is None:
            data = CommentedMap()
        if not isinstance(data, CommentedMap):
            self._secrets_problem = f"{path} must be a mapping of name: value"
            return
        secrets: dict[str, Any] = {}
        for key, value in data.items():
            try:
                line, col = data.lc.key(key)
                self._secret_locs[str(key)] = Location(str(path), line + 1, col + 1)
            except (KeyError, TypeError):
                pass
            if isinstance(value, (int, float)) and not _is_bool(value):
                value = str(value)
            secrets[str(key)] = value
        self._secrets = secrets

    def what(self, raw: Any, origin: str | None) -> str:
        return f"{_what(raw)} (from {origin})" if origin else _what(raw)

    def show(self, raw: Any, origin: str | None) -> str:
        """A value for a message: quoted, or only its origin when it is secret."""
        if origin:
            return f"the value of {origin}"
        text = str(raw)
        if len(text) > 60:
            text = text[:57] + "..."
        return f'"{text}"'

    # ---- typed values
