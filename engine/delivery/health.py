"""Endpoint health as the dispatcher sees it (the circuit breaker itself is
engine/delivery/endpoints.py): a change of health becomes a `provider.up/down` event and an
admin incident; tripped endpoints are probed; the balance is read and watched; delivery
report latencies feed `slow_receipts`; incidents left open by the last run are re-checked.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from herald.engine.bsg.client import BsgError, BsgUnavailable
from herald.engine.delivery import policy
from herald.engine.delivery.accounts import Accounts
from herald.engine.delivery.endpoints import Endpoint, Router
from herald.engine.delivery.incidents import Incidents
from herald.engine.delivery.services import DeliveryServices
from herald.engine.events import Event

log = logging.getLogger("herald.dispatch")


class Health:
    def __init__(self, services: DeliveryServices, accounts: Accounts, incidents: Incidents):
        self.services = services
        self.accounts = accounts
        self.incidents = incidents
        self._latencies: list[tuple[str, float]] = []   # (endpoint, seconds) from delivery reports

    @property
    def router(self) -> Router:
        """The accounts' router (made at start, before any worker runs)."""
        return self.accounts.router

    async def changed(self, endpoint: Endpoint, change: str | None) -> None:
        """`change` is what the breaker said ("down", "up" or None: nothing changed)."""
        if change is None:
            return
        if change == "down":
            nxt = self.router.pick()
            log.error("BSG endpoint %s is down: %s; %s", endpoint.name, endpoint.reason,
                      f"traffic goes to {nxt.name}" if nxt else "messages wait queued until one recovers")
        else:
            log.warning("BSG endpoint %s is healthy again; it takes traffic back", endpoint.name)
        await self.services.db(self._provider_event, endpoint, change)
        self.services.events_wake.set()
        self.services.dispatch_wake.set()

    def _provider_event(self, endpoint: Endpoint, change: str) -> None:
        now = self.services.now()
        store, alerter = self.services.store, self.services.alerter
        fallback = self.router.pick()
        data = {"provider": {"name": endpoint.name, "url": endpoint.client.url, "status": change,
                             "error": endpoint.reason, "since": now.isoformat(),
                             "active": fallback.name if fallback else None}}
        site = next(iter(self.services.config().sites))
        event = Event(f"provider.{change}", data, site, f"provider:{endpoint.name}:{change}:{now.timestamp():.3f}",
                      now)
        with store.transaction():
            store.add_events([event], "herald")
            if alerter is None:
                return
            key = f"provider.down:{endpoint.name}"
            if change == "down":
                meanwhile = (f"Meanwhile new messages go through {fallback.name} ({fallback.client.url})."
                             if fallback else "No endpoint is healthy: messages wait queued; nothing is lost, "
                                              "and they go as soon as one recovers.")
                # fresh: the endpoint took traffic until now, so an incident of that key
                # still open in the store is stale and must not swallow this mail
                alerter.open(key, f"BSG endpoint {endpoint.name} is unreachable",
                             f"Herald cannot reach BSG endpoint {endpoint.name} ({endpoint.client.url}): "
                             f"{endpoint.reason}.\n\n{meanwhile}\n\nHerald probes it every "
                             f"{endpoint.policy.probe:g} s and sends a second e-mail when it is back.\n"
                             "What to do: check BSG's status and this server's network.", fresh=True)
            else:
                alerter.resolve(key, f"BSG endpoint {endpoint.name} is reachable again",
                                f"BSG endpoint {endpoint.name} ({endpoint.client.url}) answered a probe; "
                                "traffic goes through it again.")

    def carry_over_incidents(self) -> None:
        """At start (database thread): an incident a previous run left open is re-checked,
        never trusted (docs/alerts.md, "Across a restart").

        - provider.down:E — E starts tripped with its probe due at once: a healthy answer
          resolves the incident (recovery mail), a failure keeps it open;
        - bsg.error.N:ACCOUNT — kept (only a send can tell): the account's first accepted
          message resolves it, as every account is suspect after a start;
        - balance.low — the balance read at start re-checks it;
        - an incident of an endpoint or account no longer configured is resolved now."""
        alerter = self.services.alerter
        if alerter is None:
            return
        now = self.services.ts()
        for incident in alerter.carry_over():
            key = incident["key"]
            kind, _, name = key.partition(":")
            if kind == "provider.down" and name in self.router.by_name:
                since = incident["since"]
                self.router.by_name[name].carried_over(
                    since.timestamp(), now, f"down when Herald stopped (incident open since {since.isoformat()}); "
                                            "probing it again")
                log.info("BSG endpoint %s was down when Herald stopped: no traffic until a probe finds it healthy",
                         name)
            elif (kind == "provider.down" and name not in self.router.by_name) or \
                    (kind.startswith("bsg.error.") and name not in self.incidents.operator_open):
                alerter.resolve(key, f"{incident['subject']}: no longer configured",
                                f"{name} is no longer in the configuration, so Herald no longer uses it "
                                "and this incident is closed.")

    async def probe_loop(self) -> None:
        while True:
            for endpoint in self.router.endpoints:
                if endpoint.probe_due(self.services.ts()):
                    try:
                        await endpoint.client.balance()
                        ok, detail = True, ""
                    except BsgUnavailable as exc:
                        ok, detail = False, str(exc)
                    except BsgError as exc:       # it answered (an account error is not an outage)
                        ok, detail = exc.http_status is not None and exc.http_status < 500, str(exc)
                    await self.accounts.flush_exchanges()
                    await self.changed(endpoint, endpoint.probe_result(ok, self.services.ts(), detail))
            nxt = self.router.next_probe()
            wait = 30.0 if nxt is None else nxt - self.services.ts()
            await trio.sleep(min(max(wait, 0.05), 1.0))    # ≤ 1 s: the clock may be virtual

    # ---- delivery report latencies (bsg.failover.slow_receipts) ----
    def receipt_latency(self, endpoint: str, seconds: float) -> None:
        """A final report came `seconds` after the send (database thread: counted later)."""
        self._latencies.append((endpoint, seconds))

    async def apply_latencies(self) -> None:
        pending, self._latencies = self._latencies, []
        for name, seconds in pending:
            endpoint = self.router.by_name.get(name)
            if endpoint is not None:
                await self.changed(endpoint, endpoint.record_receipt(seconds, self.services.ts()))

    # ---- the balance ----
    async def balance_loop(self) -> None:
        every = self.services.config().bsg.balance_every     # as at start (a reload does not change it)
        next_read = self.services.ts()
        while True:
            if self.services.ts() >= next_read:
                endpoint = self.router.pick()
                # with no endpoint healthy (e.g. at start, while one carried over from the
                # last run is re-probed) the read is tried again soon, not after balance_every:
                # it is what re-checks a balance.low incident carried over a restart
                next_read = self.services.ts() + (every if endpoint is not None else policy.BALANCE_RETRY)
                if endpoint is not None:
                    try:
                        balance = await endpoint.client.balance()
                    except BsgError as exc:
                        log.info("balance of %s not read: %s", endpoint.name, exc)
                    else:
                        await self.services.db(self._balance_event, endpoint.name, balance)
                        self.services.events_wake.set()
                    await self.accounts.flush_exchanges()
            await trio.sleep(min(max(next_read - self.services.ts(), 0.05), 5.0))

    def _balance_event(self, endpoint: str, balance: Any) -> None:
        now = self.services.now()
        store, alerter = self.services.store, self.services.alerter
        threshold = self.services.config().bsg.balance_alert
        data = {"provider": {"name": endpoint, "balance": str(balance.amount), "currency": balance.currency,
                             "threshold": threshold, "low": threshold is not None and balance.amount < threshold}}
        site = next(iter(self.services.config().sites))
        event = Event("provider.balance", data, site, f"provider:{endpoint}:balance:{now.timestamp():.3f}", now)
        with store.transaction():
            store.add_events([event], "herald")
            if alerter is None:
                return
            if threshold is None:      # bsg.balance_alert was removed (reload or restart): not watched
                alerter.resolve("balance.low", "BSG balance is no longer watched",
                                "bsg.balance_alert is no longer set, so Herald no longer alerts on the "
                                "balance and this incident is closed.")
                return
            amount = f"{balance.amount} {balance.currency}".strip()
            if balance.amount < threshold:
                alerter.open("balance.low", f"BSG balance is low: {amount}",
                             f"The BSG account balance ({endpoint}) is {amount}, under the alert "
                             f"threshold of {threshold:g} (bsg.balance_alert).\n\nWhat to do: top up the "
                             "account; at zero BSG refuses messages (error 8) and they wait queued.")
            else:
                alerter.resolve("balance.low", f"BSG balance is back over {threshold:g}",
                                f"The BSG account balance ({endpoint}) is {amount}.")
