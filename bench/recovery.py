"""Recovery benchmark: how fast Herald resolves messages a crash left `sending`.

    .venv/bin/python bench/recovery.py [--messages 2000] [--known 0.5] [--rate 0.5]
                                       [--lookup-rate 50] [--lookup-concurrency 16]

Issue #12, item 5: after 16 kills at `rate: 0.5`, 1,949 messages were left `sending`
and took ~2 hours to resolve, one look-up per send slot. This starts the fake BSG in
its own process on loopback (`python -m herald.engine.bsg.fake`, real HTTP), fills a fresh store
with --messages `sending` rows at endpoint main — BSG already took a --known share of
them (sent to the fake before the "crash", with their references), not the rest — then
starts the daemon in this process (`bsg.rate` --rate, the look-up budget as given or
the defaults) and times the recovery: from the start until each row was looked up. Then it
checks nothing is sent twice: every known message found (none sent again), every
unknown one sent at most once (exactly once when waited for with --resend).

Prints figures; never asserts a time (the VM is noisy: shared/spec/PERF-FACTS.md).
Exit code 1 only when a message was resolved wrongly or sent twice. docs/delivery.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import trio  # noqa: E402

from herald.engine.config import DEFAULT_LOOKUP_CONCURRENCY, DEFAULT_LOOKUP_RATE, load_config  # noqa: E402
from herald.engine.daemon import Daemon  # noqa: E402
from herald.engine.store import Store  # noqa: E402

RULE = 'on order.created send sms to customer.phone text "Заказ #ORDER_ID#"\n'


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project(root: Path, url: str, args: argparse.Namespace) -> Path:
    (root / "rules").mkdir()
    (root / "rules" / "main.rules").write_text(RULE, encoding="utf-8")
    (root / "rules" / "templates.yaml").write_text('x: "x"\n', encoding="utf-8")
    config = root / "herald.yaml"
    config.write_text(f"""
store: {root / 'herald.db'}
bsg:
  url: {url}
  api_key: !env BENCH_BSG_KEY
  rate: {args.rate}
  lookup_rate: {args.lookup_rate}
  lookup_concurrency: {args.lookup_concurrency}
http:
  listen: 127.0.0.1:{free_port()}
""", encoding="utf-8")
    return config


def strand(db: Path, fake: httpx.Client, count: int, known_share: float) -> dict[int, bool]:
    """`count` rows left `sending` at main; {id: BSG took it before the crash}."""
    store = Store(db)
    known: dict[int, bool] = {}
    taken: list[dict] = []
    every = max(1, round(1 / known_share)) if known_share > 0 else 0
    with store.transaction():
        for n in range(count):
            phone = f"+7901{n:07d}"
            message_id, reference = store.add_message(
                site="s1", channel="sms", to_phone=phone, state="queued", send_at=datetime.now(timezone.utc),
                text=f"m{n}", sms_text=f"m{n}", sender="testsms", sms_sender="testsms")
            store.update_message(message_id, state="sending", endpoint="main", attempts=1)
            known[message_id] = bool(every) and n % every == 0
            if known[message_id]:
                taken.append({"msisdn": phone.lstrip("+"), "body": f"m{n}", "originator": "testsms",
                              "reference": reference})
    store.close()
    for i in range(0, len(taken), 50):           # what BSG took before the crash
        answer = fake.post("/sms/create", json={"destination": "individual", "phones": taken[i:i + 50]})
        answer.raise_for_status()
    return known


def start_fake(port: int) -> subprocess.Popen:
    fake = subprocess.Popen([sys.executable, "-m", "herald.engine.bsg.fake", "--port", str(port), "--delivery-delay", "0.5"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_fake/faults", timeout=1)
            return fake
        except httpx.HTTPError:
            time.sleep(0.05)
    fake.kill()
    raise SystemExit(f"the fake BSG did not start: {fake.stderr.read() if fake.stderr else ''}")


def looked_up(store: Store) -> int:
    """Messages with a look-up recorded (found, not found, no answer). Not `sending` rows:
    a message not found goes at once, and waits `sending` for its send slot."""
    with store._lock:
        sql = "SELECT COUNT(DISTINCT message_id) FROM attempts WHERE what = 'lookup'"
        return store._conn.execute(sql).fetchone()[0]


def unsent(store: Store) -> int:
    with store._lock:
        return store._conn.execute("SELECT COUNT(*) FROM outbox WHERE state IN ('queued', 'sending')").fetchone()[0]


async def bench(args: argparse.Namespace) -> int:
    os.environ.setdefault("BENCH_BSG_KEY", "bench_key")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_fake(port)
    try:
        with tempfile.TemporaryDirectory(prefix="herald-recovery-") as tmp, \
                httpx.Client(base_url=url, headers={"X-API-KEY": "bench_key"}, timeout=30) as fake:
            root = Path(tmp)
            config = project(root, url, args)
            known = strand(root / "herald.db", fake, args.messages, args.known)
            async with trio.open_nursery() as nursery:
                daemon = Daemon(load_config(config))
                started = time.perf_counter()
                await nursery.start(daemon.run)
                # read in the store's thread: a read in trio's would stall the daemon
                while await daemon.db(looked_up, daemon.store) < args.messages:
                    await trio.sleep(0.1)
                seconds = time.perf_counter() - started
                resend_seconds = None
                if args.resend:
                    while await daemon.db(unsent, daemon.store):
                        await trio.sleep(0.2)
                    resend_seconds = time.perf_counter() - started
                requests = fake.get("/_fake/requests").json()["requests"]   # the newest 10,000
                lookups = sum(1 for r in requests if "/reference/" in r["path"])
                bad = await daemon.db(check, daemon, fake.get("/_fake/messages").json()["messages"], known,
                                      args.resend)
                nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        process.wait(10)

    found = sum(known.values())
    print(f"messages left sending    {args.messages}  (BSG had {found}, not {args.messages - found})")
    print(f"budget                   bsg.rate {args.rate:g}/s; look-ups {args.lookup_rate:g}/s, "
          f"{args.lookup_concurrency} in flight")
    print(f"resolved in              {seconds:.2f} s  (from daemon start until each one was looked up)")
    print(f"look-ups/s               {lookups / seconds:.1f}  ({lookups} look-up requests at the fake)")
    print(f"at the send rate cap     ≥ {args.messages / args.rate:.0f} s  (one look-up per send slot, as before)")
    if resend_seconds is not None:
        print(f"unknown ones re-sent by  {resend_seconds:.2f} s  (sends are paced by bsg.rate)")
    print("never twice              " + ("ok" if not bad else f"FAILED: {bad}"))
    return 1 if bad else 0


def check(daemon: Daemon, messages: list[dict], known: dict[int, bool], resent: bool) -> list[str]:
    """Every known row found and not sent again; every unknown one queued (or sent) once."""
    problems: list[str] = []
    counts = Counter(m["reference"] for m in messages)
    twice = [ref for ref, n in counts.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} reference(s) twice at BSG")
    for message_id, had in known.items():
        trail = [(a["what"], a["outcome"]) for a in daemon.store.attempts_of(message_id)]
        sends = [t for t in trail if t[0] == "send"]
        if had and (not trail or trail[0] != ("lookup", "found") or sends):
            problems.append(f"message {message_id}: {trail}")
        elif not had and (not trail or trail[0] != ("lookup", "not found") or len(sends) > 1
                          or (resent and sends != [("send", "ok")])):
            problems.append(f"message {message_id}: {trail}")
    return problems[:5]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--known", type=float, default=0.5, help="share of references BSG already has (0.5)")
    parser.add_argument("--rate", type=float, default=0.5, help="bsg.rate, requests/s (0.5, as in the issue)")
    parser.add_argument("--lookup-rate", type=float, default=DEFAULT_LOOKUP_RATE)
    parser.add_argument("--lookup-concurrency", type=int, default=DEFAULT_LOOKUP_CONCURRENCY)
    parser.add_argument("--resend", action="store_true", help="also wait until the unknown ones are sent")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
