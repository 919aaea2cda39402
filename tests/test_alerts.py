"""Admin alert e-mails, delivered to a real SMTP server (aiosmtpd on loopback).

One mail per incident however often it is raised, one per recovery; queued mails wait
for SMTP to come up and survive a restart; a sent mail is not sent again; the SMTP
password never shows in a mail or a log line.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
import shutil
import socket
import ssl
import subprocess
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from herald.engine.delivery.alerts import Alerter
from herald.engine.config import load_config
from herald.engine.store import Store

PASSWORD = "smtp-PA55word-never-shown"
API_KEY = "live-bsg-key-never-shown"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "alerts.md"

SITES = """
timezone: Europe/Moscow
bsg:
  api_key: !env BSG_KEY
sites:
  s1:
    name: Modern Clothes
    admin_email: admin@shop.example.com
  s2:
    name: Second Shop
    admin_email: Ops Team <ops@second.example.com>, owner@second.example.com; ADMIN@shop.example.com
  s3:
    name: Third Shop
  s4:
    admin_email: admin@shop.example.com
"""


# ---- a real SMTP server --------------------------------------------------------------

class Inbox:
    """aiosmtpd handler: keeps every message it accepted."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[email.message.EmailMessage]:
        return [m for _, _, m in self.received]


class Login:
    """aiosmtpd authenticator accepting one user/password."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and \
            (auth_data.login, auth_data.password) == (self.user, self.password)
        return AuthResult(success=ok, handled=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def servers():
    """Start SMTP servers on demand (`start(port, **smtp_kwargs)`); all stop at the end."""
    started: list[Controller] = []

    def start(port: int, inbox: Inbox, **kwargs) -> Controller:
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return controller

    yield start
    for controller in started:
        if not controller.loop.is_closed():          # the test did not stop it itself
            controller.stop()


# ---- Herald's side -------------------------------------------------------------------

class Clock:
    """Wall time plus an offset the test can move (for durations in recovery mails)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset


def make_config(tmp_path: Path, port: int | None, *, login: bool = False, starttls: bool = False):
    smtp = []
    if port is not None:
        smtp = ["smtp:", "  host: 127.0.0.1", f"  port: {port}", "  from: herald@shop.example.com"]
        if login:
            smtp += ["  username: herald", "  password: !env SMTP_PASSWORD"]
        if starttls:
            smtp += ["  starttls: true"]
    path = tmp_path / "herald.yaml"
    path.write_text(textwrap.dedent(SITES) + "\n".join(smtp) + "\n", encoding="utf-8")
    return load_config(path, env={"SMTP_PASSWORD": PASSWORD, "BSG_KEY": API_KEY})


class Herald:
    """An Alerter on a real store, called the way the reactor calls it: from the database thread."""

    def __init__(self, store: Store, config, clock: Clock | None = None) -> None:
        self.store = store
        self.limiter = trio.CapacityLimiter(1)
        self.alerter = Alerter(store, config, clock or Clock(), retry_base=0.05, retry_cap=0.2)

    async def db(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def open(self, key: str, subject: str, body: str, site: str | None = None, fresh: bool = False) -> bool:
        def in_transaction() -> bool:
            with self.store.transaction():       # as the caller does: alert and cause commit together
                return self.alerter.open(key, subject, body, site=site, fresh=fresh)
        return await self.db(in_transaction)

    async def resolve(self, key: str, subject: str, body: str) -> bool:
        return await self.db(self.alerter.resolve, key, subject, body)

    async def drained(self, inbox: Inbox, count: int) -> None:
        """Wait until nothing is left to send and `inbox` holds `count` messages."""
        with trio.fail_after(15):
            while await self.db(self.alerter.unsent_mails) or len(inbox.received) < count:
                await trio.sleep(0.02)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "var" / "herald.db")
    yield s
    s.close()


DOWN = ("BSG main endpoint unreachable",
        "Herald cannot reach BSG at https://api.bsg.world/rest (5 timeouts in 60 s).\n"
        "Meanwhile: messages go through the backup endpoint; nothing is lost.\n"
        "What to do: check https://status.bsg.world and the server's network.")
UP = ("BSG main endpoint reachable again",
      "BSG at https://api.bsg.world/rest answers again; messages go through it again.\n"
      "Nothing to do.")


# ---- tests ---------------------------------------------------------------------------

async def test_an_incident_mails_its_site_admin_once(tmp_path, store, servers):
    port = free_port()
    inbox = Inbox()
    servers(port, inbox)
    herald = Herald(store, make_config(tmp_path, port))
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        assert await herald.open("bsg.error:8", "Not enough funds on the BSG account",
                                 "BSG refuses to send: error 8, недостаточно средств.\n"
                                 "Meanwhile: messages wait in the queue.\n"
                                 "What to do: top up the BSG balance.", site="s1")
        await herald.drained(inbox, 1)
        nursery.cancel_scope.cancel()

    [(sender, recipients, mail)] = inbox.received
    assert sender == "herald@shop.example.com"
    assert recipients == ["admin@shop.example.com"]
    assert mail["Subject"] == "[Herald] Not enough funds on the BSG account"
    assert mail["From"] == "herald@shop.example.com"
    assert mail["To"] == "admin@shop.example.com"
    assert mail["Date"].datetime.tzinfo is not None
    assert re.fullmatch(r"<\S+@shop\.example\.com>", mail["Message-Id"].strip())   # a long id may be folded onto a new line
    assert mail.get_content_type() == "text/plain" and mail.get_content_charset() == "utf-8"
    body = mail.get_content()
    assert "недостаточно средств" in body                       # UTF-8 survives the trip
    assert "Incident: bsg.error:8" in body
    assert re.search(r"Since: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d Europe/Moscow", body)
    assert "Site:     s1 (Modern Clothes)" in body
    assert "What to do: top up the BSG balance." in body
    assert [i["key"] for i in await herald.db(herald.alerter.open_incidents)] == ["bsg.error:8"]


async def test_raising_an_open_incident_100_times_sends_one_mail(tmp_path, store, servers):
    port = free_port()
    inbox = Inbox()
    servers(port, inbox)
    herald = Herald(store, make_config(tmp_path, port))
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        results = [await herald.open("provider.down:main", *DOWN) for _ in range(100)]
        await herald.drained(inbox, 1)
        nursery.cancel_scope.cancel()

    assert results == [True] + [False] * 99
    assert len(inbox.received) == 1
    assert len(store.alert_mails()) == 1
    [incident] = herald.alerter.open_incidents()
    assert (incident["key"], incident["occurrences"]) == ("provider.down:main", 100)


async def test_resolving_sends_one_recovery_mail_and_a_new_outage_mails_again(tmp_path, store, servers):
    port = free_port()
    inbox = Inbox()
    servers(port, inbox)
    clock = Clock()
    herald = Herald(store, make_config(tmp_path, port), clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        await herald.open("provider.down:main", *DOWN)
        await herald.open("provider.down:main", *DOWN)
        clock.offset = timedelta(hours=1, minutes=12)
        assert await herald.resolve("provider.down:main", *UP)
        assert not await herald.resolve("provider.down:main", *UP)   # not open any more: no mail
        await herald.drained(inbox, 2)
        assert herald.alerter.open_incidents() == []
        assert await herald.open("provider.down:main", *DOWN)        # a new outage is a new incident
        await herald.drained(inbox, 3)
        nursery.cancel_scope.cancel()

    subjects = [m["Subject"] for m in inbox.messages]
    assert subjects == ["[Herald] BSG main endpoint unreachable", "[Herald] BSG main endpoint reachable again",
                        "[Herald] BSG main endpoint unreachable"]
    recovery = inbox.messages[1].get_content()
    assert "Lasted:   1 h 12 min; raised 2 time(s) while open" in recovery
    assert re.search(r"Opened: .*\nResolved: ", recovery)
    assert inbox.messages[0]["Message-Id"] != inbox.messages[1]["Message-Id"]


async def test_a_fresh_outage_closes_a_stale_incident_with_its_own_mail_and_mails_again(tmp_path, store, servers):
    """A run killed with `provider.down:main` open left it in the store. Raised again as a
    repeat it is only counted; raised `fresh` (the caller saw the endpoint fine, then fail)
    the stale one is closed with one mail and the new outage mails."""
    before = Herald(store, make_config(tmp_path, None))            # the killed run (its mail went)
    await before.open("provider.down:main", *DOWN)
    port = free_port()
    inbox = Inbox()
    servers(port, inbox)
    herald = Herald(store, make_config(tmp_path, port))
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        assert not await herald.open("provider.down:main", *DOWN)               # a repeat: counted
        assert await herald.open("provider.down:main", *DOWN, fresh=True)       # a new outage
        await herald.drained(inbox, 2)
        nursery.cancel_scope.cancel()
    assert [m["Subject"] for m in inbox.messages] == ["[Herald] Ended: BSG main endpoint unreachable",
                                                      "[Herald] BSG main endpoint unreachable"]
    ended = inbox.messages[0].get_content()
    assert "did not record when this ended" in ended and "raised 2 time(s) while open" in ended
    [incident] = herald.alerter.open_incidents()
    assert incident["occurrences"] == 1


async def test_carry_over_resolves_campaign_incidents_unless_the_campaign_is_still_stopped(tmp_path, store, servers):
    fields = dict(origin="api", site="s1", channel="sms", text="x", source="list", start_at=0, end_at=4e9, rate=1)
    stopped = store.create_campaign({**fields, "name": "spring", "state": "stopped"}, [])
    cancelled = store.create_campaign({**fields, "name": "autumn", "state": "cancelled"}, [])
    for cid in (stopped, cancelled, 99):
        store.open_incident(f"campaign.stopped:{cid}", "s1", f"Campaign {cid} stopped", datetime.now(timezone.utc))
    store.open_incident("provider.down:main", None, DOWN[0], datetime.now(timezone.utc))
    port = free_port()
    inbox = Inbox()
    servers(port, inbox)
    herald = Herald(store, make_config(tmp_path, port))
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        left = await herald.db(herald.alerter.carry_over)
        await herald.drained(inbox, 2)
        nursery.cancel_scope.cancel()
    # what the store alone can tell is settled; the rest goes back to its owner to re-check
    assert [i["key"] for i in left] == [f"campaign.stopped:{stopped}", "provider.down:main"]
    assert [i["key"] for i in herald.alerter.open_incidents()] == [i["key"] for i in left]
    assert sorted(m["Subject"] for m in inbox.messages) == [
        "[Herald] Campaign #99 is no longer stopped", "[Herald] Campaign autumn is no longer stopped"]
    assert all(m["To"] == "admin@shop.example.com" for m in inbox.messages)     # site s1's admin


async def test_recipients_site_admin_or_every_distinct_admin(tmp_path, store, servers, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    inbox = Inbox()
    servers(port, inbox)
    herald = Herald(store, make_config(tmp_path, port))
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        await herald.open("balance.low", "BSG balance under 10 EUR", "The balance is 9.50 EUR.")
        await herald.drained(inbox, 1)
        await herald.open("bsg.error:6", "Tariff does not exist", "Site s2's tariff is gone.", site="s2")
        await herald.drained(inbox, 2)
        assert await herald.open("bsg.error:9", "Tariff inactive", "Site s3's tariff is off.", site="s3")
        await herald.drained(inbox, 2)
        nursery.cancel_scope.cancel()

    everyone = ["admin@shop.example.com", "ops@second.example.com", "owner@second.example.com"]
    assert [r for _, r, _ in inbox.received] == [everyone,
                                                 ["ops@second.example.com", "owner@second.example.com",
                                                  "ADMIN@shop.example.com"]]
    assert inbox.messages[0]["To"] == ", ".join(everyone)
    assert len(store.alert_mails()) == 2                              # s3 has no admin_email: none queued
    assert [i["key"] for i in herald.alerter.open_incidents()] == ["balance.low", "bsg.error:6", "bsg.error:9"]
    [warning] = [r for r in caplog.records if "bsg.error:9" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "site s3 has no admin_email" in warning.getMessage()


async def test_an_alert_raised_while_smtp_is_down_is_delivered_once_it_is_up(tmp_path, store, servers, caplog):
    port = free_port()                                  # nothing listens here yet
    inbox = Inbox()
    herald = Herald(store, make_config(tmp_path, port))
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        await herald.open("provider.down:main", *DOWN)
        with trio.fail_after(15):
            while not (mails := store.alert_mails()) or mails[0]["attempts"] < 2:
                await trio.sleep(0.02)
        assert mails[0]["sent_at"] is None and "Connection refused" in mails[0]["last_error"]
        servers(port, inbox)
        await herald.drained(inbox, 1)
        await trio.sleep(0.3)                           # longer than the retry cap: a resend would show
        nursery.cancel_scope.cancel()

    assert [m["Subject"] for m in inbox.messages] == ["[Herald] BSG main endpoint unreachable"]
    assert any("not sent" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


async def test_after_a_restart_a_queued_mail_is_sent_once_and_a_sent_one_not_again(tmp_path, servers):
    path = tmp_path / "herald.db"
    port = free_port()
    inbox = Inbox()
    config = make_config(tmp_path, port)

    first = Store(path)
    herald = Herald(first, config)
    server = servers(port, inbox)
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        await herald.open("balance.low", "BSG balance under 10 EUR", "The balance is 9.50 EUR.")
        await herald.drained(inbox, 1)
        server.stop()
        await herald.open("provider.down:main", *DOWN)  # SMTP is gone: this one stays queued
        with trio.fail_after(15):
            while first.alert_mails()[0]["attempts"] < 1:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()                   # "crash" with the mail unsent
    first.close()

    again = Store(path)
    herald = Herald(again, config)
    assert not await herald.open("provider.down:main", *DOWN)   # the incident survived the restart
    servers(port, inbox)
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        await herald.drained(inbox, 2)
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    again.close()

    assert [m["Subject"] for m in inbox.messages] == ["[Herald] BSG balance under 10 EUR",
                                                      "[Herald] BSG main endpoint unreachable"]


async def test_without_smtp_the_incident_is_recorded_and_logged_once(tmp_path, store, caplog):
    herald = Herald(store, make_config(tmp_path, None))
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        for _ in range(5):
            await herald.open("provider.down:main", *DOWN)
        assert await herald.resolve("provider.down:main", *UP)
        await herald.open("bsg.error:1", "BSG rejects the API key", "Error 1: invalid API key.")
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()

    assert store.alert_mails() == []
    assert [i["key"] for i in herald.alerter.open_incidents()] == ["bsg.error:1"]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "provider.down:main" in r.getMessage()]
    assert warnings == ["incident provider.down:main opened: BSG main endpoint unreachable "
                        "(no alert mail: no smtp: in the config)"]


async def test_the_smtp_password_never_shows_in_a_mail_or_a_log(tmp_path, store, servers, caplog):
    caplog.set_level(logging.DEBUG)
    port = free_port()
    inbox = Inbox()
    server = servers(port, inbox, authenticator=Login("herald", PASSWORD), auth_require_tls=False)
    herald = Herald(store, make_config(tmp_path, port, login=True))
    careless = f"Login herald/{PASSWORD} failed with key {API_KEY}."   # a caller's mistake
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        await herald.open("bsg.error:1", f"Rejected key {API_KEY}", careless)
        await herald.drained(inbox, 1)
        server.stop()
        # the server now refuses our login: the error is logged, the mail waits
        servers(port, inbox, authenticator=Login("herald", "other"), auth_require_tls=False)
        await herald.open("balance.low", "BSG balance under 10 EUR", careless)
        with trio.fail_after(15):
            while not (mails := store.alert_mails(unsent=True)) or mails[0]["attempts"] < 2:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()

    [mail] = inbox.messages
    raw = mail.as_string()
    assert "Login herald/**** failed with key ****." in mail.get_content()
    assert mail["Subject"] == "[Herald] Rejected key ****"
    assert "535" in mails[0]["last_error"]                     # authentication failed, said so
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    stored = repr(store.alert_mails())
    for text in (raw, logged, stored):
        assert PASSWORD not in text and API_KEY not in text
    assert "535" in caplog.text


async def test_starttls_then_login(tmp_path, store, servers, monkeypatch):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))     # Herald trusts the system's CAs: make ours one
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    port = free_port()
    inbox = Inbox()
    # require_starttls: the server refuses MAIL (and AUTH) before STARTTLS
    servers(port, inbox, tls_context=tls, require_starttls=True, authenticator=Login("herald", PASSWORD))
    herald = Herald(store, make_config(tmp_path, port, login=True, starttls=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(herald.alerter.run, herald.db)
        await herald.open("provider.down:main", *DOWN)
        await herald.drained(inbox, 1)
        nursery.cancel_scope.cancel()
    assert [m["Subject"] for m in inbox.messages] == ["[Herald] BSG main endpoint unreachable"]


def test_the_documented_smtp_config_loads(tmp_path):
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert blocks, "docs/alerts.md shows the smtp: configuration"
    for block in blocks:
        (tmp_path / "herald.yaml").write_text(block, encoding="utf-8")
        config = load_config(tmp_path / "herald.yaml", env={"SMTP_PASSWORD": PASSWORD})
        assert config.smtp is not None
