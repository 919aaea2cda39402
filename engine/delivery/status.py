"""Delivery statuses: polls and delivery reports (BSG callbacks) bring a sent message to
its final state — exactly once, with one `message.delivered` / `message.failed` event.

Polls follow `policy.POLL_SCHEDULE` after the send (with delivery reports on, only as the
fallback for reports that got lost), paced to `policy.POLL_SHARE` of the BSG rate, and
yield to sends. A report that comes before its send is recorded is kept and applied when
it is. What a Viber status means for an omni message is decided in engine/delivery/omni.py.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import trio

from herald.engine.bsg.client import BsgError, Status, parse_status
from herald.engine.bsg.pacing import Pacer
from herald.engine.config import Config
from herald.engine.delivery import omni, policy
from herald.engine.delivery.accounts import Accounts
from herald.engine.delivery.health import Health
from herald.engine.delivery.ledger import Ledger
from herald.engine.delivery.omni import Step
from herald.engine.delivery.services import DeliveryServices
from herald.engine.runtime import Pulse
from herald.engine.store import MessageState, OutboxRow

log = logging.getLogger("herald.dispatch")

_WAITING = (MessageState.QUEUED, MessageState.DEFERRED, MessageState.SENDING)   # not sent yet


class Statuses:
    def __init__(self, services: DeliveryServices, accounts: Accounts, health: Health, ledger: Ledger,
                 poll_wake: Pulse, busy: Callable[[], bool]):
        self.services = services
        self.store = services.store
        self.accounts = accounts
        self.health = health
        self.ledger = ledger
        self.poll_wake = poll_wake
        self._busy = busy                 # a send round is on: polls wait
        self._pace = Pacer(policy.poll_rate(services.config().bsg.rate), catch_up=0.0)

    def apply_config(self, config: Config) -> None:
        self._pace.set_rate(policy.poll_rate(config.bsg.rate))

    def sent_fields(self, row: OutboxRow, now: float) -> dict[str, Any]:
        """Columns of a message that BSG just took (the current leg), its first poll due."""
        first = policy.RECEIPT_FALLBACK_POLL if self.services.config().bsg.callbacks else policy.POLL_SCHEDULE[0]
        fields: dict[str, Any] = dict(state=MessageState.SENT, reason="", sent_at=now, error_code=None,
                                      uncertain_at=None, uncertain_since=None, next_poll_at=now + first)
        deadline = omni.fallback_at(row, now)
        if deadline is not None:
            fields["fallback_at"] = deadline
            fields["next_poll_at"] = min(fields["next_poll_at"], deadline)
        return fields

    # ---- polls ----
    async def poll_loop(self) -> None:
        limiter = trio.CapacityLimiter(policy.POLL_CONCURRENCY)
        while True:
            await self.health.apply_latencies()
            if self._busy():
                await trio.sleep(0.1)             # a send round is on: statuses can wait
                continue
            due = await self.services.db(self.store.due_polls, self.services.now(), 50)
            if due:
                statuses: dict[int, Status | None] = {}
                async with trio.open_nursery() as nursery:
                    for item in due:
                        nursery.start_soon(self._fetch_status, item, statuses, limiter)
                if await self.services.db(self._apply_statuses, due, statuses):
                    self.services.events_wake.set()
                self.services.dispatch_wake.set()   # an omni fallback may be due now
                await self.accounts.flush_exchanges()
                continue
            nxt = await self.services.db(self.store.next_poll_due)
            wait = 30.0 if nxt is None else (nxt - self.services.now()).total_seconds()
            await trio.sleep(0.2)                 # let a burst of sends land before the first poll
            await self.poll_wake.wait(min(wait, 30.0))

    async def _fetch_status(self, item: Mapping[str, Any], out: dict, limiter: trio.CapacityLimiter) -> None:
        """Ask BSG for one message's status (None: not known yet, or BSG unreachable)."""
        async with limiter:
            await self._pace.wait()
            client = self.accounts.client_for(self.accounts.router.get(item.get("endpoint")), item.get("site"))
            try:
                if omni.leg_of(item) == "sms":
                    own = item.get("omni") == "engine" and item.get("sms_reference")
                    out[item["id"]] = await client.sms_status(item["sms_reference"] if own else item["reference"])
                else:
                    out[item["id"]] = await client.viber_status(item["reference"])
            except BsgError as exc:
                log.debug("status of %s: %s", item["reference"], exc)
                out[item["id"]] = None

    def _apply_statuses(self, items: Sequence[Mapping[str, Any]], statuses: dict) -> bool:
        """Record a round of polls in one transaction; True when some message became final."""
        with self.store.transaction():
            return any([self.apply_status(item, statuses.get(item["id"])) for item in items])

    def apply_status(self, item: Mapping[str, Any], status: Status | None) -> bool:
        """A poll's (or a final report's) status for a sent message. True when the message
        reached a final state (an event was journaled)."""
        now = self.services.ts()
        step = omni.transition(item, status, now)
        if step.step == Step.FALL_BACK:
            return self._fall_back(item, step.why, status)
        sent_at = item["sent_at"] or now
        if status is None or not omni.settled(status):
            age = now - sent_at
            # a provider omni's SMS fallback may start near the Viber validity's end
            limit = policy.GIVE_UP_POLLING_VIBER if omni.leg_of(item) == "viber" and item.get("channel") == "viber" \
                else policy.GIVE_UP_POLLING
            if age > limit.total_seconds():
                hours = f"{limit.total_seconds() / 3600:g} h"
                self.store.update_message(item["id"], state=MessageState.FAILED,
                                          reason=f"no final status from BSG within {hours}")
                self.ledger.log(item["id"], "status", "failed", item.get("endpoint"), item,
                                f"no final status within {hours}")
                self.ledger.emit_final(item, MessageState.FAILED, "no final status")
                return True
            schedule = policy.POLL_SCHEDULE
            done = sum(1 for s in schedule if s <= age)
            delay = schedule[done] - age if done < len(schedule) else 3600
            next_poll = omni.next_poll(item, now + max(delay, 1), now)
            self.store.update_message(item["id"], bsg_status=status.status if status else None,
                                      next_poll_at=next_poll)
            return False
        delivered = omni.delivered(status)
        fields: dict[str, Any] = dict(bsg_status=status.status, next_poll_at=None, **omni.sms_leg_id(item, status))
        if status.price is not None:
            fields["price"] = status.price
        state = MessageState.DELIVERED if delivered else MessageState.FAILED
        reason = "" if delivered else f"BSG status: {status.status}"
        self.store.update_message(item["id"], state=state, reason=reason, **fields)
        self.ledger.log(item["id"], "status", status.status, item.get("endpoint"), item, "final status")
        self.ledger.emit_final(item, state, status.status)
        return True

    def _fall_back(self, item: Mapping[str, Any], why: str, status: Status | None) -> bool:
        """Herald's omni: Viber did not make it, so the SMS leg is queued now."""
        row = self.store.message_row(item["id"])
        if not omni.can_fall_back(row):
            return False
        self.store.update_message(item["id"], **omni.fallback_fields(row, status, self.services.ts(), why))
        self.ledger.log(item["id"], "fallback", "sms", row["endpoint"], {**row, "leg": "viber"},
                        f"{why}; the SMS (reference {row['sms_reference']}) goes now")
        return False

    # ---- delivery reports (BSG callbacks; in the database thread) ----
    def apply_receipts(self, bodies: Sequence[dict], endpoint: str | None = None) -> tuple[dict, bool]:
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
                row = self.store.message_for_receipt(status.reference, status.id, endpoint)
                nxt = omni.transition(row, status, self.services.ts()) if row is not None else None
                if row is None:
                    counts["unknown"] += 1
                    log.info("delivery report for an unknown message (reference %r, id %r): ignored",
                             status.reference, status.id)
                    if not status.reference and status.id:
                        self.store.add_receipt(None, status.id, status.status, body)
                elif nxt.step in omni.LATE_VIBER:
                    counts["applied"] += 1
                    final |= self._late_viber(row, status, nxt)
                elif row["state"] in _WAITING:
                    counts["pending"] += 1
                    self.store.add_receipt(status.reference or None, status.id, status.status, body)
                else:
                    counts["applied"] += 1
                    final |= self._apply_receipt(row, status)
        return counts, final

    def apply_pending_receipts(self, message_id: int, reference: str, bsg_id: str | None) -> bool:
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

    def _apply_receipt(self, row: Mapping[str, Any], status: Status) -> bool:
        """One report for a sent message: a final one ends it exactly like a final poll
        (one event); a pending one only records BSG's status. Nothing changes for a
        message already final, so a repeated report is harmless."""
        if row["state"] != MessageState.SENT:
            return False
        if omni.settled(status):
            if row.get("sent_at") and row.get("endpoint"):
                self.health.receipt_latency(row["endpoint"], self.services.ts() - row["sent_at"])
            self.ledger.log(row["id"], "receipt", status.status, row.get("endpoint"), row, "delivery report")
            return self.apply_status(row, status)
        # not final yet (or a Viber failure whose fallback SMS is still on its way):
        # polling, later reports, or the fallback's report will finish it
        self.store.update_message(row["id"], bsg_status=status.status)
        return False

    def _late_viber(self, row: Mapping[str, Any], status: Status, nxt: omni.Next) -> bool:
        """A report on the Viber leg of a message that already fell back to SMS; True when
        it made the message final (delivered after all)."""
        step = nxt.step
        fields, detail = omni.LATE_VIBER[step]
        reason = {"reason": nxt.why} if fields.get("state") else {}
        self.store.update_message(row["id"], viber_status=status.status, **fields, **reason)
        self.ledger.log(row["id"], "receipt", status.status, row.get("endpoint"), {**row, "leg": "viber"}, detail)
        if step == Step.DOUBLE:
            log.info("message %s: Viber delivered after its SMS fallback went out (counted as a double delivery)",
                     row["reference"])
        if fields.get("state") == MessageState.DELIVERED:
            self.ledger.emit_final(row, MessageState.DELIVERED, status.status)
            return True
        return False
