"""What the delivery workers get from the daemon: a narrow, typed set of services.

The dispatcher never sees the daemon; the daemon builds one `DeliveryServices` and hands
it over. Everything here is either a shared resource (the store and the one database
runner), a view that follows reloads (`config()`), a wake-up (Pulse) or a hook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable, Mapping

import httpx

from herald.engine.config import Config
from herald.engine.delivery.alerts import Alerter
from herald.engine.runtime import Clock, Pulse
from herald.engine.store import Store

# Runs a blocking store call in the database thread, one at a time: `await db(fn, *args)`.
DbRunner = Callable[..., Awaitable[Any]]


def _ignore(url: str) -> None:
    pass


@dataclass(frozen=True)
class DeliveryServices:
    store: Store
    db: DbRunner
    clock: Clock
    config: Callable[[], Config]                  # the current config: follows reloads
    events_wake: Pulse                            # the processor: new events in the journal
    dispatch_wake: Pulse                          # the send loop: messages may be due
    alerter: Alerter | None = None                # admin incidents (None: no alerts configured)
    bsg_transport: httpx.AsyncBaseTransport | None = None     # tests: the main endpoint's transport
    backup_transports: Mapping[str, httpx.AsyncBaseTransport] = field(default_factory=dict)  # by name
    on_sandbox: Callable[[str], None] = _ignore   # told the built-in fake BSG's URL in sandbox mode

    def now(self) -> datetime:
        return self.clock.now()

    def ts(self) -> float:
        """The clock's now in epoch seconds (the outbox's time columns)."""
        return self.clock.now().timestamp()
