"""End-to-end benchmark: `POST /events` → `herald run` → the fake BSG in its own process.

    .venv/bin/python bench/e2e.py [--seconds N] [--quick] [--sweep] [--profile DIR] [--no-polls]

Three processes on one machine: this script (the posters), `herald run` on a temporary
project, and the fake BSG (this file again, `--fake-server PORT`) wrapped in a tiny ASGI
middleware that stamps every recipient the fake accepts in `/sms/create` and
`/viber/create` with `time.time()` on the request's arrival and serves the list at
`GET /_bench/receipts`. Wall clock on both sides of one machine: comparable timestamps.

Each event is `order.created` with a unique phone `+7900NNNNNNN`; the one rule
`on order.created send sms to customer.phone text "Заказ #ORDER_ID#"` gives one SMS per
event, so a receipt maps back to its event. Every phase starts a fresh daemon and fake.

  1a  throughput: C posters, B events per POST, as fast as the API answers, for --seconds;
      then wait until the fake has every message. Events/s into the API, messages/s at the
      fake per slice, where the backlog sits, drain time, lost / duplicated messages.
  1b  sustained: --sustained-rate events/s (2,000) on a fixed schedule for --seconds: does
      the fake get 2,000 messages/s in every slice, with no backlog left at the end?
  2   latency: --latency-rate events/s (500) on a fixed schedule (trio.sleep_until) for
      --seconds/3, once per --latency-batch size (1 and 10 events per POST); latency per
      event = fake receipt − the moment its POST was sent; p50/p90/p99/max.

Prints figures; never asserts a time (the VM is noisy, ±35%: shared/spec/PERF-FACTS.md).
Exit code 1 only when messages were lost or duplicated. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import trio  # noqa: E402

TARGET_RATE = 2_000          # events/s sustained, end to end
TARGET_P99 = 0.050           # s, at TARGET_LATENCY_RATE
TARGET_LATENCY_RATE = 500    # events/s

RULE = 'on order.created send sms to customer.phone text "Заказ #ORDER_ID#"\n'
LATENCY_BASE = 9_000_000     # phase 2 numbers start here (phase 1 counts up from 0)


# =========================================================================== the fake BSG child

def fake_server(port: int, delivery_delay: float, stock: bool = False, callback_url: str | None = None) -> int:
    """`--fake-server PORT`: the fake BSG plus receipt stamping, until SIGTERM."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    from herald.engine.bsg.fake import FALLBACK_ON, FakeBSG, _callback_ticker, analyze, create_app

    class BenchFake(FakeBSG):
        """FakeBSG whose `advance()` looks only at Viber messages that may still need their
        alt-route SMS. The stock one walks every message ever accepted on every API call, so
        after ~100k messages the fake, not Herald, is the bottleneck (`--stock-fake` shows it)."""

        def reset(self) -> None:
            super().reset()
            self._fallbacks: list = []

        def _add(self, channel, *args, **kw):
            m = super()._add(channel, *args, **kw)
            if channel == "viber" and m.alt_route and m.outcome in FALLBACK_ON:
                self._fallbacks.append(m)
            return m

        def advance(self) -> None:
            if not self._fallbacks:
                return
            now, waiting = self.now(), []
            for m in self._fallbacks:
                if m.fallback_id is not None:
                    continue
                if now - m.created < self.delivery_delay:
                    waiting.append(m)
                    continue
                text = m.alt_route["text"]
                parts = max(1, analyze(text).parts)
                sms = self._add("sms", m.msisdn, None, m.alt_route["originator"], text,
                                self.sms_price * parts, created=m.created + self.delivery_delay, parts=parts)
                sms.fallback_for = m.id
                m.fallback_id = sms.id
            self._fallbacks = waiting

    # a balance that never runs out (the default 100 covers 5,000 SMS, then error 8)
    fake = (FakeBSG if stock else BenchFake)(delivery_delay=delivery_delay, balance="1000000000",
                                             callback_url=callback_url)
    app = create_app(fake)
    receipts: list[list] = []                 # [msisdn, time.time() of arrival], accepted ones only
    requests: Counter = Counter()

    def msisdns(node, out: list) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "msisdn" and isinstance(value, str):
                    out.append(value)
                else:
                    msisdns(value, out)
        elif isinstance(node, list):
            for value in node:
                msisdns(value, out)

    async def reply(send, obj) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def recorder(scope, receive, send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        path = scope["path"]
        if path == "/_bench/receipts":
            qs = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
            since = int(qs.get("since", 0))
            return await reply(send, {"total": len(receipts), "receipts": receipts[since:],
                                      "accepted": len(fake._messages), "requests": dict(requests)})
        if path == "/_bench/health":
            return await reply(send, {"ok": True})
        if path.startswith("/_fake/"):
            return await app(scope, receive, send)
        arrived = time.time()
        if path in ("/sms/create", "/viber/create"):
            requests["send"] += 1
            chunks, more = [], True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            found: list[str] = []
            try:
                msisdns(json.loads(body), found)
            except ValueError:
                pass
            replayed = False
            answer = bytearray()

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            async def capture(message):
                if message["type"] == "http.response.body":
                    answer.extend(message.get("body", b""))
                await send(message)

            await app(scope, replay, capture)
            # keep only the recipients the fake accepted (error 0): results are in request order
            try:
                data = json.loads(answer)
            except ValueError:
                data = None
            results = data.get("result") if isinstance(data, dict) else None
            if isinstance(results, dict):
                results = [results]
            if not isinstance(results, list):
                results = [data] if isinstance(data, dict) and "id" in data else []
            ok = [m for m, r in zip(found, results)
                  if isinstance(r, dict) and str(r.get("error", 0)) == "0"] if len(results) == len(found) else []
            receipts.extend([m, arrived] for m in ok)
            rejected = len(found) - len(ok)
            if rejected:
                requests["rejected"] += rejected
            return
        requests["status" if "/reference/" in path else "other"] += 1
        await app(scope, receive, send)

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    config.accesslog = None
    config.graceful_timeout = 1.0

    async def run() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: hypercorn_serve(
                recorder, config, shutdown_trigger=shutdown.wait, mode="asgi", task_status=task_status))
            if fake.callback_url:              # delivery receipts to Herald, as herald.engine.bsg.fake.serve does
                nursery.start_soon(_callback_ticker, fake)
            print(f"fake BSG (bench) on 127.0.0.1:{port}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0


# =========================================================================== processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before answering")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


CALLBACK_SECRET = "benchreceipts0123456789"


def write_project(root: Path, api_port: int, bsg_port: int, receipts: bool = True) -> Path:
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "main.rules").write_text(RULE, encoding="utf-8")
    (root / "rules" / "templates.yaml").write_text('unused: "x"\n', encoding="utf-8")
    config = f"""
store: var/herald.db
bsg:
  url: http://127.0.0.1:{bsg_port}
  api_key: bench_key
  rate: 1000
{"  callback_secret: " + CALLBACK_SECRET if receipts else ""}
sites:
  s1:
    name: Shop
    timezone: Europe/Moscow
    channel: sms
    send_window: "00:00-24:00"
http:
  listen: 127.0.0.1:{api_port}
  max_body: 16 MiB
"""
    path = root / "herald.yaml"
    path.write_text(config, encoding="utf-8")
    return path


@dataclass
class Stack:
    """A fake BSG child and a `herald run` child on a fresh temporary project."""

    delivery_delay: float
    profile_dir: Path | None = None
    stock_fake: bool = False
    no_polls: bool = False
    receipts: bool = False
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="herald-e2e-")))
    fake: subprocess.Popen | None = None
    daemon: subprocess.Popen | None = None
    spy: subprocess.Popen | None = None
    api: str = ""
    bsg: str = ""

    def start(self) -> "Stack":
        bsg_port, api_port = free_port(), free_port()
        self.bsg, self.api = f"http://127.0.0.1:{bsg_port}", f"http://127.0.0.1:{api_port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        callback = ["--callback-url", f"{self.api}/bsg/callback/{CALLBACK_SECRET}"] if self.receipts else []
        self.fake = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--fake-server", str(bsg_port),
             "--delivery-delay", str(self.delivery_delay), *(["--stock-fake"] if self.stock_fake else []),
             *callback],
            cwd=ROOT, env=env, stdout=open(self.tmp / "fake.log", "w"), stderr=subprocess.STDOUT)
        wait_http(f"{self.bsg}/_bench/health", self.fake)
        config = write_project(self.tmp, api_port, bsg_port, self.receipts)
        if self.no_polls:   # experiment: the first status poll 24 h after sending (launcher only, no engine edit)
            launch = ["-c", "import sys, herald.engine.delivery.policy as d; d.POLL_SCHEDULE = (86400,) + d.POLL_SCHEDULE[1:]; "
                            "from herald.engine.cli.main import main; sys.exit(main(sys.argv[1:]))"]
        else:
            launch = ["-m", "herald.engine.cli.main"]
        self.daemon = subprocess.Popen([sys.executable, *launch, "run", "-c", str(config)],
                                       cwd=self.tmp, env=env, stdout=open(self.tmp / "daemon.log", "w"),
                                       stderr=subprocess.STDOUT)
        wait_http(f"{self.api}/health", self.daemon)
        return self

    def profile(self, name: str, seconds: float) -> Path | None:
        """Sample the daemon with py-spy (all threads, collapsed stacks) for `seconds`."""
        if self.profile_dir is None:
            return None
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            print("  (py-spy not found: no profile)")
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.profile_dir / f"{name}.txt"
        self.spy = subprocess.Popen([spy, "record", "--pid", str(self.daemon.pid), "--duration",
                                     str(max(int(seconds), 1)), "--rate", "100", "--format", "raw",
                                     "--threads", "--nonblocking", "-o", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return out

    def stop(self) -> None:
        if self.spy is not None and self.spy.poll() is None:
            try:
                self.spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(self.spy)
        for proc in (self.daemon, self.fake):
            try:
                stop_process(proc)
            except Exception:  # keep cleaning up
                if proc is not None:
                    proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def daemon_log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join((self.tmp / "daemon.log").read_text().splitlines()[-n:])
        except OSError:
            return ""


@contextmanager
def stack(delivery_delay: float, profile_dir: Path | None = None, stock_fake: bool = False,
          no_polls: bool = False, receipts: bool = False):
    s = Stack(delivery_delay, profile_dir, stock_fake, no_polls, receipts)
    try:
        yield s.start()
    except BaseException:
        tail = s.daemon_log_tail()
        if tail:
            print("--- daemon log (tail) ---\n" + tail, file=sys.stderr)
        raise
    finally:
        s.stop()


# =========================================================================== helpers

def event(n: int) -> dict:
    return {"type": "order.created", "id": f"e2e-{n}",
            "data": {"order": {"id": n}, "customer": {"phone": f"+7900{n:07d}"}}}


def number(msisdn: str) -> int:
    return int(msisdn[4:])        # "7900NNNNNNN" → NNNNNNN


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def ms(x: float) -> str:
    return "—" if math.isnan(x) else f"{x * 1000:,.1f} ms"


class PostError(Exception):
    """A POST that got no answer (connection refused, reset or closed before the reply)."""


class _Conn:
    def __init__(self, stream: trio.SocketStream):
        self.stream, self.buf, self.used = stream, bytearray(), 0

    async def read_until(self, marker: bytes) -> int:
        while (i := self.buf.find(marker)) < 0:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise PostError("the server closed the connection")
            self.buf += chunk
        return i

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise PostError("the server closed the connection mid-body")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class Poster:
    """A minimal HTTP/1.1 keep-alive client for `POST /events`. httpx costs ~1.5 ms of CPU a
    request here, so 500 single-event POSTs/s took 75% of a core of this 2-core machine away
    from the daemon; this costs a small fraction of that. Reused connections the server has
    closed (hypercorn: after 1,000 requests or 5 s idle) are retried on a new one — the same
    event ids, so nothing is journaled twice."""

    def __init__(self, url: str, size: int):
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.limit = trio.Semaphore(size)
        self.idle: list[_Conn] = []
        self.retries = 0
        self.head = (f"POST /events HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\n"
                     "Content-Length: ").encode()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        async with self.limit:
            for attempt in range(3):
                reused = bool(self.idle) and attempt == 0     # a retry always gets a new connection
                conn = self.idle.pop() if reused else _Conn(await self._connect())
                try:
                    status, answer, keep = await self._exchange(conn, body)
                except (PostError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    await conn.stream.aclose()
                    last = (str(exc) if isinstance(exc, PostError) else f"{type(exc).__name__}: {exc}") \
                        + (" (reused connection)" if reused else "")
                    if attempt < 2:
                        self.retries += 1
                        continue
                    raise PostError(last) from exc
                if keep:
                    self.idle.append(conn)
                else:
                    await conn.stream.aclose()
                return status, answer
        raise AssertionError("unreachable")

    async def _connect(self) -> trio.SocketStream:
        try:
            return await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise PostError(str(exc)) from exc

    async def _exchange(self, conn: _Conn, body: bytes) -> tuple[int, bytes, bool]:
        await conn.stream.send_all(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        end = await conn.read_until(b"\r\n\r\n")
        head = bytes(conn.buf[:end]).decode("latin-1").split("\r\n")
        del conn.buf[:end + 4]
        status = int(head[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        answer = await conn.read_exactly(int(headers.get("content-length", "0")))
        return status, answer, headers.get("connection", "").lower() != "close"

    async def aclose(self) -> None:
        for conn in self.idle:
            await conn.stream.aclose()
        self.idle.clear()


class Receipts:
    """Fetches the fake's receipts incrementally."""

    def __init__(self, base: str):
        self.base = base
        self.items: list[tuple[int, float]] = []
        self.accepted = 0
        self.requests: dict = {}

    async def fetch(self, client: httpx.AsyncClient) -> int:
        r = await client.get(f"{self.base}/_bench/receipts", params={"since": len(self.items)}, timeout=60)
        data = r.json()
        self.items.extend((number(m), t) for m, t in data["receipts"])
        self.accepted, self.requests = data["accepted"], data["requests"]
        return len(self.items)


async def wait_drain(client: httpx.AsyncClient, receipts: Receipts, expected: set[int],
                     stall: float = 30.0) -> bool:
    """Until every expected number has a receipt, or nothing new arrives for `stall` s."""
    seen: set[int] = {n for n, _ in receipts.items}
    last_progress, last_count = time.monotonic(), len(receipts.items)
    while not expected <= seen:
        await trio.sleep(0.5)
        before = len(receipts.items)
        await receipts.fetch(client)
        seen.update(n for n, _ in receipts.items[before:])
        if len(receipts.items) != last_count:
            last_progress, last_count = time.monotonic(), len(receipts.items)
        elif time.monotonic() - last_progress > stall:
            return False
    return True


def check_exactly_once(posted: set[int], receipts: Receipts, label: str) -> tuple[int, int, int]:
    counts = Counter(n for n, _ in receipts.items)
    lost = len(posted - counts.keys())
    dup = sum(1 for n, c in counts.items() if c > 1)
    extra = len(counts.keys() - posted)
    if lost or dup:
        print(f"\n!!!!!!!! {label}: {lost} message(s) LOST, {dup} DUPLICATED !!!!!!!!\n")
    if extra:
        print(f"  note: {extra} message(s) for events whose POST got no 202 (committed anyway)")
    rejected = receipts.requests.get("rejected", 0)
    if rejected:
        print(f"\n!!!!!!!! {label}: the fake REJECTED {rejected} recipient(s) (not counted as received) !!!!!!!!\n")
    if receipts.accepted != len(counts):
        print(f"  note: the fake holds {receipts.accepted:,} message(s), receipts name {len(counts):,}")
    return lost, dup, extra


async def health(client: httpx.AsyncClient, api: str) -> dict:
    try:
        return (await client.get(f"{api}/health", timeout=30)).json()
    except (httpx.HTTPError, ValueError):
        return {}


# =========================================================================== phase 1: throughput

@dataclass
class Throughput:  # phase 1a
    batch: int
    concurrency: int
    seconds: float
    posted: int = 0
    api_rate: float = 0.0
    e2e_rate: float = 0.0
    window_rate: float = 0.0
    steady_rate: float = 0.0
    drain: float = math.nan
    lost: int = 0
    dup: int = 0
    complete: bool = False
    post_p50: float = math.nan
    post_p99: float = math.nan
    e2e_p50: float = math.nan
    e2e_p99: float = math.nan
    slices: list = field(default_factory=list)
    status_requests: int = 0
    send_requests: int = 0


async def throughput(s: Stack, batch: int, concurrency: int, seconds: float, slice_s: float,
                     profile: bool) -> Throughput:
    res = Throughput(batch, concurrency, seconds)
    next_n = 0
    posted_at: dict[int, float] = {}          # event number → time.time() the POST was sent
    accepted: list[tuple[float, int]] = []    # (time.time() of the 202, events)
    post_times: list[float] = []
    errors: Counter = Counter()
    url = f"{s.api}/events"
    receipts = Receipts(s.bsg)

    async with httpx.AsyncClient(timeout=60) as client:
        raw = Poster(url, concurrency)

        async def poster(stop_at: float) -> None:
            nonlocal next_n
            while trio.current_time() < stop_at:
                first = next_n
                next_n += batch
                body = json.dumps([event(n) for n in range(first, first + batch)],
                                  separators=(",", ":")).encode()
                t0 = time.time()
                try:
                    code, _ = await raw.post(body)
                except PostError as exc:
                    code = f"{type(exc).__name__}: {exc}"
                t1 = time.time()
                if code == 202:
                    for n in range(first, first + batch):
                        posted_at[n] = t0
                    accepted.append((t1, batch))
                    post_times.append(t1 - t0)
                else:
                    errors[code] += 1

        if profile:
            s.profile(f"phase1-b{batch}-c{concurrency}", seconds)
        cpu0 = cpu_times(s)
        start = time.time()
        stop_at = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(poster, stop_at)
            while trio.current_time() < stop_at:      # fetch along the way: smaller final fetch
                await trio.sleep(min(2.0, max(stop_at - trio.current_time(), 0)))
                await receipts.fetch(client)
        end = time.time()
        cpu1 = cpu_times(s)
        await raw.aclose()
        at_end = await health(client, s.api)
        res.complete = await wait_drain(client, receipts, set(posted_at))
        drained = time.time()
        cpu2 = cpu_times(s)
        h = await health(client, s.api)

    res.posted = len(posted_at)
    res.api_rate = res.posted / (end - start)
    times = sorted(t for _, t in receipts.items)
    if errors:
        print(f"  POST errors (after {raw.retries} retries): {dict(errors)}")
    if times:
        last = times[-1]
        res.e2e_rate = len(times) / (last - start)
        in_window = sum(1 for t in times if t <= end)
        res.window_rate = in_window / (end - start)
        res.drain = max(last - end, 0.0)
    res.lost, res.dup, _ = check_exactly_once(set(posted_at), receipts, f"phase 1 (batch {batch})")
    post_times.sort()
    res.post_p50, res.post_p99 = pct(post_times, 50), pct(post_times, 99)
    lat = sorted(t - posted_at[n] for n, t in receipts.items if n in posted_at)
    res.e2e_p50, res.e2e_p99 = pct(lat, 50), pct(lat, 99)
    res.send_requests = receipts.requests.get("send", 0)
    res.status_requests = receipts.requests.get("status", 0)

    # per-slice rates from the start of posting to the last receipt
    span = (times[-1] if times else end) - start
    nslices = max(1, math.ceil(span / slice_s))
    api_by = defaultdict(int)
    for t, k in accepted:
        api_by[min(int((t - start) // slice_s), nslices - 1)] += k
    fake_by = defaultdict(int)
    for t in times:
        fake_by[min(int((t - start) // slice_s), nslices - 1)] += 1
    for i in range(nslices):
        width = min(slice_s, span - i * slice_s) if i == nslices - 1 else slice_s
        width = max(width, 1e-9)
        res.slices.append((i * slice_s, i * slice_s + width, api_by[i] / width, fake_by[i] / width))
    # "steady": the median of the full slices while posting, after the first one (warm-up)
    full = [f for (a, b, _, f) in res.slices if b <= seconds + 1e-6 and a > 0]
    if full:
        res.steady_rate = sorted(full)[len(full) // 2]

    print(f"  batch {batch} × {concurrency} posters, {seconds:g} s: {res.posted:,} events accepted "
          f"({res.api_rate:,.0f}/s, POST p50 {ms(res.post_p50)}, p99 {ms(res.post_p99)})")
    print(f"  fake received {len(times):,} messages in {res.send_requests:,} send request(s); "
          f"{res.status_requests:,} status look-up(s) meanwhile")
    print(f"  end to end: {res.e2e_rate:,.0f} messages/s (start of posting → last receipt); "
          f"{res.window_rate:,.0f}/s while posting; drain after posting stopped {res.drain:.1f} s"
          + ("" if res.complete else "  [DRAIN INCOMPLETE: gave up after 30 s without progress]"))
    print(f"  event → fake receipt under this load: p50 {ms(res.e2e_p50)}, p99 {ms(res.e2e_p99)} "
          "(includes queueing behind the backlog)")
    print(f"  {'slice':>13}  {'API events/s':>12}  {'fake msgs/s':>11}")
    for a, b, api, fk in res.slices:
        print(f"  {a:5.0f}–{b:5.0f} s  {api:12,.0f}  {fk:11,.0f}")
    if at_end:
        journaled = res.posted
        processed = journaled - at_end.get("pending_events", 0)
        print(f"  when posting stopped: {at_end.get('pending_events', 0):,} event(s) not yet processed "
              f"(processed {processed / (end - start):,.0f}/s), {at_end.get('queue_depth', 0):,} message(s) queued "
              f"in the outbox, {at_end.get('messages', {}).get('sent', 0):,} sent awaiting a status poll")
    print("  CPU while posting: " + ", ".join(f"{k} {v:.0%}" for k, v in cpu_delta(cpu0, cpu1, end - start).items())
          + "; while draining: " + ", ".join(f"{k} {v:.0%}" for k, v in
                                            cpu_delta(cpu1, cpu2, max(drained - end, 1e-3)).items()))
    if h:
        print(f"  daemon at the end: queue_depth {h.get('queue_depth')}, pending_events "
              f"{h.get('pending_events')}, messages {h.get('messages')}")
    return res


# =========================================================================== paced runs (phase 2, and 1b)

@dataclass
class Paced:
    rate: float
    batch: int
    seconds: float
    scheduled: int = 0
    posted: int = 0
    achieved: float = 0.0
    p50: float = math.nan
    p90: float = math.nan
    p99: float = math.nan
    max: float = math.nan
    api_p50: float = math.nan
    api_p99: float = math.nan
    late_starts: int = 0
    retries: int = 0
    window_rate: float = 0.0
    drain: float = math.nan
    complete: bool = False
    lost: int = 0
    dup: int = 0
    slices: list = field(default_factory=list)
    cpu: dict = field(default_factory=dict)


async def paced(s: Stack, rate: float, batch: int, seconds: float, slice_s: float, label: str,
                profile: bool) -> Paced:
    """Post `batch` events every batch/rate seconds on a fixed schedule (trio.sleep_until),
    never waiting for an answer before the next tick; latency = fake receipt − POST sent."""
    res = Paced(rate, batch, seconds)
    interval = batch / rate
    ticks = int(seconds / interval)
    url = f"{s.api}/events"
    posted_at: dict[int, float] = {}
    api_times: list[float] = []
    errors: Counter = Counter()
    receipts = Receipts(s.bsg)
    in_flight = trio.Semaphore(256)
    raw = Poster(url, 64)

    async with httpx.AsyncClient(timeout=60) as client:
        async def post(first: int) -> None:
            body = json.dumps([event(n) for n in range(first, first + batch)] if batch > 1 else event(first),
                              separators=(",", ":")).encode()
            t0 = time.time()
            try:
                code, _ = await raw.post(body)
            except PostError as exc:
                code = f"{type(exc).__name__}: {exc}"
            finally:
                in_flight.release()
            if code == 202:
                for n in range(first, first + batch):
                    posted_at[n] = t0
                api_times.append(time.time() - t0)
            else:
                errors[code] += 1

        if profile:
            s.profile(label, seconds)
        cpu0 = cpu_times(s)
        t_start = trio.current_time() + 0.05
        wall_start = time.time() + 0.05
        async with trio.open_nursery() as nursery:
            for k in range(ticks):
                due = t_start + k * interval
                await trio.sleep_until(due)
                if trio.current_time() - due > interval:
                    res.late_starts += 1
                await in_flight.acquire()
                nursery.start_soon(post, LATENCY_BASE + k * batch)
                if k % max(1, int(2.0 / interval)) == 0 and k:
                    nursery.start_soon(receipts.fetch, client)
        wall_end = time.time()
        res.cpu = cpu_delta(cpu0, cpu_times(s), wall_end - wall_start)
        res.retries = raw.retries
        await raw.aclose()
        res.complete = await wait_drain(client, receipts, set(posted_at))

    res.scheduled = ticks * batch
    res.posted = len(posted_at)
    res.achieved = res.posted / (wall_end - wall_start)
    lat = sorted(t - posted_at[n] for n, t in receipts.items if n in posted_at)
    res.p50, res.p90, res.p99 = pct(lat, 50), pct(lat, 90), pct(lat, 99)
    res.max = lat[-1] if lat else math.nan
    api_times.sort()
    res.api_p50, res.api_p99 = pct(api_times, 50), pct(api_times, 99)
    res.lost, res.dup, _ = check_exactly_once(set(posted_at), receipts, label)
    times = sorted(t for _, t in receipts.items)
    if times:
        res.window_rate = sum(1 for t in times if t <= wall_end) / (wall_end - wall_start)
        res.drain = max(times[-1] - wall_end, 0.0)
    if errors:
        print(f"  POST errors (after {res.retries} retries): {dict(errors)}")
    elif res.retries:
        print(f"  {res.retries} POST(s) retried after a keep-alive close race")
    print(f"  {rate:g} events/s as {batch} event(s) every {interval * 1000:.1f} ms for {seconds:g} s: "
          f"{res.posted:,}/{res.scheduled:,} accepted, achieved {res.achieved:,.0f} events/s"
          + (f"; {res.late_starts} tick(s) started > 1 interval late" if res.late_starts else ""))
    print(f"  post → fake receipt: p50 {ms(res.p50)}  p90 {ms(res.p90)}  p99 {ms(res.p99)}  "
          f"max {ms(res.max)}   (post → 202: p50 {ms(res.api_p50)}, p99 {ms(res.api_p99)})")
    print(f"  fake: {res.window_rate:,.0f} msgs/s while posting; drain after posting {res.drain:.2f} s; "
          f"status look-ups {receipts.requests.get('status', 0):,}")
    print("  CPU while posting: " + ", ".join(f"{k} {v:.0%}" for k, v in res.cpu.items()))
    # per slice: messages/s at the fake, and the latency of the events posted in it
    by_slice: dict[int, list[float]] = defaultdict(list)
    fake_by: Counter = Counter()
    for n, t in receipts.items:
        if n in posted_at:
            by_slice[int((posted_at[n] - wall_start) // slice_s)].append(t - posted_at[n])
        fake_by[int((t - wall_start) // slice_s)] += 1
    last = max([*by_slice, *fake_by], default=-1)
    print(f"  {'slice':>13}  {'fake msgs/s':>11}  {'p50':>9}  {'p99':>9}  {'max':>9}   (latency of events posted in the slice)")
    for i in range(last + 1):
        v = sorted(by_slice.get(i, []))
        res.slices.append((i * slice_s, (i + 1) * slice_s, fake_by[i] / slice_s, pct(v, 50), pct(v, 99),
                           v[-1] if v else math.nan))
        print(f"  {i * slice_s:5.0f}–{(i + 1) * slice_s:5.0f} s  {fake_by[i] / slice_s:11,.0f}  "
              f"{ms(pct(v, 50)):>9}  {ms(pct(v, 99)):>9}  {ms(v[-1] if v else math.nan):>9}")
    return res


def cpu_times(s: Stack) -> dict:
    tick = os.sysconf("SC_CLK_TCK")
    out = {"bench": sum(os.times()[:2])}
    for name, proc in (("daemon", s.daemon), ("fake", s.fake)):
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def cpu_delta(before: dict, after: dict, wall: float) -> dict:
    return {k: (after[k] - before[k]) / wall for k in after if k in before}


# =========================================================================== profile summary

PROFILE_PARTS = (   # first match wins; markers are substrings of py-spy's collapsed frames
    ("delivery-status polls", ("Statuses._fetch_status (", "Statuses.apply_status", "Statuses.poll_loop",
                               "Store.due_polls", "Store.next_poll_due")),
    ("BSG exchange traces", ("Accounts.flush_exchanges", "Accounts.record_exchange", "BsgClient._trace")),
    ("dispatcher: claim, send, apply", ("Sender._send", "Store.claim_due", "Sender.apply_results",
                                        "Store.next_due")),
    ("processor (process_batch)", ("Processor.process_batch",)),
    ("intake: journal commit", ("Store.add_events",)),
    ("intake: HTTP (hypercorn, starlette, parse)", ("hypercorn/", "starlette/", "post_events", "h11/")),
    ("trio: scheduler, thread hand-off", ("trio/",)),
)
IDLE_LEAVES = ("EpollIOManager.get_events", "WorkerThread._work", "Condition.wait", "Lock.acquire")


def summarize_profile(path: Path | None, top: int = 12) -> None:
    """Collapsed stacks (py-spy --format raw) → share of the daemon's busy samples by part,
    and the busiest engine functions (inclusive). Leaves that are waits (epoll_wait, an idle
    worker thread) are counted as idle: py-spy --nonblocking cannot always tell."""
    if not path or not path.exists():
        return
    parts: Counter = Counter()
    engine_fns: Counter = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        frames = stack_text.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            idle += k
            continue
        busy += k
        parts[next((name for name, marks in PROFILE_PARTS if any(m in stack_text for m in marks)), "other")] += k
        for name in {f.split(" (")[0] for f in frames if "(engine/" in f} - {"<module>", "main", "cmd_run", "run_daemon"}:
            engine_fns[name] += k
    if not busy:
        return
    print(f"\n  profile {path.name}: {busy:,} busy samples ({idle:,} idle-looking left out)")
    for name, k in parts.most_common():
        print(f"    {100 * k / busy:5.1f}%  {name}")
    print("  busiest engine functions (inclusive):")
    for name, k in engine_fns.most_common(top):
        print(f"    {100 * k / busy:5.1f}%  {name}")


# =========================================================================== main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60, help="phase 1 length (phase 2: a third); default 60")
    p.add_argument("--quick", action="store_true", help="≈ 10 s phases: a smoke test, not for figures")
    p.add_argument("--batch", type=int, default=50, help="events per POST in phase 1 (default 50)")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent posters in phase 1a (default 4)")
    p.add_argument("--sweep", action="store_true",
                   help="phase 1a also at batch 1, 10, 200 and with 1 / 16 posters (each on a fresh stack)")
    p.add_argument("--sustained-rate", type=float, default=TARGET_RATE,
                   help=f"phase 1b: paced events/s (default {TARGET_RATE})")
    p.add_argument("--latency-rate", type=float, default=TARGET_LATENCY_RATE)
    p.add_argument("--latency-batch", default="1,10",
                   help="events per POST in phase 2, comma-separated: one run each (default 1,10)")
    p.add_argument("--delivery-delay", type=float, default=0.2, help="fake BSG delivery delay (default 0.2)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="sample the daemon with py-spy during each phase; collapsed stacks go to DIR")
    p.add_argument("--phases", default="1a,1b,2", help="which phases to run (default 1a,1b,2)")
    p.add_argument("--stock-fake", action="store_true",
                   help="use herald.engine.bsg.fake.FakeBSG as is (its advance() is O(messages held) per request)")
    p.add_argument("--no-polls", action="store_true",
                   help="experiment: start the daemon with its first delivery-status poll 24 h after sending, "
                        "to see what polling costs (figures are then not the product's)")
    p.add_argument("--receipts", action="store_true",
                   help="delivery-report callbacks on (bsg.callback_secret; the fake POSTs one receipt per message) "
                        "instead of status polling, the product default")
    p.add_argument("--fake-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--callback-url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fake_server is not None:
        return fake_server(args.fake_server, args.delivery_delay, args.stock_fake, args.callback_url)

    phases = set(args.phases.split(","))
    seconds = 10.0 if args.quick else args.seconds
    lat_seconds = 10.0 if args.quick else max(args.seconds / 3, 10.0)
    slice_s = 2.0 if args.quick else 10.0
    profile = args.profile is not None
    print(f"Herald end to end — {datetime.now().isoformat(timespec='seconds')}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print("three processes share the machine: posters (this one), herald run, the fake BSG")
    if args.no_polls:
        print("EXPERIMENT --no-polls: delivery-status polling deferred by 24 h; not the product's figures")
    print()

    failed = False
    t1: Throughput | None = None
    if "1a" in phases:
        runs: list[Throughput] = []
        combos = [(args.batch, args.concurrency)]
        if args.sweep:
            combos += [(1, args.concurrency), (10, args.concurrency), (200, args.concurrency),
                       (args.batch, 1), (args.batch, 16)]
        for batch, conc in combos:
            print(f"== phase 1a: throughput, as fast as the API takes it (batch {batch}, {conc} posters, "
                  f"{seconds:g} s) ==")
            with stack(args.delivery_delay, args.profile, args.stock_fake, args.no_polls, args.receipts) as s:
                r = trio.run(throughput, s, batch, conc, seconds, slice_s, profile)
            runs.append(r)
            failed |= bool(r.lost or r.dup)
            if profile:
                summarize_profile(args.profile / f"phase1-b{batch}-c{conc}.txt")
            print()
        t1 = runs[0]
        if len(runs) > 1:
            print("  sweep: batch × posters → API events/s, end-to-end msgs/s, while posting msgs/s, drain s")
            for r in runs:
                print(f"    {r.batch:4d} × {r.concurrency:2d} → {r.api_rate:7,.0f}  {r.e2e_rate:7,.0f}  "
                      f"{r.window_rate:7,.0f}  {r.drain:6.1f}")
            print()

    t1b: Paced | None = None
    if "1b" in phases:
        print(f"== phase 1b: sustained, paced at {args.sustained_rate:g} events/s (batch {args.batch}, "
              f"{seconds:g} s, fresh daemon) ==")
        with stack(args.delivery_delay, args.profile, args.stock_fake, args.no_polls, args.receipts) as s:
            t1b = trio.run(paced, s, args.sustained_rate, args.batch, seconds, slice_s,
                           f"phase1b-r{args.sustained_rate:g}", profile)
        failed |= bool(t1b.lost or t1b.dup)
        if profile:
            summarize_profile(args.profile / f"phase1b-r{args.sustained_rate:g}.txt")
        print()

    t2: list[Paced] = []
    if "2" in phases:
        for batch in (int(b) for b in args.latency_batch.split(",")):
            print(f"== phase 2: latency at {args.latency_rate:g} events/s, {batch} event(s) per POST "
                  f"({lat_seconds:g} s, fresh daemon) ==")
            label = f"phase2-r{args.latency_rate:g}-b{batch}"
            with stack(args.delivery_delay, args.profile, args.stock_fake, args.no_polls, args.receipts) as s:
                r = trio.run(paced, s, args.latency_rate, batch, lat_seconds, 2.0 if args.quick else 5.0,
                             label, profile)
            t2.append(r)
            failed |= bool(r.lost or r.dup)
            if profile:
                summarize_profile(args.profile / f"{label}.txt")
            print()

    print("== targets ==")
    print(f"  {'target':<58} {'measured':>18}  verdict")

    def row(name: str, measured: str, ok: bool, note: str = "") -> None:
        print(f"  {name:<58} {measured:>18}  {'met' if ok else 'NOT met'}{note}")

    if t1b is not None:
        ok = (t1b.achieved >= 0.95 * TARGET_RATE and t1b.window_rate >= 0.95 * TARGET_RATE
              and t1b.drain < 5 and t1b.complete and not (t1b.lost or t1b.dup))
        row(f"≥ 2,000 events/s sustained (paced {args.sustained_rate:g}/s in)",
            f"{t1b.window_rate:,.0f} msgs/s out", ok,
            f"  (in {t1b.achieved:,.0f}/s; backlog drained {t1b.drain:.1f} s after; p99 {ms(t1b.p99)})")
    if t1 is not None:
        row("  1a: end to end, start of posting → last receipt", f"{t1.e2e_rate:,.0f} msgs/s",
            t1.e2e_rate >= TARGET_RATE and t1.complete)
        row("  1a: at the fake while the API is flooded (median slice)", f"{t1.steady_rate:,.0f} msgs/s",
            t1.steady_rate >= TARGET_RATE)
        row("  1a: API intake", f"{t1.api_rate:,.0f} events/s", t1.api_rate >= TARGET_RATE)
    for r in t2:
        ok = r.p99 < TARGET_P99 and r.achieved >= 0.95 * TARGET_LATENCY_RATE and not (r.lost or r.dup)
        row(f"p99 < 50 ms at 500 events/s ({r.batch} per POST)", ms(r.p99), ok,
            f"  (achieved {r.achieved:,.0f} events/s; p50 {ms(r.p50)})")
    if failed:
        print("\n!!!!!!!! messages were lost or duplicated: these figures are worthless !!!!!!!!")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
