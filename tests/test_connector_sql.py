"""The SQL connector: option checks, polling logic on SQLite, MariaDB and PostgreSQL,
and a real daemon end to end (rows → events → messages at the fake BSG)."""

from __future__ import annotations

import json
import logging
import re
import textwrap
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio

from herald import connectors
from herald.connectors import sql as sqlmod
from herald.connectors.sql import (MappedSource, SqlConnector, decode_cursor, encode_cursor, json_value)
from herald.engine.config import ConnectorConfig, Secret, load_config
from herald.engine.daemon import Daemon
from herald.engine.errors import ConfigError
from herald.engine.helpers.drivers import DRIVERS, EXTRAS, install_command, missing_driver
from herald.engine.events import parse_event
from tests.daemon_helpers import fake_bsg, free_port, herald, write_project
from tests.sqlservers import db_url, dialect_of, mariadb_url, postgres_url, sqlite_url  # noqa: F401 (fixtures)

T0 = datetime(2024, 5, 19, 14, 3, 11)

ORDERS = """\
- name: orders
  table: shop_orders
  key: id
  cursor: id
  event: order.created
  map:
    order.id: id
    order.status: status
    customer.phone: phone
"""

SNAPSHOT = """\
- name: orders
  table: shop_orders
  key: id
  cursor: {column: updated_at, tiebreak: id}
  mode: snapshot
  entity: order
  map:
    order.id: id
    order.status: status
    customer.phone: phone
"""


# ====================================================================== helpers

def entry(tmp_path: Path, block: str, env: dict | None = None) -> ConnectorConfig:
    """The first connector of a herald.yaml holding `block`, as the daemon gets it."""
    path = tmp_path / "herald.yaml"
    path.write_text("connectors:\n" + block, encoding="utf-8")
    return load_config(path, env=env or {}).connectors[0]


def problems(tmp_path: Path, block: str, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        SqlConnector(entry(tmp_path, block, env))
    return [d.format() for d in caught.value.diagnostics]


def connector_block(sources: str = ORDERS, *, url: str = "!env SHOP_DB_URL", extra: str = "",
                    name: str = "shop", interval: float = 0.05) -> str:
    return (f"connectors:\n  - type: sql\n    name: {name}\n    url: {url}\n    interval: {interval}\n"
            + textwrap.indent(extra, "    ") + "    sources:\n" + textwrap.indent(sources, "      "))


def connector_for(url: str, sources: str = ORDERS, **options) -> SqlConnector:
    """A connector built from a parsed sources block (no file: coarse locations)."""
    from ruamel.yaml import YAML
    parsed = json.loads(json.dumps(YAML(typ="safe").load(sources)))
    return SqlConnector(ConnectorConfig("sql", {"url": Secret(url), "sources": parsed, **options}))


class FakeContext:
    """Journals like the reactor's Context: validates, ignores known ids, moves cursors
    and snapshots with the events."""

    def __init__(self, name: str = "shop"):
        self.name = name
        self.journal: dict[str, dict] = {}
        self.cursors: dict[str, str] = {}
        self.snapshots: dict[tuple[str, str], dict] = {}
        self.status: tuple[bool, str] = (False, "starting")

    async def emit(self, events, *, cursor=None, snapshots=()):
        parsed = [parse_event(e, default_site="s1", known_sites={"s1": None, "s2": None}, pointer=f"/{i}")
                  for i, e in enumerate(events)]
        new = []
        for event in parsed:
            if event.id not in self.journal:
                self.journal[event.id] = event.as_json()
                new.append(event.id)
        if cursor:
            self.cursors[cursor[0]] = cursor[1]
        for source, key, data in snapshots:
            if data is None:
                self.snapshots.pop((source, key), None)
            else:
                self.snapshots[(source, key)] = json.loads(json.dumps(data))
        self.alive()
        return new

    async def get_snapshots(self, source, keys):
        return {k: self.snapshots[(source, k)] for k in keys if (source, k) in self.snapshots}

    async def get_cursor(self, key):
        return self.cursors.get(key)

    async def set_cursor(self, key, value):
        self.cursors[key] = value

    def alive(self, detail=""):
        self.status = (True, detail or "ok")

    def down(self, detail):
        self.status = (False, detail)

    def events(self, type_prefix: str = "") -> list[dict]:
        return [e for e in self.journal.values() if e["type"].startswith(type_prefix)]


async def drain(c: SqlConnector, ctx: FakeContext) -> None:
    """Poll until no batch is full (what the loop does before sleeping)."""
    more = True
    while more:
        more, found = await c.poll(ctx)
        assert found == []


def orders_table(metadata: sa.MetaData, name: str = "shop_orders") -> sa.Table:
    return sa.Table(name, metadata,
                    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("status", sa.String(4)),
                    sa.Column("phone", sa.String(32)),
                    sa.Column("site", sa.String(4)),
                    sa.Column("updated_at", sa.DateTime))


@pytest.fixture
def shop(db_url):
    """A writer engine on the test database with an empty `shop_orders` table."""
    engine = sa.create_engine(db_url)
    metadata = sa.MetaData()
    table = orders_table(metadata)
    metadata.create_all(engine)
    yield engine, table, db_url
    engine.dispose()


def insert(engine: sa.Engine, table: sa.Table, *rows: dict) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"status": "N", "phone": None, "site": None, "updated_at": T0, **r} for r in rows])


def update(engine: sa.Engine, table: sa.Table, order_id: int, **values) -> None:
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == order_id).values(**values))


def phone(n: int) -> str:
    return f"+7900{n:07d}"




async def until(predicate, timeout: float = 10.0):
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await trio.sleep(0.02)


async def journal(daemon: Daemon, source: str = "shop") -> list[dict]:
    def read():
        rows = daemon.store._conn.execute(
            "SELECT id, type, data, previous FROM events WHERE source = ? ORDER BY seq", (source,)).fetchall()
        return [{"id": r[0], "type": r[1], "data": json.loads(r[2]),
                 "previous": json.loads(r[3]) if r[3] else None} for r in rows]
    return await daemon.db(read)


SEND_CREATED = 'on order.created send sms to customer.phone text "new order"\n'
SEND_DONE = 'on order.status == "F" send sms to customer.phone text "order done"\n'


# ====================================================================== options

def test_options_are_read_with_defaults_and_urls_get_the_installed_drivers(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    block = ("  - type: sql\n    url: sqlite:///data/shop.db\n    sources:\n"
             + textwrap.indent(ORDERS, "      "))
    c = SqlConnector(entry(tmp_path, block))
    assert (c.interval, c.batch, c.silence, c.charset, c.start) == (1.0, 500, 60.0, "utf-8", "end")
    assert c.sqlite_path == tmp_path / "data" / "shop.db"          # relative to the config file
    assert c.url.database == f"file:{tmp_path}/data/shop.db" and c.url.query == {"mode": "ro", "uri": "true"}
    (source,) = c.sources
    assert (source.name, source.mode, source.key, source.cursor_column, source.tiebreak) == (
        "orders", "append", ("id",), "id", None)
    assert source.fields == ((("order", "id"), "id"), (("order", "status"), "status"),
                             (("customer", "phone"), "phone"))
    env = {"SHOP_DB_URL": "mysql://u:pw@db.example.com/shop"}
    c = SqlConnector(entry(tmp_path, block.replace("sqlite:///data/shop.db", "!env SHOP_DB_URL")
                           + "    interval: 0.5\n    batch: 100\n    silence: 5\n    charset: cp1251\n", env))
    assert c.url.drivername == "mysql+pymysql" and c.safe_url == "mysql+pymysql://u:***@db.example.com/shop"
    assert (c.interval, c.batch, c.silence, c.charset) == (0.5, 100, 5.0, "cp1251")
    c = SqlConnector(entry(tmp_path, block.replace("sqlite:///data/shop.db", "postgres://u@h/db")))
    assert c.url.drivername == "postgresql+psycopg"
    assert connectors.find("sql") is SqlConnector


def test_unknown_keys_are_located_with_did_you_mean_even_inside_sources(tmp_path):
    block = """\
  - type: sql
    url: sqlite:///shop.db
    intervall: 2
    sources:
      - name: orders
        tabel: shop_orders
        key: id
        cursor: {column: updated_at, tiebrake: id}
        mode: apend
        event: order.created
        map: {order.id: id}
"""
    found = problems(tmp_path, block)
    file = str(tmp_path / "herald.yaml")
    expected = [
        (f'{file}:4:5: error: sql connector: unknown option "intervall"', 'did you mean "interval"?'),
        (f'{file}:7:9: error: sql connector: source "orders": unknown key "tabel"', 'did you mean "table"?'),
        (f'{file}:9:38: error: sql connector: source "orders": cursor: unknown key "tiebrake"',
         'did you mean "tiebreak"?'),
        (f'{file}:10:15: error: sql connector: source "orders": mode: unknown mode "apend"',
         'did you mean "append"?'),
    ]
    for headline, hint in expected:
        assert any(p.startswith(headline) and hint in p for p in found), (headline, found)
    # `table` was misspelt, so it is also missing
    assert any("table or query is required" in p for p in found)


def test_missing_and_wrong_fields_are_reported_all_at_once(tmp_path):
    block = """\
  - type: sql
    interval: fast
    batch: 0
    sources:
      - name: a
        table: t
        cursor: id
        mode: snapshot
        event: order.created
        map: {order.id: id}
      - name: a
        query: "SELECT id FROM t WHERE created > :since ORDER BY id"
        key: id
        cursor: id
        event: "order created"
        map: {order: id, order.id: id}
      - 42
"""
    found = "\n".join(problems(tmp_path, block))
    for needle in [
        ":2:5: error: sql connector: url is required",
        ":3:15: error: sql connector: interval: expected a number of seconds, got \"fast\"",
        ":4:12: error: sql connector: batch: 0 is out of range",
        ':6:9: error: sql connector: source "a": key is required',
        ':10:9: error: sql connector: source "a": event is for mode: append',
        'source "a": entity is required',
        ':13:16: error: sql connector: source "a": query: leave out ORDER BY and LIMIT',
        ':16:16: error: sql connector: source "a": event: "order created" is not an event type',
        ':17:26: error: sql connector: source "a": map: "order.id" and "order" overlap',
        ":18:9: error: sql connector: sources[2]: expected a source",
    ]:
        assert needle in found, (needle, found)
    found = "\n".join(problems(tmp_path, "  - type: sql\n    url: sqlite:///x.db\n"))
    assert "sources or preset is required" in found
    found = "\n".join(problems(tmp_path, "  - type: sql\n    url: sqlite:///x.db\n    sources:\n"
                               + textwrap.indent(ORDERS.replace("table: shop_orders",
                                                                "query: SELECT id FROM t WHERE a > :x"), "      ")))
    assert 'query: :x is a parameter placeholder' in found
    found = "\n".join(problems(tmp_path, "  - type: sql\n    url: sqlite:///x.db\n    sources:\n"
                               + textwrap.indent(SNAPSHOT.replace("{column: updated_at, tiebreak: id}", "id"),
                                                 "      ")))
    assert "cursor: id is the key, which never changes" in found


def test_a_secret_url_is_never_echoed(tmp_path):
    env = {"SHOP_DB_URL": "oracle://scott:Tiger-Secret-77@db/x"}
    block = "  - type: sql\n    url: !env SHOP_DB_URL\n    sources:\n" + textwrap.indent(ORDERS, "      ")
    (p,) = problems(tmp_path, block, env)
    assert 'unsupported database "oracle"' in p and "Tiger" not in p
    env = {"SHOP_DB_URL": "not a url at all Tiger-Secret-77"}
    (p,) = problems(tmp_path, block, env)
    assert "url: not a database URL" in p and "Tiger" not in p
    (p,) = problems(tmp_path, block, {"SHOP_DB_URL": " "})
    assert "url: expected a database URL, got a value from !env/!secret" in p


@pytest.mark.parametrize("url, extra", [
    ("mysql+nosuchdriver://shop:Tiger-Secret-77@db/shop", "mysql"),       # a driver SQLAlchemy lacks
    ("mysql+mysqldb://shop:Tiger-Secret-77@db/shop", "mysql"),            # one whose module is missing
    ("mariadb+mysqldb://shop:Tiger-Secret-77@db/shop", "mysql"),
    ("postgresql+psycopg2://shop:Tiger-Secret-77@db/shop", "postgresql"),
])
def test_a_missing_driver_is_a_located_error_naming_the_extra(tmp_path, url, extra):
    """The database drivers are extras of herald-bsg ([mysql], [postgresql]): a missing one is
    reported when the config is checked, with the extra to install — not a bare
    ModuleNotFoundError from SQLAlchemy at the first poll."""
    block = "  - type: sql\n    url: !env SHOP_DB_URL\n    sources:\n" + textwrap.indent(ORDERS, "      ")
    (p,) = problems(tmp_path, block, {"SHOP_DB_URL": url})
    assert re.search(r":3:10: error: sql connector: url: the driver \"\w+\" for \w+ is not (available|installed)", p)
    assert f"pip install 'herald-bsg[{extra}]'" in p and "Tiger" not in p


def test_every_database_with_an_extra_names_it():
    assert install_command("mysql") == install_command("mariadb") == "pip install 'herald-bsg[mysql]'"
    assert install_command("postgresql") == "pip install 'herald-bsg[postgresql]'"
    assert install_command("sqlite") is None            # in the standard library
    assert set(EXTRAS) | {"sqlite"} == set(DRIVERS)
    # what the extras install is what the connector uses by default
    assert missing_driver(sa.make_url("mysql+pymysql://h/db")) is None
    assert missing_driver(sa.make_url("postgresql+psycopg://h/db")) is None


def test_presets_are_looked_up_and_their_sources_join_the_custom_ones(tmp_path, monkeypatch):
    (p,) = problems(tmp_path, "  - type: sql\n    url: sqlite:///x.db\n    preset: bitrx\n")
    assert 'preset: unknown preset "bitrx"' in p and 'did you mean "bitrix"?' in p
    seen = {}

    def factory(config, settings):
        seen.update(settings)
        return [MappedSource(name="mail", mode="append", key=("ID",), cursor_column="ID", table="b_event",
                             event="mail.x", fields=((("x", "id"), "ID"),))]

    monkeypatch.setitem(sqlmod.PRESETS, "demo", factory)
    block = ("  - type: sql\n    url: sqlite:///x.db\n    preset: demo\n    demo: {charset: cp1251}\n"
             "    charset: cp1251\n    sources:\n" + textwrap.indent(ORDERS, "      "))
    c = SqlConnector(entry(tmp_path, block))
    assert [s.name for s in c.sources] == ["mail", "orders"]
    assert seen["options"] == {"charset": "cp1251"} and seen["dialect"] == "sqlite"
    assert seen["charset"] == "cp1251" and seen["start"] == "end"
    # the preset's key is an option only when that preset is chosen
    (p,) = problems(tmp_path, block.replace("    preset: demo\n", ""))
    assert 'unknown option "demo"' in p
    # a clash of names is an error
    (p,) = problems(tmp_path, block.replace("name: orders", "name: mail"))
    assert 'two sources are named "mail"' in p

    def broken(config, settings):
        from herald.engine.errors import Diagnostic
        raise ConfigError([Diagnostic("demo preset: charset: nope", config.locations.get("demo"))])

    monkeypatch.setitem(sqlmod.PRESETS, "demo", broken)
    (p,) = problems(tmp_path, block)
    assert re.search(r":5:11: error: demo preset: charset: nope", p)


def test_cursor_values_round_trip_with_their_types():
    for value in [42, "abc", T0, datetime(2024, 1, 1, tzinfo=__import__("datetime").timezone.utc),
                  Decimal("10.50"), b"\x00\xff", [T0, 7], None]:
        assert decode_cursor(encode_cursor(value)) == value
    assert json_value(b"\xc8\xe2\xe0\xed", "cp1251") == "Иван"
    assert json_value(Decimal("1500.0000")) == "1500.0000"
    assert json_value(T0) == "2024-05-19T14:03:11"
    assert json_value(timedelta(hours=10, minutes=30)) == "10:30:00"


# ====================================================================== polling (each database)

async def test_timestamp_cursor_takes_equal_timestamps_in_tiebreak_order(shop):
    engine, table, url = shop
    t1 = T0 + timedelta(seconds=1)
    insert(engine, table, {"id": 1}, {"id": 2}, {"id": 3}, {"id": 5}, {"id": 4, "updated_at": t1})
    c = connector_for(url, ORDERS.replace("cursor: id", "cursor: {column: updated_at, tiebreak: id}"),
                      batch=2, start="beginning")
    ctx = FakeContext()
    await c.resume(ctx)
    assert await c.poll_source(ctx, c.sources[0]) is True          # a full batch: the loop goes on at once
    await drain(c, ctx)
    ids = [e["data"]["order"]["id"] for e in ctx.events()]
    assert ids == [1, 2, 3, 5, 4]
    ts, tie = decode_cursor(ctx.cursors["orders"])
    assert tie == 4 and str(ts).startswith("2024-05-19")
    # same timestamp as the cursor, higher tiebreak: seen; an older timestamp after the fact: not (documented)
    insert(engine, table, {"id": 6, "updated_at": t1}, {"id": 7, "updated_at": T0})
    await drain(c, ctx)
    assert [e["data"]["order"]["id"] for e in ctx.events()] == [1, 2, 3, 5, 4, 6]
    assert all(e["id"].startswith("sql:shop:orders:") for e in ctx.events())


async def test_re_reading_after_a_lost_cursor_journals_nothing_new(shop):
    engine, table, url = shop
    insert(engine, table, *({"id": i, "phone": phone(i)} for i in range(1, 4)))
    ctx = FakeContext()
    for sources in (ORDERS, SNAPSHOT):
        ctx.cursors.clear()
        c = connector_for(url, sources.replace("name: orders", f"name: {'o' if sources is ORDERS else 's'}"),
                          start="beginning")
        await c.resume(ctx)
        await drain(c, ctx)
    assert len(ctx.journal) == 6
    first = dict(ctx.journal)
    ctx.cursors.clear()                                   # as if the cursor commit were lost
    for name, sources in (("o", ORDERS), ("s", SNAPSHOT)):
        c = connector_for(url, sources.replace("name: orders", f"name: {name}"), start="beginning")
        await c.resume(ctx)
        await drain(c, ctx)
    assert ctx.journal == first                           # the same ids: nothing new


async def test_start_end_skips_existing_rows_and_takes_a_snapshot_baseline(shop):
    engine, table, url = shop
    insert(engine, table, *({"id": i, "phone": phone(i)} for i in range(1, 6)))
    ctx = FakeContext()
    append = connector_for(url, ORDERS, batch=2)
    snapshot = connector_for(url, SNAPSHOT.replace("name: orders", "name: state"), batch=2)
    for c in (append, snapshot):
        await c.resume(ctx)
        await drain(c, ctx)
    assert ctx.journal == {}
    assert len([k for k in ctx.snapshots if k[0] == "state"]) == 5
    assert not ctx.cursors["orders"].startswith("baseline:")
    insert(engine, table, {"id": 6, "phone": phone(6), "updated_at": T0 + timedelta(seconds=1)})
    update(engine, table, 2, status="P", updated_at=T0 + timedelta(seconds=2))
    for c in (append, snapshot):
        await drain(c, ctx)
    assert sorted((e["type"], e["data"]["order"]["id"]) for e in ctx.events()) == [
        ("order.created", 6), ("order.created", 6), ("order.updated", 2)]
    (updated,) = ctx.events("order.updated")
    assert updated["previous"] == {"order": {"status": "N"}}


async def test_a_restart_in_the_middle_of_the_first_read_stays_silent(sqlite_url):
    engine = sa.create_engine(sqlite_url)
    metadata = sa.MetaData()
    table = orders_table(metadata)
    metadata.create_all(engine)
    insert(engine, table, *({"id": i} for i in range(1, 6)))
    ctx = FakeContext()
    c = connector_for(sqlite_url, ORDERS, batch=2)
    await c.resume(ctx)
    await c.poll(ctx)                                     # one batch of the baseline, then "crash"
    assert ctx.cursors["orders"].startswith("baseline:")
    c = connector_for(sqlite_url, ORDERS, batch=2)
    await c.resume(ctx)
    await drain(c, ctx)
    insert(engine, table, {"id": 6})
    await drain(c, ctx)
    assert [e["data"]["order"]["id"] for e in ctx.events()] == [6]


async def test_snapshot_events_carry_only_the_changed_fields(shop):
    engine, table, url = shop
    ctx = FakeContext()
    c = connector_for(url, SNAPSHOT, start="beginning")
    await c.resume(ctx)
    insert(engine, table, {"id": 1, "phone": phone(1)})
    await drain(c, ctx)
    update(engine, table, 1, updated_at=T0 + timedelta(seconds=1))          # no mapped field changed
    await drain(c, ctx)
    update(engine, table, 1, status="P", phone=phone(9), updated_at=T0 + timedelta(seconds=2))
    await drain(c, ctx)
    update(engine, table, 1, status="N", updated_at=T0 + timedelta(seconds=3))
    await drain(c, ctx)
    update(engine, table, 1, status="P", updated_at=T0 + timedelta(seconds=4))   # the same change again
    await drain(c, ctx)
    events = ctx.events()
    assert [e["type"] for e in events] == ["order.created", "order.updated", "order.updated", "order.updated"]
    assert events[1]["previous"] == {"order": {"status": "N"}, "customer": {"phone": phone(1)}}
    assert events[1]["data"] == {"order": {"id": 1, "status": "P"}, "customer": {"phone": phone(9)}}
    assert events[2]["previous"] == {"order": {"status": "P"}}
    assert events[3]["previous"] == {"order": {"status": "N"}} and events[3]["id"] != events[1]["id"]
    assert ctx.snapshots[("orders", "1")]["order"]["status"] == "P"


async def test_a_query_source_and_a_site_column(shop):
    engine, table, url = shop
    insert(engine, table, {"id": 1, "phone": phone(1), "site": "s2"}, {"id": 2, "status": "X"},
           {"id": 3, "phone": phone(3), "site": None})
    sources = """\
- name: live
  query: "SELECT id, status AS st, phone, site FROM shop_orders WHERE status <> 'X'"
  key: id
  cursor: id
  event: order.created
  site: {column: site}
  map: {order.id: id, order.status: st, customer.phone: phone}
"""
    ctx = FakeContext()
    c = connector_for(url, sources, start="beginning")
    await c.resume(ctx)
    await drain(c, ctx)
    assert [(e["data"]["order"]["id"], e["data"]["order"]["status"], e["site"]) for e in ctx.events()] == [
        (1, "N", "s2"), (3, "N", "s1")]


async def test_a_row_herald_refuses_holds_its_source_and_reports_down(shop):
    engine, table, url = shop
    insert(engine, table, {"id": 1, "site": "s1"}, {"id": 2, "site": "s9"}, {"id": 3, "site": "s1"})
    c = connector_for(url, ORDERS + "  site: {column: site}\n", start="beginning")
    ctx = FakeContext()
    await c.resume(ctx)
    more, found = await c.poll(ctx)
    (problem,) = found
    assert problem.startswith("source orders: row 2: /1/site: unknown site 's9'")
    assert ctx.journal == {} and "orders" not in ctx.cursors           # nothing kept; retried next round
    update(engine, table, 2, site="s2")
    await drain(c, ctx)
    assert len(ctx.journal) == 3


async def test_values_are_decoded_for_events(shop):
    engine, table, url = shop
    metadata = sa.MetaData()
    values = sa.Table("shop_values", metadata,
                      sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("price", sa.Numeric(18, 4)),
                      sa.Column("created", sa.DateTime),
                      sa.Column("raw_name", sa.LargeBinary))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(values.insert(), [{"id": 1, "price": Decimal("1500.5"), "created": T0,
                                        "raw_name": "Иван".encode("cp1251")}])
    sources = """\
- name: v
  table: shop_values
  key: id
  cursor: id
  event: order.created
  map: {order.id: id, order.price: price, order.date: created, customer.name: raw_name}
"""
    ctx = FakeContext()
    c = connector_for(url, sources, start="beginning", charset="windows-1251")
    await c.resume(ctx)
    await drain(c, ctx)
    ((event),) = ctx.events()
    order = event["data"]["order"]
    assert event["data"]["customer"]["name"] == "Иван"
    if dialect_of(url) == "sqlite":        # SQLite has no decimal or datetime type: what was stored
        assert float(order["price"]) == 1500.5 and order["date"].startswith("2024-05-19 14:03:11")
    else:
        assert order["price"] == "1500.5000" and order["date"] == "2024-05-19T14:03:11"


def test_the_connection_is_read_only(shop):
    engine, table, url = shop
    insert(engine, table, {"id": 1})
    c = connector_for(url)
    try:
        with c.connection() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM shop_orders")).scalar() == 1
            with pytest.raises(sa.exc.DBAPIError) as caught:
                conn.execute(sa.text("INSERT INTO shop_orders (id, status) VALUES (2, 'N')"))
            assert re.search(r"read.?only", str(caught.value), re.I)
        with c.connection() as conn:                 # every connection, not just the first
            with pytest.raises(sa.exc.DBAPIError):
                conn.execute(sa.text("UPDATE shop_orders SET status = 'F'"))
    finally:
        c._dispose()
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.status)).all() == [("N",)]


# ====================================================================== a real daemon

async def test_rows_inserted_while_herald_runs_become_messages(shop, tmp_path, monkeypatch):
    engine, table, url = shop
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHOP_DB_URL", url)
    insert(engine, table, {"id": 1, "phone": phone(1)})                  # before the first start: skipped
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, SEND_CREATED, port=free_port(), bsg_url=bsg_url,
                               extra=connector_block())
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["shop"].alive)
            insert(engine, table, *({"id": i, "phone": phone(i)} for i in range(2, 5)))
            await until(lambda: len(fake.messages()) >= 3)
            insert(engine, table, {"id": 5, "phone": phone(5)})
            await until(lambda: len(fake.messages()) >= 4)
            await trio.sleep(0.3)
            assert sorted(m["msisdn"] for m in fake.messages()) == [phone(i)[1:] for i in range(2, 6)]
            health = (await client.get("/health")).json()["connectors"]["shop"]
            assert health["alive"] and health["type"] == "sql" and "4 event(s)" in health["detail"]
            events = await journal(daemon)
            assert [e["id"] for e in events] == [f"sql:shop:orders:{i}" for i in range(2, 6)]


async def test_an_update_fires_a_state_rule_with_only_the_changed_fields(shop, tmp_path, monkeypatch):
    engine, table, url = shop
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHOP_DB_URL", url)
    insert(engine, table, {"id": 1, "phone": phone(1)})                  # known before the start (baseline)
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, SEND_DONE, port=free_port(), bsg_url=bsg_url,
                               extra=connector_block(SNAPSHOT))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["shop"].alive)
            insert(engine, table, {"id": 2, "phone": phone(2), "updated_at": T0 + timedelta(seconds=1)})
            await until(lambda: journal(daemon))
            update(engine, table, 1, status="F", updated_at=T0 + timedelta(seconds=2))
            update(engine, table, 2, updated_at=T0 + timedelta(seconds=3))     # nothing mapped changed
            await until(lambda: len(fake.messages()) >= 1)
            update(engine, table, 2, status="F", updated_at=T0 + timedelta(seconds=4))
            await until(lambda: len(fake.messages()) >= 2)
            await trio.sleep(0.3)
            assert [m["msisdn"] for m in fake.messages()] == [phone(1)[1:], phone(2)[1:]]
            events = await journal(daemon)
            assert [(e["type"], e["data"]["order"]["id"]) for e in events] == [
                ("order.created", 2), ("order.updated", 1), ("order.updated", 2)]
            assert [e["previous"] for e in events[1:]] == [{"order": {"status": "N"}}] * 2


async def test_a_restart_mid_stream_loses_and_repeats_nothing(shop, tmp_path, monkeypatch):
    engine, table, url = shop
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHOP_DB_URL", url)
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, SEND_CREATED, port=free_port(), bsg_url=bsg_url,
                               extra=connector_block(extra="batch: 3\n"))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["shop"].alive)
            insert(engine, table, *({"id": i, "phone": phone(i)} for i in range(1, 6)))
            await until(lambda: len(fake.messages()) >= 5)
        insert(engine, table, *({"id": i, "phone": phone(i)} for i in range(6, 14)))   # while Herald is down
        async with herald(config) as (daemon, client):
            await until(lambda: len(fake.messages()) >= 13)
            insert(engine, table, {"id": 14, "phone": phone(14)})
            await until(lambda: len(fake.messages()) >= 14)
            await trio.sleep(0.3)
        phones = [m["msisdn"] for m in fake.messages()]
        assert sorted(phones) == sorted(phone(i)[1:] for i in range(1, 15))


class Proxy:
    """A TCP forwarder to a database server that the test can stop and start again."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.scope: trio.CancelScope | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as self.scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    def stop(self):
        self.scope.cancel()

    async def _handle(self, client):
        async with client:
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                async def pipe(a, b):
                    try:
                        async for chunk in a:
                            await b.send_all(chunk)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()
                nursery.start_soon(pipe, client, upstream)
                nursery.start_soon(pipe, upstream, client)


async def test_the_database_going_away_and_coming_back(shop, tmp_path, monkeypatch):
    engine, table, url = shop
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(SqlConnector, "BACKOFF_MIN", 0.05)
    monkeypatch.setattr(SqlConnector, "BACKOFF_MAX", 0.2)
    dialect = dialect_of(url)
    proxy = None
    if dialect != "sqlite":
        proxy = Proxy(3306 if dialect == "mysql" else 5432)
        url = url.replace(":3306/", f":{proxy.port}/").replace(":5432/", f":{proxy.port}/")
    monkeypatch.setenv("SHOP_DB_URL", url)
    db_file = Path(url.removeprefix("sqlite:///")) if dialect == "sqlite" else None
    async with fake_bsg() as (fake, bsg_url), trio.open_nursery() as nursery:
        if proxy:
            await nursery.start(proxy.serve)
        config = write_project(tmp_path, SEND_CREATED, port=free_port(), bsg_url=bsg_url,
                               extra=connector_block(extra="silence: 0.4\n"))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["shop"].alive)
            insert(engine, table, {"id": 1, "phone": phone(1)})
            await until(lambda: len(fake.messages()) == 1)
            # away
            if proxy:
                proxy.stop()
            else:
                db_file.rename(db_file.with_suffix(".away"))
            await until(lambda: not daemon.connectors["shop"].alive)
            health = (await client.get("/health")).json()["connectors"]["shop"]
            assert not health["alive"] and health["detail"]
            await until(lambda: _types(daemon, "connector.down"))
            await trio.sleep(0.6)                                  # longer than silence again: still one
            (down,) = await _types(daemon, "connector.down")
            assert down["data"]["connector"]["name"] == "shop" and down["data"]["connector"]["status"] == "down"
            assert down["data"]["connector"]["error"] and down["data"]["connector"]["since"]
            assert not daemon.connectors["shop"].alive
            # back, with a row written meanwhile
            if proxy:
                insert(engine, table, {"id": 2, "phone": phone(2)})
                await nursery.start(proxy.serve)
            else:
                db_file.with_suffix(".away").rename(db_file)
                insert(engine, table, {"id": 2, "phone": phone(2)})
            await until(lambda: len(fake.messages()) == 2)
            await until(lambda: _types(daemon, "connector.up"))
            assert daemon.connectors["shop"].alive
            assert len(await _types(daemon, "connector.down")) == 1
            nursery.cancel_scope.cancel()


async def _types(daemon: Daemon, event_type: str) -> list[dict]:
    return [e for e in await journal(daemon) if e["type"] == event_type]


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "postgresql+psycopg"])
async def test_an_unreachable_server_is_down_once_and_the_password_stays_hidden(scheme, tmp_path, monkeypatch,
                                                                                 caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(SqlConnector, "BACKOFF_MIN", 0.05)
    monkeypatch.setattr(SqlConnector, "BACKOFF_MAX", 0.1)
    password = "Hunter2-Very-Secret"
    monkeypatch.setenv("SHOP_DB_URL", f"{scheme}://shop:{password}@127.0.0.1:{free_port()}/shop")
    caplog.set_level(logging.DEBUG)
    async with fake_bsg() as (fake, bsg_url):
        rules = 'on connector.down send sms to "+79001234567" text "shop DB down"\n'
        config = write_project(tmp_path, rules, port=free_port(), bsg_url=bsg_url,
                               extra=connector_block(extra="silence: 0.3\n"))
        async with herald(config) as (daemon, client):
            await until(lambda: _types(daemon, "connector.down"))
            await trio.sleep(0.8)
            (down,) = await _types(daemon, "connector.down")
            health = (await client.get("/health")).text
            assert '"alive":false' in health.replace(" ", "")
            assert "127.0.0.1" in health and password not in health and "***" in health
            assert password not in json.dumps(down)
            await until(lambda: len(fake.messages()) == 1)
    assert password not in caplog.text and "connector shop is down" in caplog.text


def test_the_documented_example_config_and_rules_load(tmp_path):
    from herald.grammar.compiler import compile_text
    doc = (Path(__file__).resolve().parent.parent / "docs" / "connectors" / "sql.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```(\w+)\n(.*?)^```", doc, re.S | re.M)
    (config, *_) = [text for lang, text in blocks if lang == "yaml"]
    path = tmp_path / "herald.yaml"
    path.write_text(config, encoding="utf-8")
    c = SqlConnector(load_config(path, env={"SHOP_DB_URL": "mysql://herald:pw@db.local/shop"}).connectors[0])
    assert [(s.name, s.mode) for s in c.sources] == [("new-orders", "append"), ("orders", "snapshot")]
    rules = [text for lang, text in blocks if lang == "rules"]
    assert len(rules) == 2
    for text in rules:
        result = compile_text(text, "sql.md")
        assert not [d for d in result.diagnostics if d.is_error] and result.rules, result.diagnostics


async def test_a_server_that_stops_answering_is_down_after_silence_too(tmp_path, monkeypatch):
    """A query that hangs (no error, no answer) counts as silence as well."""
    monkeypatch.chdir(tmp_path)
    held = []

    async def mute(stream):
        held.append(stream)                   # accept, never answer
        await trio.sleep_forever()

    async with fake_bsg() as (fake, bsg_url), trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, mute, listeners)
        monkeypatch.setenv("SHOP_DB_URL", f"mysql+pymysql://shop:pw@127.0.0.1:{port}/shop")
        config = write_project(tmp_path, SEND_CREATED, port=free_port(), bsg_url=bsg_url,
                               extra=connector_block(extra="silence: 0.3\n"))
        async with herald(config) as (daemon, client):
            (down,) = await until(lambda: _types(daemon, "connector.down"))
            assert down["data"]["connector"]["error"].startswith("no answer from the database for")
            assert not daemon.connectors["shop"].alive
        nursery.cancel_scope.cancel()


async def test_herald_restarted_during_an_outage_neither_repeats_down_nor_forgets_up(sqlite_url, tmp_path, monkeypatch):
    """docs/connectors/sql.md: a reported outage survives a restart (the `_down` cursor):
    the second daemon does not journal connector.down again, and journals connector.up
    when the database is back."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(SqlConnector, "BACKOFF_MIN", 0.05)
    monkeypatch.setattr(SqlConnector, "BACKOFF_MAX", 0.2)
    engine = sa.create_engine(sqlite_url)
    metadata = sa.MetaData()
    table = orders_table(metadata)
    metadata.create_all(engine)
    monkeypatch.setenv("SHOP_DB_URL", sqlite_url)
    db_file = Path(sqlite_url.removeprefix("sqlite:///"))
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, SEND_CREATED, port=free_port(), bsg_url=bsg_url,
                               extra=connector_block(extra="silence: 0.4\n"))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["shop"].alive)
            db_file.rename(db_file.with_suffix(".away"))
            await until(lambda: _types(daemon, "connector.down"))
        async with herald(config) as (daemon, client):        # restarted, the database still away
            await until(lambda: not daemon.connectors["shop"].alive)
            await trio.sleep(1.0)                                # over `silence` twice
            assert len(await _types(daemon, "connector.down")) == 1
            db_file.with_suffix(".away").rename(db_file)
            insert(engine, table, {"id": 1, "phone": phone(1)})
            await until(lambda: _types(daemon, "connector.up"))
            await until(lambda: len(fake.messages()) == 1)
            (up,) = await _types(daemon, "connector.up")
            (down,) = await _types(daemon, "connector.down")
            assert up["data"]["connector"]["status"] == "up" and down["data"]["connector"]["status"] == "down"
    engine.dispose()
