"""`directory: {file: people.yaml}`: a StaticDirectory read from a YAML file, checked with
located errors when the config loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from herald.engine.errors import ConfigError, DiagnosticSink, Location, did_you_mean
from herald.engine.helpers.phones import normalize_phone
from herald.engine.directory.base import PHONE_FIELDS, StaticDirectory

USER_KEYS = ("id", "login", "email", "name", "PERSONAL_PHONE", "PERSONAL_MOBILE", "WORK_PHONE", "phone",
             "department", "groups")
TOP_KEYS = ("users", "departments", "subscribers")

class FileDirectory(StaticDirectory):
    """A StaticDirectory read from a YAML file (see `load`)."""

    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path, display: str | None = None) -> "FileDirectory":
        """Read and check a people file. Raises ConfigError with every problem, located
        in that file; OSError (e.g. FileNotFoundError) when it cannot be read."""
        text = Path(path).read_text(encoding="utf-8")
        reader = _PeopleReader(display or str(path), text)
        data = reader.read()
        if reader.sink.has_errors:
            raise ConfigError(reader.sink.items)
        directory = cls.from_mapping(data)
        directory.path = Path(path)
        return directory


class _PeopleReader:
    """Checks a people file with ruamel's line and column marks."""

    def __init__(self, file: str, text: str):
        self.file = file
        self.lines = text.splitlines()
        self.text = text
        self.sink = DiagnosticSink()

    def error(self, message: str, loc: Location, hint: str | None = None) -> None:
        line = self.lines[loc.line - 1] if 0 < loc.line <= len(self.lines) else None
        self.sink.error(message, loc, hint=hint, source_line=line)

    def at(self, lc_fn: Callable, key: Any, default: Location) -> Location:
        try:
            line, col = lc_fn(key)
        except (KeyError, IndexError, TypeError, AttributeError):
            return default
        return Location(self.file, line + 1, col + 1)

    def read(self) -> dict:
        from ruamel.yaml import YAML
        from ruamel.yaml.comments import CommentedMap
        from ruamel.yaml.error import MarkedYAMLError, YAMLError

        top = Location(self.file, 1, 1)
        try:
            data = YAML(typ="rt").load(self.text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            loc = Location(self.file, mark.line + 1, mark.column + 1) if mark else Location(self.file)
            self.error(f"invalid YAML: {(exc.problem or exc.context or 'syntax error').strip()}", loc)
            return {}
        except YAMLError as exc:
            self.error(f"invalid YAML: {type(exc).__name__}", top)
            return {}
        if data is None:
            return {}
        if not isinstance(data, CommentedMap):
            self.error(f"a directory file must be a mapping (users:, departments:, subscribers:), "
                       f"got {_what(data)}", top)
            return {}
        self.keys(data, TOP_KEYS, "the directory file", top)
        departments = self.departments(data, top)
        users = self.users(data, top, departments)
        lists = self.lists(data, top)
        return {"users": users, "departments": departments, "subscribers": lists}

    def keys(self, node: Any, known: tuple[str, ...], where: str, default: Location) -> None:
        for key in node:
            if key not in known:
                hint = did_you_mean(str(key), known) or "known keys: " + ", ".join(known)
                self.error(f'unknown key "{key}" in {where}', self.at(node.lc.key, key, default), hint)

    def value_loc(self, node: Any, key: Any, default: Location) -> Location:
        return self.at(node.lc.value, key, default)

    def departments(self, data: Any, top: Location) -> dict[str, str | None] | None:
        from ruamel.yaml.comments import CommentedMap

        if data.get("departments") is None:
            return None
        node = data["departments"]
        where = self.value_loc(data, "departments", top)
        if not isinstance(node, CommentedMap):
            self.error(f"departments: expected a mapping of department → parent department (or null), "
                       f"got {_what(node)}", where, 'e.g. departments: {Sales: null, "Sales Moscow": Sales}')
            return None
        out: dict[str, str | None] = {}
        for name, parent in node.items():
            loc = self.at(node.lc.key, name, where)
            if not isinstance(name, str) or not name.strip():
                self.error(f"departments: a department name must be a string, got {_what(name)}", loc)
                continue
            if parent is not None and not isinstance(parent, str):
                self.error(f'departments.{name}: expected the parent department\'s name or null, '
                           f"got {_what(parent)}", self.value_loc(node, name, loc))
                continue
            out[str(name)] = str(parent) if parent is not None else None
        for name, parent in out.items():
            if parent is not None and parent not in out:
                self.error(f'departments.{name}: its parent "{parent}" is not a department here',
                           self.value_loc(node, name, where),
                           did_you_mean(parent, out) or f'add "{parent}: null" to departments')
        for name in out:
            seen, current = {name}, out[name]
            while current is not None and current in out:
                if current in seen:
                    self.error(f'departments.{name}: the parent chain loops back to "{current}"',
                               self.at(node.lc.key, name, where))
                    break
                seen.add(current)
                current = out[current]
        return out

    def users(self, data: Any, top: Location, departments: dict | None) -> list[dict]:
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        node = data.get("users")
        if node is None:
            return []
        where = self.value_loc(data, "users", top)
        if not isinstance(node, CommentedSeq):
            self.error(f"users: expected a list of users (- id: ...), got {_what(node)}", where)
            return []
        out: list[dict] = []
        ids: dict[str, Location] = {}
        for i, item in enumerate(node):
            loc = self.at(node.lc.item, i, where)
            path = f"users[{i}]"
            if not isinstance(item, CommentedMap):
                self.error(f"{path}: expected a user (id:, login:, email:, phones …), got {_what(item)}", loc)
                continue
            self.keys(item, USER_KEYS, path, loc)
            user: dict[str, Any] = {}
            for key in ("id", "login", "email", "name"):
                if key not in item or item[key] is None:
                    continue
                value = item[key]
                vloc = self.value_loc(item, key, loc)
                if isinstance(value, bool) or not isinstance(value, (str, int)):
                    self.error(f"{path}.{key}: expected a string{' or a number' if key == 'id' else ''}, "
                               f"got {_what(value)}", vloc)
                    continue
                if key == "email" and "@" not in str(value):
                    self.error(f'{path}.email: "{value}" is not an e-mail address', vloc)
                    continue
                user[key] = int(value) if isinstance(value, int) else str(value)
            if not any(k in user for k in ("id", "login", "email")):
                self.error(f"{path}: a user needs an id, a login or an email to be looked up by", loc)
            if "id" in user:
                key = str(user["id"])
                if key in ids:
                    self.error(f"{path}.id: user id {key} is already used (at {ids[key]})",
                               self.value_loc(item, "id", loc))
                ids.setdefault(key, self.value_loc(item, "id", loc))
            for key in PHONE_FIELDS:
                if key in item and item[key] is not None:
                    phone = self.phone(item[key], f"{path}.{key}", self.value_loc(item, key, loc))
                    if phone:
                        user[key] = phone
            for key in ("department", "groups"):
                if key in item and item[key] is not None:
                    user[key] = self.names(item, key, f"{path}.{key}", loc,
                                           departments if key == "department" else None)
            out.append(user)
        return out

    def phone(self, value: Any, path: str, loc: Location) -> str | None:
        if isinstance(value, bool) or not isinstance(value, str):
            hint = 'write phone numbers in quotes, e.g. "+79001234567"'
            self.error(f"{path}: expected a phone number in quotes, got {_what(value)}", loc, hint)
            return None
        if not value.strip():
            return None
        phone = normalize_phone(value)
        if not phone.ok:
            self.error(f"{path}: {phone.error}", loc)
            return None
        return str(value)

    def names(self, node: Any, key: str, path: str, default: Location, known: dict | None) -> list[str]:
        from ruamel.yaml.comments import CommentedSeq

        value = node[key]
        loc = self.value_loc(node, key, default)
        items: list[tuple[Any, Location]]
        if isinstance(value, str):
            items = [(value, loc)]
        elif isinstance(value, CommentedSeq):
            items = [(v, self.at(value.lc.item, i, loc)) for i, v in enumerate(value)]
        else:
            self.error(f"{path}: expected a name or a list of names, got {_what(value)}", loc)
            return []
        out = []
        for name, iloc in items:
            if not isinstance(name, str) or not name.strip():
                self.error(f"{path}: expected a name (a string), got {_what(name)}", iloc)
                continue
            if known is not None and name not in known:
                self.error(f'{path}: "{name}" is not one of the departments', iloc,
                           did_you_mean(name, known) or f'add "{name}: null" to departments')
                continue
            out.append(str(name))
        return out

    def lists(self, data: Any, top: Location) -> dict[str, list[str]]:
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        node = data.get("subscribers")
        if node is None:
            return {}
        where = self.value_loc(data, "subscribers", top)
        if not isinstance(node, CommentedMap):
            self.error(f"subscribers: expected a mapping of list name → phone numbers, got {_what(node)}",
                       where, 'e.g. subscribers: {news: ["+79001234567"]}')
            return {}
        out: dict[str, list[str]] = {}
        for name, phones in node.items():
            loc = self.value_loc(node, name, where)
            if phones is None:
                out[str(name)] = []
                continue
            if not isinstance(phones, CommentedSeq):
                self.error(f"subscribers.{name}: expected a list of phone numbers, got {_what(phones)}", loc)
                continue
            out[str(name)] = [p for p in (self.phone(v, f"subscribers.{name}[{i}]", self.at(phones.lc.item, i, loc))
                                          for i, v in enumerate(phones)) if p]
        return out


def _what(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool) or type(v).__name__ == "ScalarBoolean":
        return "true/false"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__
