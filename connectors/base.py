"""The small interface every connector implements (see docs/connectors/writing.md).

A connector turns something it watches (a database, a mailbox, a clock) into events.
The reactor builds it from its `connectors:` config entry, then runs it in the
reactor's nursery until shutdown, when it is cancelled. Everything it needs from
Herald comes through its `ConnectorContext`:

- `await ctx.emit(events, cursor=("last_id", "42"))` journals events — and moves the
  connector's cursor in the same transaction, so a crash never loses an event nor
  repeats one; it returns once they are committed.
- `await ctx.get_cursor("last_id")` reads the cursor back after a restart.
- `ctx.alive()` / `ctx.down("why")` report liveness for `/health`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Protocol, Sequence

import trio

from herald.engine.config import ConnectorConfig, Secret, reveal
from herald.engine.errors import ConfigError, Diagnostic, EventError, Location

# What a connector needs from Herald, importable from this one module (a third-party
# connector imports only `herald.connectors.base`; docs/connectors/writing.md).
__all__ = ["ConfigError", "Connector", "ConnectorConfig", "ConnectorContext", "Diagnostic", "EventError",
           "Location", "Secret", "reveal"]


class ConnectorContext(Protocol):
    name: str                                  # unique per connector entry, for cursors and /health

    async def emit(self, events: Sequence[Mapping[str, Any]], *,
                   cursor: tuple[str, str] | None = None,
                   snapshots: Sequence[tuple[str, str, Mapping | None]] = ()) -> list[str]:
        """Validate and journal events (RULES.md shape) with the cursor and row snapshots
        ((source, key, data), None deletes) in one transaction; returns the ids that were
        new once committed. A bad event raises EventError with a JSON pointer; none are kept."""

    async def get_snapshots(self, source: str, keys: Sequence[str]) -> dict[str, dict]:
        """The last stored snapshot of each row key (for rows that change in place)."""

    async def get_cursor(self, key: str) -> str | None: ...

    async def set_cursor(self, key: str, value: str) -> None: ...

    def alive(self, detail: str = "") -> None: ...

    def down(self, detail: str) -> None: ...


class Connector(Protocol):
    """What the reactor needs from a connector class."""

    type: ClassVar[str]

    def __init__(self, config: ConnectorConfig) -> None:
        """Validate `config.options`; raise herald.engine.errors.ConfigError with located diagnostics."""

    async def run(self, ctx: ConnectorContext, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Call `task_status.started()` once ready; then work until cancelled."""
