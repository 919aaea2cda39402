"""Campaign benchmark: queueing a million recipients, and the dispatch rate.

    .venv/bin/python bench/campaign.py [--recipients 1000000] [--rate 2000] [--seconds 10]

A real `herald run` daemon (in this process, under trio) on a temporary project, and
the fake BSG in its own process (`herald fake-bsg`), on loopback.

  1  queue: `POST /campaigns` with --recipients phone numbers (start in an hour, so
     nothing is sent): the time until the campaign is stored — the request, every number
     normalised and deduplicated, the rows written — and the recipients per second.
  2  dispatch: a campaign of rate × seconds recipients at --rate messages/s, with
     bsg.rate high enough (rate / 50 × 2 requests/s) that only the campaign's rate
     limits it: messages handed to BSG per second, per slice and overall, and the ratio
     to the configured rate.
  3  the other limit: the campaign asks for more than bsg.rate allows (bsg.rate × 50
     messages/s): the achieved rate against that cap.

Prints figures; never asserts a time (the VM is noisy: shared/spec/PERF-FACTS.md). Exit
code 1 only when a recipient was messaged twice or one went missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from herald.engine.config import load_config  # noqa: E402
from herald.engine.daemon import Daemon  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fake(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "herald.engine.cli.main", "fake-bsg", "--port", str(port), "--balance",
                             "100000000", "--delivery-delay", "1"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_fake/faults", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the fake BSG did not start")


def project(root: Path, fake_port: int, bsg_rate: float) -> Path:
    (root / "rules" / "templates").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "bench.rules").write_text('on bench.never send sms to "+79000000000" text "x"\n',
                                                 encoding="utf-8")
    (root / "rules" / "templates" / "t.yaml").write_text('sale: "Скидки до 50% в Shop"\n', encoding="utf-8")
    config = root / "herald.yaml"
    config.write_text(f"""
store: var/herald.db
rules: rules/
templates: rules/templates/
bsg: {{url: "http://127.0.0.1:{fake_port}", api_key: !env BENCH_KEY, rate: {bsg_rate:g}}}
sites: {{s1: {{name: Shop, timezone: Europe/Moscow, channel: sms}}}}
http: {{listen: "127.0.0.1:{free_port()}", max_body: 128 MiB}}
subscriptions: {{poll_incoming: off}}
""", encoding="utf-8")
    return config


def numbers(n: int, base: int) -> list[str]:
    return [f"+{base + i}" for i in range(n)]


async def queue_phase(client: httpx.AsyncClient, n: int) -> None:
    start = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    end = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    body = {"name": "million", "phones": numbers(n, 79000000000), "template": "sale", "start": start, "end": end}
    t0 = time.perf_counter()
    r = await client.post("/campaigns", json=body, timeout=600)
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    total = r.json()["total"]
    print(f"1  queue: {total:,} recipients stored in {seconds:.1f} s ({total / seconds:,.0f} recipients/s); "
          f"target < 60 s: {'met' if seconds < 60 else 'MISSED'} ({seconds / 60:.0%} of it)")


async def dispatch_phase(daemon, client, label: str, rate: float, count: int, base: int) -> bool:
    end = (datetime.now(timezone.utc) + timedelta(hours=2)).isoformat()
    r = await client.post("/campaigns", json={"phones": numbers(count, base), "template": "sale",
                                              "rate": f"{rate:g}/s", "end": end, "name": label})
    r.raise_for_status()
    cid = r.json()["id"]
    t0 = time.perf_counter()
    marks: list[tuple[float, int]] = []
    while True:
        s = (await client.get(f"/campaigns/{cid}")).json()
        handed = s["sent"] + s["delivered"] + s["failed"]
        marks.append((time.perf_counter() - t0, handed))
        if handed >= count:
            break
        await trio.sleep(0.5)
    seconds = marks[-1][0]
    achieved = count / seconds
    cap = daemon.config.bsg.rate * 50
    limit = min(rate, cap)
    print(f"{label}: {count:,} messages at campaign rate {rate:g}/s (bsg.rate {daemon.config.bsg.rate:g} req/s "
          f"= {cap:,.0f} msgs/s): {seconds:.1f} s, {achieved:,.0f} msgs/s = {achieved / limit:.0%} of "
          f"the limit ({limit:,.0f}/s)")
    slices = []
    for (a, x), (b, y) in zip(marks, marks[1:]):
        if b - a > 0:
            slices.append((y - x) / (b - a))
    steady = slices[1:-1] or slices
    if steady:
        print(f"   per ~0.5 s slice: min {min(steady):,.0f}, median {sorted(steady)[len(steady) // 2]:,.0f}, "
              f"max {max(steady):,.0f} msgs/s")
    rows = daemon.store._conn.execute("SELECT to_phone, COUNT(*) FROM outbox WHERE campaign_id = ? "
                                      "GROUP BY to_phone HAVING COUNT(*) > 1", (cid,)).fetchall()
    total = daemon.store._conn.execute("SELECT COUNT(*) FROM outbox WHERE campaign_id = ?", (cid,)).fetchone()[0]
    ok = not rows and total == count
    if not ok:
        print(f"   !!!! {len(rows)} number(s) messaged twice, {count - total} missing !!!!")
    return ok


async def main_async(args) -> int:
    fake_port = free_port()
    fake = start_fake(fake_port)
    ok = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            bsg_rate = max(args.rate / 50 * 2, 10)
            config = project(Path(tmp), fake_port, bsg_rate)
            os.environ["BENCH_KEY"] = "bench"
            daemon = Daemon(load_config(config))
            async with trio.open_nursery() as nursery:
                url = await nursery.start(daemon.run)
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    await queue_phase(client, args.recipients)
                    ok &= await dispatch_phase(daemon, client, "2  dispatch", args.rate,
                                               int(args.rate * args.seconds), 79500000000)
                nursery.cancel_scope.cancel()
            # phase 3: a new daemon whose bsg.rate caps below the campaign's rate
            config = project(Path(tmp), fake_port, args.rate / 50 / 2)
            (Path(tmp) / "var" / "herald.db").unlink(missing_ok=True)
            daemon = Daemon(load_config(config))
            async with trio.open_nursery() as nursery:
                url = await nursery.start(daemon.run)
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    ok &= await dispatch_phase(daemon, client, "3  bsg.rate-bound", args.rate,
                                               int(args.rate / 2 * args.seconds), 79700000000)
                nursery.cancel_scope.cancel()
    finally:
        fake.terminate()
        fake.wait(10)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=2000, help="campaign messages per second (phase 2)")
    parser.add_argument("--seconds", type=float, default=10, help="length of the dispatch phases")
    args = parser.parse_args()
    print(f"campaign bench on {platform.node()} ({os.cpu_count()} CPUs), Python {platform.python_version()}")
    import logging
    logging.basicConfig(level=logging.WARNING)
    return trio.run(main_async, args)


if __name__ == "__main__":
    sys.exit(main())
