"""Sending: due messages are claimed (`sending`, attempt counted, committed), routed to the
first healthy endpoint (committed before the call, so recovery asks the right one), sent in
concurrent requests of ≤ 50, and their results recorded. A failure is sorted by whose fault
it is: the message's (fatal, or retried with back-off up to policy.MAX_ATTEMPTS), the
account's (an operator error: held, retried slowly, one alert) or the endpoint's (the
attempt is given back; an unknown outcome keeps the message at that endpoint —
engine/delivery/recovery.py).
"""

from __future__ import annotations

import logging
from typing import Sequence

import trio

from herald.engine.bsg.client import BsgError, BsgUnavailable, Kind, SendResult, SmsItem, ViberItem
from herald.engine.delivery import omni, policy
from herald.engine.delivery.accounts import Accounts
from herald.engine.delivery.endpoints import Endpoint
from herald.engine.delivery.health import Health
from herald.engine.delivery.incidents import Incidents
from herald.engine.delivery.ledger import Ledger
from herald.engine.delivery.recovery import Recovery
from herald.engine.delivery.services import DeliveryServices
from herald.engine.delivery.status import Statuses
from herald.engine.runtime import Pulse
from herald.engine.store import MessageState, OutboxRow

log = logging.getLogger("herald.dispatch")


def endpoint_failure(result: SendResult) -> bool:
    """The endpoint, not the message, is at fault: no answer, or HTTP 5xx."""
    return result.unavailable or (result.http_status or 0) >= 500


class Sender:
    def __init__(self, services: DeliveryServices, accounts: Accounts, health: Health, ledger: Ledger,
                 incidents: Incidents, recovery: Recovery, statuses: Statuses, poll_wake: Pulse):
        self.services = services
        self.store = services.store
        self.accounts = accounts
        self.health = health
        self.ledger = ledger
        self.incidents = incidents
        self.recovery = recovery
        self.statuses = statuses
        self.poll_wake = poll_wake
        self.busy = False                 # a send round is on (the daemon lets it finish at shutdown)

    def ts(self) -> float:
        return self.services.ts()

    async def send_loop(self) -> None:
        db = self.services.db
        while True:
            rows = await db(self.store.claim_due, self.services.now(), policy.BATCH)
            if rows:
                self.busy = True
                try:
                    await self._send(rows)
                finally:
                    self.busy = False
                await self.accounts.flush_exchanges()
                continue
            due = await db(self.store.next_due)
            wait = 30.0 if due is None else (due - self.services.now()).total_seconds()
            # A due time read back rounds to the microsecond, so it can look due while the
            # claim (on the exact stored value) finds nothing yet: never loop without a pause.
            await self.services.dispatch_wake.wait(min(max(wait, policy.MIN_WAIT), 30.0))

    async def _send(self, rows: Sequence[OutboxRow]) -> None:
        db = self.services.db
        now = self.ts()
        expired = [r for r in rows if r.stale_at is not None and now > r.stale_at]
        live = [r for r in rows if not (r.stale_at is not None and now > r.stale_at)]
        if expired:
            await db(self._expire, expired)
            self.services.events_wake.set()
        if not live:
            return
        endpoint = self.accounts.router.pick()
        if endpoint is None:
            await db(self._hold, live)
            return
        elsewhere = [r for r in live if r.uncertain_at and r.uncertain_at != endpoint.name]
        ready = [r for r in live if not (r.uncertain_at and r.uncertain_at != endpoint.name)]
        if elsewhere:
            ready += await self.recovery.settle_uncertain(elsewhere, endpoint)
        if not ready:
            return
        # the endpoint is committed before the call: recovery asks the right one
        await db(self._route, ready, endpoint.name)
        sms = [r for r in ready if r.kind == "sms"]
        viber = [r for r in ready if r.kind == "viber"]
        # requests go out concurrently; the client's rate cap still spaces them
        async with trio.open_nursery() as nursery:
            for kind_rows, is_sms in ((sms, True), (viber, False)):
                for group in self.accounts.by_account(kind_rows):
                    for i in range(0, len(group), policy.REQUEST_SIZE):
                        nursery.start_soon(self._send_group, group[i:i + policy.REQUEST_SIZE], is_sms, endpoint)

    async def _send_group(self, rows: Sequence[OutboxRow], is_sms: bool, endpoint: Endpoint) -> None:
        db = self.services.db
        client = self.accounts.client_for(endpoint, rows[0].site)     # rows share an account (by_account)
        try:
            if is_sms:
                results = await client.send_sms(
                    [SmsItem(r.msisdn, r.sms_text or r.text or "", r.sms_sender or r.sender or "",
                             r.leg_reference) for r in rows])
            else:
                results = await client.send_viber([viber_item(r) for r in rows])
        except BsgUnavailable as exc:
            # BSG became unreachable part-way: keep what it answered, retry the rest (a
            # retry of something it did take gets 23/43 and is looked up, not resent)
            log.warning("BSG %s unavailable: %s; unanswered messages will be retried", endpoint.name, exc)
            results = list(exc.results) or [
                SendResult(r.leg_reference, Kind.RETRY, description=str(exc), unavailable=True,
                           uncertain=exc.reached) for r in rows]
        failed = [r for r in results if endpoint_failure(r)]
        await self.health.changed(endpoint, endpoint.record(not failed, self.ts(),
                                                            failed[0].description if failed else ""))
        if await db(self.apply_results, rows, results, endpoint.name, client.name):
            self.services.events_wake.set()
        self.poll_wake.set()
        for row, _ in [(row, res) for row, res in zip(rows, results) if res.kind == Kind.DUPLICATE]:
            # BSG says it has the reference: it stays this endpoint's until a look-up says
            # otherwise — whatever goes wrong with the look-up
            try:
                status = await self.recovery.lookup(row, endpoint)
            except BsgError as exc:
                await db(self.recovery.wait_for_lookup, row, endpoint.name, str(exc))
                continue
            if status is not None:
                if await db(self.recovery.mark_sent_from_status, row, status, endpoint.name):
                    self.services.events_wake.set()
            else:
                await db(self._requeue, row, "BSG reported the reference as used but has no such "
                                             "message; retrying", policy.backoff(row.attempts), endpoint.name)
        self.services.dispatch_wake.set()

    # ---- outcomes (in the database thread) ----
    def _expire(self, rows: Sequence[OutboxRow]) -> None:
        with self.store.transaction():
            for row in rows:
                message = self.store.message_row(row.id) or {}
                if message.get("kind") == "campaign":
                    # a campaign message carries the campaign's end as its deadline: the
                    # same recall the campaign's feeder makes, and no event per message
                    reason = "campaign ended"
                    self.store.update_message(row.id, state=MessageState.EXPIRED, reason=reason)
                    self.ledger.log(row.id, "expire", "expired", None, row, reason)
                    continue
                reason = "stale: not handed to BSG before its `stale after` ran out"
                if row.uncertain_at:
                    reason = (f"stale: its `stale after` ran out while its outcome at {row.uncertain_at} was "
                              "unknown (it may have been sent there); not sent anywhere else")
                self.store.update_message(row.id, state=MessageState.EXPIRED, reason=reason, uncertain_at=None,
                                          uncertain_since=None)
                self.ledger.log(row.id, "expire", "expired", None, row, reason)
                self.ledger.emit_final({"id": row.id}, MessageState.FAILED, "expired")

    def _hold(self, rows: Sequence[OutboxRow]) -> None:
        """Every endpoint is down: the messages wait for a probe to succeed. Not an
        attempt: an outage of any length never makes a message fail."""
        router = self.accounts.router
        wake = router.next_probe() or (self.ts() + 5)
        down = "; ".join(f"{e.name}: {e.reason or 'down'}" for e in router.endpoints)
        with self.store.transaction():
            for row in rows:
                self.store.update_message(row.id, state=MessageState.QUEUED, attempts=max(row.attempts - 1, 0),
                                          next_attempt_at=max(wake, self.ts() + 1),
                                          reason=f"every BSG endpoint is down ({down}); waiting for one to recover")

    def _route(self, rows: Sequence[OutboxRow], endpoint: str) -> None:
        with self.store.transaction():
            for row in rows:
                self.store.update_message(row.id, endpoint=endpoint, uncertain_at=row.uncertain_at,
                                          uncertain_since=row.uncertain_since)

    def _requeue(self, row: OutboxRow, reason: str, delay: float, uncertain_at: str | None) -> None:
        self.store.update_message(row.id, state=MessageState.QUEUED, reason=reason,
                                  **self.recovery.uncertain(row, uncertain_at), next_attempt_at=self.ts() + delay)

    def apply_results(self, rows: Sequence[OutboxRow], results: Sequence[SendResult], endpoint: str,
                      account: str | None = None) -> bool:
        """Record send results; True when a message became final (an event was journaled).
        `account`: the BSG account (client name: `main`, or `main/s2` for a site with its
        own key) — operator incidents are per account."""
        account = account or endpoint
        now = self.ts()
        final = False
        with self.store.transaction():
            for row, result in zip(rows, results):
                if result.kind == Kind.OK:
                    self.store.update_message(row.id, bsg_id=result.id, price=result.price,
                                              currency=result.currency, endpoint=endpoint,
                                              **self.statuses.sent_fields(row, now))
                    self.ledger.log(row.id, "send", "ok", endpoint, row, f"BSG id {result.id}")
                    final |= self.statuses.apply_pending_receipts(row.id, row.leg_reference, result.id)
                elif result.kind == Kind.DUPLICATE:
                    self.ledger.log(row.id, "send", "duplicate", endpoint, row,
                                    f"BSG error {result.code}: the reference is already there; looking it up")
                else:
                    final |= self._after_failure(row, result, endpoint, account)
            if any(r.kind == Kind.OK for r in results):
                self.incidents.operator_resolved(account)
                self.incidents.failover_resolved(endpoint)
        return final

    def _after_failure(self, row: OutboxRow, result: SendResult, endpoint: str, account: str) -> bool:
        """Record a failed send; True when the message became final (failed)."""
        kind, code = result.kind, result.code or None
        reason = f"BSG error {code}: {result.description}" if code else result.description
        # an earlier unknown outcome at this endpoint is cleared only by a look-up that
        # does not find the reference (or a success), never by a later failure
        uncertain = endpoint if result.uncertain else row.uncertain_at
        if endpoint_failure(result):
            outcome = "unknown" if result.uncertain else "unavailable"
        else:
            outcome = str(kind)
        self.ledger.log(row.id, "send", outcome, endpoint, row, reason)
        timeout = self.services.config().bsg.timeout
        if kind == Kind.FATAL:
            self.store.update_message(row.id, state=MessageState.FAILED, reason=reason, error_code=code,
                                      uncertain_at=None, uncertain_since=None)
            self.ledger.emit_final({"id": row.id}, MessageState.FAILED, f"error {code}" if code else "rejected")
            return True
        if kind == Kind.OPERATOR:
            # the account needs attention (key, funds, tariff): keep the message, retry slowly;
            # not the message's fault, so the attempt is given back
            self.store.update_message(row.id, state=MessageState.QUEUED, reason=reason + " (waiting for the operator)",
                                      error_code=code, next_attempt_at=self.ts() + policy.OPERATOR_RETRY,
                                      **self.recovery.uncertain(row, uncertain), attempts=max(row.attempts - 1, 0))
            if code in policy.OPERATOR_ALERT_CODES:
                self.incidents.operator_alert(code, result.description, account)
            return False
        if endpoint_failure(result):
            # the endpoint's fault, not the message's: the attempt is given back; health
            # routing moves traffic away, and a certain miss is rerouted at once
            tripped = not self.accounts.router.get(endpoint).healthy
            delay = 0.0 if tripped and not uncertain else policy.backoff(row.attempts)
            if uncertain:
                # BSG may still be working on the request that timed out: give it time to
                # record it before anyone looks the reference up
                delay = max(delay, 2 * timeout)
            self.store.update_message(row.id, state=MessageState.QUEUED, reason=reason, error_code=code,
                                      **self.recovery.uncertain(row, uncertain), next_attempt_at=self.ts() + delay,
                                      attempts=max(row.attempts - 1, 0))
            return False
        answered = self.store.count_attempts(row.id, "send", "retry")     # this one included
        if answered >= policy.MAX_ATTEMPTS:
            self.store.update_message(row.id, state=MessageState.FAILED, error_code=code, uncertain_at=None,
                                      uncertain_since=None,
                                      reason=f"gave up after {answered} retryable errors; last: {reason}")
            self.ledger.emit_final({"id": row.id}, MessageState.FAILED, f"error {code}" if code else "gave up")
            return True
        self.store.update_message(row.id, state=MessageState.QUEUED, reason=reason, error_code=code,
                                  **self.recovery.uncertain(row, uncertain), next_attempt_at=self.ts() + max(
                                      policy.backoff(answered), 2 * timeout if uncertain else 0.0))
        return False


def viber_item(row: OutboxRow) -> ViberItem:
    """The Viber request item of a message; with BSG's SMS alt_route for provider omni."""
    alt = omni.provider_alt_route(row)
    return ViberItem(row.msisdn, row.text or "", row.sender or "", row.reference,
                     alt_sms_originator=row.sms_sender if alt else None,
                     alt_sms_text=row.sms_text if alt else None)
