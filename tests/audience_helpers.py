"""A project with the shipped subscription and STOP rules, a daemon and a fake BSG,
for the subscription, incoming SMS and campaign tests."""

from __future__ import annotations

import json
import shutil
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import httpx
import trio

from herald.engine.config import load_config
from herald.engine.daemon import Daemon
from herald.engine.runtime import Clock
from tests.daemon_helpers import ROOT, fake_bsg, free_port


class ManualClock(Clock):
    def __init__(self, start: datetime):
        self.current = start

    def now(self) -> datetime:
        return self.current


def project(root: Path, bsg_url: str, *, rules: str = "", subscriptions: str = "", site: str = "",
            bsg: str = "", templates: str = "") -> Path:
    """rules/: the shipped subscriptions.rules and stop.rules (with their templates) plus `rules`."""
    (root / "rules" / "templates").mkdir(parents=True, exist_ok=True)
    for name in ("subscriptions.rules", "stop.rules", "templates/subscriptions.yaml", "templates/stop.yaml"):
        shutil.copy(ROOT / "rules" / name, root / "rules" / name)
    (root / "rules" / "main.rules").write_text(rules, encoding="utf-8")
    (root / "rules" / "templates" / "main.yaml").write_text(templates or 'news: "Новости #SITE_NAME#"\n',
                                                             encoding="utf-8")
    config = root / "herald.yaml"
    config.write_text(f"""
store: var/herald.db
rules: rules/
templates: rules/templates/
bsg:
  url: {bsg_url}
  api_key: test_key
  rate: 1000
{bsg}
sites:
  s1:
    name: Shop
    timezone: Europe/Moscow
    channel: sms
    admin_email: admin@shop.example
{site}
http:
  listen: 127.0.0.1:{free_port()}
subscriptions:
{subscriptions or "  lists: [news]"}
""", encoding="utf-8")
    return config


@asynccontextmanager
async def running(config: Path, clock: Clock | None = None):
    """A daemon until the block ends: yields (daemon, an httpx client on its API)."""
    async with trio.open_nursery() as nursery:
        daemon = Daemon(load_config(config), clock=clock)
        url = await nursery.start(daemon.run)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield daemon, client
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def fake_and_project(tmp_path: Path, **options):
    fake_options = {k: options.pop(k) for k in ("delivery_delay", "balance", "sms_price") if k in options}
    async with fake_bsg(**{"delivery_delay": 0.05, **fake_options}) as (fake, url):
        yield fake, project(tmp_path, url, **options)


async def wait_for(predicate, timeout: float = 20.0, what=""):
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what or predicate}")


def journal(daemon, type_: str) -> list[dict]:
    rows = daemon.store._conn.execute("SELECT data FROM events WHERE type = ? ORDER BY seq", (type_,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def sms_to(fake, msisdn: str) -> list[str]:
    return [m["body"] for m in fake.messages("sms") if m["msisdn"] == msisdn]
