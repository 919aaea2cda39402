"""`directory: {bitrix: URL}`: users, departments and groups read from the shop's Bitrix
database through SQLAlchemy, with a TTL cache."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from herald.engine.helpers.drivers import DRIVERS, missing_driver
from herald.engine.helpers.phones import normalize_phone
from herald.engine.directory.base import (
    BITRIX_PHONE_FIELDS, CONNECT_TIMEOUT, DEFAULT_TTL, PHONE_AUTH, QUERY_TIMEOUT, Lookup, _MAX_CACHED, log, phone_field,
)



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
