"""Admin incidents about sending (docs/alerts.md), besides an endpoint being down
(engine/delivery/health.py):

- `bsg.error.N:ACCOUNT` — a BSG account refuses to send for a reason the admin must fix
  (errors 1, 2, 6, 8, 9): one incident per code and account, resolved (and its held
  messages released) by the account's next accepted message;
- `uncertain.failover:ENDPOINT` — messages whose outcome at ENDPOINT was unknown went
  elsewhere after bsg.uncertain_failover_after and may arrive twice; resolved when
  ENDPOINT takes messages again.

After a restart any account or endpoint may have such an incident open: each is suspect
until its first success checks. Everything here runs in the database thread.
"""

from __future__ import annotations

import logging
from typing import Sequence

from herald.engine.bsg.wire import OPERATOR_HINTS, describe
from herald.engine.delivery import policy
from herald.engine.delivery.endpoints import Endpoint, Router
from herald.engine.delivery.services import DeliveryServices
from herald.engine.store import OutboxRow

log = logging.getLogger("herald.dispatch")


class Incidents:
    def __init__(self, services: DeliveryServices):
        self.services = services
        self.operator_open: set[str] = set()      # accounts that may have a bsg.error incident open
        self.failover_open: set[str] = set()      # endpoints that may have an uncertain.failover one

    def suspect_all(self, router: Router) -> None:
        """At start: every account and endpoint may have an incident left open."""
        sites = self.services.config().sites
        self.failover_open = {e.name for e in router.endpoints}
        self.operator_open = {e.name for e in router.endpoints} | {
            f"{e.name}/{site}" for e in router.endpoints for site, cfg in sites.items() if cfg.api_key is not None}

    # ---- operator errors, per BSG account ----
    def operator_alert(self, code: int, description: str, account: str) -> None:
        """One incident per error code and BSG account (`main`, `backup1`, `main/s2` for a
        site with its own key): one e-mail, however many messages it holds."""
        self.operator_open.add(account)
        alerter = self.services.alerter
        if alerter is None:
            return
        words = describe(code)
        alerter.open(
            f"bsg.error.{code}:{account}", f"BSG ({account}) refuses to send: {words} (error {code})",
            f"BSG account {account} answers error {code} ({words}"
            f"{': ' + description if description and description != words else ''}).\n\n"
            f"What to do: {OPERATOR_HINTS.get(code, 'check the BSG account')}.\n\n"
            "Meanwhile Herald keeps the affected messages queued and retries them every 5 minutes; "
            "nothing is lost. You get one more e-mail when sending works again.")

    def _account_sites(self, account: str) -> list[str]:
        """The sites whose messages go through `account`."""
        if "/" in account:
            return [account.split("/", 1)[1]]
        return [site for site, cfg in self.services.config().sites.items() if cfg.api_key is None]

    def operator_resolved(self, account: str) -> None:
        if account not in self.operator_open:
            return
        self.operator_open.discard(account)
        released = self.services.store.release_held(policy.OPERATOR_ALERT_CODES, self.services.ts(),
                                                    self._account_sites(account))
        if released:
            log.info("BSG %s sends again: %d held message(s) go now", account, released)
        alerter = self.services.alerter
        for code in policy.OPERATOR_ALERT_CODES if alerter is not None else ():
            alerter.resolve(f"bsg.error.{code}:{account}", f"BSG ({account}) sends again",
                            f"BSG account {account} accepted messages again; the queued ones are "
                            "on their way.")

    # ---- messages that went elsewhere and may arrive twice, per endpoint ----
    def failover_alert(self, where: str, target: Endpoint, rows: Sequence[OutboxRow]) -> None:
        self.failover_open.add(where)
        alerter = self.services.alerter
        if alerter is None:
            return
        listed = ", ".join(f"{r.id} ({r.leg_reference})" for r in rows[:20]) + (" …" if len(rows) > 20 else "")
        alerter.open(
            f"uncertain.failover:{where}",
            f"Messages in flight at BSG {where} went through {target.name}: they may arrive twice",
            f"BSG endpoint {where} stopped answering while these messages were in flight, so it may "
            f"have taken them; it has not answered a look-up since. After bsg.uncertain_failover_after "
            f"they were sent through {target.name} ({target.client.url}) and MAY ARRIVE TWICE.\n\n"
            f"Messages (id and BSG reference): {listed}\n\n"
            "More messages moved for the same reason while this incident is open are counted, not mailed. "
            f"You get one more e-mail when {where} takes messages again.\n"
            "What to do: nothing, unless duplicates are worse than delay for you: then set "
            "bsg.uncertain_failover_after (or sites.<id>.uncertain_failover_after) to `never` "
            "— such messages then wait for their endpoint however long it is down.")

    def failover_resolved(self, endpoint: str) -> None:
        if endpoint not in self.failover_open:
            return
        self.failover_open.discard(endpoint)
        if self.services.alerter is not None:
            self.services.alerter.resolve(
                f"uncertain.failover:{endpoint}", f"BSG {endpoint} takes messages again",
                f"BSG endpoint {endpoint} accepted messages again; messages in flight there "
                "no longer need to go elsewhere.")
