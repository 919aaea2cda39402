"""The daemon end to end over real HTTP: events in, requests at the fake BSG out."""

import json
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from herald.engine.config import load_config
from herald.engine.daemon import Daemon
from herald.engine.bsg.fake import FakeBSG, serve
from herald.engine.delivery import policy
from tests.daemon_helpers import fake_bsg, free_port, herald, write_project

CARD = 'on order.status == "shipped" send omni to customer.phone using "shipped" between 00:00-24:00\n'
EVENT = {"type": "order.updated", "site": "s1", "id": "evt-123",
         "data": {"order": {"id": 42, "status": "shipped", "price": "1500.00"},
                  "customer": {"phone": "+7 900 123-45-67", "name": "Ivan"}},
         "previous": {"order": {"status": "P"}}}


@asynccontextmanager
async def running(tmp_path: Path, rules: str = CARD, *, extra: str = "", fake: FakeBSG | None = None, **kw):
    """A fake BSG and a daemon configured for it: yields (daemon, API client, fake)."""
    async with fake_bsg(fake=fake) as (fake, url):
        config_path = write_project(tmp_path, rules, port=free_port(), bsg_url=url, extra=extra, **kw)
        async with herald(config_path) as (daemon, client):
            yield daemon, client, fake


async def wait_for(predicate, timeout: float = 10.0):
    with trio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(0.05)


async def test_card_example_event_becomes_exactly_the_expected_bsg_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with running(tmp_path) as (daemon, client, fake):
        response = await client.post("/events", json=EVENT)
        assert (response.status_code, response.json()) == (202, {"accepted": ["evt-123"], "duplicates": []})
        await wait_for(lambda: _async(len(fake.messages()) == 1))
        (sent,) = fake.messages()
        assert (sent["channel"], sent["msisdn"], sent["alpha_name"], sent["text"]) == (
            "viber", "79001234567", "AdvInform", "Заказ 42 отгружен")
        assert sent["alt_route"] == {"originator": "testsms", "text": "Заказ 42 отгружен"}
        viber_requests = [r for r in fake.requests() if r["path"] == "/viber/create"]
        assert len(viber_requests) == 1
        # the status poller sees the final status and Herald records the delivery
        messages = await wait_for(lambda: _messages(client, "delivered"))
        assert messages[0]["reference"] == sent["reference"] and messages[0]["price"] is not None


async def _async(value):
    return value


async def _messages(client, state):
    body = (await client.get("/messages", params={"status": state})).json()
    return body["messages"]


async def test_same_event_id_twice_sends_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with running(tmp_path) as (daemon, client, fake):
        first = await client.post("/events", json=EVENT)
        second = await client.post("/events", json=[EVENT])
        assert second.json() == {"accepted": ["evt-123"], "duplicates": ["evt-123"]}
        assert first.status_code == second.status_code == 202
        await wait_for(lambda: _messages(client, "sent") or _messages(client, "delivered"))
        await trio.sleep(0.5)
        assert len(fake.messages()) == 1


async def test_bad_input_gets_4xx_with_a_json_pointer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = "  tokens: [sekrit-token-1]\n  max_body: 2k\n"
    async with running(tmp_path, extra=extra) as (daemon, client, fake):
        auth = {"Authorization": "Bearer sekrit-token-1"}
        assert (await client.post("/events", json=EVENT)).status_code == 401
        assert (await client.post("/events", json=EVENT, headers={"Authorization": "Bearer nope"})).status_code == 401
        cases = [
            (b"{not json", 400, ""),
            (json.dumps({"data": {}}).encode(), 400, "/type"),
            (json.dumps([EVENT, {"type": "order.updated", "data": []}]).encode(), 400, "/1/data"),
            (json.dumps({"type": "order.updated", "data": {}, "site": "s9"}).encode(), 400, "/site"),
            (json.dumps({"type": "order.updated", "data": {}, "time": "yesterday"}).encode(), 400, "/time"),
            (json.dumps({"type": "order.updated", "data": {}, "color": 1}).encode(), 400, "/color"),
        ]
        for body, status, pointer in cases:
            response = await client.post("/events", content=body, headers=auth)
            assert response.status_code == status, body
            assert response.json()["pointer"] == pointer and response.json()["error"]
        big = {"type": "order.updated", "data": {"x": "y" * 3000}}
        assert (await client.post("/events", json=big, headers=auth)).status_code == 413
        assert (await client.get("/messages/999", headers=auth)).status_code == 404
        manual = await client.post("/messages", json={"to": "+79001234567"}, headers=auth)
        assert manual.status_code == 400 and manual.json()["pointer"] == "/text"
        assert (await client.get("/nope", headers=auth)).json() == {"error": "no such endpoint: GET /nope"}
        assert (await client.get("/health")).status_code == 200            # no token needed
        # nothing of the rejected requests was journaled
        assert (await client.get("/health")).json()["pending_events"] == 0
        assert fake.messages() == []


async def test_manual_send_and_balance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with running(tmp_path) as (daemon, client, fake):
        response = await client.post("/messages", json={"to": ["8 900 765-43-21"], "text": "Привет", "channel": "sms"})
        assert response.status_code == 202
        await wait_for(lambda: _async(len(fake.messages()) == 1))
        assert fake.messages()[0]["msisdn"] == "79007654321" and fake.messages()[0]["body"] == "Привет"
        balance = (await client.get("/balance")).json()
        assert balance["currency"] == "EUR" and float(balance["amount"]) < 100


async def test_reload_swaps_rules_or_keeps_them_on_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with running(tmp_path) as (daemon, client, fake):
        rules = tmp_path / "rules" / "main.rules"
        rules.write_text(CARD + 'rule "paid" on order.paid == true send sms to customer.phone text "paid"\n')
        ok = await client.post("/reload")
        assert (ok.status_code, ok.json()["rules"]) == (200, 2)
        rules.write_text('rule "broken" on order.paid = true send sms to customer.phone text "x"\n')
        bad = await client.post("/reload")
        assert bad.status_code == 422 and bad.json()["reloaded"] is False
        assert bad.json()["errors"][0].startswith("rules/main.rules:1:29: error: unexpected `=`")
        assert len(daemon.project.rules) == 2


async def test_after_timer_of_a_removed_rule_is_cancelled_with_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = 'rule "remind" on order.created after 2h send sms to customer.phone text "pay"\n'
    async with running(tmp_path, rules) as (daemon, client, fake):
        await client.post("/events", json={"type": "order.created", "data": {"order": {"id": 1},
                                                                           "customer": {"phone": "+79001112233"}}})
        await wait_for(lambda: _async(daemon.store.next_timer_due() is not None))
        (tmp_path / "rules" / "main.rules").write_text(CARD)
        assert (await client.post("/reload")).status_code == 200
        row = daemon.store._execute("SELECT status, reason FROM timers").fetchone()
        assert tuple(row) == ("cancelled", "the rule was removed by a reload")


async def test_outside_the_window_the_message_waits_deferred(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo
    now = datetime.now(ZoneInfo("Europe/Moscow"))
    start = (now + timedelta(hours=2)).strftime("%H:00")
    end = (now + timedelta(hours=3)).strftime("%H:00")
    rules = f'on order.created send sms to customer.phone text "hi" between {start}-{end}\n'
    async with running(tmp_path, rules) as (daemon, client, fake):
        await client.post("/events", json={"type": "order.created", "data": {"order": {"id": 1},
                                                                           "customer": {"phone": "+79001112233"}}})
        deferred = await wait_for(lambda: _messages(client, "deferred"))
        opening = datetime.fromisoformat(deferred[0]["send_at"]).astimezone(ZoneInfo("Europe/Moscow"))
        assert opening.strftime("%H:%M") == start and opening > now
        assert fake.messages() == []


async def test_fatal_bsg_error_fails_the_message_with_code_and_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = 'on order.created send sms to customer.phone text "hi" from "testsms"\n'
    async with running(tmp_path, rules) as (daemon, client, fake):
        fake.set_fault("error", code=21, count=1)
        await client.post("/events", json={"type": "order.created", "data": {"order": {"id": 1},
                                                                           "customer": {"phone": "+79001112233"}}})
        failed = await wait_for(lambda: _messages(client, "failed"))
        assert failed[0]["error_code"] == 21 and failed[0]["reason"].startswith("BSG error 21")


async def test_bsg_down_then_up_retries_and_sends_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(policy, "backoff", lambda attempts, **kw: 0.2)   # fast retries, same logic
    rules = 'on order.created send sms to customer.phone text "hi"\n'
    async with running(tmp_path, rules, bsg_extra="  timeout: 0.2\n") as (daemon, client, fake):
        fake.set_fault("down", count=2)
        await client.post("/events", json={"type": "order.created", "data": {"order": {"id": 1},
                                                                           "customer": {"phone": "+79001112233"}}})
        sent = await wait_for(lambda: _messages(client, "sent") or _messages(client, "delivered"))
        assert len(fake.messages()) == 1
        # an outage is not the message's fault: its attempts are given back, and its
        # history shows the two dropped sends before the one that went through
        assert sent[0]["attempts"] == 1
        trace = (await client.get(f"/messages/{sent[0]['id']}")).json()
        sends = [a["outcome"] for a in trace["attempts"] if a["what"] == "send"]
        # (a balance read may take one of the two faults)
        assert sends in (["unknown", "unknown", "ok"], ["unknown", "ok"]), sends


async def test_reload_under_load_matches_every_event_exactly_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = 'rule "new" on order.created send sms to customer.phone text "v0 #ORDER_ID#"\n'
    total = 600
    async with running(tmp_path, rules, fake=FakeBSG(delivery_delay=5)) as (daemon, client, fake):
        async def post_all():
            for start in range(0, total, 10):
                batch = [{"type": "order.created", "id": f"e{i}",
                          "data": {"order": {"id": i}, "customer": {"phone": f"+7900{i:07d}"}}}
                         for i in range(start, start + 10)]
                assert (await client.post("/events", json=batch)).status_code == 202
                await trio.sleep(0.005)

        async def reload_20_times():
            for n in range(1, 21):
                (tmp_path / "rules" / "main.rules").write_text(rules.replace("v0", f"v{n}"))
                response = await client.post("/reload")
                assert response.status_code == 200
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post_all)
            nursery.start_soon(reload_20_times)
        await wait_for(lambda: _async(daemon.store.stats()["pending_events"] == 0), 30)
        rows = daemon.store._execute(
            "SELECT event_id, COUNT(*) FROM outbox GROUP BY event_id").fetchall()
        assert len(rows) == total and {count for _, count in rows} == {1}
        versions = {r[0] for r in daemon.store._execute("SELECT DISTINCT rule_version FROM firings")}
        assert len(versions) > 1                                    # the reloads really happened mid-stream


class ManualClock:
    """The daemon's idea of now, moved by the test (trio timeouts still run in real time)."""

    def __init__(self, now):
        self.current = now

    def now(self):
        return self.current


async def test_deferred_message_goes_when_the_window_opens_on_a_virtual_clock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from datetime import datetime
    from zoneinfo import ZoneInfo
    msk = ZoneInfo("Europe/Moscow")
    clock = ManualClock(datetime(2026, 11, 27, 23, 0, tzinfo=msk))
    rules = 'on order.created send sms to customer.phone text "hi" between 09:00-21:00\n'
    fake = FakeBSG(delivery_delay=0.1)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, fake, "127.0.0.1", 0)
        config = write_project(tmp_path, rules, port=free_port(), bsg_url=f"http://127.0.0.1:{port}")
        daemon = Daemon(load_config(config), clock=clock)
        url = await nursery.start(daemon.run)
        async with httpx.AsyncClient(base_url=url) as client:
            await client.post("/events", json={"type": "order.created", "time": clock.now().isoformat(),
                                               "data": {"order": {"id": 1}, "customer": {"phone": "+79001112233"}}})
            (deferred,) = await wait_for(lambda: _messages(client, "deferred"))
            assert datetime.fromisoformat(deferred["send_at"]) == datetime(2026, 11, 28, 9, 0, tzinfo=msk)
            clock.current = datetime(2026, 11, 28, 8, 59, tzinfo=msk)
            daemon.dispatch_wake.set()
            await trio.sleep(0.3)
            assert fake.messages() == []                      # a minute early: still waiting
            clock.current = datetime(2026, 11, 28, 9, 0, 1, tzinfo=msk)
            daemon.dispatch_wake.set()
            await wait_for(lambda: _async(len(fake.messages()) == 1))
        nursery.cancel_scope.cancel()


async def test_manual_send_keeps_the_window_unless_now(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo
    now = datetime.now(ZoneInfo("Europe/Moscow"))
    window = f"{(now + timedelta(hours=2)).strftime('%H:00')}-{(now + timedelta(hours=3)).strftime('%H:00')}"
    async with running(tmp_path, site_extra=f'    send_window: "{window}"\n') as (daemon, client, fake):
        waits = await client.post("/messages", json={"to": "+79007654321", "text": "a", "channel": "sms"})
        goes = await client.post("/messages", json={"to": "+79007654322", "text": "b", "channel": "sms", "now": True})
        assert waits.status_code == goes.status_code == 202
        await wait_for(lambda: _async(len(fake.messages()) == 1))
        assert fake.messages()[0]["msisdn"] == "79007654322"
        assert [m["to"] for m in await _messages(client, "deferred")] == ["+79007654321"]


async def test_omni_not_viber_user_is_delivered_by_the_sms_fallback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(policy, "POLL_SCHEDULE", (0.3, 0.6, 1, 2, 3, 5))
    rules = 'on order.created send omni to customer.phone text "hi"\n'
    async with running(tmp_path, rules, fake=FakeBSG(delivery_delay=0.3)) as (daemon, client, fake):
        # numbers ending in 01 are not Viber users at the fake: the SMS fallback delivers
        await client.post("/events", json={"type": "order.created", "data": {"order": {"id": 1},
                                                                           "customer": {"phone": "+79001112201"}}})
        (m,) = await wait_for(lambda: _messages(client, "delivered"))
        assert m["bsg_status"] == "not_viber_user" and m["sms_bsg_id"]
        assert await _messages(client, "failed") == []
