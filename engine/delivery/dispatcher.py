"""The dispatcher: due messages out to BSG, answers and statuses back into the outbox.

Guarantees (docs/delivery.md):

- Exactly once. Each message is claimed (`sending`, attempt counted) and its endpoint
  recorded in committed transactions before its BSG call, and it carries the BSG
  reference it got when it was written. After a crash a `sending` message is resolved
  by asking that endpoint for the reference — sent if it has it, queued again if not.
- One endpoint per message. When an attempt's outcome is unknown (a timeout or a
  dropped connection after the request went out, HTTP 5xx), the message remembers the
  endpoint (`uncertain_at`, and since when); before it may go anywhere else, the
  reference is looked up there. A refused connection is certain: nothing was sent, the
  message moves on at once. Only when that endpoint has not answered a look-up for
  `bsg.uncertain_failover_after` (default 10 min; per site; `never` allowed) does the
  message go to the next endpoint — its trace and an alert say it may arrive twice.
- Look-ups (recovery after a crash, 23/43 answers, uncertain messages) have their own
  budget per BSG account (`bsg.lookup_rate`, `bsg.lookup_concurrency`), so thousands of
  `sending` rows left by crashes resolve in seconds, not at the send rate cap.
- Health routing. New traffic goes to the first healthy endpoint in priority order
  (engine/delivery/endpoints.py); a tripped endpoint is probed and gets traffic back when well.
  With every endpoint down, messages wait queued — without spending attempts.
- Omni owned by Herald (`omni: engine`): Viber first, without BSG's alt_route; the SMS
  (the template's SMS variant, its own reference) goes when Viber fails finally or has
  no final status by the deadline (engine/delivery/omni.py).

This module only wires the workers together, one module per job:

    accounts.py   the BSG clients (per endpoint, per site account) and their exchange trace
    sending.py    claim, send, record results, after a failure
    recovery.py   unknown outcomes: crash recovery, look-ups before going elsewhere, failover
    status.py     polls and delivery reports to a final state
    omni.py       the Viber→SMS fallback decisions
    health.py     endpoint health events, probes, the balance; incidents.py: account incidents
    ledger.py     the attempts trace and the final events
    policy.py     the numbers (attempts, batches, poll schedule, back-off)
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Sequence

import trio

from herald.engine.bsg.client import BsgClient
from herald.engine.config import Config
from herald.engine.delivery.accounts import Accounts
from herald.engine.delivery.endpoints import Endpoint, Router
from herald.engine.delivery.health import Health
from herald.engine.delivery.incidents import Incidents
from herald.engine.delivery.ledger import Ledger
from herald.engine.delivery.recovery import Recovery
from herald.engine.delivery.sending import Sender
from herald.engine.delivery.services import DeliveryServices
from herald.engine.delivery.status import Statuses
from herald.engine.runtime import Pulse
from herald.engine.store import MessageState

log = logging.getLogger("herald.dispatch")

STRANDED = 10_000         # `sending` messages read at start for recovery


class Dispatcher:
    def __init__(self, services: DeliveryServices):
        self.services = services
        self.poll_wake = Pulse()
        self.accounts = Accounts(services)
        self.incidents = Incidents(services)
        self.ledger = Ledger(services)
        self.health = Health(services, self.accounts, self.incidents)
        self.statuses = Statuses(services, self.accounts, self.health, self.ledger, self.poll_wake,
                                 busy=lambda: self.busy)
        self.recovery = Recovery(services, self.accounts, self.health, self.ledger, self.incidents, self.statuses)
        self.sender = Sender(services, self.accounts, self.health, self.ledger, self.incidents, self.recovery,
                             self.statuses, self.poll_wake)

    @property
    def router(self) -> Router | None:
        return self.accounts.router

    @property
    def busy(self) -> bool:
        """A send round is on (the daemon lets it finish before it stops)."""
        return self.sender.busy

    @property
    def client(self) -> BsgClient | None:
        """The client new traffic would use (the main one when every endpoint is down)."""
        if self.router is None:
            return None
        return (self.router.pick() or self.router.endpoints[0]).client

    def client_for(self, endpoint: Endpoint, site: str | None) -> BsgClient:
        """The client for a message of `site` through `endpoint` (its site's own account if it has one)."""
        return self.accounts.client_for(endpoint, site)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        services = self.services
        async with trio.open_nursery() as nursery:
            async with AsyncExitStack() as stack:
                router = await self.accounts.open(stack, nursery)
                self.incidents.suspect_all(router)
                await services.db(self.health.carry_over_incidents)    # before the probe loop starts
                stranded = await services.db(services.store.in_state, MessageState.SENDING, STRANDED)
                # the workers live inside the clients' exit stack: on shutdown they are
                # cancelled and gone before any client closes under them
                async with trio.open_nursery() as workers:
                    workers.start_soon(self.recovery.recover, stranded)
                    workers.start_soon(self.sender.send_loop)
                    workers.start_soon(self.statuses.poll_loop)
                    workers.start_soon(self.health.probe_loop)
                    workers.start_soon(self.health.balance_loop)
                    task_status.started()
                    await trio.sleep_forever()

    def apply_config(self, config: Config) -> None:
        """A reload: the new rate and look-up budget apply to every client at once (callers
        already waiting for a slot included), the new failover policy to every endpoint."""
        self.statuses.apply_config(config)       # the polls' share of the new rate
        if self.router is None:
            return
        self.accounts.apply_config(config)
        log.info("BSG budgets: %g request(s)/s, look-ups %g/s with %d in flight",
                 config.bsg.rate, config.bsg.lookup_rate, config.bsg.lookup_concurrency)

    def apply_receipts(self, bodies: Sequence[dict], endpoint: str | None = None) -> tuple[dict, bool]:
        """Apply delivery reports in one transaction (database thread); see Statuses.apply_receipts."""
        return self.statuses.apply_receipts(bodies, endpoint)
