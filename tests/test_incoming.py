"""Incoming SMS: polled from the fake BSG's /sms/2wayIncoming and pushed to
POST /sms/incoming; each becomes one sms.received; the shipped STOP rule."""

from __future__ import annotations

import trio

from tests.audience_helpers import fake_and_project, journal, running, sms_to, wait_for

POLL = "  lists: [news, offers]\n  poll_incoming: 1s\n"
NEWS = 'rule "news" on order.created send sms to subscribers "news" text "Новости"\n'


async def test_a_polled_stop_unsubscribes_from_every_list_and_is_confirmed_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, rules=NEWS, subscriptions=POLL) as (fake, config):
        async with running(config) as (daemon, client):
            now = daemon.clock.now()
            for phone in ("+79001234567", "+79007654321"):
                for name in ("news", "offers"):
                    await daemon.db(daemon.store.put_confirmed_subscriber, name, phone, "s1", now)
            fake.inject_incoming("79001234567", "  сТоП ")
            fake.inject_incoming("79007654321", "stop, but only the sales please")
            confirmation = await wait_for(lambda: sms_to(fake, "79001234567"), what="the STOP confirmation")
            assert confirmation == ["Вы отписаны от рассылок Shop. Сообщений больше не будет."]
            await trio.sleep(2.5)                     # more polls see the same SMS again
            received = journal(daemon, "sms.received")
            assert sorted(e["sms"]["from"] for e in received) == ["+79001234567", "+79007654321"]
            stop = next(e["sms"] for e in received if e["sms"]["from"] == "+79001234567")
            assert stop["text"] == "  сТоП " and stop["to"] == "testsms" and stop["id"]
            assert sms_to(fake, "79001234567") == confirmation       # confirmed once
            cancelled = journal(daemon, "subscription.cancelled")
            assert sorted(e["subscription"]["list"] for e in cancelled) == ["news", "offers"]

            # opted out: a list message reaches only the other subscriber
            await client.post("/events", json={"type": "order.created", "id": "o1", "data": {}})
            await wait_for(lambda: sms_to(fake, "79007654321"), what="the news to the other subscriber")
            await trio.sleep(0.3)
            assert sms_to(fake, "79001234567") == confirmation


async def test_pushes_are_journaled_once_and_match_polled_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, subscriptions="  lists: [news]\n  poll_incoming: off\n") as (fake, config):
        async with running(config) as (daemon, client):
            push = {"id": "in-1", "from": "+79001112233", "to": "testsms", "text": "Когда доставка?",
                    "time": "2026-03-02T10:00:00+03:00"}
            first = await client.post("/sms/incoming", json=push)
            assert first.status_code == 202 and first.json() == {"accepted": ["sms:push:in-1"], "duplicates": []}
            again = await client.post("/sms/incoming", json=push)
            assert again.json() == {"accepted": ["sms:push:in-1"], "duplicates": ["sms:push:in-1"]}
            # BSG's own shape, forwarded as it is
            bsg = await client.post("/sms/incoming", json=[{"id": "77", "msisdn": "79004445566", "sender": "testsms",
                                                            "body": "OTPISKA", "time": "2026-03-02 07:00:00"}])
            assert bsg.status_code == 202 and bsg.json()["accepted"] == ["sms:77"]
            events = journal(daemon, "sms.received")
            assert [e["sms"]["from"] for e in events] == ["+79001112233", "+79004445566"]
            assert events[1]["sms"]["time"] == "2026-03-02T07:00:00+00:00"
            await wait_for(lambda: sms_to(fake, "79004445566"), what="the STOP confirmation")

            # the same SMS found by a poll is the same event
            from herald.engine.audience.incoming import poll_once
            fake.inject_incoming("79004445566", "OTPISKA", time="2026-03-02 07:00:00")
            assert fake.incoming("2026-03-02 00:00:00", "2026-03-03 00:00:00")["result"][0]["id"] != "77"
            fake_id = fake.incoming("2026-03-02 00:00:00", "2026-03-03 00:00:00")["result"][0]["id"]
            pushed = await client.post("/sms/incoming", json={"id": fake_id, "msisdn": "79004445566",
                                                               "body": "OTPISKA", "time": "2026-03-02 07:00:00"})
            assert pushed.json()["accepted"] == [f"sms:{fake_id}"]
            before = len(journal(daemon, "sms.received"))
            await poll_once(daemon.services, daemon.dispatcher.client)
            assert len(journal(daemon, "sms.received")) == before

            # a pushed id of the sender's own is not BSG's: the same number at BSG is another SMS
            own = await client.post("/sms/incoming", json={"id": "1", "from": "+79007778899", "text": "hello"})
            assert own.json()["accepted"] == ["sms:push:1"]
            fake.inject_incoming("79001112244", "вопрос")
            bsg_ids = [i["id"] for i in fake.incoming("2000-01-01 00:00:00", "2999-01-01 00:00:00")["result"]
                       if i["body"] == "вопрос"]
            collide = await client.post("/sms/incoming", json={"id": bsg_ids[-1], "from": "+79007778899",
                                                               "text": "mine"})
            assert collide.json()["duplicates"] == []
            await poll_once(daemon.services, daemon.dispatcher.client)
            assert "вопрос" in [e["sms"]["text"] for e in journal(daemon, "sms.received")]


async def test_bad_pushes_say_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, subscriptions="  poll_incoming: off\n") as (fake, config):
        async with running(config) as (daemon, client):
            cases = [({"id": "1", "text": "x"}, "/from"),
                     ([{"id": "1", "from": "+79001112233", "text": "x"}, {"id": "2", "from": "+79001112233"}],
                      "/1/text"),
                     ({"id": "1", "from": "12", "text": "x"}, "/from"),
                     ({"id": "1", "from": "+79001112233", "text": "x", "time": "yesterday"}, "/time"),
                     ({"id": "1", "from": "+79001112233", "text": "x", "site": "s9"}, "/site"),
                     ([], "")]
            for body, pointer in cases:
                r = await client.post("/sms/incoming", json=body)
                assert r.status_code == 400 and r.json()["pointer"] == pointer, (body, r.text)
            assert journal(daemon, "sms.received") == []


S2 = """  s2:
    name: Восток
    timezone: Asia/Vladivostok
    channel: sms
    admin_email: admin@vl.example
    api_key: key_vl
"""


async def test_each_bsg_account_is_polled_and_its_balance_stops_only_its_campaigns(tmp_path, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from herald.engine.bsg.fake import FakeBSG
    from tests.audience_helpers import project
    from tests.test_multisite import bsg_accounts

    monkeypatch.chdir(tmp_path)
    main, vl = FakeBSG(api_keys={"test_key"}, delivery_delay=0), FakeBSG(api_keys={"key_vl"}, delivery_delay=0)
    async with bsg_accounts(test_key=main, key_vl=vl) as url:
        config = project(tmp_path, url, site=S2, subscriptions="  lists: [news]\n  poll_incoming: 1s\n")
        async with running(config) as (daemon, client):
            vl.inject_incoming("79001234567", "СТОП")
            main.inject_incoming("79007654321", "hello")
            await wait_for(lambda: sms_to(vl, "79001234567"), what="the STOP confirmation through s2's account")
            received = {e["sms"]["from"]: e for e in journal(daemon, "sms.received")}
            assert set(received) == {"+79001234567", "+79007654321"}
            sites = dict(daemon.store._conn.execute("SELECT json_extract(data, '$.sms.from'), site FROM events "
                                                    "WHERE type = 'sms.received'").fetchall())
            assert sites == {"+79001234567": "s2", "+79007654321": "s1"}

            vl.set_balance(0)                       # s2's account is empty; the main one is not
            end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
            made = {}
            for site in ("s1", "s2"):
                r = await client.post("/campaigns", json={"phones": ["+79101112233", "+79101112234"], "text": "Sale",
                                                          "channel": "sms", "site": site, "end": end,
                                                          "window": "00:00-24:00", "rate": "1/s"})
                assert r.status_code == 201, r.text
                made[site] = r.json()["id"]
            await wait_for(lambda: daemon.store.campaign(made["s2"])["state"] == "stopped", what="s2's stop")
            assert "site s2's BSG account: 0" in daemon.store.campaign(made["s2"])["reason"]
            await wait_for(lambda: len([m for m in main.messages() if m["body"] == "Sale"]) == 2,
                           what="s1's campaign through the main account")
            assert daemon.store.campaign(made["s1"])["state"] in ("active", "completed")
