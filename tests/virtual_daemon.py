"""A real daemon on trio's MockClock: fake BSG endpoints in-process (httpx.ASGITransport,
the fake's statuses on the same virtual clock) and the daemon's clock driven by trio's,
so a test can live through a ten-minute outage or a crash recovery in a moment.

Use the `virtual_clock` fixture (import it into the test module). It jumps only after
the run has been idle for a few real milliseconds: with `autojump_clock` (threshold 0)
virtual time races on while the store works in its thread — a test waiting "60 virtual
seconds" could give up while the daemon is simply inside one transaction. Even so tests
assert bounds, not instants."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import httpx
import pytest
import trio
import trio.testing

from herald.engine.config import load_config
from herald.engine.daemon import Daemon
from herald.engine.runtime import Clock
from herald.engine.bsg.fake import FakeBSG, create_app
from tests.daemon_helpers import free_port

START = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)
SMS_RULE = 'on order.created send sms to customer.phone text "Заказ #ORDER_ID# принят"\n'


def write_config(root: Path, *, rules: str = SMS_RULE, bsg: str = "", site: str = "", backups: int = 1) -> Path:
    """A project whose BSG endpoints are main.invalid, backup1.invalid …: the daemon reaches
    them only through the transports `virtual_daemon` gives it."""
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "main.rules").write_text(rules, encoding="utf-8")
    (root / "rules" / "templates.yaml").write_text('x: "x"\n', encoding="utf-8")
    backup = "".join(f"    - url: http://backup{n}.invalid\n" for n in range(1, backups + 1))
    path = root / "herald.yaml"
    path.write_text(f"""
store: {root / 'var' / 'herald.db'}
bsg:
  url: http://main.invalid
  api_key: main_key
{'  backup:' + chr(10) + backup if backups else ''}{bsg}
sites:
  s1:
    timezone: Europe/Moscow
    admin_email: admin@shop.example
{site}
http:
  listen: 127.0.0.1:{free_port()}
""", encoding="utf-8")
    return path


IDLE = 0.005      # real seconds the run must be idle before the virtual clock jumps


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=IDLE)


class MockTime(Clock):
    """The daemon's clock on trio's MockClock: `start` plus the virtual seconds since it
    was made. Read from the store's thread too (trio.current_time() works only in trio)."""

    def __init__(self, mock: trio.testing.MockClock, start: datetime = START):
        self.mock, self.start, self.t0 = mock, start, mock.current_time()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.mock.current_time() - self.t0)


def fakes(count: int = 2, *, delivery_delay: float = 1.0) -> list[FakeBSG]:
    """Fake BSG endpoints (main, backup1 …) on the virtual clock; call inside trio."""
    return [FakeBSG(delivery_delay=delivery_delay, clock=trio.current_time) for _ in range(count)]


@asynccontextmanager
async def virtual_daemon(config: Path, endpoints: list[FakeBSG], mock: trio.testing.MockClock):
    """The daemon of `config` on `mock`'s time, started, with endpoints[0] as main and the
    rest as backups."""
    daemon = Daemon(load_config(config), clock=MockTime(mock),
                    bsg_transport=httpx.ASGITransport(app=create_app(endpoints[0])))
    daemon.backup_transports = {f"backup{n}": httpx.ASGITransport(app=create_app(fake))
                                for n, fake in enumerate(endpoints[1:], 1)}
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        yield daemon
        nursery.cancel_scope.cancel()


async def post(daemon: Daemon, *events: dict) -> None:
    """Events in, as POST /events takes them (journaled, the processor woken)."""
    await daemon.accept(daemon.parse_events(list(events)), "test")


def order(n: int, phone: str, **data) -> dict:
    return {"type": "order.created", "id": f"order-{n}", "site": "s1",
            "data": {"order": {"id": n, **data}, "customer": {"phone": phone}}}


async def until(predicate: Callable[[], object], *, within: float, step: float = 0.5,
                what: str | Callable[[], object] = "") -> object:
    """Wait (virtual time) until predicate() is true; fail after `within` virtual seconds
    saying `what` (called when it is a function: the state at the time)."""
    with trio.move_on_after(within):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(step)
    raise AssertionError(f"not within {within:g} virtual seconds: {what() if callable(what) else what or predicate}")


def states(daemon: Daemon) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in daemon.store.messages(limit=100_000):
        counts[m["state"]] = counts.get(m["state"], 0) + 1
    return counts


def outcomes(daemon: Daemon, message_id: int) -> list[tuple[str, str]]:
    return [(a["what"], a["outcome"]) for a in daemon.store.attempts_of(message_id)]
