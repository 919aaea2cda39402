"""The rule runtime's three tasks: the processor (journal → firings → outbox), the
`after` timers and the schedule triggers (`every`, `cron`).

Each runs in the daemon's nursery on the `Services` it is given. Their database work runs
in the store's thread through `services.db`; firings, messages, timers and the events'
`done` marks are committed together, or not at all, so a crash repeats a batch whole.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Mapping
from zoneinfo import ZoneInfo

import trio

from herald.engine.audience.subscriptions import apply_rule_actions
from herald.engine.events import Event
from herald.engine.rules.evaluate import Delayed, Evaluator, RuleRun
from herald.engine.services import Services
from herald.grammar.model import Rule

EVENT_BATCH = 200


def rule_version(rule: Rule) -> str:
    """A rule's version in a firing's record: the hash of its canonical text."""
    return hashlib.sha1(rule.canonical().encode()).hexdigest()[:12]


class Processor:
    """Journal events → rule runs → firings, messages and timers, a batch per transaction."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._versions: dict[str, str] = {}
        self._versions_of = -1          # the generation `_versions` belongs to

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        s = self.services
        task_status.started()
        while True:
            count = await s.db(self.process_batch)
            if count:
                s.wakes.dispatch.set()
                s.wakes.timers.set()
                continue
            await s.wakes.events.wait(1.0)

    def process_batch(self) -> int:
        """Process pending journal events (in the store's thread); how many there were."""
        store, loaded = self.services.store, self.services.loaded()
        events = store.pending_events(EVENT_BATCH)
        if not events:
            return 0
        evaluator = self.services.evaluator()
        now = self.services.clock.now()
        with store.transaction():
            for event in events:
                if event.type == "schedule" and isinstance(event.data.get("schedule"), Mapping):
                    runs, delayed = self._schedule_runs(evaluator, event, loaded.project), []
                else:
                    runs, delayed = evaluator.process(event, now)
                for run in runs:
                    self.record_run(run, event, now)
                for item in delayed:
                    store.add_timer(item.rule_id, item.event.id, item.due, item.previous)
            store.mark_events_done(e.id for e in events)
        return len(events)

    @staticmethod
    def _schedule_runs(evaluator: Evaluator, event: Event, project) -> list[RuleRun]:
        rule = project.rule(str(event.data["schedule"].get("rule")))
        if rule is None:
            return []
        return [evaluator.run(rule, event, event.time, event.data)]

    def record_run(self, run: RuleRun, event: Event, now: datetime) -> None:
        """A run's firing, its messages and its subscription actions, in the caller's transaction."""
        store = self.services.store
        trace = run.as_json()
        trace["event"] = event.id
        firing_id = store.add_firing(event.id, run.rule.id, self._version(run.rule), run.fired, run.reason,
                                     trace, now)
        for m in run.messages:
            self.services.enqueue(m, event.site, firing_id)
        if run.subscriptions:               # `subscribe` / `unsubscribe` actions, in the same transaction
            apply_rule_actions(store, run.subscriptions, event.site, now)

    def _version(self, rule: Rule) -> str:
        loaded = self.services.loaded()
        if loaded.generation != self._versions_of:      # a reload: the versions of the new rules
            self._versions = {r.id: rule_version(r) for r in loaded.project.rules}
            self._versions_of = loaded.generation
        return self._versions.get(rule.id) or rule_version(rule)


class Timers:
    """`after` timers: when one is due, its rule runs on its event as it was then."""

    def __init__(self, services: Services, processor: Processor) -> None:
        self.services = services
        self.processor = processor

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        s = self.services
        task_status.started()
        while True:
            count = await s.db(self.run_due)
            if count:
                s.wakes.dispatch.set()
                continue
            due = await s.db(s.store.next_timer_due)
            wait = 60.0 if due is None else (due - s.clock.now()).total_seconds()
            await s.wakes.timers.wait(min(wait, 60.0))

    def run_due(self) -> int:
        """Run the due timers (in the store's thread); how many there were."""
        store, project = self.services.store, self.services.project
        now = self.services.clock.now()
        timers = store.due_timers(now)
        if not timers:
            return 0
        evaluator = self.services.evaluator()
        with store.transaction():
            for timer in timers:
                event = store.event(timer["event_id"])
                if event is None:
                    store.finish_timer(timer["id"], "cancelled", "its event is no longer in the journal")
                    continue
                previous = _loads(timer["previous"])
                item = Delayed(timer["rule_id"], event, datetime.fromtimestamp(timer["due"], timezone.utc), previous)
                run = evaluator.run_delayed(item, now)
                if project.rule(item.rule_id) is None:
                    store.finish_timer(timer["id"], "cancelled", run.reason)
                    continue
                self.processor.record_run(run, event, now)
                store.finish_timer(timer["id"], "done", run.reason)
        return len(timers)


class Scheduler:
    """Schedule triggers: at each fire time, a `schedule` event is journaled for the rule
    and site (its id names both and the time, so a restart never journals it twice)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        s = self.services
        task_status.started()
        while True:
            generation = s.loaded().generation
            upcoming = self.next_schedule()
            if upcoming is None:
                await s.wakes.reloaded.wait(3600)
                continue
            when, rule, site_id = upcoming
            await s.wakes.reloaded.wait((when - s.clock.now()).total_seconds())
            if s.loaded().generation != generation or s.clock.now() < when:
                continue                     # rules changed, or woken early: compute again
            event = Event("schedule", {"schedule": {"rule": rule.id, "time": when.isoformat()}}, site_id,
                          f"schedule:{rule.id}:{site_id}:{when.isoformat()}", when)
            await s.accept([event], "schedule")

    def next_schedule(self) -> tuple[datetime, Rule, str] | None:
        loaded = self.services.loaded()
        now = self.services.clock.now()
        best = None
        for rule in loaded.project.matcher.schedules:
            for site_id, site in loaded.config.sites.items():
                when = rule.trigger.next_fire(now.astimezone(ZoneInfo(site.timezone)))
                if best is None or when < best[0]:
                    best = (when, rule, site_id)
        return best


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None
