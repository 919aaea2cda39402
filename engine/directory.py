"""Who to send to: users, departments, groups and subscription lists.

The runtime fills the directory from the shop's database (the SQL connector); rule
tests and `simulate` give it inline. Lookups never raise: an unknown user is a
per-recipient problem with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

PHONE_FIELDS = ("PERSONAL_PHONE", "PERSONAL_MOBILE", "WORK_PHONE", "phone")


class Directory(Protocol):
    def user_phone(self, key: Any) -> tuple[str | None, str]: ...
    def department(self, name: str) -> list[tuple[str, str]]: ...
    def group(self, name: str) -> list[tuple[str, str]]: ...
    def subscribers(self, list_name: str) -> list[str]: ...


def phone_of(user: Mapping[str, Any]) -> str | None:
    for name in PHONE_FIELDS:
        value = user.get(name)
        if value not in (None, ""):
            return str(value)
    return None


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
            return None, f"user {key!r} is not in the directory"
        phone = phone_of(user)
        return (phone, "") if phone else (None, f"user {key!r} has no phone number")

    def _subtree(self, name: str) -> set[str]:
        names, changed = {name}, True
        while changed:
            changed = False
            for child, parent in self.departments.items():
                if parent in names and child not in names:
                    names.add(child)
                    changed = True
        return names

    def _members(self, field_name: str, names: set[str]) -> list[tuple[str, str]]:
        out = []
        for user in self.users:
            values = user.get(field_name) or []
            values = [values] if isinstance(values, str) else values
            if names & set(values):
                out.append((str(user.get("login") or user.get("id")), phone_of(user) or ""))
        return out

    def department(self, name: str) -> list[tuple[str, str]]:
        return self._members("department", self._subtree(name))

    def group(self, name: str) -> list[tuple[str, str]]:
        return self._members("groups", {name})

    def subscribers(self, list_name: str) -> list[str]:
        return list(self.lists.get(list_name, []))


def members_text(members: Iterable[tuple[str, str]]) -> str:
    return ", ".join(label for label, _ in members)
