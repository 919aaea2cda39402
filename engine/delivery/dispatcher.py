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
  no final status by the deadline. A Viber report after that is recorded on the message
  (a double delivery is counted) and triggers nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Sequence

import trio

from herald.engine.bsg.client import (BsgClient, BsgError, BsgUnavailable, Kind, SendResult, SmsItem, Status, ViberItem,
                        budgets, describe, parse_status)
from herald.engine.delivery.endpoints import Endpoint, Router
from herald.engine.events import Event
from herald.engine.store import OutboxRow

log = logging.getLogger("herald.dispatch")

MAX_ATTEMPTS = 8                 # answered retryable errors (5, 11, 429) before a message fails
BATCH = 500                      # claimed per round; sent as concurrent requests of ≤ 50
REQUEST_SIZE = 50
POLL_CONCURRENCY = 4             # polls yield to sends: latency of new messages comes first
POLL_SHARE = 0.5                 # status polls use at most this share of bsg.rate
POLL_SCHEDULE = (5, 15, 60, 300, 900, 3600)          # seconds after sending, then hourly
# Polling ends when the message can no longer change: its validity (BSG's defaults,
# which Herald does not override: SMS 72 h, Viber 24 h) plus an hour for the last report.
GIVE_UP_POLLING = timedelta(hours=73)
GIVE_UP_POLLING_VIBER = timedelta(hours=25)
# With delivery reports on (bsg.callback_secret), BSG's callback is the main path to a
# final status and polling only the fallback for reports that got lost: the first poll
# waits this long (most messages are final by then, so it costs no request), and the
# schedule continues from there (15 min, then hourly) until GIVE_UP_POLLING.
RECEIPT_FALLBACK_POLL = 600
OPERATOR_ALERT_CODES = (1, 2, 6, 8, 9)               # the admin must act: one alert e-mail each
MIN_WAIT = 0.001                 # seconds: the send loop's shortest pause when nothing could be claimed
BALANCE_RETRY = 5.0              # seconds: a balance read due while no endpoint is healthy waits this long
RECOVERY_WRITE = 200             # recovery outcomes written per transaction (a crash only repeats look-ups)
RECOVERY_WRITE_EVERY = 0.5       # seconds: a smaller batch is written after this long


def backoff(attempts: int, base: float = 5.0, cap: float = 600.0) -> float:
    """Exponential with ±25% jitter, so many messages failing together don't retry together."""
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    return delay * random.uniform(0.75, 1.25)


def _endpoint_failure(result: SendResult) -> bool:
    """The endpoint, not the message, is at fault: no answer, or HTTP 5xx."""
    return result.unavailable or (result.http_status or 0) >= 500


class Dispatcher:
    def __init__(self, daemon):
        self.daemon = daemon
        self.router: Router | None = None
        self.busy = False
        self._exchanges: list = []
        self._latencies: list[tuple[str, float]] = []   # (endpoint, seconds) from delivery reports
        self._next_poll_slot = 0.0
        # per-site BSG accounts (sites.X.api_key): (endpoint, site) → a client with the
        # site's key for that endpoint's URL, made on first use, closed with the others
        self._site_clients: dict[tuple[str, str], BsgClient] = {}
        self._main_keyed: dict[str, object] = {}      # endpoint name → transport, if it uses bsg.api_key
        self._stack: AsyncExitStack | None = None
        from herald.engine.runtime import Pulse
        self.poll_wake = Pulse()

    @property
    def store(self):
        return self.daemon.store

    @property
    def alerter(self):
        return getattr(self.daemon, "alerter", None)

    @property
    def client(self) -> BsgClient | None:
        """The client new traffic would use (the main one when every endpoint is down)."""
        if self.router is None:
            return None
        return (self.router.pick() or self.router.endpoints[0]).client

    def now(self) -> datetime:
        return self.daemon.clock.now()

    def ts(self) -> float:
        return self.now().timestamp()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        bsg = self.daemon.config.bsg
        async with trio.open_nursery() as nursery:
            specs = await self._endpoint_specs(nursery)
            async with AsyncExitStack() as stack:
                endpoints = []
                for name, url, key, transport in specs:
                    client = BsgClient(url, key, **budgets(bsg), timeout=bsg.timeout, transport=transport,
                                       name=name, on_exchange=partial(self._record_exchange, name))
                    await stack.enter_async_context(client)
                    endpoints.append(Endpoint(name, client, bsg.failover))
                    if name == "main" or key is bsg.api_key:
                        self._main_keyed[name] = transport
                self._stack = stack
                self.router = Router(endpoints)
                await self.daemon.db(self._carry_over_incidents)    # before the probe loop starts
                stranded = await self.daemon.db(self.store.in_state, "sending", 10_000)
                # the workers live inside the clients' exit stack: on shutdown they are
                # cancelled and gone before any client closes under them
                async with trio.open_nursery() as workers:
                    workers.start_soon(self._recover, stranded)
                    workers.start_soon(self._send_loop)
                    workers.start_soon(self._poll_loop)
                    workers.start_soon(self._probe_loop)
                    workers.start_soon(self._balance_loop)
                    task_status.started()
                    await trio.sleep_forever()

    async def _endpoint_specs(self, nursery: trio.Nursery) -> list[tuple]:
        """(name, url, key, transport) per endpoint, main first; in sandbox mode the
        built-in fake BSG is the only one."""
        bsg = self.daemon.config.bsg
        transports = getattr(self.daemon, "backup_transports", {}) or {}
        if not bsg.sandbox or self.daemon.bsg_transport is not None:
            specs = [("main", bsg.url, bsg.api_key or "sandbox", self.daemon.bsg_transport)]
            for n, b in enumerate(bsg.backup, 1):
                name = f"backup{n}"
                specs.append((name, b.url, b.api_key if b.api_key is not None else bsg.api_key,
                              transports.get(name)))
            return specs
        from herald.engine.bsg.fake import FakeBSG, serve
        port = await nursery.start(serve, FakeBSG(), "127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}"
        self.daemon.sandbox_url = url
        log.warning("sandbox mode: no BSG api_key is configured, so messages go to the built-in fake BSG "
                    "at %s and nothing is really sent", url)
        return [("main", url, "sandbox", None)]

    def client_for(self, endpoint: Endpoint, site: str | None) -> BsgClient:
        """The client for a message of `site` through `endpoint`: the endpoint's own, or,
        when the site has its own BSG account (sites.X.api_key) and the endpoint uses the
        main key, a client with the site's key for the same URL (a backup with its own
        key keeps it). Made on first use; closed at shutdown with the endpoints' clients."""
        config = self.daemon.config.sites.get(site) if site else None
        if config is None or config.api_key is None or endpoint.name not in self._main_keyed:
            return endpoint.client
        client = self._site_clients.get((endpoint.name, site))
        if client is None:
            bsg = self.daemon.config.bsg
            client = BsgClient(endpoint.client.url, config.api_key, **budgets(bsg), timeout=bsg.timeout,
                               transport=self._main_keyed[endpoint.name], name=f"{endpoint.name}/{site}",
                               on_exchange=partial(self._record_exchange, endpoint.name))
            self._stack.push_async_callback(client.aclose)
            self._site_clients[(endpoint.name, site)] = client
        return client

    def apply_config(self, config) -> None:
        """A reload: the new rate and look-up budget apply to every client at once (callers
        already waiting for a slot included), the new failover policy to every endpoint."""
        if self.router is None:
            return
        clients = [e.client for e in self.router.endpoints] + list(self._site_clients.values())
        for client in clients:
            client.set_rates(**budgets(config.bsg))
        for endpoint in self.router.endpoints:
            endpoint.policy = config.bsg.failover
        log.info("BSG budgets: %g request(s)/s, look-ups %g/s with %d in flight",
                 config.bsg.rate, config.bsg.lookup_rate, config.bsg.lookup_concurrency)

    def _by_account(self, rows: Sequence[OutboxRow]) -> list[list[OutboxRow]]:
        """Rows split by the BSG account they go through (sites with their own key apart)."""
        groups: dict[str, list[OutboxRow]] = {}
        for row in rows:
            site = self.daemon.config.sites.get(row.site)
            groups.setdefault(row.site if site is not None and site.api_key is not None else "", []).append(row)
        return list(groups.values())

    def _record_exchange(self, endpoint, method, path, request, status, response, seconds) -> None:
        # called by the client in the trio thread: kept in memory, written with the next batch
        self._exchanges.append((endpoint, method, path, request, status, response, seconds,
                                tuple(_references(request, path))))

    async def _flush_exchanges(self) -> None:
        pending, self._exchanges = self._exchanges, []
        if not pending:
            return

        def write() -> None:
            with self.store.transaction():
                for endpoint, method, path, request, status, response, seconds, refs in pending:
                    self.store.add_exchange(endpoint, method, path, request, status, response, seconds, refs)
        await self.daemon.db(write)

    # ---- recovery after a crash ----
    async def _recover(self, rows: Sequence[OutboxRow]) -> None:
        """Resolve the messages a crash left in `sending`, by reference at the endpoint each
        went to — in the background, so the API and new traffic do not wait. Look-ups run
        concurrently under the look-up budget (not the send rate cap: 2,000 of them take
        seconds, not hours); outcomes are written in batches (a crash before a write only
        repeats its look-ups). (The rows were fetched before the send loop started, and
        nothing else touches `sending` rows.)"""
        if not rows:
            return
        log.info("resolving %d message(s) left in `sending` by their BSG reference", len(rows))
        started = trio.current_time()
        outcomes: list[tuple] = [("unsent", row, None, None) for row in rows if row.endpoint is None]
        queues: dict[tuple[str, str], list[OutboxRow]] = {}
        for row in rows:
            if row.endpoint is not None:       # (None: claimed, never routed: no call was made)
                endpoint = self.router.get(row.endpoint)
                queues.setdefault((endpoint.name, self.client_for(endpoint, row.site).name), []).append(row)

        written = [trio.current_time()]

        async def record(outcome: tuple) -> None:
            outcomes.append(outcome)
            # a full batch, or a slow endpoint's stragglers after a moment: a message found
            # or free to go should not wait for 199 others
            if len(outcomes) >= RECOVERY_WRITE or trio.current_time() - written[0] >= RECOVERY_WRITE_EVERY:
                written[0] = trio.current_time()
                await self._write_recovered(outcomes)

        async def worker(endpoint: Endpoint, pending: list[OutboxRow]) -> None:
            while pending:
                row = pending.pop()
                await record(await self._recover_one(row, endpoint))

        async with trio.open_nursery() as nursery:
            for (name, _), pending in queues.items():
                pending.reverse()              # pop() from the end: oldest first
                for _ in range(min(len(pending), self.daemon.config.bsg.lookup_concurrency)):
                    nursery.start_soon(worker, self.router.get(name), pending)
        await self._write_recovered(outcomes)
        log.info("resolved %d message(s) left in `sending` in %.1f s", len(rows), trio.current_time() - started)
        self.daemon.dispatch_wake.set()

    async def _recover_one(self, row: OutboxRow, endpoint: Endpoint) -> tuple:
        """One look-up: (outcome, row, endpoint name, status or error text)."""
        if not endpoint.healthy:           # tripped meanwhile: it waits for the probe
            return ("wait", row, endpoint.name, "")
        try:
            status = await self._lookup(row, endpoint)
        except BsgError as exc:
            # no answer counts towards the endpoint's health: when it is down, the rest
            # wait for its probe instead of each timing out in turn
            failed = isinstance(exc, BsgUnavailable) or (exc.http_status or 0) >= 500
            await self._health(endpoint, endpoint.record(not failed, self.ts(), str(exc)))
            return ("wait", row, endpoint.name, f"in flight at restart: {exc}")
        endpoint.record(True, self.ts())
        return ("found", row, endpoint.name, status) if status is not None else ("not found", row, endpoint.name, None)

    async def _write_recovered(self, outcomes: list[tuple]) -> None:
        batch, outcomes[:] = list(outcomes), []
        if batch and await self.daemon.db(self._apply_recovered, batch):
            self.daemon.events_wake.set()
        await self._flush_exchanges()
        self.daemon.dispatch_wake.set()        # messages not found go now

    def _apply_recovered(self, outcomes: Sequence[tuple]) -> bool:
        """Record a batch of recovery outcomes in one transaction; True when a message
        became final (an early delivery report)."""
        final = False
        with self.store.transaction():
            for what, row, endpoint, detail in outcomes:
                if what in ("unsent", "not found"):
                    self._resolved_unsent(row, endpoint)
                elif what == "found":
                    final |= self._mark_sent_from_status(row, detail, endpoint)
                else:
                    self._wait_for_lookup(row, endpoint, detail)
        return final

    def _resolved_unsent(self, row: OutboxRow, endpoint: str | None) -> None:
        with self.store.transaction():
            self.store.update_message(row.id, state="queued", reason="", next_attempt_at=self.ts(),
                                      attempts=max(row.attempts - 1, 0), uncertain_at=None, uncertain_since=None)
            self._log(row.id, "lookup", "not found" if endpoint else "not sent", endpoint, row,
                      "in flight at restart: " + (f"{endpoint} does not have it; it goes now" if endpoint
                                                  else "claimed but never sent; it goes now"))

    async def _lookup(self, row: OutboxRow, endpoint: Endpoint) -> Status | None:
        """Is the message's reference at `endpoint`? Under the look-up budget."""
        client = self.client_for(endpoint, row.site)
        if row.kind == "sms":
            return await client.sms_status(row.leg_reference, lookup=True)
        return await client.viber_status(row.leg_reference, lookup=True)

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
            # A due time read back rounds to the microsecond, so it can look due while the
            # claim (on the exact stored value) finds nothing yet: never loop without a pause.
            await self.daemon.dispatch_wake.wait(min(max(wait, MIN_WAIT), 30.0))

    async def _send(self, rows: Sequence[OutboxRow]) -> None:
        now = self.ts()
        expired = [r for r in rows if r.stale_at is not None and now > r.stale_at]
        live = [r for r in rows if not (r.stale_at is not None and now > r.stale_at)]
        if expired:
            await self.daemon.db(self._expire, expired)
            self.daemon.events_wake.set()
        if not live:
            return
        endpoint = self.router.pick()
        if endpoint is None:
            await self.daemon.db(self._hold, live)
            return
        elsewhere = [r for r in live if r.uncertain_at and r.uncertain_at != endpoint.name]
        ready = [r for r in live if not (r.uncertain_at and r.uncertain_at != endpoint.name)]
        if elsewhere:
            ready += await self._settle_uncertain(elsewhere, endpoint)
        if not ready:
            return
        # the endpoint is committed before the call: recovery asks the right one
        await self.daemon.db(self._route, ready, endpoint.name)
        sms = [r for r in ready if r.kind == "sms"]
        viber = [r for r in ready if r.kind == "viber"]
        # requests go out concurrently; the client's rate cap still spaces them
        async with trio.open_nursery() as nursery:
            for kind_rows, is_sms in ((sms, True), (viber, False)):
                for group in self._by_account(kind_rows):
                    for i in range(0, len(group), REQUEST_SIZE):
                        nursery.start_soon(self._send_group, group[i:i + REQUEST_SIZE], is_sms, endpoint)

    async def _settle_uncertain(self, rows: Sequence[OutboxRow], target: Endpoint) -> list[OutboxRow]:
        """Messages whose last attempt may have reached another endpoint: look each up
        there first. Found → it was sent there (recorded); not found → free to go to
        `target`; no answer → it waits (sending it elsewhere could send it twice) — until
        `bsg.uncertain_failover_after` has passed: then it goes to `target` anyway, and
        its trace and an alert say it may arrive twice."""
        free: list[OutboxRow] = []
        moved: list[OutboxRow] = []

        async def settle(row: OutboxRow) -> None:
            where = self.router.get(row.uncertain_at)
            error = ""
            if where.healthy:
                try:
                    status = await self._lookup(row, where)
                except BsgError as exc:
                    error = str(exc)
                else:
                    if status is None:
                        await self.daemon.db(self._log, row.id, "lookup", "not found", where.name, row,
                                             f"{where.name} does not have it: sending through {target.name}")
                        free.append(dataclasses.replace(row, uncertain_at=None, uncertain_since=None))
                    elif await self.daemon.db(self._mark_sent_from_status, row, status, where.name):
                        self.daemon.events_wake.set()
                    return
            if self.ts() >= self._failover_deadline(row):
                moved.append(row)
            else:
                # no use asking a tripped endpoint (error ""): wait for its probe to succeed
                await self.daemon.db(self._wait_for_lookup, row, where.name, error)

        async with trio.open_nursery() as nursery:
            for row in rows:
                nursery.start_soon(settle, row)
        if moved:
            await self.daemon.db(self._fail_over, moved, target)
            free += [dataclasses.replace(row, uncertain_at=None, uncertain_since=None) for row in moved]
        return free

    # ---- unknown outcomes: how long they wait, and going elsewhere ----
    def _failover_after(self, site: str | None) -> float:
        """Seconds an unknown outcome waits for its endpoint (math.inf: never): the
        site's `uncertain_failover_after`, else bsg's."""
        config = self.daemon.config
        own = config.sites[site].uncertain_failover_after if site in config.sites else None
        return config.bsg.uncertain_failover_after if own is None else own

    def _failover_deadline(self, row: OutboxRow) -> float:
        """When a message uncertain at an endpoint may go to the next one (math.inf: never)."""
        return (row.uncertain_since or self.ts()) + self._failover_after(row.site)

    def _uncertain(self, row: OutboxRow, where: str | None) -> dict:
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
                self._log(row.id, "failover", "may arrive twice", row.uncertain_at, row,
                          f"its outcome at {row.uncertain_at} has been unknown for {waited} "
                          f"(bsg.uncertain_failover_after): sending through {target.name}; "
                          f"it may arrive twice")
                by_endpoint.setdefault(row.uncertain_at, []).append(row)
            for where, moved in by_endpoint.items():
                log.warning("%d message(s) with an unknown outcome at %s go through %s after %s: "
                            "they may arrive twice", len(moved), where, target.name,
                            _minutes(self._failover_after(moved[0].site)))
                self._failover_alert(where, target, moved)

    def _failover_alert(self, where: str, target: Endpoint, rows: Sequence[OutboxRow]) -> None:
        self._failover_open.add(where)
        if self.alerter is None:
            return
        listed = ", ".join(f"{r.id} ({r.leg_reference})" for r in rows[:20]) + (" …" if len(rows) > 20 else "")
        self.alerter.open(
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

    @property
    def _failover_open(self) -> set:
        if not hasattr(self, "_failover_endpoints"):
            # after a restart any endpoint may have an open incident: its first success checks
            self._failover_endpoints = {e.name for e in self.router.endpoints}
        return self._failover_endpoints

    def _failover_resolved(self, endpoint: str) -> None:
        if endpoint not in self._failover_open:
            return
        self._failover_open.discard(endpoint)
        if self.alerter is not None:
            self.alerter.resolve(f"uncertain.failover:{endpoint}", f"BSG {endpoint} takes messages again",
                                 f"BSG endpoint {endpoint} accepted messages again; messages in flight there "
                                 "no longer need to go elsewhere.")

    async def _send_group(self, rows: Sequence[OutboxRow], is_sms: bool, endpoint: Endpoint) -> None:
        client = self.client_for(endpoint, rows[0].site)     # rows share an account (_by_account)
        try:
            if is_sms:
                results = await client.send_sms(
                    [SmsItem(r.msisdn, r.sms_text or r.text or "", r.sms_sender or r.sender or "",
                             r.leg_reference) for r in rows])
            else:
                results = await client.send_viber([self._viber_item(r) for r in rows])
        except BsgUnavailable as exc:
            # BSG became unreachable part-way: keep what it answered, retry the rest (a
            # retry of something it did take gets 23/43 and is looked up, not resent)
            log.warning("BSG %s unavailable: %s; unanswered messages will be retried", endpoint.name, exc)
            results = list(exc.results) or [
                SendResult(r.leg_reference, Kind.RETRY, description=str(exc), unavailable=True,
                           uncertain=exc.reached) for r in rows]
        failed = [r for r in results if _endpoint_failure(r)]
        await self._health(endpoint, endpoint.record(not failed, self.ts(), failed[0].description if failed else ""))
        if await self.daemon.db(self._apply_results, rows, results, endpoint.name, client.name):
            self.daemon.events_wake.set()
        self.poll_wake.set()
        for row, _ in [(row, res) for row, res in zip(rows, results) if res.kind == Kind.DUPLICATE]:
            # BSG says it has the reference: it stays this endpoint's until a look-up says
            # otherwise — whatever goes wrong with the look-up
            try:
                status = await self._lookup(row, endpoint)
            except BsgError as exc:
                await self.daemon.db(self._wait_for_lookup, row, endpoint.name, str(exc))
                continue
            if status is not None:
                if await self.daemon.db(self._mark_sent_from_status, row, status, endpoint.name):
                    self.daemon.events_wake.set()
            else:
                await self.daemon.db(self._requeue, row, "BSG reported the reference as used but has no such "
                                                         "message; retrying", backoff(row.attempts), endpoint.name)
        self.daemon.dispatch_wake.set()

    @staticmethod
    def _viber_item(row: OutboxRow) -> ViberItem:
        alt = row.channel == "omni" and row.omni != "engine"   # provider omni: BSG's alt_route
        return ViberItem(row.msisdn, row.text or "", row.sender or "", row.reference,
                         alt_sms_originator=row.sms_sender if alt else None,
                         alt_sms_text=row.sms_text if alt else None)

    # ---- outcomes (in the database thread) ----
    def _log(self, message_id: int, what: str, outcome: str, endpoint: str | None = None,
             row: OutboxRow | dict | None = None, detail: str = "") -> None:
        leg = reference = None
        if isinstance(row, OutboxRow):
            leg, reference = row.kind, row.leg_reference
        elif isinstance(row, dict):
            leg = _leg_of(row)
            reference = row.get("sms_reference") if leg == "sms" and row.get("sms_reference") else row.get("reference")
        self.store.add_attempt(message_id, what, outcome, endpoint=endpoint, leg=leg, reference=reference,
                               detail=detail)

    def _expire(self, rows: Sequence[OutboxRow]) -> None:
        with self.store.transaction():
            for row in rows:
                message = self.store.message_row(row.id) or {}
                if message.get("kind") == "campaign":
                    # a campaign message carries the campaign's end as its deadline: the
                    # same recall the campaign's feeder makes, and no event per message
                    reason = "campaign ended"
                    self.store.update_message(row.id, state="expired", reason=reason)
                    self._log(row.id, "expire", "expired", None, row, reason)
                    continue
                reason = "stale: not handed to BSG before its `stale after` ran out"
                if row.uncertain_at:
                    reason = (f"stale: its `stale after` ran out while its outcome at {row.uncertain_at} was "
                              "unknown (it may have been sent there); not sent anywhere else")
                self.store.update_message(row.id, state="expired", reason=reason, uncertain_at=None,
                                          uncertain_since=None)
                self._log(row.id, "expire", "expired", None, row, reason)
                self._emit_final({"id": row.id}, "failed", "expired")

    def _hold(self, rows: Sequence[OutboxRow]) -> None:
        """Every endpoint is down: the messages wait for a probe to succeed. Not an
        attempt: an outage of any length never makes a message fail."""
        wake = self.router.next_probe() or (self.ts() + 5)
        down = "; ".join(f"{e.name}: {e.reason or 'down'}" for e in self.router.endpoints)
        with self.store.transaction():
            for row in rows:
                self.store.update_message(row.id, state="queued", attempts=max(row.attempts - 1, 0),
                                          next_attempt_at=max(wake, self.ts() + 1),
                                          reason=f"every BSG endpoint is down ({down}); waiting for one to recover")

    def _route(self, rows: Sequence[OutboxRow], endpoint: str) -> None:
        with self.store.transaction():
            for row in rows:
                self.store.update_message(row.id, endpoint=endpoint, uncertain_at=row.uncertain_at,
                                          uncertain_since=row.uncertain_since)

    def _wait_for_lookup(self, row: OutboxRow, where: str, error: str) -> None:
        """The message may be at `where`, which cannot tell yet: it waits (its next look
        when `where` is probed healthy, or after a back-off when it answered badly)."""
        endpoint = self.router.get(where)
        if error:
            wake = self.ts() + max(backoff(max(row.attempts, 1)), self.daemon.config.bsg.failover.probe)
        else:
            wake = max(endpoint.probe_at or 0.0, self.ts() + 1.0)
        uncertain = self._uncertain(row, where)
        after = self._failover_after(row.site)
        deadline = uncertain["uncertain_since"] + after
        if deadline < wake:
            wake = max(deadline, self.ts() + 1.0)     # it may go elsewhere then: be there on time
        then = ("for as long as that takes (bsg.uncertain_failover_after: never)" if after == math.inf else
                f"until {_iso(deadline)}; then it goes to the next endpoint and may arrive twice "
                "(bsg.uncertain_failover_after)")
        with self.store.transaction():
            self.store.update_message(
                row.id, state="queued", attempts=max(row.attempts - 1, 0), next_attempt_at=wake, **uncertain,
                reason=f"the last attempt's outcome at {where} is unknown; waiting for {where} to answer "
                       f"a lookup before sending anywhere else (so it is never sent twice) {then}")
            if error:
                self._log(row.id, "lookup", "no answer", where, row, error)

    def _requeue(self, row: OutboxRow, reason: str, delay: float, uncertain_at: str | None) -> None:
        self.store.update_message(row.id, state="queued", reason=reason, **self._uncertain(row, uncertain_at),
                                  next_attempt_at=self.ts() + delay)

    def _after_failure(self, row: OutboxRow, result: SendResult, endpoint: str, account: str) -> bool:
        """Record a failed send; True when the message became final (failed)."""
        kind, code = result.kind, result.code or None
        reason = f"BSG error {code}: {result.description}" if code else result.description
        # an earlier unknown outcome at this endpoint is cleared only by a look-up that
        # does not find the reference (or a success), never by a later failure
        uncertain = endpoint if result.uncertain else row.uncertain_at
        if _endpoint_failure(result):
            outcome = "unknown" if result.uncertain else "unavailable"
        else:
            outcome = str(kind)
        self._log(row.id, "send", outcome, endpoint, row, reason)
        if kind == Kind.FATAL:
            self.store.update_message(row.id, state="failed", reason=reason, error_code=code, uncertain_at=None,
                                      uncertain_since=None)
            self._emit_final({"id": row.id}, "failed", f"error {code}" if code else "rejected")
            return True
        if kind == Kind.OPERATOR:
            # the account needs attention (key, funds, tariff): keep the message, retry slowly;
            # not the message's fault, so the attempt is given back
            self.store.update_message(row.id, state="queued", reason=reason + " (waiting for the operator)",
                                      error_code=code, next_attempt_at=self.ts() + 300,
                                      **self._uncertain(row, uncertain), attempts=max(row.attempts - 1, 0))
            if code in OPERATOR_ALERT_CODES:
                self._operator_alert(code, result.description, account)
            return False
        if _endpoint_failure(result):
            # the endpoint's fault, not the message's: the attempt is given back; health
            # routing moves traffic away, and a certain miss is rerouted at once
            tripped = not self.router.get(endpoint).healthy
            delay = 0.0 if tripped and not uncertain else backoff(row.attempts)
            if uncertain:
                # BSG may still be working on the request that timed out: give it time to
                # record it before anyone looks the reference up
                delay = max(delay, 2 * self.daemon.config.bsg.timeout)
            self.store.update_message(row.id, state="queued", reason=reason, error_code=code,
                                      **self._uncertain(row, uncertain), next_attempt_at=self.ts() + delay,
                                      attempts=max(row.attempts - 1, 0))
            return False
        answered = self.store.count_attempts(row.id, "send", "retry")     # this one included
        if answered >= MAX_ATTEMPTS:
            self.store.update_message(row.id, state="failed", error_code=code, uncertain_at=None,
                                      uncertain_since=None,
                                      reason=f"gave up after {answered} retryable errors; last: {reason}")
            self._emit_final({"id": row.id}, "failed", f"error {code}" if code else "gave up")
            return True
        self.store.update_message(row.id, state="queued", reason=reason, error_code=code,
                                  **self._uncertain(row, uncertain), next_attempt_at=self.ts() + max(
                                      backoff(answered), 2 * self.daemon.config.bsg.timeout if uncertain else 0.0))
        return False

    def _operator_alert(self, code: int, description: str, account: str) -> None:
        """One incident per error code and BSG account (`main`, `backup1`, `main/s2` for a
        site with its own key): one e-mail, however many messages it holds."""
        from herald.engine.bsg.client import OPERATOR_HINTS
        self._operator_open.add(account)
        if self.alerter is None:
            return
        words = describe(code)
        self.alerter.open(
            f"bsg.error.{code}:{account}", f"BSG ({account}) refuses to send: {words} (error {code})",
            f"BSG account {account} answers error {code} ({words}"
            f"{': ' + description if description and description != words else ''}).\n\n"
            f"What to do: {OPERATOR_HINTS.get(code, 'check the BSG account')}.\n\n"
            "Meanwhile Herald keeps the affected messages queued and retries them every 5 minutes; "
            "nothing is lost. You get one more e-mail when sending works again.")

    @property
    def _operator_open(self) -> set:
        if not hasattr(self, "_operator_accounts"):
            # after a restart any account may have an open incident: the first success
            # on each account checks
            self._operator_accounts = {e.name for e in self.router.endpoints} | {
                f"{e.name}/{site}" for e in self.router.endpoints for site, cfg in self.daemon.config.sites.items()
                if cfg.api_key is not None}
        return self._operator_accounts

    def _account_sites(self, account: str) -> list[str]:
        """The sites whose messages go through `account`."""
        if "/" in account:
            return [account.split("/", 1)[1]]
        return [site for site, cfg in self.daemon.config.sites.items() if cfg.api_key is None]

    def _operator_resolved(self, account: str) -> None:
        if account not in self._operator_open:
            return
        self._operator_open.discard(account)
        released = self.store.release_held(OPERATOR_ALERT_CODES, self.ts(), self._account_sites(account))
        if released:
            log.info("BSG %s sends again: %d held message(s) go now", account, released)
        for code in OPERATOR_ALERT_CODES if self.alerter is not None else ():
            self.alerter.resolve(f"bsg.error.{code}:{account}", f"BSG ({account}) sends again",
                                 f"BSG account {account} accepted messages again; the queued ones are "
                                 "on their way.")

    def _first_poll_delay(self) -> float:
        return RECEIPT_FALLBACK_POLL if self.daemon.config.bsg.callbacks else POLL_SCHEDULE[0]

    def _sent_fields(self, row: OutboxRow, now: float) -> dict:
        """Columns of a message that BSG just took (the current leg)."""
        fields = dict(state="sent", reason="", sent_at=now, error_code=None, uncertain_at=None,
                      uncertain_since=None, next_poll_at=now + self._first_poll_delay())
        if row.omni == "engine" and row.kind == "viber":
            fallback_at = now + (row.fallback_after or 600.0)
            fields["fallback_at"] = fallback_at
            fields["next_poll_at"] = min(fields["next_poll_at"], fallback_at)
        return fields

    def _apply_results(self, rows: Sequence[OutboxRow], results: Sequence[SendResult], endpoint: str,
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
                                              **self._sent_fields(row, now))
                    self._log(row.id, "send", "ok", endpoint, row, f"BSG id {result.id}")
                    final |= self._apply_pending_receipts(row.id, row.leg_reference, result.id)
                elif result.kind == Kind.DUPLICATE:
                    self._log(row.id, "send", "duplicate", endpoint, row,
                              f"BSG error {result.code}: the reference is already there; looking it up")
                else:
                    final |= self._after_failure(row, result, endpoint, account)
            if any(r.kind == Kind.OK for r in results):
                self._operator_resolved(account)
                self._failover_resolved(endpoint)
        return final

    def _mark_sent_from_status(self, row: OutboxRow, status: Status, endpoint: str) -> bool:
        """BSG already had the reference: the message is sent there. True when an early
        delivery report made it final."""
        now = self.ts()
        with self.store.transaction():
            fields = self._sent_fields(row, now)
            fields.update(reason=f"{endpoint} already had this reference", next_poll_at=now)
            self.store.update_message(row.id, bsg_id=status.id, bsg_status=status.status, endpoint=endpoint,
                                      price=status.price, currency=status.currency, **fields)
            self._log(row.id, "lookup", "found", endpoint, row, f"BSG id {status.id}, status {status.status}")
            return self._apply_pending_receipts(row.id, row.leg_reference, status.id)

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
                if row is None:
                    counts["unknown"] += 1
                    log.info("delivery report for an unknown message (reference %r, id %r): ignored",
                             status.reference, status.id)
                    if not status.reference and status.id:
                        self.store.add_receipt(None, status.id, status.status, body)
                elif row.get("omni") == "engine" and row.get("leg") == "sms" and row["receipt_leg"] == "viber":
                    counts["applied"] += 1
                    final |= self._late_viber(row, status)
                elif row["state"] in ("queued", "deferred", "sending"):
                    counts["pending"] += 1
                    self.store.add_receipt(status.reference or None, status.id, status.status, body)
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
            if row.get("sent_at") and row.get("endpoint"):
                self._latencies.append((row["endpoint"], self.ts() - row["sent_at"]))
            self._log(row["id"], "receipt", status.status, row.get("endpoint"), row, "delivery report")
            return self._apply_status(row, status)
        # not final yet (or a Viber failure whose fallback SMS is still on its way):
        # polling, later reports, or the fallback's report will finish it
        self.store.update_message(row["id"], bsg_status=status.status)
        return False

    def _late_viber(self, row: dict, status: Status) -> bool:
        """A report on the Viber leg of a message that already fell back to SMS."""
        message_id = row["id"]
        if not status.success:
            self.store.update_message(message_id, viber_status=status.status)
            self._log(message_id, "receipt", status.status, row.get("endpoint"), {**row, "leg": "viber"},
                      "late Viber report after the SMS fallback: recorded only")
            return False
        if row["state"] == "failed":
            # the SMS failed, Viber made it after all: the customer has the message
            self.store.update_message(message_id, state="delivered", viber_status=status.status,
                                      reason="Viber delivered late, after the SMS fallback failed")
            self._log(message_id, "receipt", status.status, row.get("endpoint"), {**row, "leg": "viber"},
                      "late Viber report: delivered after all (the SMS fallback had failed)")
            self._emit_final(row, "delivered", status.status)
            return True
        if row["state"] in ("queued", "deferred") and not row.get("uncertain_at"):
            # the SMS has not gone yet: Viber made it after all, so the SMS never goes
            self.store.update_message(message_id, state="delivered", viber_status=status.status,
                                      reason="Viber delivered before the SMS fallback went out; no SMS sent")
            self._log(message_id, "receipt", status.status, row.get("endpoint"), {**row, "leg": "viber"},
                      "Viber delivered late; the queued SMS fallback is cancelled")
            self._emit_final(row, "delivered", status.status)
            return True
        self.store.update_message(message_id, viber_status=status.status, double_delivery=1)
        self._log(message_id, "receipt", status.status, row.get("endpoint"), {**row, "leg": "viber"},
                  "late Viber report: Viber delivered after the SMS fallback went out (double delivery)")
        log.info("message %s: Viber delivered after its SMS fallback went out (counted as a double delivery)",
                 row["reference"])
        return False

    # ---- delivery statuses ----
    async def _poll_loop(self) -> None:
        limiter = trio.CapacityLimiter(POLL_CONCURRENCY)
        while True:
            await self._apply_latencies()
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
                self.daemon.dispatch_wake.set()   # an omni fallback may be due now
                await self._flush_exchanges()
                continue
            nxt = await self.daemon.db(self.store.next_poll_due)
            wait = 30.0 if nxt is None else (nxt - self.now()).total_seconds()
            await trio.sleep(0.2)                 # let a burst of sends land before the first poll
            await self.poll_wake.wait(min(wait, 30.0))

    async def _apply_latencies(self) -> None:
        pending, self._latencies = self._latencies, []
        for name, seconds in pending:
            endpoint = self.router.by_name.get(name)
            if endpoint is not None:
                await self._health(endpoint, endpoint.record_receipt(seconds, self.ts()))

    async def _fetch_status(self, item: dict, out: dict, limiter: trio.CapacityLimiter) -> None:
        """Ask BSG for one message's status (None: not known yet, or BSG unreachable)."""
        async with limiter:
            await self._poll_pace()
            client = self.client_for(self.router.get(item.get("endpoint")), item.get("site"))
            try:
                if _leg_of(item) == "sms":
                    own = item.get("omni") == "engine" and item.get("sms_reference")
                    out[item["id"]] = await client.sms_status(item["sms_reference"] if own else item["reference"])
                else:
                    out[item["id"]] = await client.viber_status(item["reference"])
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
        now = self.ts()
        if item.get("omni") == "engine" and item.get("leg") == "viber":
            if status is not None and status.final and not status.success:
                return self._fall_back(item, f"Viber: {status.status}", status)
            fallback_at = item.get("fallback_at")
            if (status is None or not status.final) and fallback_at is not None and now >= fallback_at:
                return self._fall_back(item, "no final Viber status by the deadline", status)
        sent_at = item["sent_at"] or now
        # a failed Viber whose SMS fallback is still on its way is not final yet
        if status is None or not status.final or any(not a.final for a in status.alt_route):
            age = now - sent_at
            # a provider omni's SMS fallback may start near the Viber validity's end
            limit = GIVE_UP_POLLING_VIBER if _leg_of(item) == "viber" and item.get("channel") == "viber" \
                else GIVE_UP_POLLING
            if age > limit.total_seconds():
                hours = f"{limit.total_seconds() / 3600:g} h"
                self.store.update_message(item["id"], state="failed", reason=f"no final status from BSG within {hours}")
                self._log(item["id"], "status", "failed", item.get("endpoint"), item, f"no final status within {hours}")
                self._emit_final(item, "failed", "no final status")
                return True
            step = sum(1 for s in POLL_SCHEDULE if s <= age)
            delay = POLL_SCHEDULE[step] - age if step < len(POLL_SCHEDULE) else 3600
            next_poll = now + max(delay, 1)
            if item.get("omni") == "engine" and item.get("leg") == "viber" and item.get("fallback_at"):
                next_poll = min(next_poll, max(item["fallback_at"], now + 1))
            self.store.update_message(item["id"], bsg_status=status.status if status else None,
                                      next_poll_at=next_poll)
            return False
        delivered = status.success or any(a.status in ("delivered", "read") for a in status.alt_route)
        alt = status.alt_route[0] if status.alt_route else None
        fields = dict(bsg_status=status.status, next_poll_at=None)
        if alt is not None:
            fields["sms_bsg_id"] = alt.id
        elif _leg_of(item) == "sms" and item.get("omni") == "engine":
            fields["sms_bsg_id"] = status.id
        if status.price is not None:
            fields["price"] = status.price
        state = "delivered" if delivered else "failed"
        reason = "" if delivered else f"BSG status: {status.status}"
        self.store.update_message(item["id"], state=state, reason=reason, **fields)
        self._log(item["id"], "status", status.status, item.get("endpoint"), item, "final status")
        self._emit_final(item, state, status.status)
        return True

    def _fall_back(self, item: dict, why: str, status: Status | None) -> bool:
        """Herald's omni: Viber did not make it, so the SMS leg is queued now."""
        row = self.store.message_row(item["id"])
        if row is None or row["state"] != "sent" or row["leg"] != "viber":
            return False
        self.store.update_message(
            item["id"], state="queued", leg="sms", next_attempt_at=self.ts(), attempts=0,
            viber_status=status.status if status else row["bsg_status"], viber_bsg_id=row["bsg_id"],
            bsg_id=None, bsg_status=None, next_poll_at=None, sent_at=None, uncertain_at=None, uncertain_since=None,
            reason=f"falling back to SMS: {why}")
        self._log(item["id"], "fallback", "sms", row["endpoint"], {**row, "leg": "viber"},
                  f"{why}; the SMS (reference {row['sms_reference']}) goes now")
        return False

    def _emit_final(self, item: dict, state: str, bsg_status: str) -> None:
        message = self.store.message(item["id"])
        cause = self.store.event_type(message["event"]) if message.get("event") else None
        if cause is not None and cause.startswith("message."):
            # a message sent because of a message.* event ends without one: a rule like
            # `on message.failed send to admins …` can never feed itself
            return
        event = Event(f"message.{state}", {"message": {
            "id": message["id"], "status": bsg_status, "channel": message["channel"], "to": message["to"],
            "rule": message["rule"], "event": message["event"], "reference": message["reference"],
            "price": message["price"], "currency": message["currency"], "reason": message["reason"],
            "leg": message["leg"] or ("sms" if message["channel"] == "sms" else "viber"),
            "endpoint": message["endpoint"]}},
            message["site"], f"message:{message['reference']}:{state}", self.now())
        self.store.add_events([event], "herald")

    # ---- endpoint health: probes, provider events, alerts ----
    def _carry_over_incidents(self) -> None:
        """At start (database thread): an incident a previous run left open is re-checked,
        never trusted (docs/alerts.md, "Across a restart").

        - provider.down:E — E starts tripped with its probe due at once: a healthy answer
          resolves the incident (recovery mail), a failure keeps it open;
        - bsg.error.N:ACCOUNT — kept (only a send can tell): the account's first accepted
          message resolves it, as every account is suspect after a start (`_operator_open`);
        - balance.low — the balance read at start re-checks it;
        - an incident of an endpoint or account no longer configured is resolved now."""
        if self.alerter is None:
            return
        now = self.ts()
        for incident in self.alerter.carry_over():
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
                    (kind.startswith("bsg.error.") and name not in self._operator_open):
                self.alerter.resolve(key, f"{incident['subject']}: no longer configured",
                                     f"{name} is no longer in the configuration, so Herald no longer uses it "
                                     "and this incident is closed.")

    async def _health(self, endpoint: Endpoint, change: str | None) -> None:
        if change is None:
            return
        if change == "down":
            nxt = self.router.pick()
            log.error("BSG endpoint %s is down: %s; %s", endpoint.name, endpoint.reason,
                      f"traffic goes to {nxt.name}" if nxt else "messages wait queued until one recovers")
        else:
            log.warning("BSG endpoint %s is healthy again; it takes traffic back", endpoint.name)
        await self.daemon.db(self._provider_event, endpoint, change)
        self.daemon.events_wake.set()
        self.daemon.dispatch_wake.set()

    def _provider_event(self, endpoint: Endpoint, change: str) -> None:
        now = self.now()
        fallback = self.router.pick()
        data = {"provider": {"name": endpoint.name, "url": endpoint.client.url, "status": change,
                             "error": endpoint.reason, "since": now.isoformat(),
                             "active": fallback.name if fallback else None}}
        site = next(iter(self.daemon.config.sites))
        event = Event(f"provider.{change}", data, site, f"provider:{endpoint.name}:{change}:{now.timestamp():.3f}",
                      now)
        with self.store.transaction():
            self.store.add_events([event], "herald")
            if self.alerter is None:
                return
            key = f"provider.down:{endpoint.name}"
            if change == "down":
                meanwhile = (f"Meanwhile new messages go through {fallback.name} ({fallback.client.url})."
                             if fallback else "No endpoint is healthy: messages wait queued; nothing is lost, "
                                              "and they go as soon as one recovers.")
                # fresh: the endpoint took traffic until now, so an incident of that key
                # still open in the store is stale and must not swallow this mail
                self.alerter.open(key, f"BSG endpoint {endpoint.name} is unreachable",
                                  f"Herald cannot reach BSG endpoint {endpoint.name} ({endpoint.client.url}): "
                                  f"{endpoint.reason}.\n\n{meanwhile}\n\nHerald probes it every "
                                  f"{endpoint.policy.probe:g} s and sends a second e-mail when it is back.\n"
                                  "What to do: check BSG's status and this server's network.", fresh=True)
            else:
                self.alerter.resolve(key, f"BSG endpoint {endpoint.name} is reachable again",
                                     f"BSG endpoint {endpoint.name} ({endpoint.client.url}) answered a probe; "
                                     "traffic goes through it again.")

    async def _probe_loop(self) -> None:
        while True:
            for endpoint in self.router.endpoints:
                if endpoint.probe_due(self.ts()):
                    try:
                        await endpoint.client.balance()
                        ok, detail = True, ""
                    except BsgUnavailable as exc:
                        ok, detail = False, str(exc)
                    except BsgError as exc:       # it answered (an account error is not an outage)
                        ok, detail = exc.http_status is not None and exc.http_status < 500, str(exc)
                    await self._flush_exchanges()
                    await self._health(endpoint, endpoint.probe_result(ok, self.ts(), detail))
            nxt = self.router.next_probe()
            wait = 30.0 if nxt is None else nxt - self.ts()
            await trio.sleep(min(max(wait, 0.05), 1.0))    # ≤ 1 s: the clock may be virtual

    async def _balance_loop(self) -> None:
        bsg = self.daemon.config.bsg
        next_read = self.ts()
        while True:
            if self.ts() >= next_read:
                endpoint = self.router.pick()
                # with no endpoint healthy (e.g. at start, while one carried over from the
                # last run is re-probed) the read is tried again soon, not after balance_every:
                # it is what re-checks a balance.low incident carried over a restart
                next_read = self.ts() + (bsg.balance_every if endpoint is not None else BALANCE_RETRY)
                if endpoint is not None:
                    try:
                        balance = await endpoint.client.balance()
                    except BsgError as exc:
                        log.info("balance of %s not read: %s", endpoint.name, exc)
                    else:
                        await self.daemon.db(self._balance_event, endpoint.name, balance)
                        self.daemon.events_wake.set()
                    await self._flush_exchanges()
            await trio.sleep(min(max(next_read - self.ts(), 0.05), 5.0))

    def _balance_event(self, endpoint: str, balance) -> None:
        now = self.now()
        threshold = self.daemon.config.bsg.balance_alert
        data = {"provider": {"name": endpoint, "balance": str(balance.amount), "currency": balance.currency,
                             "threshold": threshold, "low": threshold is not None and balance.amount < threshold}}
        site = next(iter(self.daemon.config.sites))
        event = Event("provider.balance", data, site, f"provider:{endpoint}:balance:{now.timestamp():.3f}", now)
        with self.store.transaction():
            self.store.add_events([event], "herald")
            if self.alerter is None:
                return
            if threshold is None:      # bsg.balance_alert was removed (reload or restart): not watched
                self.alerter.resolve("balance.low", "BSG balance is no longer watched",
                                     "bsg.balance_alert is no longer set, so Herald no longer alerts on the "
                                     "balance and this incident is closed.")
                return
            amount = f"{balance.amount} {balance.currency}".strip()
            if balance.amount < threshold:
                self.alerter.open("balance.low", f"BSG balance is low: {amount}",
                                  f"The BSG account balance ({endpoint}) is {amount}, under the alert "
                                  f"threshold of {threshold:g} (bsg.balance_alert).\n\nWhat to do: top up the "
                                  "account; at zero BSG refuses messages (error 8) and they wait queued.")
            else:
                self.alerter.resolve("balance.low", f"BSG balance is back over {threshold:g}",
                                     f"The BSG account balance ({endpoint}) is {amount}.")


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


def _leg_of(item: dict) -> str:
    """The leg a stored message is on now: sms or viber."""
    if item.get("channel") == "sms" or (item.get("omni") == "engine" and item.get("leg") == "sms"):
        return "sms"
    return "viber"


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
