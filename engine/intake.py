"""What a connector sees of the reactor: its `ConnectorContext` (connectors/base.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

log = logging.getLogger("herald.connectors")


class Context:
    """Bound to one connector entry; journals its events and cursors atomically."""

    def __init__(self, daemon, name: str):
        self._daemon = daemon
        self.name = name
        self.log = logging.getLogger(f"herald.connectors.{name}")

    async def emit(self, events: Sequence[Mapping[str, Any]], *,
                   cursor: tuple[str, str] | None = None,
                   snapshots: Sequence[tuple[str, str, Mapping | None]] = ()) -> list[str]:
        """Journal events with the cursor and row snapshots ((source, key, data or None))
        in one transaction. Returns the ids of the events that were new."""
        parsed = self._daemon.parse_events(list(events)) if events else []
        full_cursor = (self.name, cursor[0], cursor[1]) if cursor else None
        full_snapshots = [(self.name, src, key, data) for src, key, data in snapshots]
        if not parsed and full_cursor is None and not full_snapshots:
            return []
        accepted = await self._daemon.accept(parsed, self.name, full_cursor, full_snapshots)
        self.alive()
        return [event_id for event_id, new in accepted if new]

    async def get_snapshots(self, source: str, keys: Sequence[str]) -> dict[str, dict]:
        """The stored snapshots of these row keys (for sources whose rows change in place)."""
        return await self._daemon.db(self._daemon.store.get_snapshots, self.name, source, list(keys))

    async def get_cursor(self, key: str) -> str | None:
        return await self._daemon.db(self._daemon.store.get_cursor, self.name, key)

    async def set_cursor(self, key: str, value: str) -> None:
        await self._daemon.db(self._daemon.store.set_cursor, self.name, key, value)

    def alive(self, detail: str = "") -> None:
        self._set(True, detail or "ok")

    def down(self, detail: str) -> None:
        status = self._status()
        if status.alive or status.detail != detail:
            log.warning("connector %s is down: %s", self.name, detail)
        self._set(False, detail)

    def _status(self):
        return self._daemon.connectors[self.name]

    def _set(self, alive: bool, detail: str) -> None:
        status = self._status()
        if status.alive != alive or status.since is None:
            status.since = datetime.now(timezone.utc)
        status.alive, status.detail = alive, detail
