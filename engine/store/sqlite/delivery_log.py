"""What happened to a message on its way: delivery reports that came early (receipts),
every attempt (send, lookup, status, fallback …) and the BSG exchanges (no keys)."""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from herald.engine.store.sqlite.common import _iso, _json, _now
from herald.engine.store.sqlite.connection import SQLiteConnection


class DeliveryLogTables(SQLiteConnection):
    """Tables `receipts`, `attempts`, `exchanges`, `exchange_refs`."""

    # ---- delivery receipts (BSG callbacks) ----
    def message_for_receipt(self, reference: str | None, bsg_id: str | None,
                            endpoint: str | None = None) -> dict | None:
        """The message a delivery report is about: by reference, else by BSG id. BSG ids
        are per endpoint: an id-only report matches only when one message (of `endpoint`,
        when given) has that id — an ambiguous one matches nothing."""
        columns = ("id, reference, channel, state, sent_at, bsg_id, omni, leg, sms_reference, endpoint, "
                   "viber_bsg_id, fallback_at, stale_at, uncertain_at")
        # receipt_leg: which leg the report is about — viber (an omni's first leg, or a
        # plain Viber message), sms (an engine omni's SMS leg, or a plain SMS), current
        current = "CASE WHEN channel = 'sms' OR leg = 'sms' THEN 'sms' ELSE 'viber' END"
        first = "CASE WHEN channel = 'sms' THEN 'sms' ELSE 'viber' END"
        with self._lock:
            if reference:
                for sql in (f"SELECT {columns}, {first} AS receipt_leg FROM outbox WHERE reference = ?",
                            f"SELECT {columns}, 'sms' AS receipt_leg FROM outbox WHERE sms_reference = ?"):
                    row = self._execute(sql, (reference,)).fetchone()
                    if row is not None:
                        return dict(row)
                return None
            if not bsg_id:
                return None
            scope, params = ("AND endpoint = ?", (endpoint,)) if endpoint else ("", ())
            rows = self._execute(
                f"SELECT {columns}, {current} AS receipt_leg FROM outbox WHERE bsg_id = ? {scope} "
                f"UNION ALL SELECT {columns}, 'viber' AS receipt_leg FROM outbox WHERE viber_bsg_id = ? {scope} "
                "LIMIT 2", (bsg_id, *params, bsg_id, *params)).fetchall()
        return dict(rows[0]) if len(rows) == 1 else None

    def add_receipt(self, reference: str | None, bsg_id: str | None, status: str, body: Mapping) -> int:
        """Keep a delivery report for later (its message is not sent yet)."""
        with self._lock:
            cur = self._execute("INSERT INTO receipts (reference, bsg_id, status, body, received_at)"
                                " VALUES (?, ?, ?, ?, ?)", (reference, bsg_id, status, _json(body), _now()))
            return cur.lastrowid

    def pending_receipts(self, reference: str, bsg_id: str | None) -> list[dict]:
        """Unapplied reports for a message, by its reference or (id-only reports) its BSG id; oldest first."""
        with self._lock:
            rows = self._execute(
                "SELECT id, body FROM receipts WHERE applied_at IS NULL AND reference = ? "
                "UNION SELECT id, body FROM receipts WHERE applied_at IS NULL AND reference IS NULL "
                "AND bsg_id = ? ORDER BY id", (reference, bsg_id or "")).fetchall()
        return [{"id": r[0], "body": json.loads(r[1])} for r in rows]

    def mark_receipts_applied(self, ids: Iterable[int]) -> None:
        now = _now()
        with self._lock:
            self._conn.executemany("UPDATE receipts SET applied_at = ? WHERE id = ?", [(now, i) for i in ids])

    # ---- the timeline of a message's attempts ----
    def add_attempt(self, message_id: int, what: str, outcome: str, *, endpoint: str | None = None,
                    leg: str | None = None, reference: str | None = None, detail: str = "") -> None:
        with self._lock:
            self._execute("INSERT INTO attempts (message_id, at, what, endpoint, leg, reference, outcome, detail)"
                          " VALUES (?,?,?,?,?,?,?,?)", (message_id, _now(), what, endpoint, leg, reference,
                                                         outcome, detail))

    def attempts_of(self, message_id: int) -> list[dict]:
        with self._lock:
            rows = self._execute("SELECT at, what, endpoint, leg, reference, outcome, detail FROM attempts "
                                 "WHERE message_id = ? ORDER BY id", (message_id,)).fetchall()
        return [{**dict(r), "at": _iso(r["at"])} for r in rows]

    def count_attempts(self, message_id: int, what: str, outcome: str) -> int:
        with self._lock:
            return self._execute("SELECT COUNT(*) FROM attempts WHERE message_id = ? AND what = ? AND outcome = ?",
                                 (message_id, what, outcome)).fetchone()[0]

    # ---- exchanges (traces of BSG calls; keys are never stored) ----
    def add_exchange(self, endpoint: str, method: str, path: str, request: Any, status: int | None,
                     response: Any, seconds: float, references: Iterable[str]) -> None:
        with self._lock:
            cur = self._execute(
                "INSERT INTO exchanges (at, endpoint, method, path, request, status, response, seconds)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (_now(), endpoint, method, path, _json(request), status, _json(response), seconds))
            self._conn.executemany("INSERT INTO exchange_refs VALUES (?, ?)",
                                   [(cur.lastrowid, ref) for ref in references])
