"""What a connector sees of the reactor: its `ConnectorContext` (connectors/base.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from herald.engine.services import Services

log = logging.getLogger("herald.connectors")


@dataclass
class ConnectorStatus:
    """One connector's liveness, as GET /health shows it."""

    type: str
    alive: bool = False
    detail: str = "starting"
    since: datetime | None = None


class Context:
    """Bound to one connector entry; journals its events and cursors atomically."""

    def __init__(self, services: Services, name: str, status: ConnectorStatus):
        self._services = services
        self.name = name
        self._status = status
        self.log = logging.getLogger(f"herald.connectors.{name}")

    async def emit(self, events: Sequence[Mapping[str, Any]], *,
                   cursor: tuple[str, str] | None = None,
                   snapshots: Sequence[tuple[str, str, Mapping | None]] = ()) -> list[str]:
        """Journal events with the cursor and row snapshots ((source, key, data or None))
        in one transaction. Returns the ids of the events that were new."""
        parsed = self._services.parse_events(list(events)) if events else []
        full_cursor = (self.name, cursor[0], cursor[1]) if cursor else None
        full_snapshots = [(self.name, src, key, data) for src, key, data in snapshots]
        if not parsed and full_cursor is None and not full_snapshots:
            return []
        accepted = await self._services.accept(parsed, self.name, full_cursor, full_snapshots)
        self.alive()
        return [event_id for event_id, new in accepted if new]

    async def get_snapshots(self, source: str, keys: Sequence[str]) -> dict[str, dict]:
        """The stored snapshots of these row keys (for sources whose rows change in place)."""
        return await self._services.db(self._services.store.get_snapshots, self.name, source, list(keys))

    async def get_cursor(self, key: str) -> str | None:
        return await self._services.db(self._services.store.get_cursor, self.name, key)

    async def set_cursor(self, key: str, value: str) -> None:
        await self._services.db(self._services.store.set_cursor, self.name, key, value)

    def alive(self, detail: str = "") -> None:
        self._set(True, detail or "ok")

    def down(self, detail: str) -> None:
        status = self._status
        if status.alive or status.detail != detail:
            log.warning("connector %s is down: %s", self.name, detail)
        self._set(False, detail)

    def _set(self, alive: bool, detail: str) -> None:
        status = self._status
        if status.alive != alive or status.since is None:
            status.since = datetime.now(timezone.utc)
        status.alive, status.detail = alive, detail
