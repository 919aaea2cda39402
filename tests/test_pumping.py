"""SMS pumping through POST /subscriptions (issue #12, item 4): who the client is, the
overall and per-country caps, number types, the CAPTCHA hook, and what logs and /health
show. A daemon with the shipped rules, the fake BSG and a real verifier over HTTP."""

from __future__ import annotations

import ipaddress
import logging
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import trio
from hypothesis import given, strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from herald.engine.config import load_config
from herald.engine.errors import ConfigError
from tests.fuzz import fuzz
from tests.audience_helpers import ManualClock, fake_and_project, journal, running, wait_for

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
SECRET = "verifier-s3cret-value"


def trust(config: Path, proxies: str) -> Path:
    """Add `http.trusted_proxies` to a project written by audience_helpers.project()."""
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("http:\n", f"http:\n  trusted_proxies: {proxies}\n", 1), encoding="utf-8")
    return config


@asynccontextmanager
async def connecting_from(client: httpx.AsyncClient, address: str):
    """A client whose connections leave from `address` (any 127.x.y.z is this machine)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(base_url=client.base_url, transport=transport, timeout=30) as other:
        yield other


def ask(client: httpx.AsyncClient, phone: str, list_name: str = "news", **fields):
    return client.post("/subscriptions", json={"phone": phone, "list": list_name, **fields})


def ask_via(client: httpx.AsyncClient, phone: str, forwarded: str, list_name: str = "news"):
    return client.post("/subscriptions", json={"phone": phone, "list": list_name},
                       headers={"X-Forwarded-For": forwarded})


async def codes_sent(daemon) -> int:
    return len(journal(daemon, "subscription.created"))


# ---- the reproductions --------------------------------------------------------------------

async def test_the_body_ip_field_does_not_multiply_codes(tmp_path, monkeypatch):
    """200 phones with 200 different `ip` values sent 200 codes: the limit counts the connection."""
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, subscriptions="  lists: [news]\n  per_ip: 3/h\n") as (fake, config):
        async with running(config) as (daemon, client):
            answers = [await ask(client, f"+7900{n:07d}", ip=f"198.51.{n // 200}.{n % 200 + 1}")
                       for n in range(200)]
            assert [a.status_code for a in answers[:3]] == [202, 202, 202]
            assert {a.status_code for a in answers[3:]} == {429}
            assert answers[3].json()["limit"] == "per_ip"
            assert await codes_sent(daemon) == 3            # journaled at once: only these send a code
            await wait_for(lambda: len(fake.messages("sms")) == 3, what="3 codes")


async def test_an_overall_cap_and_a_cap_per_country(tmp_path, monkeypatch):
    """Many visitors (distinct addresses behind a trusted proxy) still get at most `total`
    codes an hour, and at most `per_country` for one calling code; 429 says which and when."""
    monkeypatch.chdir(tmp_path)
    clock = ManualClock(T0)
    guards = "  lists: [news]\n  total: 5/h\n  per_country: {375: 2/h}\n"
    async with fake_and_project(tmp_path, subscriptions=guards) as (fake, config):
        trust(config, "[127.0.0.1]")
        async with running(config, clock) as (daemon, client):
            by = [await ask_via(client, f"+37529123456{n}", f"203.0.113.{n}") for n in range(1, 4)]
            assert [r.status_code for r in by] == [202, 202, 429]
            assert by[2].json()["limit"] == "per_country" and "+375" in by[2].json()["error"]
            assert by[2].headers["retry-after"] == "3600" and by[2].json()["retry_after"] == 3600

            ru = [await ask_via(client, f"+7900{n:07d}", f"198.51.100.{n}") for n in range(1, 5)]
            assert [r.status_code for r in ru] == [202, 202, 202, 429]
            assert ru[3].json()["limit"] == "total" and "try again in 1 hour" in ru[3].json()["error"]
            clock.current += timedelta(minutes=20)
            again = await ask_via(client, "+79009999999", "192.0.2.1")
            assert again.status_code == 429 and again.headers["retry-after"] == str(40 * 60)

            await wait_for(lambda: len(fake.messages("sms")) == 5, what="5 codes")
            clock.current += timedelta(minutes=40)            # the first codes leave the window
            assert (await ask_via(client, "+79009999999", "192.0.2.1")).status_code == 202


async def test_premium_toll_free_and_landline_numbers_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, subscriptions="  lists: [news]\n  per_ip: 2/h\n") as (fake, config):
        async with running(config) as (daemon, client):
            for phone, kind in (("+7 809 123-45-67", "premium-rate"), ("+7 800 123-45-67", "toll-free"),
                                ("+7 495 123-45-67", "landline")):
                r = await ask(client, phone)
                assert r.status_code == 400, r.text
                assert r.json()["pointer"] == "/phone" and kind in r.json()["error"]
            # refused numbers used none of the address's allowance
            assert [(await ask(client, p)).status_code for p in ("+79001234567", "+79001234568")] == [202, 202]
            await wait_for(lambda: len(fake.messages("sms")) == 2, what="2 codes")
            assert sorted(m["msisdn"] for m in fake.messages("sms")) == ["79001234567", "79001234568"]


# ---- who the client is -----------------------------------------------------------------------

async def test_the_limit_counts_the_connection_or_a_trusted_proxys_forwarded_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, subscriptions="  lists: [news]\n  per_ip: 1/h\n") as (fake, config):
        trust(config, "[127.0.0.2, 10.0.0.0/8]")
        async with running(config) as (daemon, client):
            async with connecting_from(client, "127.0.0.2") as proxy, \
                    connecting_from(client, "127.0.0.3") as stranger:
                # behind the trusted proxy: each visitor has its own allowance …
                assert (await ask_via(proxy, "+79000000001", "203.0.113.1")).status_code == 202
                assert (await ask_via(proxy, "+79000000002", "203.0.113.2")).status_code == 202
                # … the right-most untrusted address counts, whatever the visitor put before it
                assert (await ask_via(proxy, "+79000000003", "6.6.6.6, 203.0.113.1, 10.1.2.3")).status_code == 429
                # an untrusted peer's X-Forwarded-For is ignored: the connection counts
                assert (await ask_via(stranger, "+79000000004", "203.0.113.4")).status_code == 202
                late = await ask_via(stranger, "+79000000005", "203.0.113.5")
                assert late.status_code == 429 and late.json()["limit"] == "per_ip"


def test_client_address_rules():
    from herald.engine.helpers.client_address import client_address, parse_proxies

    trusted = parse_proxies(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])
    assert client_address("192.0.2.7", "203.0.113.9", trusted) == "192.0.2.7"          # untrusted peer
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"                   # no header
    assert client_address("127.0.0.1", "203.0.113.9", trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", "1.1.1.1, 203.0.113.9, 10.0.0.5", trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", "10.0.0.6, 10.0.0.5", trusted) == "10.0.0.6"    # all proxies: the first
    assert client_address("127.0.0.1", "nonsense, 203.0.113.9", trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", "203.0.113.9, nonsense", trusted) == "127.0.0.1"  # a broken hop: the proxy
    assert client_address("127.0.0.1", "[2001:db9::1]:443", trusted) == "2001:db9::1"
    assert client_address("::ffff:192.0.2.7", None, trusted) == "192.0.2.7"
    assert client_address(None, "203.0.113.9", trusted) == "unknown"


@fuzz()
@given(st.one_of(st.none(), st.ip_addresses().map(str), st.text(max_size=50)),
       st.one_of(st.none(), st.lists(st.one_of(st.ip_addresses().map(str), st.text(max_size=30)),
                                     max_size=6).map(", ".join)))
def test_any_peer_and_header_give_an_address_and_only_a_trusted_peer_is_looked_past(peer, header):
    from herald.engine.helpers.client_address import client_address, parse_proxies

    trusted = parse_proxies(["127.0.0.0/8", "10.0.0.0/8", "::1"])
    found = client_address(peer, header, trusted)
    assert isinstance(found, str) and found
    try:
        peer_ip = ipaddress.ip_address(peer or "")
    except ValueError:
        return
    peer_ip = getattr(peer_ip, "ipv4_mapped", None) or peer_ip      # ::ffff:10.0.0.1 is 10.0.0.1
    if not any(peer_ip in net for net in trusted if net.version == peer_ip.version):
        assert ipaddress.ip_address(found) == peer_ip
    else:
        assert found == str(ipaddress.ip_address(found))      # always a real address behind a proxy


@fuzz()
@given(st.text(max_size=40))
def test_a_masked_phone_shows_at_most_six_digits(raw):
    from herald.engine.helpers.phones import mask_phone

    assert sum(ch.isdigit() for ch in mask_phone(raw)) <= 6


def test_ipv6_visitors_are_counted_per_64_network():
    from herald.engine.helpers.client_address import limit_key

    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("203.0.113.9") == "203.0.113.9"


# ---- the proof step (a CAPTCHA verifier) -----------------------------------------------------

class Verifier:
    """A siteverify-style verifier: form fields secret, response, remoteip → {"success": …}."""

    def __init__(self):
        self.calls: list[dict] = []

    def app(self) -> Starlette:
        async def verify(request: Request):
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            self.calls.append(form)
            if form.get("secret") != SECRET:
                return JSONResponse({"success": False, "error-codes": ["invalid-input-secret"]})
            ok = form.get("response") == "good-token"
            return JSONResponse({"success": ok, **({} if ok else {"error-codes": ["invalid-input-response"]})})
        return Starlette(routes=[Route("/siteverify", verify, methods=["POST"])])


@asynccontextmanager
async def verifier_server():
    from hypercorn.config import Config
    from hypercorn.trio import serve

    verifier, config = Verifier(), Config()
    config.bind, config.accesslog, config.loglevel = ["127.0.0.1:0"], None, "WARNING"
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, verifier.app(), config)
        yield verifier, f"{binds[0]}/siteverify", nursery.cancel_scope
        nursery.cancel_scope.cancel()


def proof_guards(url: str) -> str:
    return (f"  lists: [news, offers]\n  proof:\n    url: {url}\n"
            f"    secret: !env HERALD_TEST_CAPTCHA\n    lists: [news]\n")


async def test_a_list_can_ask_for_a_captcha_checked_by_the_verifier(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HERALD_TEST_CAPTCHA", SECRET)
    caplog.set_level(logging.INFO)
    async with verifier_server() as (verifier, url, stop_verifier):
        async with fake_and_project(tmp_path, subscriptions=proof_guards(url)) as (fake, config):
            async with running(config) as (daemon, client):
                missing = await ask(client, "+79000000001")
                assert missing.status_code == 400 and missing.json()["pointer"] == "/captcha"
                assert verifier.calls == []                                  # no token: not even asked
                wrong = await ask(client, "+79000000001", captcha="forged")
                assert wrong.status_code == 403 and wrong.json()["pointer"] == "/captcha"
                ok = await ask(client, "+79000000001", captcha="good-token")
                assert ok.status_code == 202, ok.text
                assert verifier.calls[-1] == {"secret": SECRET, "response": "good-token", "remoteip": "127.0.0.1"}
                # a list without the proof step does not ask for one
                assert (await ask(client, "+79000000002", "offers")).status_code == 202
                assert len(verifier.calls) == 2

                stop_verifier.cancel()
                down = await ask(client, "+79000000003", captcha="good-token")
                assert down.status_code == 503 and int(down.headers["retry-after"]) > 0
                assert "verifier" in down.json()["error"]
                assert [e["subscription"]["phone"] for e in journal(daemon, "subscription.created")] == [
                    "+79000000001", "+79000000002"]               # only these send a code
                await wait_for(lambda: len(fake.messages("sms")) == 2, what="2 codes")
                assert sorted(m["msisdn"] for m in fake.messages("sms")) == ["79000000001", "79000000002"]
    assert SECRET not in caplog.text


async def test_a_wrong_verifier_secret_fails_closed(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HERALD_TEST_CAPTCHA", "not-the-secret")
    async with verifier_server() as (verifier, url, _):
        async with fake_and_project(tmp_path, subscriptions=proof_guards(url)) as (fake, config):
            async with running(config) as (daemon, client):
                r = await ask(client, "+79000000001", captcha="good-token")
                assert r.status_code == 503 and "verifier" in r.json()["error"]
    assert "invalid-input-secret" in caplog.text and "not-the-secret" not in caplog.text


async def test_over_a_limit_the_verifier_is_not_asked(tmp_path, monkeypatch):
    """A flood over a limit must not turn into a flood of verifier calls."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HERALD_TEST_CAPTCHA", SECRET)
    async with verifier_server() as (verifier, url, _):
        guards = proof_guards(url) + "  per_ip: 1/h\n"
        async with fake_and_project(tmp_path, subscriptions=guards) as (fake, config):
            async with running(config) as (daemon, client):
                assert (await ask(client, "+79000000001", captcha="good-token")).status_code == 202
                over = await ask(client, "+79000000002", captcha="good-token")
                assert over.status_code == 429 and over.json()["limit"] == "per_ip"
                assert [c["response"] for c in verifier.calls] == ["good-token"]


# ---- visible in logs and /health -------------------------------------------------------------

async def test_refusals_are_logged_with_the_phone_masked_and_counted_in_health(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    async with fake_and_project(tmp_path, subscriptions="  lists: [news]\n  per_ip: 2/h\n  countries: [7]\n") \
            as (fake, config):
        async with running(config) as (daemon, client):
            for phone in ("+79001234501", "+79001234502", "+79001234503", "+78091234567", "+380671234567"):
                await ask(client, phone)
            health = (await client.get("/health")).json()["subscriptions"]
            assert health["refused"] == {"per_ip": 1, "number_type": 1, "country": 1}
            assert health["codes"] == {"sent": 2, "limit": 200, "period": "hour"}
    lines = [r.getMessage() for r in caplog.records if r.name == "herald.subscriptions"]
    refusals = [line for line in lines if "refused" in line]
    assert len(refusals) == 3
    assert any("per_ip" in line and "+7900****03" in line for line in refusals)
    assert any("number_type" in line and "+7809****67" in line for line in refusals)
    assert not any(full in caplog.text for full in ("9001234503", "8091234567", "380671234567"))


# ---- configuration ---------------------------------------------------------------------------

def test_new_settings_defaults_and_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTCHA_SECRET", "x" * 12)
    path = tmp_path / "herald.yaml"
    path.write_text("store: var/h.db\n", encoding="utf-8")
    config = load_config(path)
    assert config.http.trusted_proxies == ()
    s = config.subscriptions
    assert s.total == (200, 3600.0) and s.per_country == {"*": (100, 3600.0)} and s.proof is None
    assert s.number_types == ("mobile", "fixed_line_or_mobile")
    path.write_text("http:\n  trusted_proxies: [127.0.0.1, 10.0.0.0/8, '::1']\n"
                    "subscriptions:\n  lists: [news, offers]\n  total: 1000/d\n"
                    "  per_country: {7: 500/h, other: 20/h}\n  number_types: [mobile, voip]\n"
                    "  proof: {url: 'https://verify.example/siteverify', secret: !env CAPTCHA_SECRET}\n",
                    encoding="utf-8")
    config = load_config(path)
    assert config.http.trusted_proxies == tuple(ipaddress.ip_network(n) for n in ("127.0.0.1/32", "10.0.0.0/8",
                                                                                  "::1/128"))
    s = config.subscriptions
    assert s.total == (1000, 86400.0) and s.per_country == {"7": (500, 3600.0), "*": (20, 3600.0)}
    assert s.number_types == ("mobile", "voip")
    assert s.proof.url == "https://verify.example/siteverify" and s.proof.secret.reveal() == "x" * 12
    assert s.proof.lists == ("news", "offers") and s.proof.timeout == 5.0
    assert "x" * 12 not in repr(config)


def test_bad_new_settings_are_located(tmp_path):
    path = tmp_path / "herald.yaml"
    path.write_text("http:\n  trusted_proxies: [127.0.0.1, not-an-address]\n"
                    "subscriptions:\n  lists: [news]\n  total: many\n  per_country: {999: 5/h}\n"
                    "  number_types: [mobile, premium]\n"
                    "  proof: {url: 'https://v.example/', secret: plain, lists: [newz]}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = err.value.format()
    assert "herald.yaml:2:32" in text and "not-an-address" in text and "address or network" in text
    assert "herald.yaml:5:10" in text and "expected a rate such as 5/h" in text
    assert "herald.yaml:6:17" in text and "999 is not a country calling code" in text
    assert "herald.yaml:7:26" in text and "premium" in text and "mobile" in text
    assert 'unknown list "newz"' in text and 'did you mean "news"' in text
    assert "in plain text" in text


def test_an_empty_verifier_secret_is_an_error_not_a_list_without_captcha(tmp_path, monkeypatch):
    monkeypatch.setenv("EMPTY_CAPTCHA_SECRET", "")
    path = tmp_path / "herald.yaml"
    path.write_text("subscriptions:\n  lists: [news]\n"
                    "  proof: {url: 'https://v.example/x', secret: !env EMPTY_CAPTCHA_SECRET}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "herald.yaml:3:" in err.value.format() and "secret key is required" in err.value.format()
