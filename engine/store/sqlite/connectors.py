"""Connector state: cursors (how far a connector has read) and row snapshots (the last
seen form of each source row, so a poll can tell what changed). Written with the events
they produced, in one transaction (JournalTables.add_events)."""

from __future__ import annotations

import json
from typing import Iterable, Mapping

from herald.engine.store.sqlite.common import _json, _now
from herald.engine.store.sqlite.connection import SQLiteConnection


class ConnectorTables(SQLiteConnection):
    """Tables `cursors` and `snapshots`."""

    def get_cursor(self, connector: str, key: str) -> str | None:
        with self._lock:
            row = self._execute("SELECT value FROM cursors WHERE connector = ? AND key = ?", (connector, key)).fetchone()
        return row[0] if row else None

    def set_cursor(self, connector: str, key: str, value: str) -> None:
        with self._lock:
            self._execute("INSERT INTO cursors VALUES (?, ?, ?, ?) ON CONFLICT(connector, key) DO UPDATE SET "
                          "value = excluded.value, updated_at = excluded.updated_at", (connector, key, value, _now()))

    def get_snapshots(self, connector: str, source: str, keys: Iterable[str]) -> dict[str, dict]:
        """The last snapshot of each row key that has one."""
        keys = list(keys)
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for key, data in self._execute(
                        f"SELECT key, data FROM snapshots WHERE connector = ? AND source = ? AND key IN ({marks})",
                        (connector, source, *chunk)):
                    out[key] = json.loads(data)
        return out

    def _put_snapshots(self, snapshots: Iterable[tuple[str, str, str, Mapping | None]], now: float) -> None:
        """(connector, source, key, data): keep each; a data of None deletes it."""
        for connector, src, key, data in snapshots:
            if data is None:
                self._execute("DELETE FROM snapshots WHERE connector = ? AND source = ? AND key = ?",
                              (connector, src, key))
            else:
                self._execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?) ON CONFLICT(connector, source, key) "
                              "DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                              (connector, src, key, _json(data), now))
