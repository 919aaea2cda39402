"""Sending from an order and the order's timeline, end to end against the fake BSG:
`POST /orders/{id}/messages` / `herald send --order` render with the order's latest
known state and land on its timeline; `GET /timeline/order/{id}` / `herald timeline
order:ID` list its events, rule verdicts, messages, deferrals and attempts in time order."""

from __future__ import annotations

import re
from datetime import datetime

import trio

from herald.engine.cli.main import main as cli_main
from tests.daemon_helpers import fake_bsg, free_port, herald, write_project

RULES = """\
rule "order accepted" on order.created send sms to customer.phone text "Заказ #ORDER_ID# принят"
rule "big order" on order.created if order.price > 10000 send sms to admins text "Крупный заказ #ORDER_ID#"
rule "shipped" on order.status == "shipped" send sms to customer.phone using "shipped"
"""
TEMPLATES = """\
shipped: "Заказ #ORDER_ID# отгружен"
where: "#CUSTOMER_NAME#, заказ #ORDER_ID# (#ORDER_STATUS#): трек #TRACK#"
"""


def events(order_id: int, phone: str) -> list[dict]:
    customer = {"phone": phone, "name": "Иван"}
    return [{"type": "order.created", "id": f"c-{order_id}",
             "data": {"order": {"id": order_id, "status": "N", "price": 500}, "customer": customer}},
            {"type": "order.updated", "id": f"u-{order_id}",
             "data": {"order": {"id": order_id, "status": "shipped"}, "customer": {"phone": phone}},
             "previous": {"order": {"status": "N"}}}]


async def until(predicate, timeout: float = 10.0):
    with trio.fail_after(timeout):
        while not (value := predicate()):
            await trio.sleep(0.05)
        return value


def project(tmp_path, url):
    return write_project(tmp_path, RULES, port=free_port(), bsg_url=url, templates=TEMPLATES)


async def test_send_from_an_order_and_its_timeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, url), herald(project(tmp_path, url)) as (daemon, client):
        for event in events(42, "+79005550011") + events(43, "+79005550033"):
            assert (await client.post("/events", json=event)).status_code == 202
        await until(lambda: len(fake.messages()) == 4)

        # rendered with the latest state (status shipped; the name from the first event), to the customer
        response = await client.post("/orders/42/messages", json={"template": "where", "channel": "sms",
                                                                   "data": {"track": "RA123"}, "now": True})
        assert response.status_code == 202
        (result,) = response.json()["messages"]
        assert (result["to"], result["state"]) == ("+79005550011", "queued")
        await until(lambda: len(fake.messages()) == 5)
        sent = fake.messages()[-1]
        assert (sent["msisdn"], sent["body"]) == ("79005550011", "Иван, заказ 42 (shipped): трек RA123")

        # another number, by text
        other = await client.post("/orders/42/messages", json={"text": "Курьер у двери", "to": "+79005550044",
                                                                "channel": "sms", "now": True})
        assert other.json()["messages"][0]["to"] == "+79005550044"
        await until(lambda: len(fake.messages()) == 6)

        missing = await client.post("/orders/999/messages", json={"text": "x"})
        assert missing.status_code == 404 and "no order 999" in missing.json()["error"]
        assert (await client.post("/orders/42/messages", json={"text": "x", "site": "s9"})).status_code == 400

        await until(lambda: all(m["state"] != "sending" and m["state"] != "queued"
                                for m in daemon.store.messages()))
        body = (await client.get("/timeline/order/42")).json()
        assert body["entity"] == {"type": "order", "id": "42", "site": "s1", "key": "order:42@s1"}
        assert body["state"]["order"]["status"] == "shipped"
        entries = body["entries"]
        moments = [datetime.fromisoformat(e["at"]) for e in entries]
        assert moments == sorted(moments)
        kinds = [e["kind"] for e in entries]
        assert kinds.count("event") == 2 and kinds.count("message") == 4
        verdicts = {(e["rule"], e["fired"]) for e in entries if e["kind"] == "firing"}
        assert verdicts == {("order accepted", True), ("big order", False), ("shipped", True)}
        big = next(e for e in entries if e["kind"] == "firing" and e["rule"] == "big order")
        assert "if is false" in big["summary"]
        texts = " ".join(e["summary"] for e in entries if e["kind"] == "message")
        assert "Заказ 42 принят" in texts and "отгружен" in texts and "трек RA123" in texts and "Курьер" in texts
        assert "43" not in texts
        sends = [e for e in entries if e["kind"] == "attempt" and e["what"] == "send"]
        assert len(sends) == 4 and all(e["outcome"] == "ok" for e in sends)
        # the event comes before the rule verdicts on it, and those before their messages
        first_event = kinds.index("event")
        assert first_event < kinds.index("firing") < kinds.index("message")

        assert (await client.get("/timeline/order/999")).status_code == 404
        assert "no order 999" in (await client.get("/timeline/order/999")).json()["error"]
        assert (await client.get("/timeline/order/42", params={"site": "s9"})).status_code == 400


async def test_herald_send_order_and_herald_timeline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, url):
        config = project(tmp_path, url)
        async with herald(config) as (daemon, client):
            for event in events(42, "+79005550011"):
                await client.post("/events", json=event)
            await until(lambda: len(fake.messages()) == 2)
            code = await trio.to_thread.run_sync(cli_main, [
                "send", "-c", str(config), "--order", "42", "--template", "where", "--channel", "sms", "--now"])
            assert code == 0 and "+79005550011" in capsys.readouterr().out
            await until(lambda: len(fake.messages()) == 3)
            assert fake.messages()[-1]["body"] == "Иван, заказ 42 (shipped): трек"
            code = await trio.to_thread.run_sync(cli_main, [
                "send", "-c", str(config), "--order", "7", "--text", "x"])
            captured = capsys.readouterr()
            assert code == 1 and "(404)" in captured.err and "no order 7" in captured.err

            await until(lambda: all(m["state"] not in ("queued", "sending") for m in daemon.store.messages()))
            code = await trio.to_thread.run_sync(cli_main, ["timeline", "-c", str(config), "order:42"])
            out = capsys.readouterr().out
            assert code == 0
            lines = out.splitlines()
            assert lines[0].startswith("order 42 (site s1): ")
            assert any("event" in line and "order.created (c-42)" in line for line in lines)
            assert any("firing" in line and "rule big order: if is false" in line for line in lines)
            assert any("message" in line and "sent by hand" in line and "трек" in line for line in lines)
            assert sum(1 for line in lines if " attempt " in line and "send: ok" in line) == 3

            code = await trio.to_thread.run_sync(cli_main, ["timeline", "-c", str(config), "order:999"])
            assert code == 1 and "no order 999 on site s1" in capsys.readouterr().err
            code = await trio.to_thread.run_sync(cli_main, ["timeline", "-c", str(config), "order"])
            assert code == 1 and "TYPE:ID" in capsys.readouterr().err


async def test_a_deferred_order_message_shows_its_deferral(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, url):
        config = write_project(tmp_path, RULES, port=free_port(), bsg_url=url, templates=TEMPLATES,
                               site_extra="    send_window: \"00:00-00:01\"\n")
        async with herald(config) as (daemon, client):
            await client.post("/events", json=events(42, "+79005550011")[0])
            await until(lambda: daemon.store.messages())
            body = (await client.get("/timeline/order/42")).json()
            (deferral,) = [e for e in body["entries"] if e["kind"] == "deferral"]
            assert "deferred until" in deferral["summary"]
            # the cause is the one recorded with the message, not a guess
            assert deferral["cause"] == "outside the sending window 00:00-00:01"
            # a send by hand outside the window: its cause is recorded too
            response = await client.post("/orders/42/messages", json={"text": "позже", "channel": "sms"})
            assert response.json()["queued"] == [response.json()["messages"][0]["id"]]
            body = (await client.get("/timeline/order/42")).json()
            causes = [e["cause"] for e in body["entries"] if e["kind"] == "deferral"]
            assert causes == ["outside the sending window 00:00-00:01"] * 2


SHIPMENT_RULES = RULES + 'rule "tracked" on shipment.updated send sms to customer.phone text "Посылка в пути"\n'


async def test_an_orders_timeline_has_its_shipments_and_answers_to_its_number(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, url):
        config = write_project(tmp_path, SHIPMENT_RULES, port=free_port(), bsg_url=url, templates=TEMPLATES)
        async with herald(config) as (daemon, client):
            created = events(42, "+79005550011")[0]
            created["data"]["order"]["number"] = "A-42"
            created["time"] = "2026-11-27T22:00:00+03:00"            # no fraction, an offset
            shipment = {"type": "shipment.updated", "id": "s-7",
                        "data": {"shipment": {"id": 7, "order_id": 42, "tracking_number": "RA123"},
                                 "customer": {"phone": "+79005550011"}}}
            other = {"type": "shipment.updated", "id": "s-8",
                     "data": {"shipment": {"id": 8, "order_id": 43, "tracking_number": "ZZ999"},
                              "customer": {"phone": "+79005550033"}}}
            for event in (created, shipment, other):
                assert (await client.post("/events", json=event)).status_code == 202
            await until(lambda: len(fake.messages()) == 3)

            # the public number works wherever the id does
            response = await client.post("/orders/A-42/messages", json={"text": "Курьер выехал", "channel": "sms",
                                                                        "now": True})
            assert response.status_code == 202 and response.json()["messages"][0]["to"] == "+79005550011"
            await until(lambda: len(fake.messages()) == 4)
            await until(lambda: all(m["state"] not in ("queued", "sending") for m in daemon.store.messages()))
            body = (await client.get("/timeline/order/A-42")).json()
            assert body["entity"] == {"type": "order", "id": "42", "site": "s1", "key": "order:42@s1",
                                      "number": "A-42"}
            entries = body["entries"]
            summaries = " | ".join(e["summary"] for e in entries)
            # the shipment's event, the rule's verdict on it and its message are the order's
            assert "shipment.updated (s-7): shipment 7 (tracking_number RA123)" in summaries
            assert any(e["kind"] == "firing" and e["rule"] == "tracked" and e["event"] == "s-7" for e in entries)
            assert "Посылка в пути" in summaries and "Курьер выехал" in summaries
            assert "ZZ999" not in summaries and "s-8" not in summaries
            assert (await client.get("/timeline/order/42")).json()["entries"] == entries

            code = await trio.to_thread.run_sync(cli_main, ["timeline", "-c", str(config), "order:A-42"])
            lines = capsys.readouterr().out.splitlines()
            assert code == 0 and lines[0].startswith("order 42 (number A-42) (site s1): ")
            # every time as UTC to the millisecond, the event's +03:00 included
            assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  \S", line) for line in lines[1:])
            assert lines[1].startswith("2026-11-27 19:00:00.000  event     order.created (c-42)")
            code = await trio.to_thread.run_sync(cli_main, [
                "send", "-c", str(config), "--order", "A-42", "--text", "ещё", "--channel", "sms", "--now"])
            assert code == 0 and "+79005550011" in capsys.readouterr().out


def test_a_deferral_with_no_recorded_cause_names_none(tmp_path):
    """A message written to wait with nothing recorded about why: the timeline says until
    when, and invents no reason."""
    from datetime import datetime, timedelta, timezone

    from herald.engine.events import Event
    from herald.engine.store import Store
    from herald.engine.store.timeline import build_timeline, format_timeline
    store = Store(tmp_path / "herald.db")
    at = datetime(2026, 11, 27, 19, 0, tzinfo=timezone.utc)
    store.add_events([Event("order.created", {"order": {"id": 5}}, "s1", "c-5", at)], "http")
    store.add_message(site="s1", channel="sms", to_phone="+79005550011", state="sent", event_id="c-5",
                      send_at=datetime.now(timezone.utc) + timedelta(hours=2), text="x")
    timeline = build_timeline(store, "order", "5", "s1")
    (deferral,) = [e for e in timeline["entries"] if e["kind"] == "deferral"]
    assert deferral["cause"] == "" and deferral["summary"].endswith(deferral["summary"].split("until ")[1])
    assert "window" not in deferral["summary"]
    assert re.search(r"deferred until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$", format_timeline(timeline))
