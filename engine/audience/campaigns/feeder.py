"""The feeder: a daemon task that moves due recipients of running campaigns into the outbox
at each campaign's pace, and the planner that renders each one's message."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import trio

from herald.engine.audience.incoming import account_client
from herald.engine.bsg.client import BsgError
from herald.engine.events import Event, EventScope
from herald.engine.helpers.windows import parse_window
from herald.engine.rules.evaluate import Evaluator
from herald.engine.services import Services
from herald.engine.store import Store
from herald.grammar.model import EventTrigger, Recipient, Rule, Send
from herald.engine.audience.campaigns.spec import BACKLOG, BALANCE_EVERY, CHUNK, FUNDS_CODES
from herald.engine.audience.campaigns.declared import load_declared
from herald.engine.audience.campaigns.manage import _iso

log = logging.getLogger("herald.campaigns")

# ---- the feeder --------------------------------------------------------------------------

class Feeder:
    """Moves due recipients of running campaigns into the outbox, at each campaign's rate."""

    def __init__(self, services: Services):
        self.services = services
        self.wake = services.wakes.campaigns
        self.tokens: dict[int, tuple[float, float]] = {}   # campaign → (tokens, trio time)
        self.balance_at: dict[str | None, float] = {}      # account → trio time of its next balance read
        self.running: set[int] = set()                     # the campaigns running at the last round
        self.generation: int | None = None

    @property
    def store(self) -> Store:
        return self.services.store

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            generation = self.services.loaded().generation
            if self.generation != generation:
                self.generation = generation
                await load_declared(self.services)
            wait = await self.round()
            await self.wake.wait(wait)

    async def round(self) -> float:
        """Feed every running campaign once; how long to wait before the next round."""
        now = self.services.clock.now().timestamp()
        wait = 1.0          # ≤ 1 s: the clock may be virtual, and pause/resume come by HTTP
        live = await self.services.db(self.store.live_campaigns)
        self._note_resumed(live)
        for c in live:
            if now >= c["end_at"]:
                await self.services.db(self._end, c)
                continue
            if c["state"] != "active" or now < c["start_at"]:
                continue
            if not await self._funds_ok(c):
                continue
            wait = min(wait, await self._feed(c, now))
        return wait

    def _note_resumed(self, live: list[dict]) -> None:
        """A campaign running again (an operator resumed it, after a stop or a pause) reads
        its account's balance before it feeds: the cause of a stop may be fixed (a top-up)."""
        running = {c["id"] for c in live if c["state"] == "active"}
        if running - self.running:
            self.balance_at.clear()
        self.running = running

    def _end(self, c: dict) -> None:
        people, messages = self.store.recall_campaign(c["id"], "expired", "campaign ended")
        reason = f"ended at {_iso(c['end_at'])}" + (f": {people + messages} unsent recalled" if people + messages
                                                      else "")
        if c["state"] == "completed" and not people + messages:
            self.store.set_campaign_state(c["id"], "ended", "ended: every message had gone")
        else:
            self.store.set_campaign_state(c["id"], "ended", reason)
        log.info("campaign %s: %s", c["id"], reason)

    async def _funds_ok(self, c: dict) -> bool:
        """Low balance or BSG refusing for lack of funds: stop every running campaign."""
        held = await self.services.db(self.store.campaign_held_operator, c["id"], FUNDS_CODES)
        if held:
            await self.services.db(self._stop, c, "BSG refuses to send: not enough funds (error 8)")
            return False
        account = self._account(c["site"])
        client = account_client(self.services, account)
        if client is None or trio.current_time() < self.balance_at.get(account, 0.0):
            return True
        self.balance_at[account] = trio.current_time() + BALANCE_EVERY
        try:
            balance = await client.balance()
        except BsgError as exc:
            log.info("campaigns: balance not read (%s); feeding on", exc)
            return True
        threshold = self.services.config.bsg.balance_alert or 0
        if balance.amount <= threshold:
            where = f" of site {account}'s BSG account" if account else ""
            reason = (f"low balance{where}: {balance.amount} {balance.currency} (at or under "
                      f"{threshold:g}{', bsg.balance_alert' if threshold else ''})")
            for other in await self.services.db(self.store.live_campaigns):   # every campaign of that account
                if other["state"] == "active" and self._account(other["site"]) == account:
                    await self.services.db(self._stop, other, reason)
            return False
        return True

    def _account(self, site: str) -> str | None:
        """The BSG account a site's messages go through: its own (api_key), else the main one (None)."""
        config = self.services.config.sites.get(site)
        return site if config is not None and config.api_key is not None else None

    def _stop(self, c: dict, reason: str) -> None:
        with self.store.transaction():
            if not self.store.set_campaign_state(c["id"], "stopped", reason, ("active",)):
                return
            self.running.discard(c["id"])       # resumed before the next round: still reads the balance first
            if self.services.alerter is not None:
                name = c["name"] or f"#{c['id']}"
                self.services.alerter.open(
                    f"campaign.stopped:{c['id']}", f"Campaign {name} stopped: {reason}",
                    f"Herald stopped campaign {name} (id {c['id']}): {reason}.\n\nNothing more of it is sent; "
                    f"what was not sent waits. What to do: fix the cause, then `herald campaign resume {c['id']}` "
                    f"(or cancel it). Its end date still recalls what is unsent.", site=c["site"])
        log.warning("campaign %s stopped: %s", c["id"], reason)

    async def _feed(self, c: dict, now: float) -> float:
        cid, rate = c["id"], c["rate"]
        counts = await self.services.db(self.store.campaign_counts, cid)
        m = counts["messages"]
        backlog = sum(m.get(s, 0) for s in ("queued", "deferred", "held", "sending"))
        allowance = min(self._tokens(cid, rate), BACKLOG - backlog, CHUNK)
        budget = Decimal(c["budget"]) if c["budget"] else None
        if budget is not None:
            room = self._budget_room(budget, counts, backlog)
            if room is None:                      # no price seen yet: one message at a time until one is
                allowance = min(allowance, 1 - backlog)
            elif room <= 0:
                if backlog == 0:
                    await self.services.db(self._stop, c, f"budget reached: spent {counts['cost']:.2f} "
                                                        f"{counts['currency']} of {budget}".replace("  ", " "))
                return 0.5
            else:
                allowance = min(allowance, room)
        if allowance < 1:
            return max(0.02, min(1.0, 1.0 / rate))
        fed, left, next_due = await self.services.db(self._feed_batch, c, int(allowance), now)
        self._spend(cid, fed)
        if fed:
            self.services.wakes.dispatch.set()
        if not left:
            await self.services.db(self._complete, cid)
            return 1.0
        if next_due is not None and next_due > now:
            return max(0.02, min(1.0, next_due - now))
        return 0.02 if fed else max(0.02, min(1.0, 1.0 / rate))

    @staticmethod
    def _budget_room(budget: Decimal, counts: dict, backlog: int) -> int | None:
        unit = counts["max_price"]
        if not unit:
            return None
        spent = Decimal(str(round(counts["cost"], 6)))
        unpriced = backlog                         # queued, not yet priced by BSG
        room = (budget - spent - unpriced * Decimal(str(unit))) / Decimal(str(unit))
        return math.floor(room)

    def _tokens(self, cid: int, rate: float) -> float:
        now = trio.current_time()
        tokens, at = self.tokens.get(cid, (min(rate, CHUNK), now))
        tokens = min(tokens + (now - at) * rate, max(rate, 1.0))
        self.tokens[cid] = (tokens, now)
        return tokens

    def _spend(self, cid: int, n: int) -> None:
        tokens, at = self.tokens[cid]
        self.tokens[cid] = (tokens - n, at)

    def _complete(self, cid: int) -> None:
        if self.store.next_recipient_due(cid) is None:
            self.store.set_campaign_state(cid, "completed", "every recipient has been handed to the outbox",
                                          ("active",))

    def _feed_batch(self, c: dict, limit: int, now_ts: float) -> tuple[int, bool, float | None]:
        """Up to `limit` due recipients into the outbox, each marked fed in the same
        transaction. (messages written, recipients left, when the next one is due)."""
        store = self.store
        rows = store.due_recipients(c["id"], now_ts, limit)
        if not rows:
            nxt = store.next_recipient_due(c["id"])
            return 0, nxt is not None, nxt
        plan = Planner(self.services, c)
        phones = [r["phone"] for r in rows]
        opted = store.opted_out(phones)
        source = json.loads(c["source"])
        gone = store.cancelled_subscribers(source["list"], phones) if "list" in source else set()
        now = datetime.fromtimestamp(now_ts, timezone.utc)
        fed, deferred = 0, []
        with store.transaction():
            # a pause, stop or cancel may have committed since this round read the campaign
            # (the round awaits the database between the two): it wins, nothing is fed
            current = store.campaign(c["id"])
            if current is None or current["state"] != "active":
                return 0, True, None
            for r in rows:
                if r["phone"] in opted:
                    store.mark_recipient(c["id"], r["seq"], "skipped", reason="on the opt-out list")
                    continue
                if r["phone"] in gone:
                    store.mark_recipient(c["id"], r["seq"], "skipped", reason=f"left the list {source['list']!r}")
                    continue
                opening = plan.opening(r["tz"], now)
                if opening is not None:
                    deferred.append((r["seq"], opening.timestamp()))
                    continue
                message_id = plan.enqueue(r["phone"], r["data"], now)
                store.set_message_campaign(message_id, c["id"])
                store.mark_recipient(c["id"], r["seq"], "fed", message_id)
                fed += 1
            if deferred:
                store.defer_recipients(c["id"], deferred)
        nxt = store.next_recipient_due(c["id"])
        return fed, nxt is not None, nxt


class Planner:
    """Renders and enqueues a campaign's message for one recipient, like a rule's send."""

    def __init__(self, services: Services, c: dict):
        self.services, self.c = services, c
        loaded = services.loaded()
        self.evaluator = Evaluator(loaded.project, state=services.store, directory=loaded.directory)
        self.site = self.evaluator.site(c["site"])
        self.window = parse_window(c["send_window"]) if c["send_window"] else None
        self.zones: dict[str | None, ZoneInfo] = {}
        self.end = datetime.fromtimestamp(c["end_at"], timezone.utc)
        self.rule = Rule(f"campaign:{c['name'] or c['id']}", None, EventTrigger("campaign"), None, None, None, ())
        self.whole_day = parse_window("00:00-24:00")

    def opening(self, tz: str | None, now: datetime) -> datetime | None:
        """None when the recipient's window is open now, else when it opens."""
        if self.window is None:
            return None
        zone = self.zones.get(tz)
        if zone is None:
            zone = self.zones[tz] = ZoneInfo(tz or self.site.timezone)
        if self.window.contains(now.astimezone(zone).time()):
            return None
        return self.window.next_opening(now, zone)

    def enqueue(self, phone: str, data: str | None, now: datetime) -> int:
        c = self.c
        send = Send(c["channel"], (Recipient("phone", phone),), template=c["template"], text=c["text"],
                    sender=c["sender"], window=self.whole_day)
        macros = {"campaign": {"id": c["id"], "name": c["name"] or ""}, **(json.loads(data) if data else {})}
        event = Event("campaign", macros, c["site"], f"campaign:{c['id']}", now)
        [m] = self.evaluator.plan_send(self.rule, send, event, EventScope(event), self.site, now)
        m = dataclasses.replace(m, event_id="", stale_at=self.end, rule_id="")
        return self.services.enqueue(m, c["site"], None, kind="campaign")
