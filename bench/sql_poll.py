"""SQL connector benchmark on MariaDB: rows/s turned into committed events, and the
latency from a row's INSERT to its message at the (fake) BSG.

    .venv/bin/python bench/sql_poll.py [--rows 50000] [--batch 500] [--latency-seconds 15]
                                       [--latency-rate 20] [--host 127.0.0.1] [--port 3306]

A fresh database `herald_bench_<hex>` on the server (user root, no password) is created
and dropped at the end. Everything runs in this process: a real `Daemon` (engine/daemon.py)
on a temporary project, its SQL connector, and the fake BSG served over loopback.

  phase 1  throughput: --rows rows already in an append table; the connector starts with
           `start: beginning`, no rules. Rows/s = rows / time until every row's event is
           committed in Herald's journal (the connector's cursor moves in the same
           commit). Also: time until the processor has marked them all done.
  phase 2  latency: a fresh daemon with one rule (`on order.created send sms …`) and the
           connector at `interval: 1`; a writer inserts --latency-rate rows/s (one commit
           each) for --latency-seconds. Latency = the fake BSG's receipt time − the
           INSERT's commit time, p50 / p99 / max.

Prints figures; never asserts a time (the VM is noisy: shared/spec/PERF-FACTS.md).
Exit code 1 only when events or messages were lost or duplicated.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pymysql  # noqa: E402
import trio  # noqa: E402

from herald.engine.config import load_config  # noqa: E402
from herald.engine.daemon import Daemon  # noqa: E402
from herald.engine.bsg.fake import FakeBSG, serve  # noqa: E402
from tests.daemon_helpers import free_port, write_project  # noqa: E402

TARGET_ROWS_PER_S = 5_000

SOURCE = """\
connectors:
  - type: sql
    name: bench
    url: {url}
    interval: {interval}
    batch: {batch}
    start: beginning
    sources:
      - name: orders
        table: bench_orders
        key: id
        cursor: id
        event: order.created
        map:
          order.id: id
          order.status: status
          order.price: price
          order.date: created_at
          customer.phone: phone
"""


def phone(n: int) -> str:
    return f"+7901{n:07d}"


class Server:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.database = f"herald_bench_{uuid.uuid4().hex[:10]}"

    def connect(self, database: str | None = None, autocommit: bool = True):
        return pymysql.connect(host=self.host, port=self.port, user="root", password="",
                               database=database, autocommit=autocommit)

    def __enter__(self) -> "Server":
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
        return self

    def __exit__(self, *exc) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@{self.host}:{self.port}/{self.database}"

    def create_table(self) -> None:
        with self.connect(self.database) as conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_orders")
            cur.execute("CREATE TABLE bench_orders (id INT PRIMARY KEY, status CHAR(1) NOT NULL, "
                        "price DECIMAL(18,4) NOT NULL, created_at DATETIME NOT NULL, phone VARCHAR(32) NOT NULL)")

    def insert_many(self, first: int, count: int) -> None:
        with self.connect(self.database, autocommit=False) as conn, conn.cursor() as cur:
            for start in range(first, first + count, 5000):
                rows = [(i, "N", f"{1000 + i % 997}.50", "2024-05-19 14:03:11", phone(i))
                        for i in range(start, min(first + count, start + 5000))]
                cur.executemany("INSERT INTO bench_orders VALUES (%s, %s, %s, %s, %s)", rows)
            conn.commit()


@asynccontextmanager
async def running(project: Path, rules: str, extra: str, fake: FakeBSG | None = None):
    async with trio.open_nursery() as nursery:
        bsg_url = None
        if fake is not None:
            bsg_url = f"http://127.0.0.1:{await nursery.start(serve, fake, '127.0.0.1', 0)}"
        config = write_project(project, rules, port=free_port(), bsg_url=bsg_url, extra=extra)
        daemon = Daemon(load_config(config))
        await nursery.start(daemon.run)
        yield daemon
        nursery.cancel_scope.cancel()


async def count(daemon: Daemon, sql: str) -> int:
    return await daemon.db(lambda: daemon.store._conn.execute(sql).fetchone()[0])


async def throughput(server: Server, rows: int, batch: int) -> bool:
    server.create_table()
    t = time.perf_counter()
    await trio.to_thread.run_sync(server.insert_many, 1, rows)
    print(f"phase 1: {rows:,} rows inserted in {time.perf_counter() - t:.1f}s; batch {batch}")
    with tempfile.TemporaryDirectory(prefix="herald-sqlbench-") as tmp:
        extra = SOURCE.format(url=server.url, interval=1, batch=batch)
        start = time.perf_counter()
        async with running(Path(tmp), "", extra) as daemon:
            journaled = done = None
            while journaled is None or done is None:
                n = await count(daemon, "SELECT count(*) FROM events WHERE source = 'bench'")
                if journaled is None and n >= rows:
                    journaled = time.perf_counter() - start
                if journaled is not None and await count(daemon, "SELECT count(*) FROM events "
                                                                 "WHERE status = 'pending'") == 0:
                    done = time.perf_counter() - start
                await trio.sleep(0.02)
            total = await count(daemon, "SELECT count(*) FROM events WHERE source = 'bench'")
            cursor = await daemon.db(daemon.store.get_cursor, "bench", "orders")
    rate = rows / journaled
    verdict = "OK" if rate >= TARGET_ROWS_PER_S else "BELOW TARGET"
    print(f"  rows → committed events: {journaled:.2f}s = {rate:,.0f} rows/s "
          f"(target ≥ {TARGET_ROWS_PER_S:,}: {verdict})")
    print(f"  … and processed by the engine (no rules): {done:.2f}s = {rows / done:,.0f} events/s")
    print(f"  journal: {total:,} events, cursor {cursor}")
    return total == rows and cursor == str(rows)


async def latency(server: Server, seconds: float, rate: float) -> bool:
    server.create_table()
    fake = FakeBSG(delivery_delay=0.5, clock=time.time)        # receipt times on the wall clock
    rule = 'on order.created send sms to customer.phone text "Заказ принят"\n'
    inserted: dict[str, float] = {}
    n = int(seconds * rate)

    def writer() -> None:
        with server.connect(server.database) as conn, conn.cursor() as cur:
            t0 = time.time()
            for i in range(1, n + 1):
                wait = t0 + i / rate - time.time()
                if wait > 0:
                    time.sleep(wait)
                cur.execute("INSERT INTO bench_orders VALUES (%s, 'N', '1500.00', NOW(), %s)", (i, phone(i)))
                inserted[phone(i).lstrip("+")] = time.time()          # autocommit: committed now

    with tempfile.TemporaryDirectory(prefix="herald-sqlbench-") as tmp:
        extra = SOURCE.format(url=server.url, interval=1, batch=500)
        async with running(Path(tmp), rule, extra, fake) as daemon:
            await trio.sleep(1.5)                                   # the first (empty) poll is done
            print(f"phase 2: {n} rows at {rate:g}/s for {seconds:g}s, interval 1s")
            await trio.to_thread.run_sync(writer)
            with trio.move_on_after(15):
                while len(fake._messages) < n:
                    await trio.sleep(0.05)
            await trio.sleep(0.5)
    received = {}
    duplicates = 0
    for m in fake._messages.values():
        if m.msisdn in received:
            duplicates += 1
        received.setdefault(m.msisdn, m.created)
    lat = sorted(received[k] - inserted[k] for k in inserted if k in received)
    lost = n - len(lat)
    if lat:
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"  INSERT → BSG: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms, "
              f"min {lat[0] * 1000:.0f} ms")
    print(f"  messages: {len(received)} of {n}; lost {lost}, duplicated {duplicates}")
    return lost == 0 and duplicates == 0


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("herald").setLevel(logging.ERROR)
    with Server(args.host, args.port) as server:
        ok = await throughput(server, args.rows, args.batch)
        ok &= await latency(server, args.latency_seconds, args.latency_rate)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--latency-rate", type=float, default=20.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    sys.exit(trio.run(main, parser.parse_args()))
