"""Who may be written to: subscribers of configured lists (with their hashed confirmation
codes) and the opt-out list (STOP), which takes back a campaign's unsent messages."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from herald.engine.store.sqlite.common import UNSENT_SQL, _now, to_epoch
from herald.engine.store.sqlite.connection import SQLiteConnection
from herald.engine.store.states import MessageState

_SKIPPED = MessageState.SKIPPED.value


class AudienceTables(SQLiteConnection):
    """Tables `subscribers` (state: pending | confirmed | cancelled) and `opt_outs`."""

    def subscriber(self, list_name: str, phone: str) -> dict | None:
        with self._lock:
            row = self._execute("SELECT * FROM subscribers WHERE list = ? AND phone = ?", (list_name, phone)).fetchone()
        return dict(row) if row else None

    def put_pending_subscriber(self, list_name: str, phone: str, site: str, email: str | None, code_hash: str,
                               expires: datetime) -> dict:
        now = _now()
        with self._lock:
            row = self._execute(
                "INSERT INTO subscribers (list, phone, site, email, state, code_hash, code_expires, codes_sent,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, 1, ?, ?) "
                "ON CONFLICT(list, phone) DO UPDATE SET state = 'pending', site = excluded.site, "
                "email = COALESCE(excluded.email, email), code_hash = excluded.code_hash, "
                "code_expires = excluded.code_expires, attempts = 0, codes_sent = codes_sent + 1, "
                "updated_at = excluded.updated_at, cancelled_at = NULL RETURNING *",
                (list_name, phone, site, email, code_hash, to_epoch(expires), now, now)).fetchone()
        return dict(row)

    def wrong_code(self, subscriber_id: int, cap: int) -> int:
        """Count a wrong guess; the tries left (at 0 the code is void)."""
        with self._lock:
            attempts = self._execute("UPDATE subscribers SET attempts = attempts + 1, updated_at = ? WHERE id = ? "
                                     "RETURNING attempts", (_now(), subscriber_id)).fetchone()[0]
            if attempts >= cap:
                self._execute("UPDATE subscribers SET code_hash = NULL WHERE id = ?", (subscriber_id,))
        return max(cap - attempts, 0)

    def confirm_subscriber(self, subscriber_id: int, when: datetime) -> dict:
        with self._lock:
            row = self._execute("UPDATE subscribers SET state = 'confirmed', code_hash = NULL, confirmed_at = ?, "
                                "updated_at = ? WHERE id = ? RETURNING *",
                                (to_epoch(when), _now(), subscriber_id)).fetchone()
            self._execute("DELETE FROM opt_outs WHERE phone = ?", (row["phone"],))
        return dict(row)

    def put_confirmed_subscriber(self, list_name: str, phone: str, site: str, when: datetime) -> None:
        at = to_epoch(when)
        with self._lock:
            self._execute("INSERT INTO subscribers (list, phone, site, state, created_at, updated_at, confirmed_at)"
                          " VALUES (?, ?, ?, 'confirmed', ?, ?, ?) ON CONFLICT(list, phone) DO UPDATE SET "
                          "state = 'confirmed', code_hash = NULL, confirmed_at = excluded.confirmed_at, "
                          "updated_at = excluded.updated_at, cancelled_at = NULL", (list_name, phone, site, at, at, at))
            self._execute("DELETE FROM opt_outs WHERE phone = ?", (phone,))

    def cancel_subscribers(self, phone: str, list_name: str | None, when: datetime) -> list[dict]:
        """Cancel (phone, list), or every list of phone: the rows that were not cancelled yet."""
        at = to_epoch(when)
        where, params = ("phone = ? AND list = ?", (phone, list_name)) if list_name else ("phone = ?", (phone,))
        with self._lock:
            rows = self._execute(f"UPDATE subscribers SET state = 'cancelled', code_hash = NULL, cancelled_at = ?, "
                                 f"updated_at = ? WHERE {where} AND state != 'cancelled' RETURNING *",
                                 (at, at, *params)).fetchall()
        return sorted((dict(r) for r in rows), key=lambda r: r["id"])

    def confirmed_subscribers(self, list_name: str) -> list[str]:
        with self._lock:
            rows = self._execute("SELECT phone FROM subscribers WHERE list = ? AND state = 'confirmed' "
                                 "AND phone NOT IN (SELECT phone FROM opt_outs) ORDER BY id", (list_name,)).fetchall()
        return [r[0] for r in rows]

    def cancelled_subscribers(self, list_name: str, phones: Iterable[str]) -> set[str]:
        phones = list(phones)
        out: set[str] = set()
        with self._lock:
            for i in range(0, len(phones), 500):
                chunk = phones[i:i + 500]
                out.update(r[0] for r in self._execute(
                    f"SELECT phone FROM subscribers WHERE list = ? AND state = 'cancelled' "
                    f"AND phone IN ({','.join('?' * len(chunk))})", (list_name, *chunk)))
        return out

    # ---- the opt-out list ----
    def add_opt_out(self, phone: str, source: str, when: datetime) -> int:
        """Put `phone` on the opt-out list and, in the same transaction, skip every campaign
        message to it not yet handed to BSG (queued, deferred, held): how many."""
        now = _now()
        with self.transaction():
            self._execute("INSERT OR IGNORE INTO opt_outs VALUES (?, ?, ?)", (phone, source, to_epoch(when)))
            return self._execute("UPDATE outbox SET state = ?, reason = 'opted out', updated_at = ?, "
                                 "final_at = ? WHERE to_phone = ? AND campaign_id IS NOT NULL "
                                 f"AND state IN {UNSENT_SQL}", (_SKIPPED, now, now, phone)).rowcount

    def opted_out(self, phones: Iterable[str]) -> set[str]:
        phones = list(phones)
        out: set[str] = set()
        with self._lock:
            for i in range(0, len(phones), 500):
                chunk = phones[i:i + 500]
                out.update(r[0] for r in self._execute(
                    f"SELECT phone FROM opt_outs WHERE phone IN ({','.join('?' * len(chunk))})", chunk))
        return out
