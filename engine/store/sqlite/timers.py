"""Durable `after` timers: a rule's delayed check of an event, kept across restarts."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Mapping, Sequence

from herald.engine.store.sqlite.common import _iso, _json, _now, from_epoch, to_epoch
from herald.engine.store.sqlite.connection import SQLiteConnection


class TimerTables(SQLiteConnection):
    """Table `timers` (status: pending | done | cancelled)."""

    def add_timer(self, rule_id: str, event_id: str, due: datetime, previous: Mapping | None) -> int:
        with self._lock:
            cur = self._execute(
                "INSERT INTO timers (rule_id, event_id, due, previous, created_at) VALUES (?, ?, ?, ?, ?)",
                (rule_id, event_id, to_epoch(due), _json(previous) if previous is not None else None, _now()))
            return cur.lastrowid

    def due_timers(self, now: datetime, limit: int = 200) -> list[dict]:
        with self._lock:
            rows = self._execute("SELECT * FROM timers WHERE status = 'pending' AND due <= ? ORDER BY due LIMIT ?",
                                 (to_epoch(now), limit)).fetchall()
        return [dict(r) for r in rows]

    def next_timer_due(self) -> datetime | None:
        with self._lock:
            row = self._execute("SELECT MIN(due) FROM timers WHERE status = 'pending'").fetchone()
        return from_epoch(row[0]) if row and row[0] is not None else None

    def finish_timer(self, timer_id: int, status: str, reason: str = "") -> None:
        with self._lock:
            self._execute("UPDATE timers SET status = ?, reason = ?, done_at = ? WHERE id = ?",
                          (status, reason, _now(), timer_id))

    def cancel_timers_of(self, rule_ids: Iterable[str], reason: str) -> int:
        ids = list(rule_ids)
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self.transaction():
            cur = self._execute(f"UPDATE timers SET status = 'cancelled', reason = ?, done_at = ? "
                                f"WHERE status = 'pending' AND rule_id IN ({marks})", (reason, _now(), *ids))
        return cur.rowcount

    def timers_of(self, event_ids: Sequence[str]) -> list[dict]:
        """`after` timers of these events: rule, due, status, reason, created_at, done_at."""
        if not event_ids:
            return []
        marks = ",".join("?" * len(event_ids))
        with self._lock:
            rows = self._execute(f"SELECT * FROM timers WHERE event_id IN ({marks}) ORDER BY id",
                                 tuple(event_ids)).fetchall()
        return [{"id": r["id"], "rule": r["rule_id"], "event": r["event_id"], "due": _iso(r["due"]),
                 "status": r["status"], "reason": r["reason"] or "", "created_at": _iso(r["created_at"]),
                 "done_at": _iso(r["done_at"])} for r in rows]
