"""Delivery you can trust (docs/delivery.md), end to end: a daemon, fake BSG endpoints
over real HTTP on loopback (taken down for real: connection refused), a real SMTP server
(aiosmtpd) receiving the admin alerts."""

from __future__ import annotations

import email
import email.policy
import logging
from decimal import Decimal
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import trio
from aiosmtpd.controller import Controller

from herald.engine.config import load_config
from herald.engine.daemon import Daemon
from herald.engine.runtime import Clock
from herald.engine.bsg.fake import FakeBSG, serve
from tests.daemon_helpers import free_port, looked
from tests.virtual_daemon import MockTime, virtual_clock  # noqa: F401 (fixture)

SMS_RULE = 'on order.created send sms to customer.phone text "Заказ #ORDER_ID# принят"\n'
OMNI_RULE = 'on order.created send omni to customer.phone using "created"\n'
TEMPLATES = 'created:\n  viber: "Viber: заказ #ORDER_ID# принят"\n  sms: "SMS: заказ #ORDER_ID#"\n'


class ManualClock(Clock):
    def __init__(self, start: datetime):
        self.current = start

    def now(self) -> datetime:
        return self.current


class Inbox:
    def __init__(self) -> None:
        self.mails: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.mails.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [m["Subject"] for m in self.mails]


class Endpoint:
    """A fake BSG on a fixed port that can really go away (connection refused) and come back."""

    def __init__(self, nursery: trio.Nursery, fake: FakeBSG):
        self.nursery, self.fake, self.port = nursery, fake, free_port()
        self.scope: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as self.scope:
                await serve(self.fake, "127.0.0.1", self.port, task_status=task_status)
        await self.nursery.start(run)

    async def down(self) -> None:
        self.scope.cancel()
        with trio.fail_after(5):
            while True:
                try:
                    with trio.socket.socket() as s:
                        await s.connect(("127.0.0.1", self.port))
                except OSError:
                    return
                await trio.sleep(0.02)

    def references(self) -> list[str]:
        return [m["reference"] for m in self.fake.messages()]


@asynccontextmanager
async def bsg_endpoints(count: int = 1, *, delivery_delay: float = 0.1):
    """`count` fake BSG endpoints (main, backup1 …), each up on its own port: yields them."""
    async with trio.open_nursery() as nursery:
        endpoints = [Endpoint(nursery, FakeBSG(delivery_delay=delivery_delay)) for _ in range(count)]
        for endpoint in endpoints:
            await endpoint.up()
        yield tuple(endpoints)
        nursery.cancel_scope.cancel()


def project(tmp_path: Path, rules: str, main: str, *, backup: str | None = None, smtp: int | None = None,
            site: str = "", bsg: str = "") -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "main.rules").write_text(rules, encoding="utf-8")
    (tmp_path / "rules" / "templates.yaml").write_text(TEMPLATES, encoding="utf-8")
    backup_yaml = f"  backup:\n    - url: {backup}\n      api_key: backup_key\n" if backup else ""
    smtp_yaml = f"smtp:\n  host: 127.0.0.1\n  port: {smtp}\n  from: herald@shop.example\n" if smtp else ""
    config = tmp_path / "herald.yaml"
    config.write_text(f"""
store: var/herald.db
bsg:
  url: {main}
  api_key: main_key
  rate: 1000
  timeout: 2s
  failover: {{window: 60s, failures: 2, probe: 2s}}
{backup_yaml}{bsg}
sites:
  s1:
    timezone: Europe/Moscow
    admin_email: admin@shop.example
{site}
http:
  listen: 127.0.0.1:{free_port()}
{smtp_yaml}""", encoding="utf-8")
    return config


@asynccontextmanager
async def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


@asynccontextmanager
async def daemon_for(config: Path, clock: Clock | None = None):
    async with trio.open_nursery() as nursery:
        daemon = Daemon(load_config(config), clock=clock)
        url = await nursery.start(daemon.run)
        # a generous timeout: on a virtual clock it counts virtual seconds, which jump
        # while the run waits for the store's thread
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield daemon, client
        nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout: float = 30.0, what: str = ""):
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what or predicate}")


def order(n: int, phone: str) -> dict:
    return {"type": "order.created", "id": f"order-{n}", "site": "s1",
            "data": {"order": {"id": n}, "customer": {"phone": phone}}}


def states(daemon) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in daemon.store.messages(limit=10_000):
        counts[m["state"]] = counts.get(m["state"], 0) + 1
    return counts


def journal(daemon, type_: str) -> list:
    rows = daemon.store._conn.execute("SELECT data FROM events WHERE type = ?", (type_,)).fetchall()
    import json
    return [json.loads(r[0]) for r in rows]


# ---------------------------------------------------------------------------- failover

async def test_main_down_traffic_goes_through_the_backup_one_alert_and_comes_back(tmp_path, monkeypatch, virtual_clock):
    monkeypatch.chdir(tmp_path)
    async with smtp_server() as (inbox, smtp_port), bsg_endpoints(2) as (main, backup):
        config = project(tmp_path, SMS_RULE, main.url, backup=backup.url, smtp=smtp_port)
        async with daemon_for(config, MockTime(virtual_clock)) as (daemon, client):
            await client.post("/events", json=[order(1, "+79001110011")])
            await wait_for(lambda: len(main.references()) == 1, what="the first message at main")

            await main.down()
            await client.post("/events", json=[order(n, f"+790011100{n + 10:02d}") for n in range(2, 32)])
            await wait_for(lambda: len(backup.references()) == 30, what="30 messages through the backup")
            assert len(main.references()) == 1
            await wait_for(lambda: any("unreachable" in s for s in inbox.subjects()), what="the alert mail")
            down = journal(daemon, "provider.down")
            assert [d["provider"]["name"] for d in down] == ["main"]
            assert down[0]["provider"]["active"] == "backup1"

            await main.up()
            await wait_for(lambda: journal(daemon, "provider.up"), what="provider.up after the probe")
            await client.post("/events", json=[order(40, "+79001110090")])
            await wait_for(lambda: len(main.references()) == 2, what="traffic back at main")
            await wait_for(lambda: states(daemon) == {"delivered": 32}, what=lambda: states(daemon))

            # one alert e-mail for the outage, one for the recovery — not one per message
            await wait_for(lambda: len(inbox.mails) == 2, what="the recovery mail")
            await trio.sleep(0.3)
            subjects = inbox.subjects()
            assert len(subjects) == 2, subjects
            assert "unreachable" in subjects[0] and "reachable again" in subjects[1]
            assert inbox.mails[0]["To"] == "admin@shop.example"
            body = inbox.mails[0].get_content()
            assert "backup1" in body and "main_key" not in body and "backup_key" not in body
            # no phone messaged twice, across both endpoints
            every = main.references() + backup.references()
            assert len(every) == len(set(every)) == 32
            # each message's history says where it went
            moved = (await client.get(f"/messages/{daemon.store.messages(phone='+79001110012')[0]['id']}")).json()
            assert moved["message"]["endpoint"] == "backup1"
            assert [a["what"] for a in moved["attempts"]][-2:] == ["send", "status"]


async def test_a_dropped_request_is_looked_up_at_main_before_it_may_go_anywhere_else(tmp_path, monkeypatch, virtual_clock):
    """`down` at the fake reads the request and hangs up: BSG may have taken it. Such a
    message waits for main to answer a lookup; new traffic goes through the backup."""
    monkeypatch.chdir(tmp_path)
    async with bsg_endpoints(2) as (main, backup):
        config = project(tmp_path, SMS_RULE, main.url, backup=backup.url)
        async with daemon_for(config, MockTime(virtual_clock)) as (daemon, client):
            main.fake.set_fault("down")
            await client.post("/events", json=[order(1, "+79002220011")])
            await wait_for(lambda: [m["uncertain_at"] for m in daemon.store.messages()] == ["main"],
                           what="uncertain at main")
            await client.post("/events", json=[order(2, "+79002220012")])
            await wait_for(lambda: journal(daemon, "provider.down"), what="main tripped")
            await client.post("/events", json=[order(3, "+79002220013")])
            await wait_for(lambda: "79002220013" in [m["msisdn"] for m in backup.fake.messages()], what="new → backup")
            first = daemon.store.messages(phone="+79002220011")[0]
            await wait_for(lambda: "lookup" in daemon.store.messages(phone="+79002220011")[0]["reason"],
                           what=lambda: daemon.store.messages(phone="+79002220011")[0])
            assert [m["msisdn"] for m in backup.fake.messages()] == ["79002220013"]

            main.fake.clear_faults()
            await wait_for(lambda: daemon.store.messages(phone="+79002220011")[0]["state"] == "delivered",
                           what="the uncertain message resolved and delivered")
            await wait_for(lambda: states(daemon) == {"delivered": 3}, what="all three delivered")
            every = main.references() + backup.references()
            assert len(every) == len(set(every)) == 3
            trace = (await client.get(f"/messages/{first['id']}")).json()
            sends = [a for a in trace["attempts"] if a["what"] == "send"]
            assert sends[0]["outcome"] == "unknown" and sends[-1]["outcome"] == "ok"
            assert {a["endpoint"] for a in sends} == {"main"}        # never through the backup


async def test_both_endpoints_down_for_a_virtual_hour_nothing_is_lost(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = ManualClock(datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc))
    async with bsg_endpoints(2) as (main, backup):
        config = project(tmp_path, SMS_RULE, main.url, backup=backup.url)
        async with daemon_for(config, clock) as (daemon, client):
            await main.down()
            await backup.down()
            await client.post("/events", json=[order(n, f"+790033300{n + 10:02d}") for n in range(1, 41)])
            await wait_for(lambda: sum(states(daemon).values()) == 40, what=lambda: states(daemon))
            for step in [timedelta(seconds=5)] * 12 + [timedelta(minutes=5)] * 11:   # an hour
                clock.current += step
                await looked(daemon.dispatch_wake, "the dispatcher")    # it looks at each step
            assert len(journal(daemon, "provider.down")) == 2
            assert states(daemon) == {"queued": 40}
            held = daemon.store.messages(limit=1)[0]
            assert "every BSG endpoint is down" in held["reason"]

            await backup.up()
            with trio.fail_after(30):
                while states(daemon) != {"delivered": 40}:
                    clock.current += timedelta(seconds=5)    # probes find the backup well; polls come due
                    daemon.dispatch_wake.set()
                    daemon.dispatcher.poll_wake.set()
                    await trio.sleep(0.2)
            assert len(backup.references()) == 40
            assert main.references() == []


# ---------------------------------------------------------------------------- Herald's omni

async def test_engine_omni_not_a_viber_user_gets_the_sms_variant(tmp_path, monkeypatch, virtual_clock):
    """On trio's MockClock (the daemon's clock follows it): the status polls 5 s after
    each leg cost no real time."""
    monkeypatch.chdir(tmp_path)
    async with bsg_endpoints(1) as (main,):
        config = project(tmp_path, OMNI_RULE, main.url, site="    omni: engine\n")
        async with daemon_for(config, MockTime(virtual_clock)) as (daemon, client):
            await client.post("/events", json=[order(7, "+79004440001")])     # …01: not a Viber user
            await wait_for(lambda: states(daemon) == {"delivered": 1}, what="delivered by SMS")
            viber, sms = main.fake.messages()
            assert (viber["channel"], viber["text"], viber.get("alt_route")) == ("viber", "Viber: заказ 7 принят", None)
            assert (sms["channel"], sms["body"], sms["fallback_for"]) == ("sms", "SMS: заказ 7", None)
            message = daemon.store.messages()[0]
            assert sms["reference"] == message["sms_reference"] != message["reference"] == viber["reference"]
            assert (message["leg"], message["viber_status"]) == ("sms", "not_viber_user")
            trace = (await client.get(f"/messages/{message['id']}")).json()
            assert [a["what"] for a in trace["attempts"]] == ["send", "fallback", "send", "status"]
            (event,) = journal(daemon, "message.delivered")
            assert event["message"]["leg"] == "sms"


async def test_engine_omni_deadline_then_a_late_viber_receipt_is_recorded_and_sends_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = ManualClock(datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc))
    async with bsg_endpoints(1) as (main,):
        rule = 'on order.created send omni to customer.phone using "created" fallback after 2m\n'
        config = project(tmp_path, rule, main.url, site="    omni: engine\n",
                         bsg="  callback_secret: cbsecret\n")
        async with daemon_for(config, clock) as (daemon, client):
            await client.post("/events", json=[order(8, "+79005550005")])     # …05: Viber never final
            await wait_for(lambda: len(main.fake.messages()) == 1, what="the Viber leg")
            await looked(daemon.dispatch_wake, "the dispatcher")
            await looked(daemon.dispatcher.poll_wake, "the status poller")
            assert len(main.fake.messages()) == 1           # before the deadline: no SMS
            clock.current += timedelta(minutes=2, seconds=1)
            daemon.dispatch_wake.set()
            daemon.dispatcher.poll_wake.set()
            await wait_for(lambda: len(main.fake.messages()) == 2, what="the SMS after the deadline")
            viber, sms = main.fake.messages()
            assert sms["channel"] == "sms"

            # the Viber report arrives after the SMS went: recorded, counted, nothing else
            late = {"reference": viber["reference"], "id": viber["id"], "status": "delivered"}
            response = await client.post("/bsg/callback/cbsecret", json=late)
            assert response.status_code == 200 and response.json()["applied"] == 1
            await client.post("/bsg/callback/cbsecret", json=late)          # repeated: harmless
            message = daemon.store.messages()[0]
            assert (message["double_delivery"], message["viber_status"]) == (True, "delivered")
            await looked(daemon.dispatch_wake, "the dispatcher")
            await looked(daemon.dispatcher.poll_wake, "the status poller")
            assert len(main.fake.messages()) == 2           # no third message
            assert journal(daemon, "message.delivered") == [] and journal(daemon, "message.failed") == []
            health = (await client.get("/health")).json()
            assert health["delivery"]["double_deliveries"] == 1


async def test_a_receipt_for_an_unknown_reference_is_logged_and_ignored(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="herald.dispatch")
    async with bsg_endpoints(1) as (main,):
        config = project(tmp_path, SMS_RULE, main.url, bsg="  callback_secret: cbsecret\n")
        async with daemon_for(config) as (daemon, client):
            response = await client.post("/bsg/callback/cbsecret",
                                         json={"reference": "hrnosuchreference", "id": "77", "status": "delivered"})
            assert response.json() == {"applied": 0, "pending": 0, "unknown": 1}
            assert "hrnosuchreference" in caplog.text and "unknown message" in caplog.text
            assert daemon.store.messages() == [] and main.fake.messages() == []


# ---------------------------------------------------------------------------- alerts and dead letters

async def test_operator_error_mails_once_and_failed_messages_can_be_replayed(tmp_path, monkeypatch, virtual_clock):
    monkeypatch.chdir(tmp_path)
    async with smtp_server() as (inbox, smtp_port), bsg_endpoints(1) as (main,):
        config = project(tmp_path, SMS_RULE, main.url, smtp=smtp_port)
        async with daemon_for(config, MockTime(virtual_clock)) as (daemon, client):
            main.fake.set_fault("error", code=8)                  # not enough funds, for every request
            await client.post("/events", json=[order(n, f"+790066600{n + 10:02d}") for n in range(1, 6)])
            await wait_for(lambda: states(daemon).get("queued") == 5 and inbox.mails, what="held + one alert")
            await trio.sleep(0.3)
            assert len(inbox.mails) == 1 and "error 8" in inbox.subjects()[0]
            assert "top up" in inbox.mails[0].get_content()
            health = (await client.get("/health")).json()
            assert [i["key"] for i in health["incidents"]] == ["bsg.error.8:main"]

            # a fatal error is a dead letter with BSG's code; a replay is a new message
            main.fake.clear_faults()
            await client.post("/messages", json={"to": "+79006660099", "text": "x", "channel": "sms"})
            main.fake.set_fault("error", code=21, count=1)
            dead = await wait_for(lambda: daemon.store.messages(state="failed"), what="a dead letter")
            assert dead[0]["error_code"] == 21 and "21" in dead[0]["reason"]
            (failed_event,) = await wait_for(lambda: journal(daemon, "message.failed"), what="message.failed")
            assert failed_event["message"]["status"] == "error 21" and failed_event["message"]["to"] == "+79006660099"
            bad = await client.post("/messages/retry", json={"status": "sent"})
            assert bad.status_code == 400 and bad.json()["pointer"] == "/status"
            replay = await client.post("/messages/retry", json={"status": "failed", "since": "2026-01-01T00:00:00Z"})
            assert replay.status_code == 202 and replay.json()["count"] == 1
            again = await client.post("/messages/retry", json={"status": "failed", "since": "2026-01-01T00:00:00Z"})
            assert again.json()["count"] == 0                  # replayed once, not twice
            new_id = replay.json()["replayed"][0]["replay"]
            await wait_for(lambda: daemon.store.message(new_id)["state"] == "delivered", what="the replay delivered")
            assert daemon.store.message(new_id)["reference"] != dead[0]["reference"]
            await wait_for(lambda: states(daemon).get("delivered") == 6, what="the held ones delivered too")
            await wait_for(lambda: len(inbox.mails) == 2, what="the recovery mail")


async def test_low_balance_mails_once_and_is_an_event_rules_can_use(tmp_path, monkeypatch, virtual_clock):
    monkeypatch.chdir(tmp_path)
    rules = SMS_RULE + ('rule "balance" on provider.balance if provider.low '
                        'send sms to "+79007770077" text "Баланс BSG: #PROVIDER_BALANCE# #PROVIDER_CURRENCY#"\n')
    async with smtp_server() as (inbox, smtp_port), trio.open_nursery() as nursery:
        fake = FakeBSG(delivery_delay=0.1)
        fake.set_balance("42.5")
        main = Endpoint(nursery, fake)
        await main.up()
        config = project(tmp_path, rules, main.url, smtp=smtp_port,
                         bsg="  balance_alert: 100\n  balance_every: 1s\n")
        async with daemon_for(config, MockTime(virtual_clock)) as (daemon, client):
            await wait_for(lambda: len(journal(daemon, "provider.balance")) >= 3, what="three balance reads")
            # the alert mail goes from its own task (over SMTP, in a thread): virtual reads can be quicker
            await wait_for(lambda: inbox.mails, what="the low-balance mail")
            low = journal(daemon, "provider.balance")[0]["provider"]
            assert (low["name"], Decimal(low["balance"]), low["low"], low["threshold"]) == ("main", Decimal("42.5"), True, 100)
            assert len(inbox.mails) == 1 and "balance is low" in inbox.subjects()[0]
            # a rule reacts to the event (one SMS per read while low — the rule's author decides)
            await wait_for(lambda: any(m["msisdn"] == "79007770077" for m in fake.messages()), what="the rule's SMS")
            assert "Баланс BSG: 42.5" in [m for m in fake.messages() if m["msisdn"] == "79007770077"][0]["body"]

            fake.set_balance("500")
            await wait_for(lambda: len(inbox.mails) == 2, what="the recovery mail")
            assert "back over 100" in inbox.subjects()[1]
            await trio.sleep(1.5)
            assert len(inbox.mails) == 2
        nursery.cancel_scope.cancel()


async def test_a_rule_on_message_failed_cannot_feed_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = SMS_RULE + 'rule "tell" on message.failed send sms to "+79008880088" text "Не доставлено: #MESSAGE_TO#"\n'
    async with bsg_endpoints(1) as (main,):
        config = project(tmp_path, rules, main.url)
        async with daemon_for(config) as (daemon, client):
            main.fake.set_fault("error", code=21)              # every send fails, the admin's too
            await client.post("/events", json=[order(1, "+79008880011")])
            await wait_for(lambda: states(daemon) == {"failed": 2}, what=lambda: states(daemon))
            # every journaled event processed (the admin's message.failed too): a rule
            # feeding itself would have put a third message in the outbox by now
            await wait_for(lambda: not daemon.store.pending_events(1), what="the journal processed")
            await looked(daemon.dispatch_wake, "the dispatcher")
            assert states(daemon) == {"failed": 2}
            (event,) = journal(daemon, "message.failed")
            assert event["message"]["to"] == "+79008880011"


async def test_an_unknown_outcome_survives_a_refused_retry_and_waits_for_main(tmp_path, monkeypatch, virtual_clock):
    """Main takes the message but answers too late (unknown), then refuses connections
    (certain — about the retry only). The message must wait for main, never go to the backup."""
    monkeypatch.chdir(tmp_path)
    async with bsg_endpoints(2) as (main, backup):
        config = project(tmp_path, SMS_RULE, main.url, backup=backup.url)
        async with daemon_for(config, MockTime(virtual_clock)) as (daemon, client):
            main.fake.set_fault("slow", delay=3.0, count=1)      # main takes it after Herald gave up
            await client.post("/events", json=[order(1, "+79002220011")])
            await wait_for(lambda: [m["uncertain_at"] for m in daemon.store.messages()] == ["main"], what="unknown")
            await wait_for(lambda: len(main.references()) == 1, what="main stored it")
            await main.down()
            first_id = daemon.store.messages(phone="+79002220011")[0]["id"]
            sends = lambda: [a["outcome"] for a in daemon.store.attempts_of(first_id) if a["what"] == "send"]  # noqa: E731
            await wait_for(lambda: sends() == ["unknown", "unavailable"], what=sends)   # the refused retry
            await wait_for(lambda: journal(daemon, "provider.down"), what="main tripped")
            await trio.sleep(3)
            first = daemon.store.messages(phone="+79002220011")[0]
            assert (first["state"], first["uncertain_at"]) == ("queued", "main")
            assert backup.references() == []
            await client.post("/events", json=[order(n, f"+7900222002{n}") for n in (2, 3)])
            await wait_for(lambda: len(backup.references()) == 2, what="new traffic through the backup")
            assert first["reference"] not in backup.references()

            await main.up()
            await wait_for(lambda: daemon.store.messages(phone="+79002220011")[0]["state"] in ("sent", "delivered"),
                           what="found at main by its reference")
            assert main.references() == [first["reference"]]     # once, at main; never at the backup


async def test_a_duplicate_answer_then_a_failed_lookup_keeps_the_message_at_that_endpoint(tmp_path, monkeypatch, virtual_clock):
    monkeypatch.chdir(tmp_path)
    async with bsg_endpoints(2) as (main, backup):
        config = project(tmp_path, SMS_RULE, main.url, backup=backup.url)
        async with daemon_for(config, MockTime(virtual_clock)) as (daemon, client):
            main.fake.set_fault("slow", delay=3.0, count=1)
            await client.post("/events", json=[order(1, "+79002220011")])
            await wait_for(lambda: len(main.references()) == 1, what="main stored it")
            main.fake.set_fault("error", code=23, count=2)       # the retry: 23; the look-up: an error
            await wait_for(lambda: main.fake.fault is None, what="retry and look-up happened")
            await trio.sleep(0.3)
            first = daemon.store.messages(phone="+79002220011")[0]
            assert (first["state"], first["uncertain_at"]) == ("queued", "main")
            await main.down()
            await client.post("/events", json=[order(n, f"+7900222002{n}") for n in (2, 3)])
            await wait_for(lambda: len(backup.references()) == 2, what="new traffic through the backup")
            await main.up()
            await wait_for(lambda: daemon.store.messages(phone="+79002220011")[0]["state"] in ("sent", "delivered"),
                           what="resolved at main")
            assert first["reference"] not in backup.references()
            trace = (await client.get(f"/messages/{first['id']}")).json()
            assert ("lookup", "no answer") in [(a["what"], a["outcome"]) for a in trace["attempts"]]


async def test_engine_omni_viber_delivered_late_after_the_sms_failed_is_delivered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with bsg_endpoints(1) as (main,):
        config = project(tmp_path, OMNI_RULE, main.url, site="    omni: engine\n", bsg="  callback_secret: cbsecret\n")
        async with daemon_for(config) as (daemon, client):
            await client.post("/events", json=[order(9, "+79004440077")])
            await wait_for(lambda: len(main.fake.messages()) == 1, what="the Viber leg")
            viber = main.fake.messages()[0]
            report = lambda ref, bsg_id, status: client.post(  # noqa: E731
                "/bsg/callback/cbsecret", json={"reference": ref, "id": bsg_id, "status": status})
            await report(viber["reference"], viber["id"], "undeliverable")
            await wait_for(lambda: len(main.fake.messages()) == 2, what="the SMS leg")
            sms = main.fake.messages()[1]
            await wait_for(lambda: daemon.store.messages()[0]["state"] == "sent", what="the SMS leg recorded")
            await report(sms["reference"], sms["id"], "undeliverable")
            await wait_for(lambda: daemon.store.messages()[0]["state"] == "failed", what="the SMS failed")
            await report(viber["reference"], viber["id"], "delivered")          # Viber made it after all
            message = daemon.store.messages()[0]
            assert (message["state"], message["double_delivery"]) == ("delivered", False)
            assert "after the SMS fallback failed" in message["reason"]
            assert len(main.fake.messages()) == 2


async def test_an_id_only_report_must_name_one_message(tmp_path, monkeypatch, virtual_clock):
    """BSG ids are per endpoint: the same id at main and at the backup is ambiguous unless
    the report comes on the endpoint's own path."""
    monkeypatch.chdir(tmp_path)
    async with bsg_endpoints(2, delivery_delay=30) as (main, backup):
        config = project(tmp_path, SMS_RULE, main.url, backup=backup.url, bsg="  callback_secret: cbsecret\n")
        async with daemon_for(config, MockTime(virtual_clock)) as (daemon, client):
            await client.post("/events", json=[order(1, "+79004440011")])
            await wait_for(lambda: [m["state"] for m in daemon.store.messages()] == ["sent"], what="sent at main")
            await main.down()
            await client.post("/events", json=[order(n, f"+790044400{n + 10}") for n in (2, 3, 4)])
            await wait_for(lambda: len(backup.references()) == 3, what="three at the backup")
            await wait_for(lambda: states(daemon) == {"sent": 4}, what="all sent")
            shared = daemon.store.messages(phone="+79004440011")[0]["bsg_id"]
            assert shared in {m["bsg_id"] for m in daemon.store.messages() if m["endpoint"] == "backup1"}
            ambiguous = await client.post("/bsg/callback/cbsecret", json={"id": shared, "status": "delivered"})
            assert ambiguous.json()["unknown"] == 1 and states(daemon) == {"sent": 4}
            named = await client.post("/bsg/callback/cbsecret/main", json={"id": shared, "status": "delivered"})
            assert named.json()["applied"] == 1
            assert daemon.store.messages(phone="+79004440011")[0]["state"] == "delivered"
            wrong = await client.post("/bsg/callback/cbsecret/nowhere", json={"id": shared, "status": "delivered"})
            assert wrong.status_code == 404 and "main" in wrong.json()["error"]


async def test_recovery_after_a_crash_does_not_hold_up_the_api(tmp_path, monkeypatch):
    """A message left `sending` by a crash, its endpoint answering slowly: the API answers
    while the look-up is still out, and the message is then resolved (found: not resent).
    In real time: on a virtual clock the slow answer could come while the run waits for
    the store's thread, before the API is asked."""
    from herald.engine.store import Store
    monkeypatch.chdir(tmp_path)
    async with bsg_endpoints(1) as (main,):
        config = project(tmp_path, SMS_RULE, main.url)
        store = Store(tmp_path / "var" / "herald.db")
        store.migrate()
        message_id, reference = store.add_message(site="s1", channel="sms", to_phone="+79004440015", state="queued",
                                                  send_at=datetime.now(timezone.utc), text="x", sms_text="x",
                                                  sender="testsms", sms_sender="testsms")
        store.update_message(message_id, state="sending", endpoint="main", attempts=1)
        store.close()
        main.fake.create_sms({"destination": "phone", "msisdn": "79004440015", "originator": "testsms",
                              "body": "x", "reference": reference})             # BSG got it before the crash
        main.fake.set_fault("slow", delay=1.5)                                   # every answer is slow
        async with daemon_for(config) as (daemon, client):
            health = await client.get("/health")
            assert health.status_code == 200
            assert daemon.store.message(message_id)["state"] == "sending"      # still being looked up
            main.fake.clear_faults()
            await wait_for(lambda: daemon.store.message(message_id)["state"] in ("sent", "delivered"),
                           what="resolved by its reference")
            assert len(main.fake.messages()) == 1                               # found, not resent
            trace = (await client.get(f"/messages/{message_id}")).json()
            assert [(a["what"], a["outcome"]) for a in trace["attempts"]][0] == ("lookup", "found")


async def test_a_replay_keeps_to_the_window_and_skips_a_number_that_opted_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from zoneinfo import ZoneInfo
    now = datetime.now(ZoneInfo("Europe/Moscow"))
    window = f"{(now + timedelta(hours=2)).strftime('%H:00')}-{(now + timedelta(hours=3)).strftime('%H:00')}"
    async with bsg_endpoints(1) as (main,):
        config = project(tmp_path, SMS_RULE, main.url)
        async with daemon_for(config) as (daemon, client):
            main.fake.set_fault("error", code=21)
            phones = ["+79004440021", "+79004440022", "+79004440023"]
            for phone in phones:
                await client.post("/messages", json={"to": phone, "text": "x", "channel": "sms", "now": True})
            await wait_for(lambda: states(daemon) == {"failed": 3}, what=lambda: states(daemon))
            main.fake.clear_faults()
            daemon.store.add_opt_out("+79004440023", "test", datetime.now(timezone.utc))
            text = config.read_text().replace("    admin_email:", f'    send_window: "{window}"\n    admin_email:')
            config.write_text(text)
            assert (await client.post("/reload")).status_code == 200
            ids = {m["to"]: m["id"] for m in daemon.store.messages(state="failed")}
            waits = (await client.post("/messages/retry", json={"ids": [ids[phones[0]], ids[phones[2]]]})).json()
            goes = (await client.post("/messages/retry", json={"ids": [ids[phones[1]]], "now": True})).json()
            by_to = {item["to"]: item for item in waits["replayed"] + goes["replayed"]}
            assert by_to[phones[0]]["state"] == "deferred"
            assert by_to[phones[1]]["state"] == "queued"
            assert by_to[phones[2]]["replay"] is None and "opted out" in by_to[phones[2]]["state"]
            await wait_for(lambda: [m["msisdn"] for m in main.fake.messages()] == ["79004440022"],
                           what=lambda: main.fake.messages())
