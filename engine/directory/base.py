"""The directory protocol, the in-memory directory, and lookups that never raise."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

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
