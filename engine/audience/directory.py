"""Who to send to: users, departments, groups and subscription lists.

Three directories share one protocol:

- `StaticDirectory`: in memory (rule tests, `simulate`'s STATE.json);
- `FileDirectory`: a StaticDirectory read from a YAML file (`directory: {file: people.yaml}`),
  checked with located errors when the config loads;
- `BitrixDirectory`: the shop's Bitrix database (`directory: {bitrix: URL}`), through
  SQLAlchemy, with a TTL cache.

Lookups never raise: an unknown user, a department without people or a database that
does not answer is a per-recipient problem with a reason. See docs/directory.md.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

from herald.engine.errors import ConfigError, DiagnosticSink, Location, did_you_mean
from herald.engine.helpers.drivers import DRIVERS, missing_driver
from herald.engine.helpers.phones import normalize_phone

log = logging.getLogger("herald")

PHONE_FIELDS = ("PERSONAL_PHONE", "PERSONAL_MOBILE", "WORK_PHONE", "phone")
BITRIX_PHONE_FIELDS = ("PERSONAL_PHONE", "PERSONAL_MOBILE", "WORK_PHONE")
PHONE_AUTH = "b_user_phone_auth.PHONE_NUMBER"   # the last resort, when phone registration is on
DEFAULT_TTL = 300.0
CONNECT_TIMEOUT = 5       # seconds: a lookup runs inside the rule run; a dead server must not stall it
QUERY_TIMEOUT = 10
_MAX_CACHED = 10_000


class Directory(Protocol):
    def user_phone(self, key: Any) -> tuple[str | None, str]:
        """(phone, the field it came from), or (None, why there is none)."""
    def department(self, name: str) -> list[tuple[str, str]]:
        """(label, phone or "") of its people; a `Lookup` tells the trace more."""
    def group(self, name: str) -> list[tuple[str, str]]: ...
    def subscribers(self, list_name: str) -> list[str]: ...


class Lookup(list):
    """A lookup's result — the found items — plus what the trace shows about it:
    `scope` (the departments or groups it covered), `error` (why it failed: the
    recipients get a failed message with it) and `note` (anything else worth saying)."""

    def __init__(self, items: Iterable[Any] = (), *, scope: Iterable[str] = (), error: str = "",
                 note: str = ""):
        super().__init__(items)
        self.scope = tuple(scope)
        self.error = error
        self.note = note

    def clone(self) -> "Lookup":
        return Lookup(self, scope=self.scope, error=self.error, note=self.note)


def phone_field(user: Mapping[str, Any], fields: Iterable[str] = PHONE_FIELDS, *,
                prefer_valid: bool = False) -> tuple[str | None, str | None]:
    """(field, value) of a user's phone: the first field, in order, that is set. With
    `prefer_valid` (Bitrix, where phone fields are free text: "нет", "-"), the first that
    holds a valid number, failing that the first set (so the failure names the bad number)."""
    first: tuple[str | None, str | None] = (None, None)
    for name in fields:
        value = user.get(name)
        if value is None or not str(value).strip():
            continue
        if not prefer_valid or normalize_phone(value).ok:
            return name, str(value)
        if first[0] is None:
            first = (name, str(value))
    return first


def phone_of(user: Mapping[str, Any]) -> str | None:
    return phone_field(user)[1]


# ---- in memory ---------------------------------------------------------------------------

@dataclass
class StaticDirectory:
    """An in-memory directory, from a mapping like::

        users: [{id: 7, login: anna, email: anna@example.com, PERSONAL_PHONE: "8 900 …",
                 department: [Sales], groups: [ops]}]
        departments: {Sales: null, "Sales Moscow": Sales}     # name → parent
        subscribers: {news: ["+79001234567"]}
    """

    users: list[Mapping[str, Any]] = field(default_factory=list)
    departments: Mapping[str, str | None] = field(default_factory=dict)
    lists: Mapping[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "StaticDirectory":
        data = data or {}
        return cls(list(data.get("users") or []), dict(data.get("departments") or {}),
                   {k: list(v or []) for k, v in (data.get("subscribers") or {}).items()})

    def _find(self, key: Any) -> Mapping[str, Any] | None:
        text = str(key).strip()
        for user in self.users:
            if str(user.get("id", user.get("ID", ""))) == text:
                return user
            if text and "@" in text and str(user.get("email", user.get("EMAIL", ""))).lower() == text.lower():
                return user
            if text and str(user.get("login", user.get("LOGIN", ""))) == text:
                return user
        return None

    def user_phone(self, key: Any) -> tuple[str | None, str]:
        if key in (None, ""):
            return None, "no user given"
        user = self._find(key)
        if user is None:
            return None, f"user {key} is not in the directory"
        name, phone = phone_field(user)
        return (phone, name or "") if phone else (None, f"user {key} has no phone number")

    def _subtree(self, name: str) -> list[str]:
        names = [name]
        for current in names:   # grows while walking: breadth first
            names += [child for child, parent in self.departments.items()
                      if parent == current and child not in names]
        return names

    def _members(self, field_name: str, names: Iterable[str]) -> list[tuple[str, str]]:
        names = set(names)
        out = []
        for user in self.users:
            values = user.get(field_name) or []
            values = [values] if isinstance(values, str) else values
            if names & set(values):
                out.append((str(user.get("login") or user.get("id")), phone_of(user) or ""))
        return out

    def department(self, name: str) -> Lookup:
        names = self._subtree(name)
        members = self._members("department", names)
        if not members and name not in self.departments:
            return Lookup(error=f'no department named "{name}" in the directory')
        return Lookup(members, scope=names)

    def group(self, name: str) -> Lookup:
        return Lookup(self._members("groups", {name}), scope=[name])

    def subscribers(self, list_name: str) -> list[str]:
        return list(self.lists.get(list_name, []))

    def names(self, kind: str) -> list[str] | None:
        """The department or group names it knows (for a did-you-mean)."""
        if kind == "department":
            found = [*self.departments, *(d for u in self.users for d in _as_list(u.get("department")))]
        elif kind == "group":
            found = [g for u in self.users for g in _as_list(u.get("groups"))]
        else:
            return None
        return list(dict.fromkeys(str(n) for n in found))


def _as_list(value: Any) -> list:
    return [value] if isinstance(value, str) else list(value or [])


NO_DIRECTORY = "no `directory:` is configured (see docs/directory.md)"


class NoDirectory(StaticDirectory):
    """What `user`, `department` and `group` recipients are looked up in when the config
    has no `directory:` section: nothing, and a department or group lookup says that is
    why."""

    def department(self, name: str) -> Lookup:
        return Lookup(error=NO_DIRECTORY)

    def group(self, name: str) -> Lookup:
        return Lookup(error=NO_DIRECTORY)

    def names(self, kind: str) -> list[str] | None:
        return None


def members_text(members: Iterable[tuple[str, str]]) -> str:
    return ", ".join(label for label, _ in members)


# ---- from a YAML file --------------------------------------------------------------------

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


# ---- the Bitrix database -----------------------------------------------------------------

class BitrixDirectory:
    """Users, departments and groups read from a 1C-Bitrix database (MySQL/MariaDB,
    PostgreSQL; SQLite for tests) through SQLAlchemy.

    Methods are synchronous (the evaluator runs in a worker thread). Every answer of
    the database — a phone, "no such user" — is cached for `ttl` seconds per method and
    argument; a failure is not cached and comes back as a reason, never an exception.
    `groups` maps a rule's group name to the Bitrix group's NAME, STRING_ID or ID.
    """

    def __init__(self, url: Any, *, ttl: float = DEFAULT_TTL, groups: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._url = url.reveal() if hasattr(url, "reveal") else url
        self.ttl = float(ttl)
        self.groups = {str(k): str(v) for k, v in (groups or {}).items()}
        self._clock = clock
        self._cache: dict[tuple, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._engine = None

    # -- plumbing --
    @property
    def engine(self):
        with self._lock:
            if self._engine is None:
                self._engine = bitrix_engine(self._url)
            return self._engine

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
            self._cache.clear()
        if engine is not None:
            engine.dispose()

    def clear(self) -> None:
        """Forget every cached answer."""
        with self._lock:
            self._cache.clear()

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        value = compute()          # outside the lock: a slow query must not hold up other threads
        if self.ttl > 0:
            with self._lock:
                if len(self._cache) >= _MAX_CACHED:
                    now = self._clock()
                    for k in [k for k, (until, _) in self._cache.items() if until <= now]:
                        del self._cache[k]
                    if len(self._cache) >= _MAX_CACHED:
                        self._cache.clear()
                self._cache[key] = (self._clock() + self.ttl, value)
        return value

    def _rows(self, sql: str, expanding: Iterable[str] = (), **params: Any) -> list[tuple]:
        import sqlalchemy as sa

        statement = sa.text(sql)
        if expanding:
            statement = statement.bindparams(*(sa.bindparam(name, expanding=True) for name in expanding))
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(statement, params)]

    def _has_table(self, name: str) -> bool:
        import sqlalchemy as sa

        def check() -> bool:
            with self.engine.connect() as conn:
                return sa.inspect(conn).has_table(name)
        return self._cached(("table", name), check)

    def _failed(self, what: str, exc: BaseException) -> str:
        reason = f"the Bitrix database failed ({describe_error(exc)})"
        log.warning("directory: %s: %s", what, reason)
        return reason

    def _user_columns(self) -> tuple[str, str]:
        """(select list, join) for a user's id, login and phone fields."""
        columns = "u.ID, u.LOGIN, u.PERSONAL_PHONE, u.PERSONAL_MOBILE, u.WORK_PHONE"
        if self._has_table("b_user_phone_auth"):
            return columns + ", pa.PHONE_NUMBER", " LEFT JOIN b_user_phone_auth pa ON pa.USER_ID = u.ID"
        return columns + ", NULL", ""

    @staticmethod
    def _phone(row: tuple) -> tuple[str | None, str | None]:
        fields = dict(zip(BITRIX_PHONE_FIELDS, row[2:5]))
        name, value = phone_field(fields, BITRIX_PHONE_FIELDS, prefer_valid=True)
        usable = name is not None and normalize_phone(value).ok
        if not usable and row[5] is not None and str(row[5]).strip():
            return PHONE_AUTH, str(row[5])
        return name, value

    # -- users --
    def user_phone(self, key: Any) -> tuple[str | None, str]:
        if isinstance(key, float) and key.is_integer():
            key = int(key)              # 7.0 from a JSON number is user 7
        text = "" if key is None else str(key).strip()
        if not text:
            return None, "no user given"
        try:
            return self._cached(("user", text.lower() if "@" in text else text), lambda: self._user_phone(text))
        except Exception as exc:   # noqa: BLE001 — a lookup never raises
            return None, self._failed(f"user {text}", exc)

    def _user_phone(self, text: str) -> tuple[str | None, str]:
        columns, join = self._user_columns()
        base = f"SELECT {columns}, u.ACTIVE FROM b_user u{join} WHERE "
        rows: list[tuple] = []
        if text.isdigit():
            rows = self._rows(base + "u.ID = :id ORDER BY u.ID", id=int(text))
        if not rows and "@" in text:
            rows = self._rows(base + "LOWER(u.EMAIL) = :email ORDER BY u.ID", email=text.lower())
        if not rows:
            rows = self._rows(base + "u.LOGIN = :login ORDER BY u.ID", login=text)
        if not rows:
            return None, f"user {text} is not in the Bitrix directory"
        active = [r for r in rows if r[6] == "Y"]
        if not active:
            return None, f"user {text} is not active in Bitrix"
        name, phone = self._phone(active[0])
        return (phone, name or "") if phone else (None, f"user {text} has no phone number")

    def _people(self, sql: str, expanding: Iterable[str] = (), **params: Any) -> list[tuple[str, str]]:
        seen, out = set(), []
        for row in self._rows(sql, expanding, **params):
            if row[0] in seen:
                continue
            seen.add(row[0])
            out.append((str(row[1] or row[0]), self._phone(row)[1] or ""))
        return out

    # -- departments --
    def department(self, name: str) -> Lookup:
        try:
            return self._cached(("department", name), lambda: self._department(name)).clone()
        except Exception as exc:   # noqa: BLE001
            return Lookup(error=self._failed(f'department "{name}"', exc))

    def _department_iblocks(self) -> tuple[int, ...]:
        """The `departments` information block(s): b_iblock.CODE = 'departments'."""
        def find() -> tuple[int, ...]:
            if not self._has_table("b_iblock"):
                return ()
            return tuple(int(r[0]) for r in self._rows("SELECT ID FROM b_iblock WHERE CODE = 'departments'"))
        return self._cached(("department iblocks",), find)

    def _sections(self, iblocks: tuple[int, ...]) -> list[tuple[int, int | None, str]]:
        def load() -> list[tuple[int, int | None, str]]:
            rows = self._rows("SELECT ID, IBLOCK_SECTION_ID, NAME FROM b_iblock_section "
                              "WHERE IBLOCK_ID IN :iblocks ORDER BY ID", ["iblocks"], iblocks=list(iblocks))
            return [(int(r[0]), int(r[1]) if r[1] is not None else None, str(r[2] or "")) for r in rows]
        return self._cached(("sections", iblocks), load)

    def _department(self, name: str) -> Lookup:
        iblocks = self._department_iblocks()
        if not iblocks:   # no iblock coded `departments`: those holding a section of that name
            rows = self._rows("SELECT DISTINCT IBLOCK_ID FROM b_iblock_section WHERE NAME = :name", name=name)
            iblocks = tuple(sorted(int(r[0]) for r in rows))
            if not iblocks:
                return Lookup(error=f'no department named "{name}" in Bitrix')
        sections = self._sections(iblocks)
        roots = [s for s in sections if s[2] == name] or \
            [s for s in sections if s[2].casefold() == name.casefold()]
        if not roots:
            return Lookup(error=f'no department named "{name}" in Bitrix')
        children: dict[int | None, list[tuple[int, int | None, str]]] = {}
        for s in sections:
            children.setdefault(s[1], []).append(s)
        found: list[tuple[int, int | None, str]] = []
        ids: set[int] = set()
        for section in roots:
            if section[0] not in ids:
                ids.add(section[0])
                found.append(section)
        for section in found:   # grows while walking: breadth first
            for child in children.get(section[0], []):
                if child[0] not in ids:
                    ids.add(child[0])
                    found.append(child)
        scope = list(dict.fromkeys(s[2] for s in found))
        field_id = self._uf_department()
        if field_id is None:
            return Lookup(scope=scope, error="Bitrix has no UF_DEPARTMENT user field")
        columns, join = self._user_columns()
        people = self._people(
            f"SELECT {columns} FROM b_utm_user m JOIN b_user u ON u.ID = m.VALUE_ID{join} "
            "WHERE m.FIELD_ID = :field AND m.VALUE_INT IN :sections AND u.ACTIVE = 'Y' ORDER BY u.ID",
            ["sections"], field=field_id, sections=sorted(ids))
        return Lookup(people, scope=scope)

    def _uf_department(self) -> int | None:
        def find() -> int | None:
            rows = self._rows("SELECT ID FROM b_user_field WHERE ENTITY_ID = 'USER' "
                              "AND FIELD_NAME = 'UF_DEPARTMENT' ORDER BY ID")
            return int(rows[0][0]) if rows else None
        return self._cached(("uf_department",), find)

    # -- groups --
    def group(self, name: str) -> Lookup:
        try:
            return self._cached(("group", name), lambda: self._group(name)).clone()
        except Exception as exc:   # noqa: BLE001
            return Lookup(error=self._failed(f'group "{name}"', exc))

    def _group(self, name: str) -> Lookup:
        target = self.groups.get(name, name)
        sql = "SELECT ID, NAME, STRING_ID, ACTIVE FROM b_group WHERE NAME = :name OR STRING_ID = :name"
        params: dict[str, Any] = {"name": target}
        if target.isdigit():
            sql += " OR ID = :id"
            params["id"] = int(target)
        rows = self._rows(sql + " ORDER BY ID", **params)
        active = [r for r in rows if r[3] == "Y"]
        if not active:
            why = "is not active in Bitrix" if rows else "is not in Bitrix"
            return Lookup(error=f'group "{target}" {why}')
        columns, join = self._user_columns()
        people = self._people(
            f"SELECT {columns} FROM b_user_group ug JOIN b_user u ON u.ID = ug.USER_ID{join} "
            "WHERE ug.GROUP_ID IN :groups AND u.ACTIVE = 'Y' "
            "AND (ug.DATE_ACTIVE_FROM IS NULL OR ug.DATE_ACTIVE_FROM <= :now) "
            "AND (ug.DATE_ACTIVE_TO IS NULL OR ug.DATE_ACTIVE_TO >= :now) ORDER BY u.ID",
            ["groups"], groups=[int(r[0]) for r in active], now=datetime.now().replace(microsecond=0))
        return Lookup(people, scope=[str(r[1] or r[2] or r[0]) for r in active])

    def names(self, kind: str) -> list[str] | None:
        """Department names (the departments information block's sections) or the group
        names of `groups:`; None when they cannot be read."""
        if kind == "group":
            return list(self.groups) or None
        if kind != "department":
            return None
        try:
            iblocks = self._department_iblocks()
            return list(dict.fromkeys(s[2] for s in self._sections(iblocks))) if iblocks else None
        except Exception as exc:   # noqa: BLE001 — only a did-you-mean is lost
            self._failed("department names", exc)
            return None

    # -- subscription lists --
    def subscribers(self, list_name: str) -> Lookup:
        return Lookup(note="Bitrix subscription lists are not read yet")


def bitrix_engine(url: Any):
    """A SQLAlchemy engine for lookups: short connect and read timeouts, small pool."""
    import sqlalchemy as sa

    u = sa.make_url(url)
    backend, driver = u.get_backend_name(), u.get_driver_name()
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if backend in ("mysql", "mariadb"):
        connect_args["connect_timeout"] = CONNECT_TIMEOUT
        if driver in ("pymysql", "mysqldb"):
            connect_args["read_timeout"] = QUERY_TIMEOUT
    elif backend == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT
    if backend != "sqlite":
        options = {"pool_pre_ping": True, "pool_recycle": 1800, "pool_size": 2, "max_overflow": 2}
    return sa.create_engine(u, connect_args=connect_args, **options)


def check_bitrix_url(text: str, base_dir: Path | None = None) -> tuple[str | None, str | None]:
    """(problem, url): why a database URL cannot work (never quoting it: it may hold a
    password), or the URL to use — a relative SQLite path resolved against base_dir."""
    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        u = sa.make_url(text.strip())
    except (ArgumentError, ValueError):
        return "it is not a database URL", None
    try:
        u.get_dialect()
    except NoSuchModuleError:
        if u.get_backend_name() not in DRIVERS:
            return f'unknown database type "{u.drivername}"', None
    missing = missing_driver(u)
    if missing is not None:
        return "; ".join(missing), None
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") \
            and not u.database.startswith("file:") and base_dir is not None:
        p = Path(u.database).expanduser()
        u = u.set(database=str(p if p.is_absolute() else base_dir / p))
    return None, u.render_as_string(hide_password=False)


def describe_error(exc: BaseException) -> str:
    """A database error in one line, without the SQL or its parameters."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split()) or type(orig).__name__
    if len(text) > 200:
        text = text[:199] + "…"
    return f"{type(orig).__name__}: {text}"


# ---- building one, and what the trace says ----------------------------------------------

def open_directory(cfg: Any) -> Directory:
    """The directory a `directory:` config section (herald.engine.config.DirectoryConfig) names.
    Never raises: a Bitrix database is only connected to on the first lookup."""
    if cfg is None:
        return NoDirectory()
    if cfg.people is not None:
        return cfg.people
    if cfg.bitrix is not None:
        return BitrixDirectory(cfg.bitrix, ttl=cfg.ttl, groups=cfg.groups)
    return StaticDirectory()


def lookup_user(directory: Directory, key: Any) -> tuple[str | None, str]:
    """directory.user_phone, with any exception turned into a reason."""
    try:
        return directory.user_phone(key)
    except Exception as exc:   # noqa: BLE001 — a faulty directory must not stop the rule run
        return None, f"the directory failed ({type(exc).__name__}: {exc})"


def known_names(directory: Any, kind: str) -> list[str] | None:
    """The department/group names a directory can list (None when it cannot)."""
    try:
        return directory.names(kind)
    except Exception:   # noqa: BLE001 — a directory without names(), or failing
        return None


def lookup(directory: Directory, kind: str, name: str) -> Lookup:
    """directory.department / group / subscribers as a Lookup, never raising."""
    try:
        found = getattr(directory, kind)(name)
    except Exception as exc:   # noqa: BLE001
        return Lookup(error=f"the directory failed ({type(exc).__name__}: {exc})")
    return found if isinstance(found, Lookup) else Lookup(found)


def _quoted(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


def user_trace(shown: Any, phone: str | None, why: str) -> str:
    """`user 7 → +79005550001 (directory: PERSONAL_MOBILE)` / `user 9 → no phone (why)`."""
    if not phone:
        return f"user {shown} → no phone ({why})"
    number = normalize_phone(phone)
    return f"user {shown} → {number.e164 or phone}" + (f" (directory: {why})" if why else "")


def members_trace(kind: str, name: str, found: Lookup) -> str:
    """`department "Sales" → 3 people (Sales, Sales Moscow)`, `subscribers "news" → 2 phones`."""
    head = f"{kind} {_quoted(name)} → "
    if found.error:
        return head + f"no one ({found.error})"
    if kind == "subscribers":
        text = f"{len(found)} phone" + ("" if len(found) == 1 else "s")
        return head + text + (f" ({found.note})" if found.note else "")
    text = f"{len(found)} " + ("person" if len(found) == 1 else "people")
    extras = []
    if found.scope:
        extras.append(", ".join(found.scope))
    without = sum(1 for _, phone in found if not phone)
    if without:
        extras.append(f"{without} without a phone")
    if found.note:
        extras.append(found.note)
    return head + text + (f" ({'; '.join(extras)})" if extras else "")
