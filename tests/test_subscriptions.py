"""Subscriptions end to end: a daemon with the shipped rules, the fake BSG over HTTP."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
import trio

from herald.engine.config import load_config
from herald.engine.errors import ConfigError
from tests.audience_helpers import ManualClock, fake_and_project, journal, running, sms_to, wait_for

GUARDS = """  lists: {news: Новости, offers: Акции}
  per_phone: 2/h
  per_ip: 3/h
  countries: [7, 375]
  code_attempts: 3
  code_lifetime: 10m
"""


def code_in(texts: list[str]) -> str:
    return re.search(r": (\d{6})\.", texts[-1]).group(1)


async def test_join_with_the_code_by_sms_then_the_list_reaches_the_number(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = 'rule "news" on order.created send sms to subscribers "news" text "Скидки #SITE_NAME#"\n'
    async with fake_and_project(tmp_path, rules=rules, subscriptions=GUARDS) as (fake, config):
        async with running(config) as (daemon, client):
            r = await client.post("/subscriptions", json={"phone": "8 (912) 345-67-89", "list": "news"})
            assert r.status_code == 202, r.text
            assert r.json()["state"] == "pending" and r.json()["phone"] == "+79123456789"
            texts = await wait_for(lambda: sms_to(fake, "79123456789"), what="the code by SMS")
            assert texts[0].startswith("Код подтверждения подписки на Shop: ")
            code = code_in(texts)

            wrong = await client.post("/subscriptions/confirm",
                                      json={"phone": "+79123456789", "list": "news", "code": "000000"})
            assert wrong.status_code == 400 and wrong.json()["pointer"] == "/code"
            assert "2 tries left" in wrong.json()["error"]
            ok = await client.post("/subscriptions/confirm",
                                   json={"phone": "+79123456789", "list": "news", "code": code})
            assert ok.status_code == 200 and ok.json()["state"] == "confirmed"
            again = await client.post("/subscriptions", json={"phone": "+79123456789", "list": "news"})
            assert again.status_code == 200 and again.json()["state"] == "confirmed"   # no second code

            await client.post("/events", json={"type": "order.created", "id": "o1", "data": {"order": {"id": 1}}})
            await wait_for(lambda: len(sms_to(fake, "79123456789")) == 2, what="the list message")
            assert sms_to(fake, "79123456789")[-1] == "Скидки Shop"
            created, confirmed = journal(daemon, "subscription.created"), journal(daemon, "subscription.confirmed")
            assert [e["subscription"]["confirmed"] for e in created + confirmed] == [False, True]
            assert "confirm_code" not in confirmed[0]["subscription"]


async def test_pumping_guards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, subscriptions=GUARDS) as (fake, config):
        # the visitors' addresses come from this machine's proxy (docs/subscriptions.md)
        config.write_text(config.read_text().replace("http:\n", "http:\n  trusted_proxies: [127.0.0.1]\n"))
        async with running(config) as (daemon, client):
            async def ask(phone: str, ip: str = "203.0.113.7", list_name: str = "news"):
                return await client.post("/subscriptions", json={"phone": phone, "list": list_name},
                                         headers={"X-Forwarded-For": ip})

            # per phone: 2 codes an hour, whatever the address
            assert (await ask("+79000000001", "198.51.100.1")).status_code == 202
            assert (await ask("+79000000001", "198.51.100.2")).status_code == 202
            third = await ask("+79000000001", "198.51.100.3")
            assert third.status_code == 429 and "for this number" in third.json()["error"]
            # per address: 3 an hour, whatever the number
            for n in (2, 3, 4):
                assert (await ask(f"+7900000000{n}")).status_code == 202
            fourth = await ask("+79000000005")
            assert fourth.status_code == 429 and "from your address" in fourth.json()["error"]
            # country codes allowed for the site: +7 and +375, not +380
            foreign = await ask("+380671234567", "192.0.2.9")
            assert foreign.status_code == 403 and foreign.json()["pointer"] == "/phone"
            assert "+380" in foreign.json()["error"]
            unknown = await ask("+79000000009", "192.0.2.10", "newz")
            assert unknown.status_code == 400 and unknown.json()["pointer"] == "/list"
            assert 'did you mean "news"' in unknown.json()["error"]
            bad = await client.post("/subscriptions", json={"phone": "12", "list": "news"})
            assert bad.status_code == 400 and bad.json()["pointer"] == "/phone"

            # only the allowed requests sent a code
            await wait_for(lambda: len(fake.messages("sms")) == 5, what="5 codes")
            await trio.sleep(0.3)
            assert sorted(m["msisdn"] for m in fake.messages("sms")) == [
                "79000000001", "79000000001", "79000000002", "79000000003", "79000000004"]

            # three wrong codes void the code: then even the right one is refused
            code = code_in(sms_to(fake, "79000000002"))
            for left in ("2 tries left", "1 try left"):
                r = await client.post("/subscriptions/confirm",
                                      json={"phone": "+79000000002", "list": "news", "code": "1"})
                assert r.status_code == 400 and left in r.json()["error"]
            last = await client.post("/subscriptions/confirm", json={"phone": "+79000000002", "list": "news",
                                                                     "code": "1"})
            assert last.status_code == 429
            void = await client.post("/subscriptions/confirm", json={"phone": "+79000000002", "list": "news",
                                                                     "code": code})
            assert void.status_code == 410 and "new one" in void.json()["error"]
            assert not journal(daemon, "subscription.confirmed")


async def test_codes_expire(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
    async with fake_and_project(tmp_path, subscriptions=GUARDS) as (fake, config):
        async with running(config, clock) as (daemon, client):
            await client.post("/subscriptions", json={"phone": "+375291234567", "list": "offers"})
            code = code_in(await wait_for(lambda: sms_to(fake, "375291234567"), what="the code"))
            clock.current += timedelta(minutes=10, seconds=1)
            late = await client.post("/subscriptions/confirm",
                                     json={"phone": "+375291234567", "list": "offers", "code": code})
            assert late.status_code == 410 and "expired" in late.json()["error"]
            # a new code works (and the old one no longer does)
            await client.post("/subscriptions", json={"phone": "+375291234567", "list": "offers"})
            await wait_for(lambda: len(sms_to(fake, "375291234567")) == 2, what="the second code")
            new = code_in(sms_to(fake, "375291234567"))
            r = await client.post("/subscriptions/confirm",
                                  json={"phone": "+375291234567", "list": "offers", "code": new})
            assert r.status_code == 200


async def test_unsubscribe_by_http_and_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rules = ('rule "news" on order.created send sms to subscribers "news" text "N"\n'
             'rule "offers" on order.updated send sms to subscribers "offers" text "O"\n')
    async with fake_and_project(tmp_path, rules=rules, subscriptions=GUARDS) as (fake, config):
        async with running(config) as (daemon, client):
            now = daemon.clock.now()
            for phone in ("+79001112233", "+79004445566"):
                for name in ("news", "offers"):
                    await daemon.db(daemon.store.put_confirmed_subscriber, name, phone, "s1", now)
            r = await client.request("DELETE", "/subscriptions", json={"phone": "+79001112233", "list": "news"})
            assert r.status_code == 200 and r.json() == {"phone": "+79001112233", "cancelled": ["news"],
                                                         "opted_out": False}
            missing = await client.request("DELETE", "/subscriptions", json={"list": "news"})
            assert missing.status_code == 400 and missing.json()["pointer"] == "/phone"

            from herald.engine.cli.main import main
            code = await trio.to_thread.run_sync(main, ["unsubscribe", "-c", str(config), "8 900 444-55-66"])
            assert code == 0
            assert "+79004445566: unsubscribed from news, offers; on the opt-out list" in capsys.readouterr().out

            await client.post("/events", json=[{"type": "order.created", "id": "o1", "data": {}},
                                               {"type": "order.updated", "id": "o2", "data": {}}])
            await wait_for(lambda: len(fake.messages("sms")) == 1, what="one message")
            await trio.sleep(0.5)
            assert [(m["msisdn"], m["body"]) for m in fake.messages("sms")] == [("79001112233", "O")]
            cancelled = journal(daemon, "subscription.cancelled")
            assert sorted((e["subscription"]["phone"], e["subscription"]["list"]) for e in cancelled) == [
                ("+79001112233", "news"), ("+79004445566", "news"), ("+79004445566", "offers")]


def test_config_errors_are_located(tmp_path):
    path = tmp_path / "herald.yaml"
    path.write_text("subscriptions:\n  lists: [news]\n  per_ip: lots\n  countries: [7, 999]\n  code_atempts: 3\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = err.value.format()
    assert "herald.yaml:3:11" in text and "expected a rate such as 5/h" in text
    assert "herald.yaml:4:18" in text and "999 is not a country calling code" in text
    assert "herald.yaml:5:3" in text and 'did you mean "code_attempts"' in text


def test_config_defaults_and_shapes(tmp_path):
    path = tmp_path / "herald.yaml"
    path.write_text("sites: {s1: {}, s2: {}}\nsubscriptions:\n  lists: {news: Новости}\n"
                    "  countries: {s2: [\"+380\"]}\n  per_phone: 1/10m\n  poll_incoming: off\n", encoding="utf-8")
    settings = load_config(path).subscriptions
    assert settings.lists == {"news": "Новости"}
    assert settings.countries == {"s2": (380,)}
    assert settings.per_phone == (1, 600.0) and settings.per_ip == (5, 3600.0)
    assert settings.poll_incoming is None
    path.write_text("store: var/h.db\n", encoding="utf-8")
    defaults = load_config(path).subscriptions
    assert defaults.lists == {} and defaults.code_lifetime == 600.0 and defaults.poll_incoming == 60.0
