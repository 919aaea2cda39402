"""The event journal, the last known state of every entity, and the rule runtime's memory
(firings with their traces, `once per`). Exactly-once rests here: an event is processed
in the same transaction that records its firings, messages, timers and new entity state
(a crash rolls all of it back, and the event is processed again)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Iterable, Mapping

from herald.engine.events import Event
from herald.engine.store.sqlite.common import _json, _json_path, _like, _now, from_epoch, to_epoch
from herald.engine.store.sqlite.connectors import ConnectorTables
from herald.engine.store.sqlite.render import firing_json


class JournalTables(ConnectorTables):
    """Tables `events`, `entities`, `firings`, `once_per`. Builds on the connector tables:
    a batch of events is journaled with its connector's cursor and snapshots, atomically."""

    # ---- the event journal ----
    def add_events(self, events: Iterable[Event], source: str,
                   cursor: tuple[str, str, str] | None = None,
                   snapshots: Iterable[tuple[str, str, str, Mapping | None]] = ()) -> list[tuple[str, bool]]:
        """Journal events, with a connector's cursor and row snapshots, atomically.
        Returns (id, is_new); an id already journaled is kept as it was: the same id
        never fires twice. A snapshot of None deletes it."""
        out = []
        now = _now()
        with self.transaction():
            for e in events:
                cur = self._execute(
                    "INSERT OR IGNORE INTO events (id, type, site, time, data, previous, source, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.id, e.type, e.site, to_epoch(e.time), _json(e.data),
                     _json(e.previous) if e.previous is not None else None, source, now))
                out.append((e.id, cur.rowcount == 1))
            if cursor is not None:
                self.set_cursor(*cursor)
            self._put_snapshots(snapshots, now)
        return out

    def pending_events(self, limit: int = 200) -> list[Event]:
        with self._lock:
            rows = self._execute("SELECT * FROM events WHERE status = 'pending' ORDER BY seq LIMIT ?",
                                 (limit,)).fetchall()
        return [self._event(r) for r in rows]

    def event(self, event_id: str) -> Event | None:
        with self._lock:
            row = self._execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        return self._event(row) if row else None

    def event_type(self, event_id: str) -> str | None:
        """Only the type of a journaled event (no JSON to decode: asked per final message)."""
        with self._lock:
            row = self._execute("SELECT type FROM events WHERE id = ?", (event_id,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _event(row: sqlite3.Row) -> Event:
        previous = json.loads(row["previous"]) if row["previous"] else None
        return Event(row["type"], json.loads(row["data"]), row["site"], row["id"],
                     from_epoch(row["time"]), previous)

    def mark_events_done(self, ids: Iterable[str]) -> None:
        now = _now()
        with self.transaction():
            self._conn.executemany("UPDATE events SET status = 'done', processed_at = ? WHERE id = ?",
                                   [(now, i) for i in ids])

    def entity_events(self, entity_type: str, entity_id: str, site: str) -> list[Event]:
        """The journaled events about one entity, oldest first: of any type, whose
        data.TYPE.id is the id — for an order also those whose data.shipment.order_id is
        (a shipment's events are its order's). A scan of the journal: timelines are read
        by people, one at a time."""
        paths = [_json_path(entity_type, "id")] + (["$.shipment.order_id"] if entity_type == "order" else [])
        match = " OR ".join("CAST(json_extract(data, ?) AS TEXT) = ?" for _ in paths)
        params = [p for path in paths for p in (path, str(entity_id))]
        with self._lock:
            rows = self._execute(f"SELECT * FROM events WHERE site = ? AND ({match}) ORDER BY seq",
                                 (site, *params)).fetchall()
        return [self._event(r) for r in rows]

    def entity_id_by_number(self, entity_type: str, number: str, site: str) -> str | None:
        """The id of the entity whose data.TYPE.number is `number` (an order's public
        number, e.g. A-42, is not its id): from the latest event that says so, else from
        the kept states. None when no event or state carries that number."""
        id_path, number_path = _json_path(entity_type, "id"), _json_path(entity_type, "number")
        with self._lock:
            row = self._execute(
                "SELECT CAST(json_extract(data, ?) AS TEXT) FROM events WHERE site = ? "
                "AND CAST(json_extract(data, ?) AS TEXT) = ? AND json_extract(data, ?) IS NOT NULL "
                "ORDER BY seq DESC LIMIT 1",
                (id_path, site, number_path, number, id_path)).fetchone()
            if row is None:
                row = self._execute(
                    "SELECT CAST(json_extract(data, ?) AS TEXT) FROM entities WHERE key LIKE ? ESCAPE '\\' "
                    "AND CAST(json_extract(data, ?) AS TEXT) = ? AND json_extract(data, ?) IS NOT NULL "
                    "ORDER BY updated_at DESC LIMIT 1",
                    (id_path, _like(entity_type) + ":%@" + _like(site), number_path, number, id_path)).fetchone()
        return row[0] if row else None

    # ---- entity state and once-per memory (the evaluator's StateStore) ----
    def get_state(self, entity_key: str) -> Mapping | None:
        with self._lock:
            row = self._execute("SELECT data FROM entities WHERE key = ?", (entity_key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_state(self, entity_key: str, data: Mapping) -> None:
        with self._lock:
            self._execute("INSERT INTO entities (key, data, updated_at) VALUES (?, ?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                          (entity_key, _json(data), _now()))

    def last_firing(self, rule_id: str, key: tuple) -> datetime | None:
        with self._lock:
            row = self._execute("SELECT at FROM once_per WHERE rule_id = ? AND key = ?",
                                (rule_id, _json(key))).fetchone()
        return from_epoch(row[0]) if row else None

    def record_firing(self, rule_id: str, key: tuple, when: datetime) -> None:
        with self._lock:
            self._execute("INSERT INTO once_per VALUES (?, ?, ?) ON CONFLICT(rule_id, key) DO UPDATE SET at = excluded.at",
                          (rule_id, _json(key), to_epoch(when)))

    # ---- firings (a rule's verdict on an event, with its trace) ----
    def add_firing(self, event_id: str, rule_id: str, rule_version: str, fired: bool, reason: str,
                   trace: Mapping, when: datetime) -> int:
        with self._lock:
            cur = self._execute(
                "INSERT INTO firings (event_id, rule_id, rule_version, fired, reason, trace, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event_id, rule_id, rule_version, int(fired), reason, _json(trace), to_epoch(when)))
            return cur.lastrowid

    def firings_of(self, event_id: str) -> list[dict]:
        with self._lock:
            rows = self._execute("SELECT * FROM firings WHERE event_id = ? ORDER BY id", (event_id,)).fetchall()
        return [firing_json(dict(r)) for r in rows]

