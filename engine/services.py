"""What the daemon hands to the components that run beside it — the campaign feeder,
manual sends, incoming SMS, the HTTP routes, the connectors' context — instead of itself.

The daemon builds one `Services` when it starts (engine/daemon.py) and keeps the parts
it owns: the store and its worker thread, the clock, the wake-ups, what a reload swaps
(config, rules, directory). A component reads through this object and never through
the daemon, so what it may touch is written here, and the daemon does not import it
back. What a reload swaps is read through `loaded()` at each use, never kept.

This module names the engine's types for its annotations only (under TYPE_CHECKING):
at run time it needs nothing but the wake-ups, so every component may import it without
an import cycle (the import-linter contracts in pyproject.toml check type-only imports
apart).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol, Sequence

from herald.engine.runtime import Pulse

if TYPE_CHECKING:
    import trio

    from herald.engine.directory import Directory
    from herald.engine.audience.subscriptions import Refusals
    from herald.engine.bsg.client import BsgClient
    from herald.engine.config import Config
    from herald.engine.delivery.alerts import Alerter
    from herald.engine.delivery.endpoints import Endpoint, Router
    from herald.engine.events import Event
    from herald.engine.rules.evaluate import Evaluator, PlannedMessage
    from herald.engine.rules.loader import Project
    from herald.engine.runtime import Clock
    from herald.engine.store import Store


@dataclass(frozen=True)
class Loaded:
    """What a reload swaps, all at once: read it at each use, never keep it."""

    config: Config
    project: Project
    directory: Directory
    generation: int                 # +1 at each successful reload


@dataclass(frozen=True)
class Wakes:
    """The wake-ups between the daemon's tasks: `set()` when there is work for one."""

    events: Pulse = field(default_factory=Pulse)      # the processor: new journal events
    timers: Pulse = field(default_factory=Pulse)      # the timer task: a new or earlier `after`
    dispatch: Pulse = field(default_factory=Pulse)    # the dispatcher: messages due in the outbox
    campaigns: Pulse = field(default_factory=Pulse)   # the campaign feeder: a campaign changed
    reloaded: Pulse = field(default_factory=Pulse)    # the scheduler: the rules changed


class Sending(Protocol):
    """What the routes and the feeder use of the dispatcher (engine/delivery/dispatcher.py)."""

    router: Router | None

    @property
    def client(self) -> BsgClient | None: ...

    def client_for(self, endpoint: Endpoint, site: str | None) -> BsgClient: ...

    def apply_receipts(self, bodies: Sequence[dict], endpoint: str | None = None) -> tuple[dict, bool]: ...


class Enqueue(Protocol):
    """Write a planned message into the outbox, inside the caller's transaction (in the
    database thread); its id. The dispatcher hears of it through `wakes.dispatch`."""

    def __call__(self, m: PlannedMessage, site: str, firing_id: int | None = None, kind: str = "rule") -> int:
        ...


class Accept(Protocol):
    """Journal events (committed before it returns) and wake the processor:
    [(event id, new?)] in order."""

    def __call__(self, events: Sequence[Event], source: str,
                 cursor: tuple[str, str, str] | None = None,
                 snapshots: Sequence[tuple[str, str, str, Mapping | None]] = ()) -> Awaitable[list[tuple[str, bool]]]:
        ...


@dataclass(frozen=True)
class Services:
    """Built by the daemon once its store is open; `config`, `project` and `directory`
    follow reloads (each read goes through `loaded()`)."""

    store: Store
    db: Callable[..., Awaitable[Any]]      # db(fn, *args): run blocking store work in its thread, one at a time
    clock: Clock
    wakes: Wakes
    stopping: trio.Event                   # set when shutdown begins: intake answers 503
    loaded: Callable[[], Loaded]           # config, rules and directory in force
    accept: Accept
    enqueue: Enqueue                       # engine/delivery/outbox.py's, on this store and the sites in force
    evaluator: Callable[[], Evaluator]     # the rules' evaluator on the store; its directory knows the lists
    parse_events: Callable[[Any], list[Event]]   # one event or a list; EventError points into it
    reload: Callable[[], Awaitable[tuple[bool, list[str]]]]
    health: Callable[[], Awaitable[dict]]  # the body of GET /health
    sending: Callable[[], Sending | None]  # the dispatcher, once it has started
    alerter: Alerter | None
    refusals: Refusals                     # POST /subscriptions refusals, counted for GET /health

    @property
    def config(self) -> Config:
        return self.loaded().config

    @property
    def project(self) -> Project:
        return self.loaded().project

    @property
    def directory(self) -> Directory:
        return self.loaded().directory
