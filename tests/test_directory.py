"""The directory: a people file, the Bitrix database (SQLite, and real MariaDB and
PostgreSQL through tests/sqlservers.py), the TTL cache, failures as reasons, and lookups
in the firing's trace."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from herald.engine.config import Secret, load_config
from herald.engine.directory import (
    PHONE_AUTH, BitrixDirectory, FileDirectory, Lookup, StaticDirectory, members_trace, open_directory,
)
from herald.engine.errors import ConfigError
from herald.engine.rules.evaluate import Evaluator
from herald.engine.events import parse_event
from tests.sqlservers import db_url, mariadb_url, postgres_url, sqlite_url  # noqa: F401 — fixtures

MSK = ZoneInfo("Europe/Moscow")


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def config_errors(path: Path, env: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=env or {})
    return info.value


# ---------------------------------------------------------------- a Bitrix-shaped database

SCHEMA = [
    """CREATE TABLE b_user (ID INT PRIMARY KEY, LOGIN VARCHAR(50) NOT NULL, EMAIL VARCHAR(255),
       NAME VARCHAR(50), LAST_NAME VARCHAR(50), ACTIVE CHAR(1) NOT NULL DEFAULT 'Y',
       PERSONAL_PHONE VARCHAR(255), PERSONAL_MOBILE VARCHAR(255), WORK_PHONE VARCHAR(255))""",
    "CREATE TABLE b_user_phone_auth (USER_ID INT PRIMARY KEY, PHONE_NUMBER VARCHAR(25) NOT NULL)",
    """CREATE TABLE b_user_field (ID INT PRIMARY KEY, ENTITY_ID VARCHAR(50), FIELD_NAME VARCHAR(50),
       MULTIPLE CHAR(1))""",
    "CREATE TABLE b_utm_user (ID INT PRIMARY KEY, VALUE_ID INT NOT NULL, FIELD_ID INT NOT NULL, VALUE_INT INT)",
    """CREATE TABLE b_iblock (ID INT PRIMARY KEY, IBLOCK_TYPE_ID VARCHAR(50), CODE VARCHAR(50),
       NAME VARCHAR(255))""",
    """CREATE TABLE b_iblock_section (ID INT PRIMARY KEY, IBLOCK_ID INT NOT NULL, IBLOCK_SECTION_ID INT NULL,
       ACTIVE CHAR(1) DEFAULT 'Y', NAME VARCHAR(255) NOT NULL)""",
    """CREATE TABLE b_group (ID INT PRIMARY KEY, ACTIVE CHAR(1) NOT NULL DEFAULT 'Y', NAME VARCHAR(255),
       STRING_ID VARCHAR(255))""",
    """CREATE TABLE b_user_group (USER_ID INT NOT NULL, GROUP_ID INT NOT NULL, DATE_ACTIVE_FROM DATETIME NULL,
       DATE_ACTIVE_TO DATETIME NULL)""",
]
TABLES = ["b_user", "b_user_phone_auth", "b_user_field", "b_utm_user", "b_iblock", "b_iblock_section",
          "b_group", "b_user_group"]

ROWS = {
    "b_user": [
        # ID, LOGIN, EMAIL, ACTIVE, PERSONAL_PHONE, PERSONAL_MOBILE, WORK_PHONE
        (7, "anna", "Anna@Example.com", "Y", "", "8 (900) 555-00-01", "+79005550099"),
        (8, "boris", "boris@example.com", "Y", "+7 900 555-00-02", "89005550098", None),
        (9, "olga", "olga@example.com", "Y", None, None, ""),
        (10, "petr", "petr@example.com", "Y", None, "-", None),           # phone registration only
        (11, "ivan", "ivan@example.com", "N", None, None, "+79005550011"),  # deactivated
        (12, "maria", "maria@example.com", "Y", "не указан", None, "+79005550012"),
    ],
    "b_user_phone_auth": [(10, "+79005550010")],
    "b_user_field": [(5, "USER", "UF_DEPARTMENT", "Y"), (6, "USER", "UF_SKILLS", "Y"),
                     (7, "BLOG_POST", "UF_DEPARTMENT", "Y")],
    "b_utm_user": [(1, 7, 5, 3), (2, 8, 5, 2), (3, 9, 5, 2), (4, 12, 5, 4), (5, 11, 5, 2),
                   (6, 12, 6, 2),   # another multiple field pointing at "Sales": not a department
                   (7, 10, 7, 2)],  # UF_DEPARTMENT of another entity
    "b_iblock": [(1, "catalog", "clothes", "Clothes"), (3, "structure", "departments", "Departments")],
    "b_iblock_section": [
        (1, 3, None, "Y", "Company"), (2, 3, 1, "Y", "Sales"), (3, 3, 2, "Y", "Sales Moscow"),
        (4, 3, 1, "Y", "IT"),
        (100, 1, None, "Y", "Sales"), (101, 1, 100, "Y", "Sale shoes"),   # a catalog section, same name
    ],
    "b_group": [(1, "Y", "Администраторы", None), (5, "Y", "Операторы", "operators"), (6, "N", "Old", "old")],
    "b_user_group": [
        (7, 5, None, None),
        (8, 5, datetime(2000, 1, 1), datetime(2099, 1, 1)),
        (12, 5, None, datetime(2001, 1, 1)),         # membership ended
        (9, 5, datetime(2098, 1, 1), None),          # membership not started
        (11, 5, None, None),                         # deactivated user
        (10, 1, None, None),
    ],
}
USER_COLUMNS = "ID, LOGIN, EMAIL, ACTIVE, PERSONAL_PHONE, PERSONAL_MOBILE, WORK_PHONE"


def create_bitrix(url: str, tables: list[str] = TABLES) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for ddl, table in zip(SCHEMA, TABLES):
            if table in tables:
                if engine.dialect.name == "postgresql":
                    ddl = ddl.replace("DATETIME", "TIMESTAMP")
                conn.execute(sa.text(ddl))
        for table, rows in ROWS.items():
            if table not in tables:
                continue
            into = f"{table} ({USER_COLUMNS})" if table == "b_user" else table
            placeholders = ", ".join(f":p{i}" for i in range(len(rows[0])))
            conn.execute(sa.text(f"INSERT INTO {into} VALUES ({placeholders})"),
                         [{f"p{i}": v for i, v in enumerate(row)} for row in rows])
    engine.dispose()


def drop_bitrix(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def execute(url: str, sql: str, **params) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
    engine.dispose()


@pytest.fixture
def bitrix_url(db_url):
    """A small Bitrix-shaped database on SQLite, a real MariaDB and a real PostgreSQL
    (fresh per test, from tests/sqlservers.py: an unreachable server skips, or fails under CI)."""
    create_bitrix(db_url)
    yield db_url
    drop_bitrix(db_url)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting(directory: BitrixDirectory) -> list[str]:
    statements: list[str] = []
    sa.event.listen(directory.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: statements.append(statement))
    return statements


# ---------------------------------------------------------------- a people file

PEOPLE = """
users:
  - id: 7
    login: anna
    email: anna@example.com
    PERSONAL_MOBILE: "8 900 555-00-01"
    department: [Sales Moscow]
    groups: [ops]
  - {id: 8, login: boris, WORK_PHONE: "+79005550002", department: Sales}
  - {id: 9, login: olga, department: [IT]}
departments:
  Sales: null
  Sales Moscow: Sales
  IT: null
subscribers:
  news: ["+79001234567"]
"""


def test_people_file_is_read_relative_to_the_config_and_answers_lookups(tmp_path, monkeypatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    write(folder, "people.yaml", PEOPLE)
    write(folder, "herald.yaml", "directory:\n  file: people.yaml\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "herald.yaml")
    assert cfg.directory.file == folder / "people.yaml" and cfg.directory.bitrix is None
    directory = open_directory(cfg.directory)
    assert isinstance(directory, FileDirectory)
    assert directory.user_phone(7) == ("8 900 555-00-01", "PERSONAL_MOBILE")
    assert directory.user_phone("ANNA@example.com") == ("8 900 555-00-01", "PERSONAL_MOBILE")
    assert directory.user_phone("olga") == (None, "user olga has no phone number")
    assert directory.user_phone(99) == (None, "user 99 is not in the directory")
    sales = directory.department("Sales")
    assert sales == [("anna", "8 900 555-00-01"), ("boris", "+79005550002")]
    assert sales.scope == ("Sales", "Sales Moscow")
    assert directory.group("ops") == [("anna", "8 900 555-00-01")]
    assert directory.subscribers("news") == ["+79001234567"]
    assert directory.department("Nope").error == 'no department named "Nope" in the directory'


def test_people_file_problems_are_all_reported_at_their_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "herald.yaml", "directory: {file: people.yaml}\n")
    write(tmp_path, "people.yaml", """
    users:
      - id: 7
        PERSONAL_MOBILE: 89005550001
        department: Sals
      - {id: 7, login: anna, grups: [ops]}
      - {name: nobody}
    departments:
      Sales: null
      IT: Dev
    subscribers:
      news: ["+79001234567", "12"]
    """)
    err = config_errors(tmp_path / "herald.yaml")
    text = err.format()
    found = {(d.location.file, d.location.line, d.location.col): d.message for d in err.diagnostics}
    assert found[("people.yaml", 3, 22)] == "users[0].PERSONAL_MOBILE: expected a phone number in quotes, got a number"
    assert found[("people.yaml", 4, 17)] == 'users[0].department: "Sals" is not one of the departments'
    assert found[("people.yaml", 5, 10)].startswith("users[1].id: user id 7 is already used (at people.yaml:2:9)")
    assert found[("people.yaml", 5, 26)] == 'unknown key "grups" in users[1]'
    assert found[("people.yaml", 6, 5)] == "users[2]: a user needs an id, a login or an email to be looked up by"
    assert found[("people.yaml", 9, 7)] == 'departments.IT: its parent "Dev" is not a department here'
    assert found[("people.yaml", 11, 26)].startswith('subscribers.news[1]: "12" is not a valid phone number')
    assert 'did you mean "Sales"?' in text and 'did you mean "groups"?' in text
    assert 'write phone numbers in quotes, e.g. "+79001234567"' in text


def test_people_file_yaml_errors_and_loops_are_located(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "herald.yaml", "directory: {file: people.yaml}\n")
    write(tmp_path, "people.yaml", "users:\n  - id: 1\n  id: 2\n")
    (d,) = config_errors(tmp_path / "herald.yaml").diagnostics
    assert d.location.file == "people.yaml" and d.location.line == 3 and d.message.startswith("invalid YAML")
    write(tmp_path, "people.yaml", "departments:\n  A: B\n  B: A\n")
    err = config_errors(tmp_path / "herald.yaml")
    assert [(d.location.line, d.message) for d in err.diagnostics] == [
        (2, 'departments.A: the parent chain loops back to "A"'),
        (3, 'departments.B: the parent chain loops back to "B"')]


# ---------------------------------------------------------------- the directory: key

SQLITE = "directory:\n  bitrix: sqlite:///x.db\n"
TTL = "directory.ttl: expected a number of seconds (0 turns the cache off), got "
KEY_ERRORS = [
    ("directory: {}\n", 1, 1,
     "directory: give file: (a YAML file of people) or bitrix: (the shop's database URL)"),
    ("directory:\n  file: people.yaml\n  bitrix: sqlite:///x.db\n", 3, 3,
     "directory: file and bitrix exclude each other"),
    ("directory:\n  file: people.yaml\n  ttl: 60\n", 3, 3, "directory.ttl applies to bitrix: only"),
    (SQLITE + "  tll: 60\n", 3, 3, 'unknown key "tll" in directory'),
    ("directory:\n  bitrix: nonsense\n", 2, 11, "directory.bitrix: it is not a database URL"),
    ("directory:\n  bitrix: oracle9+nope://u@h/db\n", 2, 11,
     'directory.bitrix: unknown database type "oracle9+nope"'),
    ("directory:\n  bitrix: 42\n", 2, 11, "directory.bitrix: expected a database URL, got a number"),
    (SQLITE + "  ttl: -1\n", 3, 8, TTL + "-1"),
    (SQLITE + "  ttl: soon\n", 3, 8, TTL + "a string"),
    (SQLITE + "  groups: [ops]\n", 3, 11, "directory.groups: expected a mapping of a rule's group name "
                                          "to the Bitrix group's name, STRING_ID or ID, got a list"),
    (SQLITE + "  groups: {ops: [1]}\n", 3, 17,
     "directory.groups.ops: expected a Bitrix group's name, STRING_ID or ID, got a list"),
    ("directory:\n  file: missing.yaml\n", 2, 9, "directory.file: missing.yaml does not exist"),
    ("directory: people.yaml\n", 1, 12, "directory: expected a mapping of keys, got a string"),
    ("directory:\n  bitrix: !env SHOP_DB_URL\n", 2, 11,
     "directory.bitrix: environment variable SHOP_DB_URL is not set"),
]


@pytest.mark.parametrize("body, line, col, message", KEY_ERRORS, ids=[m for *_, m in KEY_ERRORS])
def test_directory_key_errors_are_located(tmp_path, monkeypatch, body, line, col, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "people.yaml", PEOPLE)
    write(tmp_path, "herald.yaml", body)
    err = config_errors(tmp_path / "herald.yaml")
    assert [(d.location.line, d.location.col, d.message) for d in err.diagnostics if d.is_error] == \
        [(line, col, message)]


@pytest.mark.parametrize("url, extra", [
    ("mysql+nosuchdriver://bitrix:pa55-SECRET@db/sitemanager", "mysql"),      # a driver SQLAlchemy lacks
    ("mysql+mysqldb://bitrix:pa55-SECRET@db/sitemanager", "mysql"),           # one whose module is missing
    ("postgresql+psycopg2://bitrix:pa55-SECRET@db/sitemanager", "postgresql"),
])
def test_a_missing_database_driver_names_the_extra_to_install(tmp_path, url, extra):
    """The drivers are extras of herald-bsg: the error says which one, located, never the URL."""
    write(tmp_path, "herald.yaml", "directory:\n  bitrix: !env SHOP_DB_URL\n")
    err = config_errors(tmp_path / "herald.yaml", env={"SHOP_DB_URL": url})
    (d,) = [d for d in err.diagnostics if d.is_error]
    assert (d.location.line, d.location.col) == (2, 11)
    assert d.message.startswith("directory.bitrix: the driver ") and "pa55" not in err.format()
    assert f"pip install 'herald-bsg[{extra}]'" in d.message


def test_bitrix_key_reads_url_ttl_and_groups_and_keeps_the_url_secret(tmp_path):
    write(tmp_path, "herald.yaml", """
    directory:
      bitrix: !env SHOP_DB_URL
      ttl: 60
      groups: {ops: operators, admins: 1}
    """)
    url = "mysql+pymysql://bitrix:pa55-SECRET@db.example/sitemanager?charset=utf8mb4"
    cfg = load_config(tmp_path / "herald.yaml", env={"SHOP_DB_URL": url})
    d = cfg.directory
    assert isinstance(d.bitrix, Secret) and d.bitrix.reveal() == url and "pa55" not in repr(cfg)
    assert (d.ttl, dict(d.groups), d.file) == (60, {"ops": "operators", "admins": "1"}, None)
    assert cfg.warnings == ()
    directory = open_directory(d)
    assert isinstance(directory, BitrixDirectory) and directory.ttl == 60
    # a bad URL from the environment is reported without showing it
    err = config_errors(tmp_path / "herald.yaml", env={"SHOP_DB_URL": "pa55-SECRET not a url"})
    assert "pa55" not in err.format()
    assert err.diagnostics[0].message == "directory.bitrix: it is not a database URL (the value of !env SHOP_DB_URL)"


def test_bitrix_defaults_relative_sqlite_and_a_plain_password_warns(tmp_path):
    write(tmp_path, "herald.yaml", "directory:\n  bitrix: sqlite:///data/bitrix.db\n")
    cfg = load_config(tmp_path / "herald.yaml", env={})
    assert cfg.directory.ttl == 300 and dict(cfg.directory.groups) == {}
    assert cfg.directory.bitrix.reveal() == f"sqlite:///{tmp_path / 'data' / 'bitrix.db'}"
    write(tmp_path, "herald.yaml", "directory:\n  bitrix: mysql+pymysql://u:pa55-SECRET@h/db\n  ttl: 0\n")
    cfg = load_config(tmp_path / "herald.yaml", env={})
    assert cfg.directory.ttl == 0
    (warning,) = cfg.warnings
    assert warning.message == "directory.bitrix is written in the config file in plain text"
    assert "pa55" not in warning.format()


def test_no_directory_key_means_an_empty_directory(tmp_path):
    write(tmp_path, "herald.yaml", "timezone: UTC\n")
    cfg = load_config(tmp_path / "herald.yaml", env={})
    assert cfg.directory is None
    assert open_directory(None).user_phone(1) == (None, "user 1 is not in the directory")


# ---------------------------------------------------------------- Bitrix lookups

def test_user_by_id_email_or_login_with_phone_priority(bitrix_url):
    d = BitrixDirectory(bitrix_url)
    assert d.user_phone(7) == ("8 (900) 555-00-01", "PERSONAL_MOBILE")       # PERSONAL_PHONE is empty
    assert d.user_phone("7") == ("8 (900) 555-00-01", "PERSONAL_MOBILE")
    assert d.user_phone("anna@EXAMPLE.com") == ("8 (900) 555-00-01", "PERSONAL_MOBILE")
    assert d.user_phone("boris") == ("+7 900 555-00-02", "PERSONAL_PHONE")   # before PERSONAL_MOBILE
    assert d.user_phone(12) == ("+79005550012", "WORK_PHONE")               # "не указан" is no number
    assert d.user_phone(10) == ("+79005550010", PHONE_AUTH)                 # the last resort
    assert d.user_phone(9) == (None, "user 9 has no phone number")
    assert d.user_phone(11) == (None, "user 11 is not active in Bitrix")
    assert d.user_phone("nobody@example.com") == (None, "user nobody@example.com is not in the Bitrix directory")
    assert d.user_phone(None) == (None, "no user given")
    d.close()


def test_departments_are_nested_sections_of_the_departments_iblock(bitrix_url):
    d = BitrixDirectory(bitrix_url)
    sales = d.department("Sales")
    assert sales == [("anna", "8 (900) 555-00-01"), ("boris", "+7 900 555-00-02"), ("olga", "")]
    assert (sales.scope, sales.error) == (("Sales", "Sales Moscow"), "")   # not the catalog's "Sales"
    company = d.department("Company")
    assert [label for label, _ in company] == ["anna", "boris", "olga", "maria"]
    assert company.scope == ("Company", "Sales", "IT", "Sales Moscow")
    assert d.department("sales moscow") == [("anna", "8 (900) 555-00-01")]
    assert d.department("Marketing").error == 'no department named "Marketing" in Bitrix'
    d.close()


def test_without_a_departments_iblock_any_section_of_that_name_counts(tmp_path):
    url = f"sqlite:///{tmp_path / 'bitrix.db'}"
    create_bitrix(url, [t for t in TABLES if t != "b_iblock"])
    d = BitrixDirectory(url)
    sales = d.department("Sales")
    assert sales.scope == ("Sales", "Sales Moscow", "Sale shoes")     # the catalog's "Sales" too
    assert [label for label, _ in sales] == ["anna", "boris", "olga"]


def test_groups_by_string_id_name_alias_or_id_with_active_dates(bitrix_url):
    d = BitrixDirectory(bitrix_url, groups={"ops": "operators", "admins": "1"})
    expected = [("anna", "8 (900) 555-00-01"), ("boris", "+7 900 555-00-02")]
    assert d.group("operators") == expected and d.group("operators").scope == ("Операторы",)
    assert d.group("Операторы") == expected
    assert d.group("ops") == expected
    assert d.group("admins") == [("petr", "+79005550010")]
    assert d.group("5") == expected
    assert d.group("old").error == 'group "old" is not active in Bitrix'
    assert d.group("nope").error == 'group "nope" is not in Bitrix'
    assert d.subscribers("news") == [] and d.subscribers("news").note
    d.close()


def test_answers_are_cached_per_lookup_until_the_ttl_passes(bitrix_url):
    clock = Clock()
    d = BitrixDirectory(bitrix_url, ttl=300, clock=clock)
    statements = counting(d)
    assert d.user_phone(7)[0] == "8 (900) 555-00-01"
    assert statements, "the first lookup reads the database"
    first = len(statements)
    execute(bitrix_url, "UPDATE b_user SET PERSONAL_PHONE = '+79005557777' WHERE ID = 7")
    assert d.user_phone(7)[0] == "8 (900) 555-00-01" and len(statements) == first   # no query
    assert d.user_phone("anna")[0] == "+79005557777"        # another argument is another lookup
    d.department("Sales")
    d.group("operators")
    counted = len(statements)
    d.department("Sales"), d.group("operators"), d.user_phone(9)
    assert len(statements) == counted + 1                   # only user 9 was new
    clock.now += 301
    assert d.user_phone(7) == ("+79005557777", "PERSONAL_PHONE")
    d.close()


def test_the_cache_is_shared_safely_between_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path / 'bitrix.db'}"
    create_bitrix(url)
    d = BitrixDirectory(url)
    keys = [7, "boris", 9, "anna@example.com", 12, 10] * 20
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(d.user_phone, keys))
    assert answers[:6] == [("8 (900) 555-00-01", "PERSONAL_MOBILE"), ("+7 900 555-00-02", "PERSONAL_PHONE"),
                           (None, "user 9 has no phone number"), ("8 (900) 555-00-01", "PERSONAL_MOBILE"),
                           ("+79005550012", "WORK_PHONE"), ("+79005550010", PHONE_AUTH)]
    assert answers == answers[:6] * 20
    d.close()


def test_ttl_zero_reads_every_time(tmp_path):
    url = f"sqlite:///{tmp_path / 'bitrix.db'}"
    create_bitrix(url)
    d = BitrixDirectory(url, ttl=0)
    assert d.user_phone(9) == (None, "user 9 has no phone number")
    execute(url, "UPDATE b_user SET WORK_PHONE = '+79005550009' WHERE ID = 9")
    assert d.user_phone(9) == ("+79005550009", "WORK_PHONE")


def test_a_database_that_does_not_answer_gives_a_reason_not_an_exception():
    d = BitrixDirectory("mysql+pymysql://root@127.0.0.1:1/test")
    phone, why = d.user_phone(7)
    assert phone is None and why.startswith("the Bitrix database failed (OperationalError: (2003")
    for found in (d.department("Sales"), d.group("ops")):
        assert found == [] and found.error.startswith("the Bitrix database failed")
    d.close()


def test_failures_are_not_cached(tmp_path):
    url = f"sqlite:///{tmp_path / 'bitrix.db'}"
    d = BitrixDirectory(url, ttl=300)
    phone, why = d.user_phone(7)
    assert phone is None and "no such table: b_user" in why
    assert d.department("Sales").error.startswith("the Bitrix database failed")
    d.clear()     # table existence was cached as an answer; the schema appears now
    create_bitrix(url)
    assert d.user_phone(7) == ("8 (900) 555-00-01", "PERSONAL_MOBILE")
    assert d.department("Sales").scope == ("Sales", "Sales Moscow")


def test_failure_is_not_cached_even_without_clearing(tmp_path):
    url = f"sqlite:///{tmp_path / 'bitrix.db'}"
    create_bitrix(url, [t for t in TABLES if t != "b_group"])
    d = BitrixDirectory(url, ttl=300)
    assert "no such table: b_group" in d.group("operators").error
    create_bitrix(url, ["b_group"])
    assert [label for label, _ in d.group("operators")] == ["anna", "boris"]


# ---------------------------------------------------------------- lookups in the trace

RULE = 'rule "d" on order.created send sms to user order.user_id, department "Sales" text "hi"\n'


def run_rule(project_dir, directory, user_id):
    project_dir.setup(RULE)
    evaluator = Evaluator(project_dir.load(), directory=directory)
    when = datetime(2026, 11, 27, 12, 0, tzinfo=MSK)
    event = parse_event({"type": "order.created", "time": when.isoformat(),
                         "data": {"order": {"id": 1, "user_id": user_id}}}, default_site="s1")
    runs, _ = evaluator.process(event, when)
    (run,) = runs
    return run


def test_trace_shows_each_bitrix_lookup(project_dir, bitrix_url):
    d = BitrixDirectory(bitrix_url)
    run = run_rule(project_dir, d, 7)
    assert run.trace[1:3] == ('user 7 → +79005550001 (directory: PERSONAL_MOBILE)',
                              'department "Sales" → 3 people (Sales, Sales Moscow; 1 without a phone)')
    assert [(m.to, m.status) for m in run.messages] == [
        ("+79005550001", "planned"), ("+79005550002", "planned"), ("", "failed")]
    assert run.messages[2].recipient == "department Sales: olga"
    run = run_rule(project_dir, d, 9)
    assert run.trace[1] == "user 9 → no phone (user 9 has no phone number)"
    assert (run.messages[0].status, run.messages[0].reason) == (
        "failed", "user 9 (user 9 has no phone number) gives no phone number")
    d.close()


def test_trace_shows_failed_lookups_and_the_rule_still_runs(project_dir):
    d = BitrixDirectory("mysql+pymysql://root@127.0.0.1:1/test")
    run = run_rule(project_dir, d, 7)
    assert run.fired and run.trace[1].startswith("user 7 → no phone (the Bitrix database failed (")
    assert run.trace[2].startswith('department "Sales" → no one (the Bitrix database failed (')
    assert [m.status for m in run.messages] == ["failed", "failed"]
    assert run.messages[1].reason.startswith("department Sales (the Bitrix database failed")


def test_trace_with_a_static_directory_and_a_broken_one(project_dir):
    directory = StaticDirectory.from_mapping({
        "users": [{"id": 7, "login": "anna", "PERSONAL_MOBILE": "89005550001", "department": ["Sales Moscow"]}],
        "departments": {"Sales": None, "Sales Moscow": "Sales"}})
    run = run_rule(project_dir, directory, None)
    assert run.trace[1:3] == ("user order.user_id → no phone (no user given)",
                              'department "Sales" → 1 person (Sales, Sales Moscow)')

    class Broken:
        def user_phone(self, key):
            raise RuntimeError("boom")

        def department(self, name):
            raise RuntimeError("boom")

    run = run_rule(project_dir, Broken(), 7)
    assert run.trace[1:3] == ("user 7 → no phone (the directory failed (RuntimeError: boom))",
                              'department "Sales" → no one (the directory failed (RuntimeError: boom))')


def test_members_trace_wording():
    assert members_trace("group", "ops", Lookup([("a", "+1")], scope=["Операторы"])) == \
        'group "ops" → 1 person (Операторы)'
    assert members_trace("subscribers", "news", Lookup(["+1", "+2"])) == 'subscribers "news" → 2 phones'


# ---------------------------------------------------------------- the daemon builds it

async def test_daemon_builds_the_directory_and_rebuilds_it_on_reload(tmp_path, monkeypatch):
    import trio

    from herald.engine.daemon import Daemon
    from herald.engine.bsg.fake import FakeBSG, serve
    from tests.daemon_helpers import free_port, write_project

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'bitrix.db'}"
    create_bitrix(url)
    rules = 'rule "d" on order.created send sms to user order.user_id text "hi"\n'
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, FakeBSG(), "127.0.0.1", 0)
        config_path = write_project(tmp_path, rules, port=free_port(), bsg_url=f"http://127.0.0.1:{port}",
                                    extra="directory:\n  bitrix: sqlite:///bitrix.db\n  ttl: 60\n")
        daemon = Daemon(load_config(config_path))
        first = daemon.directory
        assert isinstance(first, BitrixDirectory) and first.ttl == 60
        await nursery.start(daemon.run)
        await daemon.accept([parse_event({"type": "order.created", "id": "e1",
                                          "data": {"order": {"id": 1, "user_id": 8}}}, default_site="s1")], "test")
        with trio.fail_after(10):
            while not daemon.store._execute("SELECT 1 FROM firings").fetchone():
                await trio.sleep(0.05)
        trace = json.loads(daemon.store._execute("SELECT trace FROM firings").fetchone()[0])["trace"]
        assert "user 8 → +79005550002 (directory: PERSONAL_PHONE)" in trace
        config_path.write_text(config_path.read_text().replace("ttl: 60", "ttl: 5"))
        ok, errors = await daemon.reload()
        assert ok and errors == [] and daemon.directory is not first and daemon.directory.ttl == 5
        assert first._engine is None    # the old pool was closed
        nursery.cancel_scope.cancel()
