"""Several sites in one config, end to end: two shops in different time zones (Moscow and
Vladivostok), each with its own BSG account (sites.X.api_key), senders, window,
transliteration, admins and macros. BSG is one URL serving two fake accounts picked by
the X-API-KEY header, as the real one does, over real HTTP on loopback."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from herald.engine.config import load_config
from herald.engine.errors import ConfigError
from herald.engine.bsg.fake import FakeBSG, create_app
from tests.daemon_helpers import free_port
from tests.test_delivery import ManualClock, daemon_for, wait_for

RULES = """\
rule "order accepted" on order.created
send sms to customer.phone text "Заказ #ORDER_ID# принят. #SITE_NAME#"

rule "far east admins" on order.created if site.id == "s2"
send sms to admins text "Новый заказ #ORDER_ID# (#SERVER_NAME#)"
"""

CONFIG = """\
store: var/herald.db
bsg:
  url: {url}
  api_key: key_msk
  rate: 1000
senders:
  sms: [ShopMsk, ShopVl]
sites:
  s1:
    name: Магазин Москва
    server_name: msk.shop.example
    timezone: Europe/Moscow
    channel: sms
    sms_sender: ShopMsk
    send_window: "09:00-21:00"
    admins: ["+79001110011"]
  s2:
    name: Магазин Владивосток
    server_name: vl.shop.example
    timezone: Asia/Vladivostok
    channel: sms
    sms_sender: ShopVl
    send_window: "09:00-21:00"
    admins: ["+79002220022"]
    translit: true
    api_key: !secret vl_bsg_key
http:
  listen: 127.0.0.1:{port}
"""


def project(tmp_path: Path, url: str) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "main.rules").write_text(RULES, encoding="utf-8")
    (tmp_path / "rules" / "templates.yaml").write_text("{}\n", encoding="utf-8")
    (tmp_path / "secrets.yaml").write_text("vl_bsg_key: key_vl\n", encoding="utf-8")
    config = tmp_path / "herald.yaml"
    config.write_text(CONFIG.format(url=url, port=free_port()), encoding="utf-8")
    return config


@asynccontextmanager
async def bsg_accounts(**accounts: FakeBSG):
    """One BSG URL, one fake account per API key (an unknown key reaches the first
    account, which refuses it): yields the URL."""
    apps = {key: create_app(fake) for key, fake in accounts.items()}
    first = next(iter(apps.values()))

    async def by_key(scope, receive, send):
        key = dict(scope.get("headers") or ()).get(b"x-api-key", b"").decode()
        await apps.get(key, first)(scope, receive, send)

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.loglevel = "WARNING"
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn_serve, by_key, config, mode="asgi"))
        yield binds[0]
        nursery.cancel_scope.cancel()


def order(site: str, number: int, phone: str) -> dict:
    return {"type": "order.created", "site": site, "id": f"{site}-{number}",
            "data": {"order": {"id": number}, "customer": {"phone": phone}}}


async def test_two_sites_two_time_zones_two_accounts(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    msk, vl = FakeBSG(api_keys={"key_msk"}, delivery_delay=0), FakeBSG(api_keys={"key_vl"}, delivery_delay=0)
    # 11:30 UTC: 14:30 in Moscow (open), 21:30 in Vladivostok (closed until 09:00 = 23:00 UTC)
    clock = ManualClock(datetime(2026, 11, 27, 11, 30, tzinfo=timezone.utc))
    async with bsg_accounts(key_msk=msk, key_vl=vl) as url:
        async with daemon_for(project(tmp_path, url), clock) as (daemon, client):
            response = await client.post("/events", json=[order("s1", 1, "+79005550011"),
                                                           order("s2", 2, "+79005550012")])
            assert response.status_code == 202
            await wait_for(lambda: len(msk.messages()) == 1, what="the Moscow message")
            (sent,) = msk.messages()
            assert (sent["msisdn"], sent["originator"], sent["body"]) == (
                "79005550011", "ShopMsk", "Заказ 1 принят. Магазин Москва")
            # Vladivostok's two messages (customer, admins: the rule limited to s2) wait for its window
            waiting = daemon.store.messages(state="deferred")
            assert sorted(m["to"] for m in waiting) == ["+79002220022", "+79005550012"]
            assert {m["send_at"] for m in waiting} == {"2026-11-27T23:00:00+00:00"}
            await trio.sleep(0.3)
            assert vl.messages() == [] and len(msk.messages()) == 1   # s1's admins: no s2-only rule

            clock.current = datetime(2026, 11, 27, 23, 0, 1, tzinfo=timezone.utc)
            daemon.dispatch_wake.set()
            await wait_for(lambda: len(vl.messages()) == 2, what="Vladivostok's messages at 09:00 local")
            by_phone = {m["msisdn"]: m for m in vl.messages()}
            customer, admin = by_phone["79005550012"], by_phone["79002220022"]
            # its own account, sender, transliteration and macros
            assert customer["originator"] == admin["originator"] == "ShopVl"
            assert customer["body"] == "Zakaz 2 prinyat. Magazin Vladivostok"
            assert admin["body"] == "Novy zakaz 2 (vl.shop.example)"
            assert len(msk.messages()) == 1

            # statuses are asked with each site's key too: every message ends delivered. The
            # clock moves on only once both sends are recorded (the fake has them before
            # Herald writes `sent`; a send recorded after the move would be polled later)
            await wait_for(lambda: len(daemon.store.messages(state="sent")) + len(
                daemon.store.messages(state="delivered")) == 3, what="the three sends recorded")
            clock.current += timedelta(seconds=10)
            daemon.dispatcher.poll_wake.set()
            await wait_for(lambda: len(daemon.store.messages(state="delivered")) == 3,
                           what=lambda: f"3 delivered, got {[m['state'] for m in daemon.store.messages()]}")
    assert "key_vl" not in caplog.text and "key_msk" not in caplog.text


def test_a_site_api_key_is_a_secret_and_an_unset_one_is_an_error(tmp_path):
    config = project(tmp_path, "http://127.0.0.1:9")
    site = load_config(config).sites["s2"]
    assert site.api_key.reveal() == "key_vl" and "key_vl" not in repr(site)
    assert load_config(config).sites["s1"].api_key is None
    config.write_text(config.read_text().replace("!secret vl_bsg_key", "!env VL_BSG_KEY"))
    with pytest.raises(ConfigError) as error:
        load_config(config, env={})
    assert "sites.s2.api_key" in error.value.format() and "VL_BSG_KEY" in error.value.format()


async def test_one_accounts_operator_error_mails_once_while_the_other_account_sends(tmp_path, monkeypatch):
    """Site s2's own account has no funds (error 8); s1's sends fine. s1's successes must
    neither resolve s2's incident nor release s2's held message: one e-mail, not a flood."""
    from tests.test_delivery import smtp_server
    monkeypatch.chdir(tmp_path)
    msk, vl = FakeBSG(api_keys={"key_msk"}, delivery_delay=0), FakeBSG(api_keys={"key_vl"}, delivery_delay=0)
    vl.set_fault("error", code=8)
    async with smtp_server() as (inbox, smtp_port), bsg_accounts(key_msk=msk, key_vl=vl) as url:
        config = project(tmp_path, url)
        text = config.read_text().replace('    send_window: "09:00-21:00"\n', "    admin_email: admin@shop.example\n")
        config.write_text(text + f"smtp:\n  host: 127.0.0.1\n  port: {smtp_port}\n  from: h@shop.example\n")
        async with daemon_for(config) as (daemon, client):
            await client.post("/events", json=[order("s2", 1, "+79005550012")])
            await wait_for(lambda: inbox.mails, what="the alert for s2's account")
            for n in range(2, 6):                                # the other site's ordinary traffic
                await client.post("/events", json=[order("s1", n, f"+7900555003{n}")])
                await trio.sleep(0.5)
            await wait_for(lambda: len(msk.messages()) == 4, what="s1's four messages")
            assert len(inbox.mails) == 1 and "main/s2" in inbox.mails[0]["Subject"]
            held = [m for m in daemon.store.messages() if m["site"] == "s2" and m["rule"] == "order accepted"]
            assert held[0]["state"] == "queued" and held[0]["error_code"] == 8
