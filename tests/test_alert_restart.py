"""Alert incidents across a crash (docs/alerts.md, "Across a restart"), with `herald run` as a
real process killed by SIGKILL, the fake BSG (`herald fake-bsg`) with its `down` fault and a
real SMTP server (aiosmtpd): an incident open at the crash is re-checked at start, its
recovery is mailed once, and it never swallows the next outage's mail.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import trio
from aiosmtpd.controller import Controller

from herald.engine.config import load_config
from herald.engine.daemon import Daemon
from herald.engine.runtime import VirtualClock
from herald.engine.bsg.fake import FakeBSG
from herald.engine.bsg.fake import create_app as create_bsg_app
from herald.engine.api.routes import create_app as create_api
from herald.engine.store import Store
from tests.daemon_helpers import ROOT, free_port, start_daemon, wait_http, write_project
from tests.test_alerts import Inbox
from tests.virtual_daemon import virtual_clock  # noqa: F401  (the fixture)

RULE = 'on order.created send sms to customer.phone text "Заказ #ORDER_ID#"\n'
DOWN, BACK = "BSG endpoint main is unreachable", "BSG endpoint main is reachable again"


@contextmanager
def fake_bsg_process():
    """`herald fake-bsg` on its own port: yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "herald.engine.cli.main", "fake-bsg", "--port", str(port),
                             "--delivery-delay", "0.1", "--api-key", "test_key"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_fake/messages")
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


class Smtp:
    """A real SMTP server on a fixed port that can be stopped and started again."""

    def __init__(self) -> None:
        self.inbox, self.port = Inbox(), free_port()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def subjects(self) -> list[str]:
        return [m["Subject"].removeprefix("[Herald] ") for m in self.inbox.messages]


def project(tmp_path: Path, bsg: str, smtp: Smtp) -> tuple[Path, str]:
    port = free_port()
    config = write_project(
        tmp_path, RULE, port=port, bsg_url=bsg,
        site_extra="    admin_email: admin@shop.example\n",
        bsg_extra="  timeout: 1s\n  failover: {window: 30s, failures: 2, probe: 1s}\n",
        extra=f"smtp:\n  host: 127.0.0.1\n  port: {smtp.port}\n  from: herald@shop.example\n")
    return config, f"http://127.0.0.1:{port}"


def wait_until(predicate, what, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")


def post_orders(api: str, first: int, count: int) -> None:
    events = [{"type": "order.created", "id": f"order-{n}", "data": {"order": {"id": n},
               "customer": {"phone": f"+7901{n + 2000:07d}"}}} for n in range(first, first + count)]
    assert httpx.post(f"{api}/events", json=events, timeout=10).status_code == 202


def incidents(api: str) -> list[dict]:
    return httpx.get(f"{api}/health", timeout=5).json()["incidents"]


def delivered_at_bsg(bsg: str) -> int:
    return httpx.get(f"{bsg}/_fake/messages", timeout=5).json()["count"]


def bsg_down(bsg: str) -> None:
    httpx.post(f"{bsg}/_fake/faults", json={"mode": "down"}, timeout=5).raise_for_status()


def bsg_back(bsg: str) -> None:
    httpx.delete(f"{bsg}/_fake/faults", timeout=5).raise_for_status()


@contextmanager
def herald(config: Path, api: str):
    proc = start_daemon(config)
    try:
        wait_http(f"{api}/health", timeout=30)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def kill(proc: subprocess.Popen) -> None:
    proc.kill()                      # SIGKILL: no chance to clean up
    proc.wait(timeout=10)


def outage_mailed(config: Path, api: str, bsg: str, smtp: Smtp, first_order: int) -> None:
    """BSG goes down while orders come in: the incident opens and its mail arrives; then SIGKILL."""
    bsg_down(bsg)
    with herald(config, api) as proc:
        post_orders(api, first_order, 3)
        wait_until(lambda: smtp.subjects()[-1:] == [DOWN], what=lambda: f"the outage mail; inbox {smtp.subjects()}")
        assert [i["key"] for i in incidents(api)] == ["provider.down:main"]
        kill(proc)


def test_an_incident_open_at_a_sigkill_is_resolved_at_restart_and_the_next_outage_mails_again(tmp_path):
    """The issue's reproduction: BSG down → incident, one mail; SIGKILL; BSG back; restart."""
    smtp = Smtp()
    smtp.start()
    try:
        with fake_bsg_process() as bsg:
            config, api = project(tmp_path, bsg, smtp)
            outage_mailed(config, api, bsg, smtp, 1)
            bsg_back(bsg)
            with herald(config, api) as proc:
                wait_until(lambda: delivered_at_bsg(bsg) == 3, what="the 3 orders delivered after the restart")
                # the stale incident goes, its recovery is mailed
                wait_until(lambda: incidents(api) == [], what=lambda: f"/health without incidents: {incidents(api)}")
                wait_until(lambda: len(smtp.subjects()) == 2, what=lambda: f"the recovery mail; inbox {smtp.subjects()}")
                # the next outage is a new incident with its own mail, and its own recovery
                bsg_down(bsg)
                post_orders(api, 10, 1)
                wait_until(lambda: len(smtp.subjects()) == 3, what=lambda: f"the 2nd outage's mail; {smtp.subjects()}")
                assert [i["key"] for i in incidents(api)] == ["provider.down:main"]
                bsg_back(bsg)
                wait_until(lambda: len(smtp.subjects()) == 4, what=lambda: f"the 2nd recovery; {smtp.subjects()}")
                wait_until(lambda: delivered_at_bsg(bsg) == 4, what="the 4th order delivered")
                kill(proc)
    finally:
        smtp.stop()
    assert smtp.subjects() == [DOWN, BACK, DOWN, BACK]
    since = [m.get_content() for m in smtp.inbox.messages]
    assert "Opened:" in since[1] and "Resolved:" in since[1]


def test_a_sigkill_between_the_resolve_and_its_mail_still_mails_the_recovery_once(tmp_path):
    """The restart resolves the incident while SMTP is down (the recovery mail waits in the
    store); SIGKILL again; SMTP and Herald come back: the recovery mail goes, once."""
    smtp = Smtp()
    smtp.start()
    try:
        with fake_bsg_process() as bsg:
            config, api = project(tmp_path, bsg, smtp)
            outage_mailed(config, api, bsg, smtp, 1)
            smtp.stop()
            bsg_back(bsg)
            with herald(config, api) as proc:
                wait_until(lambda: incidents(api) == [], what=lambda: f"/health without incidents: {incidents(api)}")
                kill(proc)                            # the recovery mail is queued, not sent
            assert smtp.subjects() == [DOWN]
            smtp.start()
            with herald(config, api) as proc:
                wait_until(lambda: len(smtp.subjects()) == 2, what=lambda: f"the recovery mail; {smtp.subjects()}")
                assert incidents(api) == []
                # the next outage mails again; mails go oldest first, so a second copy of the
                # recovery (a second resolve) would arrive before it
                bsg_down(bsg)
                post_orders(api, 10, 1)
                wait_until(lambda: len(smtp.subjects()) == 3, what=lambda: f"the 2nd outage's mail; {smtp.subjects()}")
                kill(proc)
    finally:
        smtp.stop()
    assert smtp.subjects() == [DOWN, BACK, DOWN]


# ---- the same at unit level: a daemon in-process on trio's MockClock (autojump) --------------
#
# The fake BSG and the daemon's API are mounted through httpx's ASGI transport (no socket, so no
# timeout runs in virtual time); the store is a real file, the SMTP server a real aiosmtpd. What a
# crashed run leaves behind is written into the store before the daemon starts: an open incident.
# The clock is `virtual_clock` (tests/virtual_daemon.py: it jumps only after a few real ms idle),
# not `autojump_clock`: with threshold 0 virtual time raced on while the store worked in its
# thread — on a busy machine a BSG request timed out (bsg.timeout is virtual), the start probe
# failed for an hour of virtual time and a 10-minute balance read came early. Waits are bounded
# in virtual time, as the behaviour is ("resolved by the probe at start", "before the next read").

START = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def unit_config(tmp_path: Path, smtp_port: int, bsg_extra: str = "") -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "main.rules").write_text(RULE, encoding="utf-8")
    (tmp_path / "rules" / "templates.yaml").write_text('x: "x"\n', encoding="utf-8")
    config = tmp_path / "herald.yaml"
    config.write_text(f"""
store: var/herald.db
bsg:
  url: http://bsg.invalid
  api_key: main_key
  rate: 1000
  timeout: 2s
  failover: {{window: 60s, failures: 2, probe: 5s}}
{bsg_extra}
sites:
  s1:
    timezone: Europe/Moscow
    admin_email: admin@shop.example
http:
  listen: 127.0.0.1:{free_port()}
smtp:
  host: 127.0.0.1
  port: {smtp_port}
  from: herald@shop.example
""", encoding="utf-8")
    return config


def left_open(tmp_path: Path, *incidents: tuple[str, str, timedelta]) -> None:
    """What a run killed with these incidents open leaves in the store: (key, subject, age)."""
    store = Store(tmp_path / "var" / "herald.db")
    try:
        for key, subject, age in incidents:
            store.open_incident(key, None, subject, START - age)
    finally:
        store.close()


@asynccontextmanager
async def unit_daemon(config: Path, fake: FakeBSG):
    """The daemon on the virtual clock, BSG = `fake`: yields (daemon, a client on its API)."""
    clock = VirtualClock(START)
    clock.now()                         # started here, in the trio thread (see VirtualClock)
    daemon = Daemon(load_config(config), clock=clock,
                    bsg_transport=httpx.ASGITransport(app=create_bsg_app(fake)))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(daemon.services)),
                                     base_url="http://herald") as api:
            yield daemon, api
        nursery.cancel_scope.cancel()


@pytest.fixture
def inbox():
    box = Inbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


def subjects(box: Inbox) -> list[str]:
    return [m["Subject"].removeprefix("[Herald] ") for m in box.messages]


async def until(predicate, what, within: float = 120.0, step: float = 0.1):
    """Wait until `predicate()` (maybe async) is true, looking every `step`; fail after
    `within` virtual seconds. (Each jump of the clock costs a few real ms: a long wait
    looks less often.)"""
    with trio.move_on_after(within):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await trio.sleep(step)
    raise AssertionError(f"not within {within:g} virtual seconds: {what() if callable(what) else what}")


async def incident_keys(api: httpx.AsyncClient) -> list[str]:
    return [i["key"] for i in (await api.get("/health")).json()["incidents"]]


async def order(api: httpx.AsyncClient, n: int) -> None:
    event = {"type": "order.created", "id": f"order-{n}", "data": {"order": {"id": n},
             "customer": {"phone": f"+7902{n + 3000:07d}"}}}
    assert (await api.post("/events", json=event)).status_code == 202


def journal(daemon: Daemon, type_: str) -> int:
    return daemon.store._conn.execute("SELECT count(*) FROM events WHERE type = ?", (type_,)).fetchone()[0]


async def test_unit_a_carried_over_endpoint_incident_is_probed_at_start_and_resolved_once(
        tmp_path, monkeypatch, inbox, virtual_clock):
    monkeypatch.chdir(tmp_path)
    left_open(tmp_path, ("provider.down:main", DOWN, timedelta(hours=1)))
    fake = FakeBSG(delivery_delay=0.1)
    async with unit_daemon(unit_config(tmp_path, inbox.port), fake) as (daemon, api):
        await until(lambda: subjects(inbox) == [BACK], what=lambda: f"the recovery mail; inbox {subjects(inbox)}")
        assert await incident_keys(api) == []
        assert journal(daemon, "provider.up") == 1            # rules hear that it is back, too
        body = inbox.messages[0].get_content()
        assert "Lasted:   1 h" in body and "Incident: provider.down:main" in body
        # the next outage opens a new incident, and mails
        fake.set_fault("down")
        for n in range(3):
            await order(api, n)
        await until(lambda: subjects(inbox) == [BACK, DOWN], what=lambda: f"the outage mail; {subjects(inbox)}")
        [incident] = (await api.get("/health")).json()["incidents"]
        assert incident["key"] == "provider.down:main" and incident["since"] >= START.isoformat()


async def test_unit_a_carried_over_endpoint_still_down_keeps_its_incident_until_a_probe_succeeds(
        tmp_path, monkeypatch, inbox, virtual_clock):
    monkeypatch.chdir(tmp_path)
    left_open(tmp_path, ("provider.down:main", DOWN, timedelta(hours=1)))
    fake = FakeBSG(delivery_delay=0.1)
    fake.set_fault("down")
    async with unit_daemon(unit_config(tmp_path, inbox.port), fake) as (daemon, api):
        await order(api, 1)
        await trio.sleep(60)                                   # a virtual minute: a dozen failed probes
        health = (await api.get("/health")).json()
        [incident] = health["incidents"]
        assert (incident["key"], incident["since"]) == ("provider.down:main", (START - timedelta(hours=1)).isoformat())
        main = health["endpoints"][0]
        assert main["state"] == "open" and main["probe_at"] is not None
        assert fake.messages() == []                           # no traffic to it meanwhile: the order waits
        assert inbox.messages == [] and await daemon.db(daemon.alerter.unsent_mails) == 0   # nothing to say yet
        fake.clear_faults()
        await until(lambda: subjects(inbox) == [BACK], what=lambda: f"the recovery mail; inbox {subjects(inbox)}")
        assert await incident_keys(api) == []
        await until(lambda: len(fake.messages()) == 1, what="the order sent once main answers")


async def test_unit_a_stale_incident_with_the_endpoint_healthy_never_swallows_the_next_outage(
        tmp_path, monkeypatch, inbox, virtual_clock):
    """The store says `provider.down:main` is open while the dispatcher has main healthy and
    taking traffic (the resolve was lost): main's next trip still mails."""
    monkeypatch.chdir(tmp_path)
    fake = FakeBSG(delivery_delay=0.1)
    async with unit_daemon(unit_config(tmp_path, inbox.port), fake) as (daemon, api):
        await order(api, 1)
        await until(lambda: len(fake.messages()) == 1, what="an order sent through main")
        await daemon.db(daemon.store.open_incident, "provider.down:main", None, DOWN, START - timedelta(hours=3))
        assert (await api.get("/health")).json()["endpoints"][0]["state"] == "closed"
        fake.set_fault("down")
        for n in range(2, 5):
            await order(api, n)
        await until(lambda: len(inbox.messages) == 2, what=lambda: f"two mails; inbox {subjects(inbox)}")
        assert subjects(inbox) == [f"Ended: {DOWN}", DOWN]
        assert "did not record when this ended" in inbox.messages[0].get_content()
        [incident] = (await api.get("/health")).json()["incidents"]
        assert incident["since"] >= START.isoformat() and incident["occurrences"] == 1


async def test_unit_at_start_incidents_of_what_is_gone_are_resolved_and_an_operator_one_waits_for_a_send(
        tmp_path, monkeypatch, inbox, virtual_clock):
    """No backup2 any more, no campaign 77, no bsg.balance_alert: those incidents are closed at
    start (one mail each); `bsg.error.8:main` cannot be checked without a send, so it stays open
    until main accepts a message."""
    monkeypatch.chdir(tmp_path)
    left_open(tmp_path, ("provider.down:backup2", "BSG endpoint backup2 is unreachable", timedelta(hours=2)),
              ("bsg.error.8:backup2", "BSG (backup2) refuses to send", timedelta(hours=2)),
              ("bsg.error.8:main", "BSG (main) refuses to send", timedelta(hours=1)),
              ("campaign.stopped:77", "Campaign spring stopped: low balance", timedelta(hours=1)),
              ("balance.low", "BSG balance is low: 3 EUR", timedelta(hours=1)))
    fake = FakeBSG(delivery_delay=0.1)
    async with unit_daemon(unit_config(tmp_path, inbox.port), fake) as (daemon, api):
        await until(lambda: len(inbox.messages) == 4, what=lambda: f"4 mails; inbox {subjects(inbox)}")
        assert await incident_keys(api) == ["bsg.error.8:main"]
        assert sorted(subjects(inbox)) == sorted([
            "BSG endpoint backup2 is unreachable: no longer configured",
            "BSG (backup2) refuses to send: no longer configured",
            "Campaign #77 is no longer stopped", "BSG balance is no longer watched"])
        await order(api, 1)
        await until(lambda: len(inbox.messages) == 5, what=lambda: f"the 5th mail; inbox {subjects(inbox)}")
        assert subjects(inbox)[-1] == "BSG (main) sends again"
        assert await incident_keys(api) == []


async def test_unit_a_carried_over_low_balance_is_kept_while_low_and_resolved_once_topped_up(
        tmp_path, monkeypatch, inbox, virtual_clock):
    monkeypatch.chdir(tmp_path)
    left_open(tmp_path, ("balance.low", "BSG balance is low: 3 EUR", timedelta(hours=1)))
    fake = FakeBSG(delivery_delay=0.1, balance=Decimal("3"))
    config = unit_config(tmp_path, inbox.port, "  balance_alert: 10\n  balance_every: 10m\n")
    async with unit_daemon(config, fake) as (daemon, api):
        await until(lambda: journal(daemon, "provider.balance") == 1, what="the balance read at start")
        [incident] = (await api.get("/health")).json()["incidents"]
        assert (incident["key"], incident["occurrences"]) == ("balance.low", 2)   # still low: the same incident
        assert inbox.messages == []
        fake.set_balance(Decimal("50"))
        await until(lambda: subjects(inbox) == ["BSG balance is back over 10"],     # the next read: 10 min
                    what=lambda: f"the recovery mail; inbox {subjects(inbox)}", within=15 * 60, step=5)
        assert await incident_keys(api) == []
