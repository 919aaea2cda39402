"""The Bitrix preset of the SQL connector (connectors/sql/bitrix/) on a Bitrix-shaped
database (tests/bitrix_schema.py).

The acceptance test: a Bitrix-shaped MariaDB gets a new order, a payment, status
changes and shipment status changes as b_event rows, the way Bitrix writes them, and a
real in-process daemon with the SHIPPED rules (rules/ of this repository) sends exactly
the customer and admin messages of rules/templates.yaml to the fake BSG — across a
restart, nothing lost or repeated. Then: the same through the b_sale_order /
b_sale_order_delivery snapshot sources; the other sources, status names, phones,
windows-1251 C_FIELDS, a malformed row and the option checks, on SQLite, MariaDB and
PostgreSQL where it matters.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import trio
from ruamel.yaml import YAML

from herald.connectors.sql.bitrix import DEFAULT_SOURCES
from herald.connectors.sql import SqlConnector
from herald.engine.config import ConnectorConfig, Secret, load_config
from herald.engine.errors import ConfigError
from herald.engine.events import parse_event
from herald.engine.bsg.fake import FakeBSG
from tests.bitrix_schema import BitrixShop
from tests.daemon_helpers import fake_bsg, free_port, herald
from tests.sqlservers import db_url, mariadb_url, postgres_url, sqlite_url  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
SITE = "Modern Clothes"
ADMIN = "+79001234567"
IVAN, OLGA = "+79007654321", "+79123456789"


# ====================================================================== helpers

def entry(tmp_path: Path, block: str, env: dict | None = None) -> ConnectorConfig:
    """The first connector of a herald.yaml holding `block`, as the daemon gets it."""
    path = tmp_path / "herald.yaml"
    path.write_text("connectors:\n" + textwrap.indent(textwrap.dedent(block), "  "), encoding="utf-8")
    return load_config(path, env=env or {}).connectors[0]


def problems(tmp_path: Path, block: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        SqlConnector(entry(tmp_path, block))
    return [d.format() for d in caught.value.diagnostics]


def connector(url: str, **bitrix) -> SqlConnector:
    return SqlConnector(ConnectorConfig("sql", {"url": Secret(url), "name": "shop", "preset": "bitrix",
                                                "start": "beginning", "bitrix": bitrix}))


class FakeContext:
    """Journals like the reactor's context: validates, ignores known ids, keeps cursors and snapshots."""

    def __init__(self):
        self.name = "shop"
        self.journal: dict[str, dict] = {}
        self.cursors: dict[str, str] = {}
        self.snapshots: dict[tuple[str, str], dict] = {}

    async def emit(self, events, *, cursor=None, snapshots=()):
        parsed = [parse_event(e, default_site="s1", known_sites={"s1": None, "s2": None}, pointer=f"/{i}")
                  for i, e in enumerate(events)]
        new = [e.id for e in parsed if e.id not in self.journal]
        for event in parsed:
            self.journal.setdefault(event.id, json.loads(json.dumps(event.as_json())))
        if cursor:
            self.cursors[cursor[0]] = cursor[1]
        for source, key, data in snapshots:
            if data is None:
                self.snapshots.pop((source, key), None)
            else:
                self.snapshots[(source, key)] = json.loads(json.dumps(data))
        return new

    async def get_snapshots(self, source, keys):
        return {k: self.snapshots[(source, k)] for k in keys if (source, k) in self.snapshots}

    async def get_cursor(self, key):
        return self.cursors.get(key)

    async def set_cursor(self, key, value):
        self.cursors[key] = value

    def alive(self, detail=""):
        pass

    def down(self, detail):
        raise AssertionError(f"connector down: {detail}")

    def events(self, prefix: str = "") -> list[dict]:
        return [e for e in self.journal.values() if e["type"].startswith(prefix)]


async def poll(c: SqlConnector, ctx: FakeContext) -> None:
    """Poll until no batch is full."""
    more = True
    while more:
        more, found = await c.poll(ctx)
        assert found == []


@pytest.fixture
def shop(db_url):
    shop = BitrixShop(db_url).create()
    yield shop
    shop.dispose()


@pytest.fixture
def maria(mariadb_url):
    shop = BitrixShop(mariadb_url).create()
    yield shop
    shop.dispose()


def customers(shop: BitrixShop) -> None:
    """Ivan: the phone is on his order (property); Olga: only on her account, in the
    second field (the first holds no number)."""
    shop.user(1, "ivan", "Иван", "Петров", personal_phone="нет")
    shop.user(2, "olga", "Ольга", "Смирнова", personal_phone="-", personal_mobile="8 (912) 345-67-89")


def new_order(number: str, real_id: int | None, price: str = "2&nbsp;500.00 руб.", user: str = "Иван Петров"):
    fields = {"ORDER_ID": number, "ORDER_DATE": "19.05.2024 14:03:11", "ORDER_USER": user, "PRICE": price,
              "EMAIL": "ivan@example.com", "ORDER_LIST": "Футболка - 1 шт.", "SALE_EMAIL": "shop@example.com"}
    if real_id is not None:
        fields["ORDER_REAL_ID"] = str(real_id)
    return fields


# ====================================================================== the acceptance test

def project(tmp_path: Path, bsg_url: str, bitrix: str, *, batch: int = 500) -> Path:
    """A Herald project with the shipped rules and templates, the site without a send
    window (customer messages go at once) and the Bitrix preset."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules", ignore=shutil.ignore_patterns("tests"))
    config = f"""\
store: var/herald.db
rules: rules/
templates: rules/templates/
timezone: Europe/Moscow
bsg: {{url: "{bsg_url}", api_key: test_key, rate: 1000}}
senders: {{sms: [testsms], viber: [AdvInform]}}
sites:
  s1:
    name: {SITE}
    server_name: shop.example.com
    email_from: shop@example.com
    timezone: Europe/Moscow
    channel: omni
    omni: provider
    sms_sender: testsms
    viber_sender: AdvInform
    send_window: "00:00-24:00"
    admins: ["{ADMIN}"]
http: {{listen: "127.0.0.1:{free_port()}"}}
connectors:
  - type: sql
    name: shop
    url: !env SHOP_DB_URL
    interval: 0.05
    batch: {batch}
    preset: bitrix
    bitrix: {bitrix}
"""
    path = tmp_path / "herald.yaml"
    path.write_text(config, encoding="utf-8")
    return path


def templates() -> dict:
    return YAML(typ="safe").load((ROOT / "rules" / "templates" / "orders.yaml").read_text(encoding="utf-8"))


def render(name: str, **values: str) -> tuple[str, str]:
    """(viber text, sms text) of a shipped template with its macros filled."""
    t = templates()[name]
    viber, sms = (t, t) if isinstance(t, str) else (t["viber"], t["sms"])
    values = {"SITE_NAME": SITE, "SERVER_NAME": "shop.example.com", "DEFAULT_EMAIL_FROM": "shop@example.com",
              **values}
    for key, value in values.items():
        viber, sms = viber.replace(f"#{key}#", value), sms.replace(f"#{key}#", value)
    assert "#" not in viber + sms, (name, viber, sms)
    return viber, sms


def sent(fake: FakeBSG) -> list[tuple[str, str, str]]:
    """(to, viber text, SMS fallback text) of every omni message at the fake BSG."""
    out = []
    for m in fake.messages():
        if m["channel"] == "sms":
            assert m["fallback_for"], m                # only omni fallbacks, no lone SMS
            continue
        out.append(("+" + m["msisdn"], m["text"], (m["alt_route"] or {}).get("text")))
    return out


def expect(to: str, template: str, **values: str) -> tuple[str, str, str]:
    return (to, *render(template, **values))




async def until(predicate, timeout: float = 10.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def settle(fake: FakeBSG, count: int) -> None:
    """Wait for `count` messages, then a little longer: nothing more may come."""
    await until(lambda: len(sent(fake)) >= count)
    await trio.sleep(0.4)


async def test_sale_mails_become_the_shipped_messages_across_a_restart(maria, tmp_path, monkeypatch):
    shop = maria
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHOP_DB_URL", shop.url)
    customers(shop)
    shop.order(100, user_id=1, price="10")
    old = shop.mail("SALE_NEW_ORDER", new_order("100", 100))          # before the first start: not news
    shop.mail_sent(old)
    shop.order(101, user_id=1, number="101", price="2500.0000", phone="8 (900) 765-43-21", fio="Иван Петров")
    shop.shipment(1, 101, system="Y")                                 # the technical shipment
    shop.shipment(2, 101, status="DN")
    order_101 = {"ORDER_ID": "101", "ORDER_REAL_ID": "101", "EMAIL": "ivan@example.com"}
    expected = []
    async with fake_bsg(0.1) as (fake, bsg_url):
        config = project(tmp_path, bsg_url, "{charset: utf-8, site: {s1: s1}}", batch=2)
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["shop"].alive)
            await trio.sleep(0.2)
            # a new order
            shop.mail("SALE_NEW_ORDER", new_order("101", 101))
            expected += [expect(IVAN, "order_new", ORDER_NUMBER="101", ORDER_PRICE="2500.00"),
                         (ADMIN, *[f"Новый заказ №101 на 2500.00 руб.: Иван Петров, {IVAN}"] * 2)]
            # its payment (Bitrix marks the order paid and moves it to P, each with a mail)
            shop.update_order(101, PAYED="Y", STATUS_ID="P")
            paid = shop.mail("SALE_ORDER_PAID", {**order_101, "ORDER_DATE": "19.05.2024 14:03:11"})
            shop.mail_sent(paid)                                      # Bitrix is quick: no matter
            shop.mail("SALE_STATUS_CHANGED_P", {**order_101, "ORDER_STATUS": "Оплачен, формируется к отправке",
                                                "ORDER_DESCRIPTION": ""})
            expected += [expect(IVAN, "order_paid", ORDER_NUMBER="101", ORDER_PRICE="2500.00"),
                         (ADMIN, *[f"Оплачен заказ №101 на 2500.00 руб.: Иван Петров, {IVAN}"] * 2)]
            # the shipment is being collected
            shop.update_shipment(2, STATUS_ID="DA")
            shop.mail("SALE_STATUS_CHANGED_DA", {**order_101, "SHIPMENT_ID": "2",
                                                 "SHIPMENT_STATUS": "Собирается"})
            expected.append(expect(IVAN, "shipment_DA", ORDER_NUMBER="101"))
            await until(lambda: len(sent(fake)) >= 2)       # stopped mid-stream: rows, events, messages pending
        assert len(set(sent(fake))) == len(sent(fake)) and set(sent(fake)) <= set(expected)
        # Herald is down: the shop goes on
        shop.update_shipment(2, STATUS_ID="DT", TRACKING_NUMBER="80081234567890")
        shop.mail_sent(shop.mail("SALE_STATUS_CHANGED_DT", {**order_101, "SHIPMENT_ID": "2"}), "F")
        expected.append(expect(IVAN, "shipment_DT_track", ORDER_NUMBER="101",
                               SHIPMENT_TRACKING_NUMBER="80081234567890"))
        shop.order(102, user_id=2, number="102", price="640.5")         # no phone property: Olga's account
        shop.mail("SALE_NEW_ORDER", new_order("102", 102, price="640,50 руб.", user="Ольга Смирнова"))
        expected += [expect(OLGA, "order_new", ORDER_NUMBER="102", ORDER_PRICE="640.50"),
                     (ADMIN, *[f"Новый заказ №102 на 640.50 руб.: Ольга Смирнова, {OLGA}"] * 2)]
        shop.update_order(101, STATUS_ID="F")
        shop.mail("SALE_STATUS_CHANGED_F", {**order_101, "ORDER_STATUS": "Выполнен"})
        expected.append(expect(IVAN, "order_status_F", ORDER_NUMBER="101"))
        async with herald(config) as (daemon, client):
            await settle(fake, len(expected))
            shop.update_order(102, CANCELED="Y", REASON_CANCELED="Передумала")
            shop.mail("SALE_ORDER_CANCEL", {"ORDER_ID": "102", "ORDER_REAL_ID": "102",
                                            "ORDER_CANCEL_DESCRIPTION": "Передумала"})
            expected += [expect(OLGA, "order_canceled", ORDER_NUMBER="102", ORDER_CANCEL_REASON="Передумала"),
                         (ADMIN, *[f"Отменён заказ №102 на 640.50 руб.: Ольга Смирнова, {OLGA}. "
                                   "Причина: Передумала"] * 2)]
            await settle(fake, len(expected))
            health = (await client.get("/health")).json()["connectors"]["shop"]
            assert health["alive"], health
    assert sorted(sent(fake)) == sorted(expected)          # each exactly once, none lost, none repeated


async def test_order_and_shipment_snapshots_become_the_shipped_messages(maria, tmp_path, monkeypatch):
    shop = maria
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHOP_DB_URL", shop.url)
    customers(shop)
    shop.order(200, user_id=1, price="10", phone="8 900 765-43-21")   # there before the first start
    expected = []
    async with fake_bsg(0.1) as (fake, bsg_url):
        config = project(tmp_path, bsg_url, "{sources: [orders, shipments]}")
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["shop"].alive)
            await trio.sleep(0.2)
            shop.order(201, user_id=2, number="201", price="15990")
            expected += [expect(OLGA, "order_new", ORDER_NUMBER="201", ORDER_PRICE="15990.00"),
                         (ADMIN, *[f"Новый заказ №201 на 15990.00 руб.: Ольга Смирнова, {OLGA}"] * 2)]
            await settle(fake, len(expected))
            shop.update_order(201, PAYED="Y", STATUS_ID="P")        # paid: the P message is covered by it
            expected += [expect(OLGA, "order_paid", ORDER_NUMBER="201", ORDER_PRICE="15990.00"),
                         (ADMIN, *[f"Оплачен заказ №201 на 15990.00 руб.: Ольга Смирнова, {OLGA}"] * 2)]
            shop.update_order(201, DATE_STATUS=shop.tick())          # touched, nothing mapped changed
            shop.shipment(10, 201, system="Y", status="DA")         # technical: never an event
            shop.shipment(11, 201, status="DN")                    # new, in DN: covered by the new-order text
            await settle(fake, len(expected))
            shop.update_shipment(10, STATUS_ID="DT")
            shop.update_shipment(11, STATUS_ID="DA")
            expected.append(expect(OLGA, "shipment_DA", ORDER_NUMBER="201"))
            await settle(fake, len(expected))
            shop.update_shipment(11, STATUS_ID="DT", TRACKING_NUMBER="RA123456789RU")
            expected.append(expect(OLGA, "shipment_DT_track", ORDER_NUMBER="201",
                                   SHIPMENT_TRACKING_NUMBER="RA123456789RU"))
            await settle(fake, len(expected))
            rows = daemon.store._conn.execute("SELECT type, data, previous FROM events WHERE source = 'shop' "
                                              "ORDER BY seq").fetchall()
    assert sorted(sent(fake)) == sorted(expected)
    types = [r[0] for r in rows]
    assert types == ["order.created", "order.updated", "shipment.created", "shipment.updated", "shipment.updated"]
    assert json.loads(rows[1][2]) == {"order": {"paid": False, "status": "N",
                                                "status_name": "Принят, ожидается оплата"}}
    assert all(json.loads(r[1])["shipment"]["id"] == 11 for r in rows[2:])


# ====================================================================== sources, one by one

async def test_mail_rows_on_every_database(shop):
    customers(shop)
    shop.order(101, user_id=1, number="A-101", price="2500", phone="8 (900) 765-43-21")
    shop.order(102, user_id=2, number="B-102", price="99.5")
    shop.shipment(5, 101, status="DS", tracking_number="TRK-5")
    first = shop.mail("SALE_NEW_ORDER", new_order("A-101", 101))
    shop.mail("SALE_ORDER_PAID", {"ORDER_ID": "B-102"})                 # an old kernel: no ORDER_REAL_ID
    shop.mail("SALE_STATUS_CHANGED_DS", {"ORDER_ID": "A-101", "ORDER_REAL_ID": 101, "SHIPMENT_ID": "5"})
    shop.mail("SALE_ORDER_CANCEL", {"ORDER_ID": "A-101", "ORDER_REAL_ID": "101", "PHONE": "+7 903 111-22-33"})
    shop.mail("SUBSCRIBE_CONFIRM", {"ID": "7", "EMAIL": "a@example.com", "CONFIRM_CODE": "x1"}, lid="s2")
    shop.mail("SALE_ORDER_PAID", {"ORDER_ID": "999", "ORDER_REAL_ID": "999"})  # an order that is gone
    for row in range(first, first + 6):
        shop.mail_sent(row, "Y" if row % 2 else "0")                   # SUCCESS_EXEC never matters
    ctx = FakeContext()
    c = connector(shop.url, sources=["mail"])
    await c.resume(ctx)
    await poll(c, ctx)
    by_type = [(e["type"], e["site"]) for e in ctx.events()]
    assert by_type == [("mail.SALE_NEW_ORDER", "s1"), ("order.created", "s1"), ("mail.SALE_ORDER_PAID", "s1"),
                       ("order.updated", "s1"), ("mail.SALE_STATUS_CHANGED_DS", "s1"), ("shipment.updated", "s1"),
                       ("mail.SALE_ORDER_CANCEL", "s1"), ("order.updated", "s1"),
                       ("mail.SUBSCRIBE_CONFIRM", "s2"), ("mail.SALE_ORDER_PAID", "s1"), ("order.updated", "s1")]
    new, paid, shipped, canceled, gone = (e for e in ctx.events() if not e["type"].startswith("mail."))
    assert new["id"] == f"sql:shop:mail:bitrix:b_event:{first}:order.created"
    assert new["data"]["order"] == {"id": 101, "number": "A-101", "date": "19.05.2024 14:03:11",
                                    "price": "2500.00", "items": "Футболка - 1 шт.", "currency": "RUB"}
    assert new["data"]["customer"] == {"id": 1, "login": "ivan", "name": "Иван Петров",
                                       "email": "ivan@example.com", "phone": IVAN}   # the order's property
    assert new["data"]["PRICE"] == "2 500.00 руб." and "previous" not in new
    # found by ACCOUNT_NUMBER; the price and the buyer from the shop's tables; the phone from her account
    assert paid["data"]["order"] == {"id": 102, "number": "B-102", "paid": True, "price": "99.50",
                                     "currency": "RUB", "canceled": False, "delivery_allowed": False}
    assert paid["data"]["customer"]["phone"] == OLGA and paid["data"]["customer"]["name"] == "Ольга Смирнова"
    assert paid["previous"] == {"order": {"paid": False}}
    assert shipped["data"]["shipment"] == {"id": 5, "order_id": 101, "status": "DS", "number": "101/5",
                                           "status_name": "Передан в службу доставки",
                                           "tracking_number": "TRK-5", "delivery_name": "Курьер"}
    assert canceled["data"]["customer"]["phone"] == "+79031112233"    # a phone in the mail itself wins
    assert gone["data"]["order"] == {"id": 999, "number": "999", "paid": True}
    assert gone["data"]["customer"] == {}
    # the cursor is the b_event ID; nothing is read twice
    assert ctx.cursors["mail"] == str(first + 5)
    await poll(c, ctx)
    assert len(ctx.journal) == 11
    c._dispose()


async def test_a_malformed_row_is_recorded_and_skipped(shop, caplog):
    shop.mail("SALE_NEW_ORDER", new_order("1", None))
    bad = shop.mail("SALE_ORDER_PAID", None, raw=b'a:1:{s:8:"ORDER_ID";s:9:"1";}')
    shop.mail("SALE_ORDER_CANCEL", {"ORDER_ID": "1"})
    ctx = FakeContext()
    c = connector(shop.url, sources=["mail"])
    await c.resume(ctx)
    await poll(c, ctx)
    assert [e["type"] for e in ctx.events()] == ["mail.SALE_NEW_ORDER", "order.created", "connector.error",
                                                 "mail.SALE_ORDER_CANCEL", "order.updated"]
    (error,) = ctx.events("connector.error")
    assert error["id"] == f"sql:shop:mail:bitrix:b_event:{bad}:error"
    assert error["data"]["row"] == {"table": "b_event", "ID": bad, "EVENT_NAME": "SALE_ORDER_PAID"}
    assert "declares 9 bytes" in error["data"]["connector"]["error"]
    assert f"b_event row {bad} (SALE_ORDER_PAID) skipped" in caplog.text
    c._dispose()


async def test_windows_1251_c_fields_are_read_as_bytes(mariadb_url):
    shop = BitrixShop(mariadb_url, charset="windows-1251").create()
    try:
        shop.user(1, "ivan", "Иван", "Петров", personal_mobile="8 912 345 67 89")
        shop.order(7, user_id=1, number="Б-7", price="1500")
        row = shop.mail("SALE_NEW_ORDER", new_order("Б-7", 7, price="1&nbsp;500.00 руб."))
        # the column really holds windows-1251: "Иван Петров" is 11 bytes, not 21
        raw = shop.scalar("SELECT CAST(C_FIELDS AS BINARY) FROM b_event WHERE ID = :i", i=row)
        assert b's:10:"ORDER_USER";s:11:"\xc8\xe2\xe0\xed \xcf\xe5\xf2\xf0\xee\xe2";' in raw
        ctx = FakeContext()
        c = connector(shop.url, sources=["mail"], charset="windows-1251")
        await c.resume(ctx)
        await poll(c, ctx)
        (mail, created) = ctx.events()
        assert mail["data"]["ORDER_USER"] == "Иван Петров" and mail["data"]["PRICE"] == "1 500.00 руб."
        assert created["data"]["order"]["id"] == 7 and created["data"]["order"]["number"] == "Б-7"
        assert created["data"]["customer"]["phone"] == OLGA
        c._dispose()
        # read as UTF-8, the same bytes are malformed: recorded, and polling goes on
        ctx = FakeContext()
        c = connector(shop.url, sources=["mail"])
        await c.resume(ctx)
        await poll(c, ctx)
        (error,) = ctx.events()
        assert error["type"] == "connector.error" and "charset right?" in error["data"]["connector"]["error"]
        c._dispose()
    finally:
        shop.dispose()


async def test_status_names_come_from_b_sale_status_lang(shop):
    shop.status_name("F", "Доставлен и оплачен")
    shop.status_name("F", "Delivered", lid="en")
    shop.status_name("XA", "У курьера", kind="D")                     # a shop's own shipment status
    shop.order(1, price="1", status="F")
    shop.mail("SALE_STATUS_CHANGED_F", {"ORDER_ID": "1", "ORDER_REAL_ID": "1"})
    shop.mail("SALE_STATUS_CHANGED_XA", {"ORDER_ID": "1", "ORDER_REAL_ID": "1"})
    ctx = FakeContext()
    c = connector(shop.url, sources=["orders"])
    await c.resume(ctx)
    await poll(c, ctx)
    (order,) = ctx.events()
    assert order["data"]["order"]["status"] == "F" and order["data"]["order"]["status_name"] == "Доставлен и оплачен"
    c._dispose()
    ctx = FakeContext()
    c = connector(shop.url, sources=["mail"], language="en")
    await c.resume(ctx)
    await poll(c, ctx)
    status, own = ctx.events("order.") + ctx.events("shipment.")
    assert status["data"]["order"]["status_name"] == "Delivered"
    assert own["type"] == "shipment.updated" and own["data"]["shipment"]["status"] == "XA"
    c._dispose()


async def test_order_and_shipment_snapshots(shop):
    customers(shop)
    shop.order(1, user_id=1, price="100", phone="8 900 765 43 21")
    shop.shipment(1, 1, system="Y")
    shop.shipment(2, 1)
    ctx = FakeContext()
    c = connector(shop.url, sources=["orders", "shipments"], site={"s1": "s2"})
    await c.resume(ctx)
    await poll(c, ctx)
    created, shipment = ctx.events()
    assert (created["type"], created["site"], shipment["type"]) == ("order.created", "s2", "shipment.created")
    assert created["data"]["order"]["paid"] is False and created["data"]["customer"]["phone"] == IVAN
    assert created["data"]["ORDER_ID"] == "1" and created["data"]["PRICE"] == "100.00"
    assert shipment["data"]["shipment"]["id"] == 2 and shipment["data"]["order"]["number"] == "1"
    shop.update_order(1, PAYED="Y")
    shop.update_order(1, DATE_STATUS=shop.tick())
    shop.update_shipment(1, STATUS_ID="DF")
    shop.update_shipment(2, STATUS_ID="DF", DEDUCTED="Y", TRACKING_NUMBER="T1")
    await poll(c, ctx)
    paid, shipped = ctx.events()[2:]
    assert paid["type"] == "order.updated" and paid["previous"] == {"order": {"paid": False}}
    assert shipped["previous"] == {"shipment": {"status": "DN", "status_name": "Ожидает обработки",
                                                "tracking_number": None, "shipped": False}}
    assert len(ctx.journal) == 4
    c._dispose()


async def test_users_subscriptions_tickets_and_tasks(shop):
    customers(shop)
    shop.user(3, "petr", "Пётр")
    shop.phone_auth(3, "+79031112233")                                   # phone registration only
    ctx = FakeContext()
    c = connector(shop.url)                                              # the default sources
    assert [s.name for s in c.sources] == list(DEFAULT_SOURCES)
    await c.resume(ctx)
    shop.subscription(1, "olga@example.com", user_id=2)
    shop.ticket(1, "Где мой заказ?", owner=2, responsible=1)
    shop.task(1, "Позвонить клиенту", responsible=1, creator=2)
    shop.task(2, "Лишняя", responsible=1)
    shop.task(3, "Ничья")
    await poll(c, ctx)
    assert [e["type"] for e in ctx.events()] == ["user.created"] * 3 + [
        "subscription.created", "ticket.created"] + ["task.created"] * 3
    olga = ctx.events("user.")[1]["data"]["user"]
    assert olga == {"id": 2, "login": "olga", "name": "Ольга Смирнова", "email": "olga@example.com",
                    "phone": OLGA, "active": True, "date_register": olga["date_register"]}
    assert ctx.events("user.")[2]["data"]["user"]["phone"] == "+79031112233"
    sub = ctx.events("subscription.")[0]["data"]["subscription"]
    assert sub["email"] == "olga@example.com" and sub["phone"] == OLGA and sub["confirmed"] is False
    ticket = ctx.events("ticket.")[0]["data"]
    assert ticket["customer"]["phone"] == OLGA and ticket["ticket"]["owner"]["login"] == "olga"
    task = ctx.events("task.")[0]["data"]["task"]
    assert task["responsible"]["login"] == "ivan" and task["creator"]["login"] == "olga"
    shop.update_ticket(1, STATUS_ID=3, DATE_CLOSE=shop.tick())
    shop.update_task(1, STATUS="5")
    shop.update_task(2, ZOMBIE="Y")
    shop.update_task(3, RESPONSIBLE_ID=2)
    await poll(c, ctx)
    updated, done, deleted, assigned = ctx.events()[8:]
    assert updated["type"] == "ticket.updated" and updated["data"]["ticket"]["changed"] == ["closed", "status"]
    assert updated["previous"] == {"ticket": {"status": 1, "closed": False}}
    assert done["type"] == "task.updated" and done["previous"] == {"task": {"status": 2}}
    assert deleted["type"] == "task.deleted" and deleted["data"]["task"]["id"] == 2
    assert ("tasks", "2") not in ctx.snapshots
    assert assigned["previous"] == {"task": {"responsible": {}}}
    assert assigned["data"]["task"]["responsible"]["phone"] == OLGA
    c._dispose()


async def test_task_members_are_its_accomplices_and_auditors_with_their_phones(shop):
    customers(shop)
    shop.user(3, "petr", "Пётр", "Ильин")
    shop.phone_auth(3, "+79031112233")                                   # phone registration only
    shop.user(4, "vera", "Вера", work_phone="8 903 444-55-66")
    ctx = FakeContext()
    c = connector(shop.url, sources=["tasks"])
    await c.resume(ctx)
    shop.task_member(1, 3, "A")
    shop.task_member(1, 2, "U")
    shop.task_member(1, 2, "A")                                          # both: one member
    shop.task_member(1, 1, "R")                                          # the responsible: not a member
    shop.task(1, "Позвонить клиенту", responsible=1, creator=2)
    shop.task(2, "Без участников", responsible=1)
    await poll(c, ctx)
    first, second = ctx.events("task.")
    assert first["data"]["task"]["members"] == [
        {"id": 2, "name": "Ольга Смирнова", "phone": OLGA},
        {"id": 3, "name": "Пётр Ильин", "phone": "+79031112233"}]
    assert second["data"]["task"]["members"] == []
    shop.task_member(1, 4, "U")
    shop.update_task(1, TITLE="Позвонить клиенту сегодня")
    await poll(c, ctx)
    [updated] = ctx.events()[2:]
    assert [m["id"] for m in updated["data"]["task"]["members"]] == [2, 3, 4]
    assert updated["data"]["task"]["members"][2]["phone"] == "+79034445566"
    assert updated["previous"]["task"]["members"] == first["data"]["task"]["members"]
    c._dispose()


async def test_a_portal_without_shop_support_or_tasks_tables(sqlite_url, caplog):
    shop = BitrixShop(sqlite_url).create(skip=("b_sale_order", "b_sale_order_delivery", "b_sale_status",
                                               "b_sale_status_lang", "b_ticket", "b_tasks",
                                               "b_tasks_member"))
    try:
        shop.user(1, "anna")
        shop.mail("NEW_USER", {"USER_ID": "1", "LOGIN": "anna"})
        shop.mail("SALE_NEW_ORDER", new_order("5", 5))
        ctx = FakeContext()
        c = connector(shop.url)
        await c.resume(ctx)
        await poll(c, ctx)
        assert [e["type"] for e in ctx.events()] == ["mail.NEW_USER", "mail.SALE_NEW_ORDER", "order.created",
                                                     "user.created"]
        assert "there is no table b_tasks" in caplog.text and "there is no table b_ticket" in caplog.text
        c._dispose()
    finally:
        shop.dispose()


# ====================================================================== options

BLOCK = """\
- type: sql
  url: sqlite:///shop.db
  preset: bitrix
  bitrix:
"""


def test_options_are_checked_with_their_places(tmp_path):
    found = "\n".join(problems(tmp_path, BLOCK + textwrap.indent(textwrap.dedent("""\
        charst: cp1251
        site: [s1]
        language: russian
        sources: [mail, order, users, users]
        """), "    ")))
    file = tmp_path / "herald.yaml"
    for needle in [f'{file}:6:7: error: bitrix preset: unknown option "charst"', 'did you mean "charset"?',
                   f"{file}:7:13: error: bitrix preset: site: expected a Herald site id or a mapping",
                   f"{file}:8:17: error: bitrix preset: language: expected a two-letter language id",
                   f'{file}:9:23: error: bitrix preset: sources: unknown source "order"', 'did you mean "orders"?',
                   f'{file}:9:37: error: bitrix preset: sources: "users" is listed twice']:
        assert needle in found, (needle, found)
    found = "\n".join(problems(tmp_path, BLOCK + "    charset: koi8-r\n    site: {s1: 5}\n"))
    assert "charset: expected utf-8 or windows-1251" in found and "site: s1: expected a Herald site id" in found
    found = "\n".join(problems(tmp_path, "- type: sql\n  url: sqlite:///shop.db\n  preset: bitrix\n"
                                         "  charset: koi8-r\n"))
    assert "a Bitrix site is utf-8 or windows-1251" in found


def test_mail_and_the_order_snapshots_together_are_refused(tmp_path):
    (p,) = problems(tmp_path, BLOCK + "    sources: [mail, orders, shipments]\n")
    assert ":6:16: error: bitrix preset: sources: mail and orders and shipments together would notify twice" in p
    assert "sale mails in b_event already give order.* and shipment.* events" in p
    c = SqlConnector(entry(tmp_path, BLOCK + "    sources: [orders, shipments, users]\n"
                                             "    charset: Windows-1251\n    site: shop\n"))
    assert [(s.name, s.mode) for s in c.sources] == [("orders", "snapshot"), ("shipments", "snapshot"),
                                                     ("users", "append")]
    assert c.sources[0].preset.charset == "cp1251" and c.sources[0].preset.site_of("s2") == (True, "shop")


def test_the_site_mapping(tmp_path):
    c = SqlConnector(entry(tmp_path, BLOCK + "    site: {s1: shop, s2: null}\n"))
    preset = c.sources[0].preset
    assert preset.site_of("s1") == (True, "shop") and preset.site_of("s1,s2") == (True, "shop")
    assert preset.site_of("s2") == (False, None)                        # that site's rows are skipped
    assert preset.site_of("s3") == (True, "s3") and preset.site_of(None) == (True, None)


def test_the_documented_example_loads(tmp_path):
    doc = (ROOT / "docs" / "connectors" / "bitrix.md").read_text(encoding="utf-8")
    (config, *_) = [block for lang, block in _blocks(doc) if lang == "yaml"]
    path = tmp_path / "herald.yaml"
    path.write_text(config, encoding="utf-8")
    loaded = load_config(path, env={"SHOP_DB_URL": "mysql://herald:pw@db.local/shop"})
    c = SqlConnector(loaded.connectors[0])
    assert [s.name for s in c.sources] == ["mail", "users", "subscriptions"]
    assert c.sources[0].preset.charset == "cp1251"
    from herald.grammar.compiler import compile_text
    rules = [block for lang, block in _blocks(doc) if lang == "rules"]
    assert rules
    for text in rules:
        result = compile_text(text, "bitrix.md")
        assert not [d for d in result.diagnostics if d.is_error] and result.rules, result.diagnostics


def _blocks(doc: str) -> list[tuple[str, str]]:
    import re
    return re.findall(r"^```(\w+)\n(.*?)^```", doc, re.S | re.M)
