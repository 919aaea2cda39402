"""Running a real daemon for tests: in-process under trio, or as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_project(root: Path, rules: str, *, port: int, bsg_url: str | None = None, extra: str = "",
                  templates: str | None = None, site_extra: str = "", bsg_extra: str = "") -> Path:
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "main.rules").write_text(rules, encoding="utf-8")
    (root / "rules" / "templates.yaml").write_text(templates or 'shipped: "Заказ #ORDER_ID# отгружен"\n',
                                                   encoding="utf-8")
    bsg = f"bsg:\n  url: {bsg_url}\n  api_key: test_key\n  rate: 1000\n{bsg_extra}" if bsg_url else ""
    config = f"""
store: var/herald.db
{bsg}
sites:
  s1:
    name: Shop
    timezone: Europe/Moscow
    channel: omni
    admins: ["+79001234567"]
{site_extra}
http:
  listen: 127.0.0.1:{port}
{extra}
"""
    path = root / "herald.yaml"
    path.write_text(config, encoding="utf-8")
    return path


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def start_daemon(config: Path, *, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "herald.engine.cli.main", "run", "-c", str(config)],
                            cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@asynccontextmanager
async def fake_bsg(delivery_delay: float = 0.2, *, fake=None, **options):
    """A fake BSG (`fake`, or a new one) served over real HTTP on loopback: yields
    (fake, its base URL)."""
    from herald.engine.bsg.fake import FakeBSG, serve

    fake = fake or FakeBSG(delivery_delay=delivery_delay, **options)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, fake, "127.0.0.1", 0)
        yield fake, f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def herald(config_path: Path, **daemon_options):
    """A real daemon in-process until the block ends (then stopped like at shutdown):
    yields (daemon, an httpx client on its API)."""
    from herald.engine.config import load_config
    from herald.engine.daemon import Daemon

    daemon = Daemon(load_config(config_path), **daemon_options)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(daemon.run)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield daemon, client
        nursery.cancel_scope.cancel()


async def looked(pulse, what: str = "the task", timeout: float = 30.0) -> None:
    """Wake the task that waits on `pulse` (a herald.engine.runtime.Pulse, e.g. the
    daemon's dispatch_wake or campaigns_wake) and return once it has run one whole round
    that began after this call: the first set() is taken when it wakes; a second one,
    set while that round runs, is taken only when the round is over. A condition, so a
    "nothing more happens" check needs no guessed sleep."""
    with trio.move_on_after(timeout):
        for _ in range(2):
            pulse.set()
            while pulse.pending:
                await trio.sleep(0.005)
        return
    raise AssertionError(f"{what} did not take its wake-up within {timeout:g}s")
