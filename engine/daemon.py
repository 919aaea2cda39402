"""The reactor: `herald run`. One trio nursery owns every component.

    intake (HTTP, connectors, schedules) ─► journal ─► processor ─► outbox ─► dispatcher ─► BSG
                                               ▲             │                    │
                                               │          timers            status poller
                                               └── message.delivered / message.failed events

Every component reports started only when it is ready, so a taken port or a bad
config fails `herald run` at start with one line and exit 2. Blocking work (SQLite)
runs in a worker thread, one call at a time, in batches.
"""

from __future__ import annotations

import logging
import signal
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import trio

from herald import connectors
from herald.engine.api.routes import serve_api
from herald.engine.audience.campaigns import Feeder
from herald.engine.directory import open_directory
from herald.engine.audience.incoming import poll_incoming
from herald.engine.audience.subscriptions import Refusals, SubscribedDirectory
from herald.engine.audience.subscriptions import health as subscriptions_health
from herald.engine.config import Config, load_config
from herald.engine.delivery.alerts import Alerter
from herald.engine.delivery.dispatcher import Dispatcher
from herald.engine.delivery.outbox import enqueue
from herald.engine.delivery.services import DeliveryServices
from herald.engine.errors import EventError, LoadError, StartupError
from herald.engine.events import Event, parse_event
from herald.engine.intake import ConnectorStatus, Context
from herald.engine.logs import setup_logging
from herald.engine.redaction import secret_values
from herald.engine.rules.evaluate import Evaluator, PlannedMessage
from herald.engine.rules.loader import Project, load_project
from herald.engine.processor import Processor, Scheduler, Timers
from herald.engine.runtime import Clock
from herald.engine.services import Loaded, Services, Wakes
from herald.engine.store import Store

log = logging.getLogger("herald")

class Daemon:
    def __init__(self, config: Config, *, clock: Clock | None = None, bsg_transport=None,
                 log_format: str = "text"):
        self.config = config
        self.clock = clock or Clock()
        self.project: Project | None = None
        self.store: Store | None = None
        self.directory = open_directory(config.directory)   # connects on its first lookup
        self.db_limiter = trio.CapacityLimiter(1)
        self.wakes = Wakes()
        self.events_wake = self.wakes.events
        self.timers_wake = self.wakes.timers
        self.dispatch_wake = self.wakes.dispatch
        self.campaigns_wake = self.wakes.campaigns
        self.reloaded = self.wakes.reloaded
        self.generation = 0
        self.connectors: dict[str, ConnectorStatus] = {}
        self.bsg_transport = bsg_transport
        self.http_url: str | None = None
        self.sandbox_url: str | None = None
        self.stopping = trio.Event()
        self.started = trio.Event()
        self.dispatcher: Dispatcher | None = None
        self.alerter: Alerter | None = None
        self.feeder: Feeder | None = None
        self.services: Services | None = None      # built by `run` once the store is open
        self.backup_transports: dict = {}     # tests: httpx transports for backup endpoints by name
        self.subscription_refusals = Refusals()   # POST /subscriptions refusals, for GET /health

    # ---- blocking work, one call at a time ----
    async def db(self, fn: Callable, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.db_limiter)

    def loaded(self) -> Loaded:
        """What a reload swaps (the services read it through this, at each use)."""
        return Loaded(self.config, self.project, self.directory, self.generation)

    def _services(self) -> Services:
        return Services(store=self.store, db=self.db, clock=self.clock, wakes=self.wakes, stopping=self.stopping,
                        loaded=self.loaded, accept=self.accept, enqueue=self._enqueue, evaluator=self._evaluator,
                        parse_events=self.parse_events,
                        reload=self.reload, health=self.health, sending=lambda: self.dispatcher,
                        alerter=self.alerter, refusals=self.subscription_refusals)

    # ---- start and stop ----
    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self.project = await trio.to_thread.run_sync(load_project, self.config)
        for warning in self.project.warnings:
            log.warning("%s", warning.format())
        self.store = await trio.to_thread.run_sync(Store, self.config.store)
        try:
            async with trio.open_nursery() as nursery:
                self.alerter = Alerter(self.store, self.config, self.clock.now)
                services = self.services = self._services()
                await nursery.start(self.alerter.run, self.db)
                self.dispatcher = Dispatcher(DeliveryServices(
                    store=self.store, db=self.db, clock=self.clock, config=lambda: self.config,
                    events_wake=self.events_wake, dispatch_wake=self.dispatch_wake, alerter=self.alerter,
                    bsg_transport=self.bsg_transport, backup_transports=self.backup_transports,
                    on_sandbox=partial(setattr, self, "sandbox_url")))
                await nursery.start(self.dispatcher.run)      # BSG (or the sandbox) first
                processor = Processor(services)
                await nursery.start(processor.run)              # journal → firings → outbox
                await nursery.start(Timers(services, processor).run)   # `after`
                await nursery.start(Scheduler(services).run)    # `every`, `cron`
                await self._start_connectors(nursery)
                await nursery.start(poll_incoming, services)     # incoming SMS (subscriptions.poll_incoming)
                self.feeder = Feeder(services)
                await nursery.start(self.feeder.run)            # campaigns: recipients into the outbox
                try:
                    self.http_url = await nursery.start(serve_api, services)
                except (OSError, BaseExceptionGroup) as exc:
                    cause = _first(exc, OSError)
                    if cause is None:
                        raise
                    raise StartupError(f"cannot listen on {self.config.http.listen}: "
                                       f"{cause.strerror or cause}") from exc
                nursery.start_soon(self._signals, nursery.cancel_scope)
                nursery.start_soon(self._checkpoints)
                log.info("herald ready: %d rule(s), API on %s", len(self.project.rules), self.http_url)
                self.started.set()
                task_status.started(self.http_url)
        finally:
            if self.store is not None:
                with trio.CancelScope(shield=True):
                    await self.db(self.store.close)

    async def _signals(self, cancel_scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                    continue
                log.info("herald stopping (%s): intake closed, in-flight messages persist",
                         signal.Signals(signum).name)
                self.stopping.set()
                # messages claimed for sending stay `sending` and are resolved by reference
                # on the next start; give an in-flight BSG call a moment to finish first
                with trio.move_on_after(3):
                    while self.dispatcher is not None and self.dispatcher.busy:
                        await trio.sleep(0.05)
                cancel_scope.cancel()
                return

    async def stop(self) -> None:
        self.stopping.set()

    async def _checkpoints(self) -> None:
        while True:
            await trio.sleep(30)
            await self.db(self.store.checkpoint)

    # ---- intake ----
    def parse_events(self, payload: Any) -> list[Event]:
        """Validate one event or a list; raises EventError pointing into the payload."""
        items = payload if isinstance(payload, list) else [payload]
        prefix = isinstance(payload, list)
        if prefix and not items:
            raise EventError("an empty list has no events", "")
        default_site = next(iter(self.config.sites))
        now = self.clock.now()
        return [parse_event(obj, default_site=default_site, known_sites=self.config.sites, now=now,
                            pointer=f"/{i}" if prefix else "") for i, obj in enumerate(items)]

    async def accept(self, events: Sequence[Event], source: str,
                     cursor: tuple[str, str, str] | None = None,
                     snapshots: Sequence[tuple[str, str, str, Mapping | None]] = ()) -> list[tuple[str, bool]]:
        """Journal events (committed before this returns) and wake the processor."""
        result = await self.db(self.store.add_events, events, source, cursor, snapshots)
        self.events_wake.set()
        return result

    # ---- what the services offer ----
    def _evaluator(self) -> Evaluator:
        return Evaluator(self.project, state=self.store, directory=SubscribedDirectory(self.directory, self.store))

    def _enqueue(self, m: PlannedMessage, site: str, firing_id: int | None = None, kind: str = "rule") -> int:
        return enqueue(self.store, self.config.sites, m, site, firing_id, kind)

    # ---- connectors ----
    async def _start_connectors(self, nursery: trio.Nursery) -> None:
        for i, entry in enumerate(self.config.connectors):
            cls = connectors.find(entry.type)
            if cls is None:
                raise StartupError(f"{entry.location}: unknown connector type {entry.type!r}; "
                                   f"available: {', '.join(connectors.available()) or 'none'}")
            name = str(entry.options.get("name") or f"{entry.type}{i + 1}")
            if name in self.connectors:
                raise StartupError(f"{entry.location}: two connectors are named {name!r}; "
                                   "names keep their cursors apart, so each must be unique")
            connector = cls(entry)
            status = self.connectors[name] = ConnectorStatus(entry.type)
            await nursery.start(connector.run, Context(self.services, name, status))

    # ---- reload ----
    async def reload(self) -> tuple[bool, list[str]]:
        """Re-read config, rules and templates; swap atomically or keep the running set."""
        try:
            config = await trio.to_thread.run_sync(load_config, self.config.path)
            project = await trio.to_thread.run_sync(load_project, config)
        except LoadError as exc:
            for d in exc.diagnostics:
                (log.error if d.is_error else log.warning)("reload: %s", d.headline())
            log.error("reload failed: kept the running rules (%d)", len(self.project.rules))
            return False, [d.headline() for d in exc.diagnostics if d.is_error]
        except Exception as exc:        # a bug of ours must not stop the daemon (SIGHUP) or the API
            log.exception("reload failed: internal error (%s): kept the running rules (%d)",
                          type(exc).__name__, len(self.project.rules))
            return False, [f"internal error while loading ({type(exc).__name__}); see the daemon's log"]
        await self.db(self._swap, config, project)
        if self.dispatcher is not None:
            self.dispatcher.apply_config(config)      # bsg.rate and the look-up budget, at once
        self.reloaded.set()
        self.events_wake.set()
        log.info("reloaded: %d rule(s)", len(project.rules))
        return True, []

    def _swap(self, config: Config, project: Project) -> None:
        """Runs while holding the store: no batch is half-processed by two rule sets."""
        removed = {r.id for r in self.project.rules} - {r.id for r in project.rules}
        cancelled = self.store.cancel_timers_of(removed, "the rule was removed by a reload")
        if cancelled:
            log.info("reload: cancelled %d pending timer(s) of removed rules", cancelled)
        if (config.http.listen, config.store) != (self.config.http.listen, self.config.store):
            log.warning("reload: http.listen and store changes take effect on restart")
        old_directory, self.directory = self.directory, open_directory(config.directory)
        if hasattr(old_directory, "close"):
            old_directory.close()       # a Bitrix directory: its pool and cache; the new one starts fresh
        self.config, self.project = config, project
        if self.alerter is not None:
            self.alerter.config = config
        self.generation += 1

    # ---- health ----
    async def health(self) -> dict:
        stats = await self.db(self.store.stats)
        return {
            "status": "ok" if not self.stopping.is_set() else "stopping",
            "rules": len(self.project.rules),
            "sandbox": self.sandbox_url is not None,
            "queue_depth": stats["queue_depth"],
            "oldest_queued_age": stats["oldest_queued_age"],
            "deferred": stats["deferred"],
            "pending_events": stats["pending_events"],
            "pending_timers": stats["pending_timers"],
            "messages": stats["messages"],
            "connectors": {name: {"type": c.type, "alive": c.alive, "detail": c.detail,
                                  "since": c.since.isoformat() if c.since else None}
                           for name, c in self.connectors.items()},
            "endpoints": self._endpoints_health(),
            "delivery": await self.db(self.store.delivery_counts),
            "incidents": await self.db(self.alerter.open_incidents) if self.alerter else [],
            "subscriptions": await self.db(self._subscriptions_health),
        }

    def _subscriptions_health(self) -> dict:
        return subscriptions_health(self.store, self.config, self.subscription_refusals, self.clock.now())

    def _endpoints_health(self) -> list[dict]:
        router = self.dispatcher.router if self.dispatcher is not None else None
        if router is None:
            return []
        out = []
        for e in router.endpoints:
            item = e.as_json()
            for key in ("since", "probe_at"):
                if item[key] is not None:
                    item[key] = datetime.fromtimestamp(item[key], timezone.utc).isoformat()
            out.append(item)
        return out


def _first(exc: BaseException, kind: type) -> BaseException | None:
    """The first `kind` inside a (possibly nested) exception group — servers nest nurseries."""
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _first(inner, kind)
        if found is not None:
            return found
    return None


def run_daemon(config_path: str | None, log_format: str = "text") -> int:
    """`herald run`: 0 after SIGTERM/SIGINT, 2 when it cannot start."""
    try:
        config = load_config(config_path)
    except LoadError as exc:
        print(exc.format(), flush=True)
        return 2
    setup_logging(log_format, secrets=_secrets_of(config))
    daemon = Daemon(config)
    try:
        trio.run(daemon.run)
    except (LoadError, StartupError, BaseExceptionGroup) as exc:
        load, startup = _first(exc, LoadError), _first(exc, StartupError)
        if load is not None:
            for d in load.diagnostics:
                (log.error if d.is_error else log.warning)("%s", d.format())
        elif startup is not None:
            log.error("%s", startup)
        else:
            raise
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _secrets_of(config: Config) -> list[str]:
    """Every secret value the config holds, for log redaction (engine/redaction.py)."""
    return secret_values(config)
