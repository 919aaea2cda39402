"""The outbox: every message, from written (with its BSG reference, before any send)
through claimed, sent and polled to final; replays and operator-held messages."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Sequence

from herald.engine.store.rows import OUTBOX_FIELDS, POLL_FIELDS, OutboxRow, PollItem
from herald.engine.store.sqlite.common import (FINAL, WAITING_SQL, _LAST_EPOCH, _now, from_epoch, new_reference,
                                               to_epoch)
from herald.engine.store.sqlite.connection import SQLiteConnection
from herald.engine.store.states import MessageState

_SENDING, _SENT, _QUEUED = MessageState.SENDING.value, MessageState.SENT.value, MessageState.QUEUED.value


class OutboxTables(SQLiteConnection):
    """Table `outbox`: writing, claiming, polling, replaying messages."""

    def add_message(self, *, site: str, channel: str, to_phone: str, state: str, send_at: datetime,
                    kind: str = "rule", event_id: str | None = None, rule_id: str | None = None,
                    firing_id: int | None = None, recipient: str = "", copy: bool = False,
                    sender: str | None = None, text: str | None = None, sms_sender: str | None = None,
                    sms_text: str | None = None, encoding: str | None = None, parts: int = 0,
                    template: str | None = None, reason: str = "", stale_at: datetime | None = None,
                    omni: str | None = None, fallback_after: float | None = None,
                    replay_of: int | None = None) -> tuple[int, str]:
        now = _now()
        reference = new_reference()
        final = now if state in FINAL else None
        engine_omni = channel == "omni" and omni == "engine"
        # the SMS leg of Herald's own omni has its own reference, fixed now, so a crash
        # between the legs resolves it by lookup like any other send
        sms_reference = reference + "s" if engine_omni else None
        with self._lock:
            cur = self._execute(
                "INSERT INTO outbox (reference, kind, event_id, rule_id, firing_id, site, channel, to_phone, recipient,"
                " copy, sender, text, sms_sender, sms_text, encoding, parts, template, state, reason, created_at,"
                " updated_at, send_at, stale_at, next_attempt_at, final_at, omni, leg, sms_reference, fallback_after,"
                " replay_of)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (reference, kind, event_id, rule_id, firing_id, site, channel, to_phone, recipient, int(copy),
                 sender, text, sms_sender, sms_text, encoding, parts, template, str(state), reason, now, now,
                 to_epoch(send_at), to_epoch(stale_at) if stale_at else None, to_epoch(send_at), final,
                 omni if channel == "omni" else None, "viber" if engine_omni else None, sms_reference,
                 fallback_after if engine_omni else None, replay_of))
            return cur.lastrowid, reference

    def claim_due(self, now: datetime, limit: int = 100) -> list[OutboxRow]:
        """Queued/deferred messages whose time has come become `sending` (attempt counted)
        in one transaction: only what is claimed is sent, and a crash leaves a trail."""
        ts = to_epoch(now)
        with self.transaction():
            rows = self._execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, updated_at = ? "
                f"WHERE id IN (SELECT id FROM outbox WHERE state IN {WAITING_SQL} AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, id LIMIT ?) RETURNING " + ", ".join(OUTBOX_FIELDS),
                (_SENDING, _now(), ts, limit)).fetchall()
        return sorted((OutboxRow(*r) for r in rows), key=lambda r: r.id)

    def next_due(self) -> datetime | None:
        with self._lock:
            row = self._execute(f"SELECT MIN(next_attempt_at) FROM outbox WHERE state IN {WAITING_SQL}").fetchone()
        if not row or row[0] is None:
            return None
        return from_epoch(min(row[0], _LAST_EPOCH))      # a date past year 9999 must not crash the dispatcher

    def in_state(self, state: str, limit: int = 1000) -> list[OutboxRow]:
        with self._lock:
            rows = self._execute(f"SELECT {', '.join(OUTBOX_FIELDS)} FROM outbox WHERE state = ? ORDER BY id LIMIT ?",
                                 (str(state), limit)).fetchall()
        return [OutboxRow(*r) for r in rows]

    def update_message(self, message_id: int, **fields: Any) -> None:
        """Set columns of one message (state, reason, bsg_id, price …), stamping updated_at."""
        fields["updated_at"] = _now()
        if fields.get("state") in FINAL and "final_at" not in fields:
            fields["final_at"] = fields["updated_at"]
        for key in ("price",):
            if isinstance(fields.get(key), Decimal):
                fields[key] = str(fields[key])
        for key, value in list(fields.items()):
            if isinstance(value, datetime):
                fields[key] = to_epoch(value)
            elif isinstance(value, MessageState):
                fields[key] = value.value
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._execute(f"UPDATE outbox SET {sets} WHERE id = ?", (*fields.values(), message_id))

    def due_polls(self, now: datetime, limit: int = 100) -> list[PollItem]:
        """Sent messages whose final status is due to be asked for."""
        with self._lock:
            rows = self._execute(
                f"SELECT {', '.join(POLL_FIELDS)} FROM outbox WHERE state = ? "
                "AND (next_poll_at IS NULL OR next_poll_at <= ?) ORDER BY next_poll_at LIMIT ?",
                (_SENT, to_epoch(now), limit)).fetchall()
        return [PollItem(**r) for r in map(dict, rows)]  # type: ignore[typeddict-item]

    def next_poll_due(self) -> datetime | None:
        with self._lock:
            row = self._execute("SELECT MIN(COALESCE(next_poll_at, 0)) FROM outbox WHERE state = ?",
                                (_SENT,)).fetchone()
        return from_epoch(row[0]) if row and row[0] is not None else None

    # ---- replays (herald retry) ----
    def replayable(self, *, states: Sequence[str], since: datetime | None = None, until: datetime | None = None,
                   rule: str | None = None, ids: Sequence[int] = (), limit: int = 10_000) -> list[dict]:
        """Final messages matching a filter that were not replayed yet (oldest first)."""
        marks = ",".join("?" * len(states))
        where, params = [f"state IN ({marks})", "replayed_by IS NULL"], [str(s) for s in states]
        for column, op, value in (("created_at", ">=", since), ("created_at", "<", until)):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(to_epoch(value))
        if rule is not None:
            where.append("rule_id = ?")
            params.append(rule)
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        with self._lock:
            rows = self._execute(f"SELECT * FROM outbox WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                                 (*params, limit)).fetchall()
        return [dict(r) for r in rows]

    def message_row(self, message_id: int) -> dict | None:
        """A message's raw columns (epoch times), for the engine's own use."""
        with self._lock:
            row = self._execute("SELECT * FROM outbox WHERE id = ?", (message_id,)).fetchone()
        return dict(row) if row else None

    def release_held(self, codes: Sequence[int], at: float, sites: Sequence[str] | None = None) -> int:
        """Messages waiting on an operator error (funds, key, tariff) become due at `at`
        — of these sites only, when given (one BSG account's messages)."""
        marks = ",".join("?" * len(codes))
        where, params = "", []
        if sites is not None:
            if not sites:
                return 0
            where = f" AND site IN ({','.join('?' * len(sites))})"
            params = list(sites)
        with self._lock:
            cur = self._execute(f"UPDATE outbox SET next_attempt_at = ?, updated_at = ? WHERE state = ? "
                                f"AND error_code IN ({marks}) AND next_attempt_at > ?{where}",
                                (at, _now(), _QUEUED, *codes, at, *params))
        return cur.rowcount

