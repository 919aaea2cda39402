"""Admin alerts (engine/delivery/alerts.py): incidents, open until resolved and at most
one open per key, and the alert mails each opening and recovery queues until the SMTP
server accepts them."""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

from herald.engine.store.sqlite.common import _json, from_epoch, to_epoch
from herald.engine.store.sqlite.connection import SQLiteConnection
from herald.engine.store.sqlite.render import alert_mail


class AlertTables(SQLiteConnection):
    """Tables `incidents` and `alert_mails`."""

    def open_incident(self, key: str, site: str | None, subject: str, when: datetime) -> int | None:
        """Open incident `key`; its id, or None when it was already open (then only counted)."""
        at = to_epoch(when)
        with self._lock:
            cur = self._execute("INSERT OR IGNORE INTO incidents (key, site, subject, opened_at, last_seen_at)"
                                " VALUES (?, ?, ?, ?, ?)", (key, site, subject, at, at))
            if cur.rowcount == 1:
                return cur.lastrowid
            self._execute("UPDATE incidents SET occurrences = occurrences + 1, last_seen_at = ? "
                          "WHERE key = ? AND resolved_at IS NULL", (at, key))
        return None

    def resolve_incident(self, key: str, when: datetime) -> dict | None:
        """Close incident `key`; the closed incident (id, key, site, subject, opened_at,
        occurrences), or None when it was not open."""
        with self._lock:
            row = self._execute("UPDATE incidents SET resolved_at = ? WHERE key = ? AND resolved_at IS NULL "
                                "RETURNING id, key, site, subject, opened_at, occurrences",
                                (to_epoch(when), key)).fetchone()
        if row is None:
            return None
        return {**dict(row), "opened_at": from_epoch(row["opened_at"])}

    def open_incidents(self) -> list[dict]:
        """Open incidents, oldest first: key, site, subject, since, last_seen, occurrences."""
        with self._lock:
            rows = self._execute("SELECT key, site, subject, opened_at, last_seen_at, occurrences FROM incidents "
                                 "WHERE resolved_at IS NULL ORDER BY opened_at, id").fetchall()
        return [{"key": r["key"], "site": r["site"], "subject": r["subject"], "since": from_epoch(r["opened_at"]),
                 "last_seen": from_epoch(r["last_seen_at"]), "occurrences": r["occurrences"]} for r in rows]

    def queue_alert_mail(self, incident_id: int, kind: str, recipients: Sequence[str], subject: str,
                         body: str, message_id: str, when: datetime) -> int:
        with self._lock:
            cur = self._execute(
                "INSERT INTO alert_mails (incident_id, kind, recipients, subject, body, message_id, created_at,"
                " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (incident_id, kind, _json(list(recipients)), subject, body, message_id,
                 to_epoch(when), to_epoch(when)))
            return cur.lastrowid

    def due_alert_mails(self, now: datetime, limit: int = 20) -> list[dict]:
        """Unsent alert mails whose (re)try time has come, oldest first."""
        with self._lock:
            rows = self._execute("SELECT * FROM alert_mails WHERE sent_at IS NULL AND next_attempt_at <= ? "
                                 "ORDER BY id LIMIT ?", (to_epoch(now), limit)).fetchall()
        return [alert_mail(r) for r in rows]

    def next_alert_mail_due(self) -> datetime | None:
        with self._lock:
            row = self._execute("SELECT MIN(next_attempt_at) FROM alert_mails WHERE sent_at IS NULL").fetchone()
        return from_epoch(row[0]) if row and row[0] is not None else None

    def alert_mail_sent(self, mail_id: int, when: datetime) -> None:
        with self._lock:
            self._execute("UPDATE alert_mails SET sent_at = ?, attempts = attempts + 1 WHERE id = ?",
                          (to_epoch(when), mail_id))

    def alert_mail_failed(self, mail_id: int, error: str, retry_at: datetime) -> None:
        with self._lock:
            self._execute("UPDATE alert_mails SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                          "WHERE id = ?", (error, to_epoch(retry_at), mail_id))

    def alert_mails(self, *, unsent: bool = False, limit: int = 100) -> list[dict]:
        """Alert mails, newest first (all, or only those not yet accepted by the SMTP server)."""
        where = " WHERE sent_at IS NULL" if unsent else ""
        with self._lock:
            rows = self._execute(f"SELECT * FROM alert_mails{where} ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [alert_mail(r) for r in rows]

    def alert_mail_backlog(self) -> int:
        """How many alert mails wait for the SMTP server."""
        with self._lock:
            return self._execute("SELECT COUNT(*) FROM alert_mails WHERE sent_at IS NULL").fetchone()[0]
