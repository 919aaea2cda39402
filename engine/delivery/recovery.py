"""Unknown outcomes: messages that may be at an endpoint although no success came back.

- After a crash, the messages left in `sending` are resolved by their BSG reference at the
  endpoint each went to — in the background, concurrently under the look-up budget
  (`bsg.lookup_rate`, `bsg.lookup_concurrency`), written in batches.
- A message whose last attempt's outcome is unknown (timeout, dropped connection, 5xx)
  remembers the endpoint (`uncertain_at`, since when); before it may go anywhere else its
  reference is looked up there. Only when that endpoint has not answered a look-up for
  `bsg.uncertain_failover_after` does it go to the next one — its trace and an alert say
  it may arrive twice.
- A 23/43 answer (BSG already has the reference) is looked up the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from datetime import datetime, timezone
from typing import Any, Sequence

import trio

from herald.engine.bsg.client import BsgError, BsgUnavailable, Status
from herald.engine.delivery import policy
from herald.engine.delivery.accounts import Accounts
from herald.engine.delivery.endpoints import Endpoint
from herald.engine.delivery.health import Health
from herald.engine.delivery.incidents import Incidents
from herald.engine.delivery.ledger import Ledger
from herald.engine.delivery.services import DeliveryServices
from herald.engine.delivery.status import Statuses
from herald.engine.store import MessageState, OutboxRow

log = logging.getLogger("herald.dispatch")

# A look-up's outcome: (what, row, endpoint name, status or error text), what being
# "unsent" (claimed, never routed), "not found", "found" or "wait".
Outcome = tuple[str, OutboxRow, "str | None", Any]


class Recovery:
    def __init__(self, services: DeliveryServices, accounts: Accounts, health: Health, ledger: Ledger,
                 incidents: Incidents, statuses: Statuses):
        self.services = services
        self.store = services.store
        self.accounts = accounts
        self.health = health
        self.ledger = ledger
        self.incidents = incidents
        self.statuses = statuses

    def ts(self) -> float:
        return self.services.ts()

    async def lookup(self, row: OutboxRow, endpoint: Endpoint) -> Status | None:
        """Is the message's reference at `endpoint`? Under the look-up budget."""
        client = self.accounts.client_for(endpoint, row.site)
        if row.kind == "sms":
            return await client.sms_status(row.leg_reference, lookup=True)
        return await client.viber_status(row.leg_reference, lookup=True)

    # ---- after a crash ----
    async def recover(self, rows: Sequence[OutboxRow]) -> None:
        """Resolve the messages a crash left in `sending`, by reference at the endpoint each
        went to — in the background, so the API and new traffic do not wait. Look-ups run
        concurrently under the look-up budget (not the send rate cap: 2,000 of them take
        seconds, not hours); outcomes are written in batches (a crash before a write only
        repeats its look-ups). (The rows were fetched before the send loop started, and
        nothing else touches `sending` rows.)"""
        if not rows:
            return
        router = self.accounts.router
        log.info("resolving %d message(s) left in `sending` by their BSG reference", len(rows))
        started = trio.current_time()
        outcomes: list[Outcome] = [("unsent", row, None, None) for row in rows if row.endpoint is None]
        queues: dict[tuple[str, str], list[OutboxRow]] = {}
        for row in rows:
            if row.endpoint is not None:       # (None: claimed, never routed: no call was made)
                endpoint = router.get(row.endpoint)
                queues.setdefault((endpoint.name, self.accounts.client_for(endpoint, row.site).name), []).append(row)

        written = [trio.current_time()]

        async def record(outcome: Outcome) -> None:
            outcomes.append(outcome)
            # a full batch, or a slow endpoint's stragglers after a moment: a message found
            # or free to go should not wait for 199 others
            if len(outcomes) >= policy.RECOVERY_WRITE or \
                    trio.current_time() - written[0] >= policy.RECOVERY_WRITE_EVERY:
                written[0] = trio.current_time()
                await self._write_recovered(outcomes)

        async def worker(endpoint: Endpoint, pending: list[OutboxRow]) -> None:
            while pending:
                row = pending.pop()
                await record(await self._recover_one(row, endpoint))

        async with trio.open_nursery() as nursery:
            for (name, _), pending in queues.items():
                pending.reverse()              # pop() from the end: oldest first
                for _ in range(min(len(pending), self.services.config().bsg.lookup_concurrency)):
                    nursery.start_soon(worker, router.get(name), pending)
        await self._write_recovered(outcomes)
        log.info("resolved %d message(s) left in `sending` in %.1f s", len(rows), trio.current_time() - started)
        self.services.dispatch_wake.set()

    async def _recover_one(self, row: OutboxRow, endpoint: Endpoint) -> Outcome:
        """One look-up: (outcome, row, endpoint name, status or error text)."""
        if not endpoint.healthy:           # tripped meanwhile: it waits for the probe
            return ("wait", row, endpoint.name, "")
        try:
            status = await self.lookup(row, endpoint)
        except BsgError as exc:
            # no answer counts towards the endpoint's health: when it is down, the rest
            # wait for its probe instead of each timing out in turn
            failed = isinstance(exc, BsgUnavailable) or (exc.http_status or 0) >= 500
            await self.health.changed(endpoint, endpoint.record(not failed, self.ts(), str(exc)))
            return ("wait", row, endpoint.name, f"in flight at restart: {exc}")
        endpoint.record(True, self.ts())
        return ("found", row, endpoint.name, status) if status is not None else ("not found", row, endpoint.name, None)

    async def _write_recovered(self, outcomes: list[Outcome]) -> None:
        batch, outcomes[:] = list(outcomes), []
        if batch and await self.services.db(self._apply_recovered, batch):
            self.services.events_wake.set()
        await self.accounts.flush_exchanges()
        self.services.dispatch_wake.set()        # messages not found go now

    def _apply_recovered(self, outcomes: Sequence[Outcome]) -> bool:
        """Record a batch of recovery outcomes in one transaction; True when a message
        became final (an early delivery report)."""
        final = False
        with self.store.transaction():
            for what, row, endpoint, detail in outcomes:
                if what in ("unsent", "not found"):
                    self._resolved_unsent(row, endpoint)
                elif what == "found":
                    final |= self.mark_sent_from_status(row, detail, endpoint)
                else:
                    self.wait_for_lookup(row, endpoint, detail)
        return final

    def _resolved_unsent(self, row: OutboxRow, endpoint: str | None) -> None:
        with self.store.transaction():
            self.store.update_message(row.id, state=MessageState.QUEUED, reason="", next_attempt_at=self.ts(),
                                      attempts=max(row.attempts - 1, 0), uncertain_at=None, uncertain_since=None)
            self.ledger.log(row.id, "lookup", "not found" if endpoint else "not sent", endpoint, row,
                            "in flight at restart: " + (f"{endpoint} does not have it; it goes now" if endpoint
                                                        else "claimed but never sent; it goes now"))

    def mark_sent_from_status(self, row: OutboxRow, status: Status, endpoint: str) -> bool:
        """BSG already had the reference: the message is sent there. True when an early
        delivery report made it final."""
        now = self.ts()
        with self.store.transaction():
            fields = self.statuses.sent_fields(row, now)
            fields.update(reason=f"{endpoint} already had this reference", next_poll_at=now)
            self.store.update_message(row.id, bsg_id=status.id, bsg_status=status.status, endpoint=endpoint,
                                      price=status.price, currency=status.currency, **fields)
            self.ledger.log(row.id, "lookup", "found", endpoint, row, f"BSG id {status.id}, status {status.status}")
            return self.statuses.apply_pending_receipts(row.id, row.leg_reference, status.id)

    # ---- before sending elsewhere ----
    async def settle_uncertain(self, rows: Sequence[OutboxRow], target: Endpoint) -> list[OutboxRow]:
        """Messages whose last attempt may have reached another endpoint: look each up
        there first. Found → it was sent there (recorded); not found → free to go to
        `target`; no answer → it waits (sending it elsewhere could send it twice) — until
        `bsg.uncertain_failover_after` has passed: then it goes to `target` anyway, and
        its trace and an alert say it may arrive twice."""
        free: list[OutboxRow] = []
        moved: list[OutboxRow] = []
        db = self.services.db

        async def settle(row: OutboxRow) -> None:
            where = self.accounts.router.get(row.uncertain_at)
            error = ""
            if where.healthy:
                try:
                    status = await self.lookup(row, where)
                except BsgError as exc:
                    error = str(exc)
                else:
                    if status is None:
                        await db(self.ledger.log, row.id, "lookup", "not found", where.name, row,
                                 f"{where.name} does not have it: sending through {target.name}")
                        free.append(dataclasses.replace(row, uncertain_at=None, uncertain_since=None))
                    elif await db(self.mark_sent_from_status, row, status, where.name):
                        self.services.events_wake.set()
                    return
            if self.ts() >= self._failover_deadline(row):
                moved.append(row)
            else:
                # no use asking a tripped endpoint (error ""): wait for its probe to succeed
                await db(self.wait_for_lookup, row, where.name, error)

        async with trio.open_nursery() as nursery:
            for row in rows:
                nursery.start_soon(settle, row)
        if moved:
            await db(self._fail_over, moved, target)
            free += [dataclasses.replace(row, uncertain_at=None, uncertain_since=None) for row in moved]
        return free

    def failover_after(self, site: str | None) -> float:
        """Seconds an unknown outcome waits for its endpoint (math.inf: never): the
        site's `uncertain_failover_after`, else bsg's."""
        config = self.services.config()
        own = config.sites[site].uncertain_failover_after if site in config.sites else None
        return config.bsg.uncertain_failover_after if own is None else own

    def _failover_deadline(self, row: OutboxRow) -> float:
        """When a message uncertain at an endpoint may go to the next one (math.inf: never)."""
        return (row.uncertain_since or self.ts()) + self.failover_after(row.site)

    def uncertain(self, row: OutboxRow, where: str | None) -> dict[str, Any]:
        """The columns saying the message may be at `where` (None: nowhere), and since
        when — kept while it stays uncertain at the same endpoint."""
        if where is None:
            return {"uncertain_at": None, "uncertain_since": None}
        since = row.uncertain_since if row.uncertain_at == where and row.uncertain_since else self.ts()
        return {"uncertain_at": where, "uncertain_since": since}

    def _fail_over(self, rows: Sequence[OutboxRow], target: Endpoint) -> None:
        """Messages whose endpoint has not answered a look-up for uncertain_failover_after
        go to `target` now: their trace says they may arrive twice, and one alert per
        endpoint tells the admins (more messages while it is open are only counted)."""
        by_endpoint: dict[str, list[OutboxRow]] = {}
        with self.store.transaction():
            for row in rows:
                waited = _minutes(self.ts() - (row.uncertain_since or self.ts()))
                self.ledger.log(row.id, "failover", "may arrive twice", row.uncertain_at, row,
                                f"its outcome at {row.uncertain_at} has been unknown for {waited} "
                                f"(bsg.uncertain_failover_after): sending through {target.name}; "
                                f"it may arrive twice")
                by_endpoint.setdefault(row.uncertain_at, []).append(row)
            for where, moved in by_endpoint.items():
                log.warning("%d message(s) with an unknown outcome at %s go through %s after %s: "
                            "they may arrive twice", len(moved), where, target.name,
                            _minutes(self.failover_after(moved[0].site)))
                self.incidents.failover_alert(where, target, moved)

    def wait_for_lookup(self, row: OutboxRow, where: str, error: str) -> None:
        """The message may be at `where`, which cannot tell yet: it waits (its next look
        when `where` is probed healthy, or after a back-off when it answered badly)."""
        endpoint = self.accounts.router.get(where)
        if error:
            wake = self.ts() + max(policy.backoff(max(row.attempts, 1)), self.services.config().bsg.failover.probe)
        else:
            wake = max(endpoint.probe_at or 0.0, self.ts() + 1.0)
        uncertain = self.uncertain(row, where)
        after = self.failover_after(row.site)
        deadline = uncertain["uncertain_since"] + after
        if deadline < wake:
            wake = max(deadline, self.ts() + 1.0)     # it may go elsewhere then: be there on time
        then = ("for as long as that takes (bsg.uncertain_failover_after: never)" if after == math.inf else
                f"until {_iso(deadline)}; then it goes to the next endpoint and may arrive twice "
                "(bsg.uncertain_failover_after)")
        with self.store.transaction():
            self.store.update_message(
                row.id, state=MessageState.QUEUED, attempts=max(row.attempts - 1, 0), next_attempt_at=wake,
                **uncertain,
                reason=f"the last attempt's outcome at {where} is unknown; waiting for {where} to answer "
                       f"a lookup before sending anywhere else (so it is never sent twice) {then}")
            if error:
                self.ledger.log(row.id, "lookup", "no answer", where, row, error)


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):      # a wait longer than a datetime holds
        return "the end of time"


def _minutes(seconds: float) -> str:
    """A wait for people: 10 min, 90 s, never."""
    if seconds == math.inf:
        return "never"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:.0f} s"
