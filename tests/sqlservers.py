"""Real database servers for tests: MariaDB and PostgreSQL on this machine, and SQLite.

Import the fixtures into a test module (`from tests.sqlservers import db_url, …`):

- `mariadb_url`: a fresh database on MariaDB 127.0.0.1:3306 (user root, no password),
  dropped after the test — `mysql+pymysql://root@127.0.0.1:3306/herald_t_<hex>`;
- `postgres_url`: a fresh schema in PostgreSQL 127.0.0.1:5432 database `test` (user
  postgres, trust auth), first on the search path, dropped after the test —
  `postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dherald_t_<hex>`;
- `sqlite_url`: an empty database file in the test's tmp_path — `sqlite:////…/shop.db`;
- `db_url`: parametrized over the three (test ids `sqlite`, `mariadb`, `postgres`).

Every URL opens the same namespace from any engine, so a test writes through
`sqlalchemy.create_engine(url)` and gives the same URL to the code under test.

A server that does not answer skips the test with how to start it — or, under
`CI=true`, fails it: CI must not pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

MARIADB = ("127.0.0.1", 3306)
POSTGRES = ("127.0.0.1", 5432)
HOW_TO_START = {
    "MariaDB": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
}

_reachable: dict[str, str | None] = {}      # server → None (answers) or the error, once per session


def _unreachable(server: str, where: tuple[str, int], error: str) -> None:
    message = f"{server} not reachable at {where[0]}:{where[1]} — start it with: {HOW_TO_START[server]}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} ({error})", pytrace=False)
    pytest.skip(message)


def _mariadb_admin():
    import pymysql
    return pymysql.connect(host=MARIADB[0], port=MARIADB[1], user="root", password="", database="test",
                           connect_timeout=3, autocommit=True)


def _postgres_admin():
    import psycopg
    return psycopg.connect(host=POSTGRES[0], port=POSTGRES[1], user="postgres", dbname="test",
                           connect_timeout=3, autocommit=True)


def _check(server: str, where: tuple[str, int], connect) -> None:
    if server not in _reachable:
        try:
            connect().close()
            _reachable[server] = None
        except Exception as exc:                    # refused, timeout, auth: all mean "not usable"
            _reachable[server] = f"{type(exc).__name__}: {exc}"
    if _reachable[server] is not None:
        _unreachable(server, where, _reachable[server])


def _fresh_name() -> str:
    return f"herald_t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mariadb_url():
    _check("MariaDB", MARIADB, _mariadb_admin)
    name = _fresh_name()
    admin = _mariadb_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield f"mysql+pymysql://root@{MARIADB[0]}:{MARIADB[1]}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def postgres_url():
    _check("PostgreSQL", POSTGRES, _postgres_admin)
    name = _fresh_name()
    admin = _postgres_admin()
    try:
        admin.execute(f'CREATE SCHEMA "{name}"')
        yield (f"postgresql+psycopg://postgres@{POSTGRES[0]}:{POSTGRES[1]}/test"
               f"?options=-csearch_path%3D{name}")
    finally:
        admin.execute("SET lock_timeout = '10s'")     # a test's open transaction must not hang the run
        admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path):
    path = tmp_path / "shop.db"
    path.touch()                                    # an empty file is an empty database
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "mariadb", "postgres"])
def db_url(request):
    return request.getfixturevalue(f"{request.param}_url")


def dialect_of(url: str) -> str:
    """"sqlite", "mysql" or "postgresql" for one of these URLs."""
    return url.split(":", 1)[0].split("+", 1)[0]
