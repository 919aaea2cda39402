"""The dispatcher: due messages out to BSG, answers and statuses back into the outbox.

Each message is claimed (`sending`, attempt counted) in a committed transaction before
its BSG call, and carries the BSG reference it got when it was written. So after a
crash a `sending` message is resolved by asking BSG for that reference — sent if BSG
has it, queued again if not — and never sent twice.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta
from typing import Sequence

import trio

from engine.bsg import (BsgClient, BsgError, BsgUnavailable, Kind, SendResult, SmsItem, Status, ViberItem,
                        parse_status)
from engine.events import Event
from engine.store import OutboxRow

log = logging.getLogger("herald.dispatch")

MAX_ATTEMPTS = 8
BATCH = 500                      # claimed per round; sent as concurrent requests of ≤ 50
REQUEST_SIZE = 50
POLL_CONCURRENCY = 4             # polls yield to sends: latency of new messages comes first
POLL_SHARE = 0.5                 # status polls use at most this share of bsg.rate
POLL_SCHEDULE = (5, 15, 60, 300, 900, 3600)          # seconds after sending, then hourly
GIVE_UP_POLLING = timedelta(hours=73)                # SMS validity is at most 72 h
# With delivery reports on (bsg.callback_secret), BSG's callback is the main path to a
# final status and polling only the fallback for reports that got lost: the first poll
# waits this long (most messages are final by then, so it costs no request), and the
# schedule continues from there (15 min, then hourly) until GIVE_UP_POLLING.
RECEIPT_FALLBACK_POLL = 600


def backoff(attempts: int, base: float = 5.0, cap: float = 600.0) -> float:
    """Exponential with ±25% jitter, so many messages failing together don't retry together."""
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    return delay * random.uniform(0.75, 1.25)


class Dispatcher:
    def __init__(self, daemon):
        self.daemon = daemon
        self.client: BsgClient | None = None
        self.busy = False
        self._exchanges: list = []
        self._next_poll_slot = 0.0
        from engine.daemon import Pulse
        self.poll_wake = Pulse()

    @property
    def store(self):
        return self.daemon.store

    def now(self) -> datetime:
        return self.daemon.clock.now()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            url, key = await self._endpoint(nursery)
            async with BsgClient(url, key, rate=self.daemon.config.bsg.rate,
                                 transport=self.daemon.bsg_transport,
                                 on_exchange=self._record_exchange) as client:
                self.client = client
                await self._recover()
                nursery.start_soon(self._send_loop)
                nursery.start_soon(self._poll_loop)
                task_status.started()
                await trio.sleep_forever()

    async def _endpoint(self, nursery: trio.Nursery) -> tuple[str, object]:
        bsg = self.daemon.config.bsg
        if not bsg.sandbox or self.daemon.bsg_transport is not None:
            return bsg.url, bsg.api_key or "sandbox"
        from engine.fakebsg import FakeBSG, serve
        port = await nursery.start(serve, FakeBSG(), "127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}"
        self.daemon.sandbox_url = url
        log.warning("sandbox mode: no BSG api_key is configured, so messages go to the built-in fake BSG "
                    "at %s and nothing is really sent", url)
        return url, "sandbox"

    def _record_exchange(self, method, path, request, status, response, seconds) -> None:
        # called by the client in the trio thread: kept in memory, written with the next batch
        self._exchanges.append((method, path, request, status, response, seconds, tuple(_references(request, path))))

    async def _flush_exchanges(self) -> None:
        pending, self._exchanges = self._exchanges, []
        if not pending:
            return

        def write() -> None:
            with self.store.transaction():
                for method, path, request, status, response, seconds, refs in pending:
                    self.store.add_exchange("main", method, path, request, status, response, seconds, refs)
        await self.daemon.db(write)

    # ---- recovery after a crash ----
    async def _recover(self) -> None:
        rows = await self.daemon.db(self.store.in_state, "sending", 10_000)
        if rows:
            log.info("resolving %d message(s) left in `sending` by their BSG reference", len(rows))
        for row in rows:
            try:
                status = await self._lookup(row)
            except BsgError as exc:
                log.warning("cannot resolve %s yet (%s); retrying later", row.reference, exc)
                await self.daemon.db(self._requeue, row, "resolving after restart: " + str(exc), 30.0)
                continue
            if status is None:
                await self.daemon.db(self._requeue, row, "", 0.0)      # BSG never got it: send it now
            else:
                if await self.daemon.db(self._mark_sent_from_status, row, status):
                    self.daemon.events_wake.set()
        self.daemon.dispatch_wake.set()

    async def _lookup(self, row: OutboxRow) -> Status | None:
        if row.channel == "sms":
            return await self.client.sms_status(row.reference)
        return await self.client.viber_status(row.reference)

    # ---- sending ----
    async def _send_loop(self) -> None:
        while True:
            rows = await self.daemon.db(self.store.claim_due, self.now(), BATCH)
            if rows:
                self.busy = True
                try:
                    await self._send(rows)
                finally:
                    self.busy = False
                await self._flush_exchanges()
                continue
            due = await self.daemon.db(self.store.next_due)
            wait = 30.0 if due is None else (due - self.now()).total_seconds()
            await self.daemon.dispatch_wake.wait(min(wait, 30.0))

    async def _send(self, rows: Sequence[OutboxRow]) -> None:
        now = self.now().timestamp()
        live = []
        expired = []
        for row in rows:
            if row.stale_at is not None and now > row.stale_at:
                expired.append(row)
            else:
                live.append(row)
        if expired:
            await self.daemon.db(self._expire, expired)
        sms = [r for r in live if r.channel == "sms"]
        viber = [r for r in live if r.channel != "sms"]
        # requests go out concurrently; the client's rate cap still spaces them
        async with trio.open_nursery() as nursery:
            for group, is_sms in ((sms, True), (viber, False)):
                for i in range(0, len(group), REQUEST_SIZE):
                    nursery.start_soon(self._send_group, group[i:i + REQUEST_SIZE], is_sms)

    async def _send_group(self, rows: Sequence[OutboxRow], is_sms: bool) -> None:
        try:
            if is_sms:
                results = await self.client.send_sms(
                    [SmsItem(r.msisdn, r.sms_text or r.text or "", r.sms_sender or r.sender or "", r.reference)
                     for r in rows])
            else:
                results = await self.client.send_viber([self._viber_item(r) for r in rows])
        except BsgUnavailable as exc:
            # BSG became unreachable part-way: keep what it answered, retry the rest (a
            # retry of something it did take gets 23/43 and is looked up, not resent)
            log.warning("BSG unavailable: %s; unanswered messages will be retried", exc)
            results = list(exc.results) or [SendResult(r.reference, Kind.RETRY, description=str(exc)) for r in rows]
        if await self.daemon.db(self._apply_results, rows, results):
            self.daemon.events_wake.set()
        self.poll_wake.set()
        duplicates = [(row, res) for row, res in zip(rows, results) if res.kind == Kind.DUPLICATE]
        for row, _ in duplicates:
            try:
                status = await self._lookup(row)
            except BsgError:
                status = None
            if status is not None:
                if await self.daemon.db(self._mark_sent_from_status, row, status):
                    self.daemon.events_wake.set()
            else:
                await self.daemon.db(self._requeue, row, "BSG reported the reference as used but has no such "
                                                         "message; retrying", backoff(row.attempts))
        self.daemon.dispatch_wake.set()

    @staticmethod
    def _viber_item(row: OutboxRow) -> ViberItem:
        omni = row.channel == "omni"
        return ViberItem(row.msisdn, row.text or "", row.sender or "", row.reference,
                         alt_sms_originator=row.sms_sender if omni else None,
                         alt_sms_text=row.sms_text if omni else None)

    # ---- outcomes (in the database thread) ----
    def _expire(self, rows: Sequence[OutboxRow]) -> None:
        with self.store.transaction():
            for row in rows:
                self.store.update_message(row.id, state="expired",
                                          reason="stale: not handed to BSG before its `stale after` ran out")

    def _requeue(self, row: OutboxRow, reason: str, delay: float) -> None:
        self.store.update_message(row.id, state="queued", reason=reason,
                                  next_attempt_at=self.now().timestamp() + delay)

    def _after_failure(self, row: OutboxRow, kind: Kind, code: int | None, text: str) -> None:
        reason = f"BSG error {code}: {text}" if code else text
        if kind == Kind.FATAL:
            self.store.update_message(row.id, state="failed", reason=reason, error_code=code)
        elif kind == Kind.OPERATOR:
            # the account needs attention (key, funds, tariff): keep the message, retry slowly
            self.store.update_message(row.id, state="queued", reason=reason + " (waiting for the operator)",
                                      error_code=code, next_attempt_at=self.now().timestamp() + 300)
        elif row.attempts >= MAX_ATTEMPTS:
            self.store.update_message(row.id, state="failed", error_code=code,
                                      reason=f"gave up after {row.attempts} attempts; last: {reason}")
        else:
            self.store.update_message(row.id, state="queued", reason=reason, error_code=code,
                                      next_attempt_at=self.now().timestamp() + backoff(row.attempts))

    def _first_poll_delay(self) -> float:
        return RECEIPT_FALLBACK_POLL if self.daemon.config.bsg.callbacks else POLL_SCHEDULE[0]

    def _apply_results(self, rows: Sequence[OutboxRow], results: Sequence[SendResult]) -> bool:
        """Record send results; True when an early delivery report made a message final."""
        now = self.now().timestamp()
        final = False
        with self.store.transaction():
            for row, result in zip(rows, results):
                if result.kind == Kind.OK:
                    self.store.update_message(row.id, state="sent", reason="", bsg_id=result.id,
                                              price=result.price, currency=result.currency, sent_at=now,
                                              next_poll_at=now + self._first_poll_delay(), error_code=None)
                    final |= self._apply_pending_receipts(row.id, row.reference, result.id)
                elif result.kind != Kind.DUPLICATE:
                    self._after_failure(row, result.kind, result.code, result.description)
        return final

    def _mark_sent_from_status(self, row: OutboxRow, status: Status) -> bool:
        """True when an early delivery report made the message final."""
        now = self.now().timestamp()
        with self.store.transaction():
            self.store.update_message(row.id, state="sent", bsg_id=status.id, bsg_status=status.status,
                                      reason="BSG already had this reference", sent_at=now,
                                      next_poll_at=now, price=status.price, currency=status.currency)
            return self._apply_pending_receipts(row.id, row.reference, status.id)

    # ---- delivery reports (BSG callbacks; in the database thread) ----
    def apply_receipts(self, bodies: Sequence[dict]) -> tuple[dict, bool]:
        """Apply delivery reports (BSG's status shape) in one transaction. Returns the
        counts {"applied", "pending", "unknown"} and whether a message became final.

        applied: its message is sent (or already final: a repeat changes nothing);
        pending: its message is not sent yet — kept, applied when the send is recorded;
        unknown: no message matches. An id-only report is kept too, in case the send that
        gets that id is not committed yet; one with an unknown reference is dropped
        (references are written with the message, before any send)."""
        counts = {"applied": 0, "pending": 0, "unknown": 0}
        final = False
        with self.store.transaction():
            for body in bodies:
                status = parse_status(body)
                row = self.store.message_for_receipt(status.reference, status.id)
                if row is None:
                    counts["unknown"] += 1
                    if not status.reference and status.id:
                        self.store.add_receipt(None, status.id, status.status, body)
                elif row["state"] in ("queued", "deferred", "sending"):
                    counts["pending"] += 1
                    self.store.add_receipt(row["reference"], status.id, status.status, body)
                else:
                    counts["applied"] += 1
                    final |= self._apply_receipt(row, status)
        return counts, final

    def _apply_pending_receipts(self, message_id: int, reference: str, bsg_id: str | None) -> bool:
        """Apply the reports that came before the send was recorded (message now `sent`)."""
        pending = self.store.pending_receipts(reference, bsg_id)
        if not pending:
            return False
        final = False
        for receipt in pending:
            row = self.store.message_for_receipt(reference, None)
            final |= self._apply_receipt(row, parse_status(receipt["body"]))
        self.store.mark_receipts_applied(r["id"] for r in pending)
        return final

    def _apply_receipt(self, row: dict, status: Status) -> bool:
        """One report for a sent message: a final one ends it exactly like a final poll
        (one event); a pending one only records BSG's status. Nothing changes for a
        message already final, so a repeated report is harmless."""
        if row["state"] != "sent":
            return False
        if status.final and all(a.final for a in status.alt_route):
            return self._apply_status(row, status)
        # not final yet (or a Viber failure whose fallback SMS is still on its way):
        # polling, later reports, or the fallback's report will finish it
        self.store.update_message(row["id"], bsg_status=status.status)
        return False

    # ---- delivery statuses ----
    async def _poll_loop(self) -> None:
        limiter = trio.CapacityLimiter(POLL_CONCURRENCY)
        while True:
            if self.busy:
                await trio.sleep(0.1)             # a send round is on: statuses can wait
                continue
            due = await self.daemon.db(self.store.due_polls, self.now(), 50)
            if due:
                statuses: dict[int, Status | None] = {}
                async with trio.open_nursery() as nursery:
                    for item in due:
                        nursery.start_soon(self._fetch_status, item, statuses, limiter)
                if await self.daemon.db(self._apply_statuses, due, statuses):
                    self.daemon.events_wake.set()
                await self._flush_exchanges()
                continue
            nxt = await self.daemon.db(self.store.next_poll_due)
            wait = 30.0 if nxt is None else (nxt - self.now()).total_seconds()
            await trio.sleep(0.2)                 # let a burst of sends land before the first poll
            await self.poll_wake.wait(min(wait, 30.0))

    async def _fetch_status(self, item: dict, out: dict, limiter: trio.CapacityLimiter) -> None:
        """Ask BSG for one message's status (None: not known yet, or BSG unreachable)."""
        async with limiter:
            await self._poll_pace()
            try:
                if item["channel"] == "sms":
                    out[item["id"]] = await self.client.sms_status(item["reference"])
                else:
                    out[item["id"]] = await self.client.viber_status(item["reference"])
            except BsgError as exc:
                log.debug("status of %s: %s", item["reference"], exc)
                out[item["id"]] = None

    async def _poll_pace(self) -> None:
        """Space status polls to POLL_SHARE of the BSG rate, so they never starve sends
        that share the client's rate cap (one poll is one request; a send carries 50)."""
        interval = 1.0 / max(self.daemon.config.bsg.rate * POLL_SHARE, 0.1)
        now = trio.current_time()
        slot = max(now, self._next_poll_slot)
        self._next_poll_slot = slot + interval
        if slot > now:
            await trio.sleep(slot - now)

    def _apply_statuses(self, items: Sequence[dict], statuses: dict) -> bool:
        """Record a round of polls in one transaction; True when some message became final."""
        with self.store.transaction():
            return any([self._apply_status(item, statuses.get(item["id"])) for item in items])

    def _apply_status(self, item: dict, status: Status | None) -> bool:
        """True when the message reached a final state (an event was journaled)."""
        now = self.now().timestamp()
        sent_at = item["sent_at"] or now
        # a failed Viber whose SMS fallback is still on its way is not final yet
        if status is None or not status.final or any(not a.final for a in status.alt_route):
            age = now - sent_at
            if age > GIVE_UP_POLLING.total_seconds():
                self.store.update_message(item["id"], state="failed", reason="no final status from BSG within 73 h")
                self._emit_final(item, "failed", "no final status")
                return True
            step = sum(1 for s in POLL_SCHEDULE if s <= age)
            delay = POLL_SCHEDULE[step] - age if step < len(POLL_SCHEDULE) else 3600
            self.store.update_message(item["id"], bsg_status=status.status if status else None,
                                      next_poll_at=now + max(delay, 1))
            return False
        delivered = status.success or any(a.status in ("delivered", "read") for a in status.alt_route)
        alt = status.alt_route[0] if status.alt_route else None
        fields = dict(bsg_status=status.status, next_poll_at=None)
        if alt is not None:
            fields["sms_bsg_id"] = alt.id
        if status.price is not None:
            fields["price"] = status.price
        if delivered:
            self.store.update_message(item["id"], state="delivered", reason="", **fields)
            self._emit_final(item, "delivered", status.status)
        else:
            self.store.update_message(item["id"], state="failed", reason=f"BSG status: {status.status}", **fields)
            self._emit_final(item, "failed", status.status)
        return True

    def _emit_final(self, item: dict, state: str, bsg_status: str) -> None:
        message = self.store.message(item["id"])
        event = Event(f"message.{state}", {"message": {
            "id": message["id"], "status": bsg_status, "channel": message["channel"], "to": message["to"],
            "rule": message["rule"], "event": message["event"], "reference": message["reference"],
            "price": message["price"], "currency": message["currency"], "reason": message["reason"]}},
            message["site"], f"message:{message['reference']}:{state}", self.now())
        self.store.add_events([event], "herald")


def _references(request, path: str) -> list[str]:
    """Every BSG reference a request names (its body, or a /reference/{ref} path)."""
    found = []
    if "/reference/" in path:
        found.append(path.rsplit("/", 1)[-1])

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(request)
    return found
