"""Alert incidents across a crash (docs/alerts.md, "Across a restart"), with `herald run` as a
real process killed by SIGKILL, the fake BSG (`herald fake-bsg`) with its `down` fault and a
real SMTP server (aiosmtpd): an incident open at the crash is re-checked at start, its
recovery is mailed once, and it never swallows the next outage's mail.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from aiosmtpd.controller import Controller

from tests.daemon_helpers import ROOT, free_port, start_daemon, wait_http, write_project
from tests.test_alerts import Inbox

RULE = 'on order.created send sms to customer.phone text "Заказ #ORDER_ID#"\n'
DOWN, BACK = "BSG endpoint main is unreachable", "BSG endpoint main is reachable again"


@contextmanager
def fake_bsg_process():
    """`herald fake-bsg` on its own port: yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "fake-bsg", "--port", str(port),
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
