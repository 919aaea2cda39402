"""Read models over the outbox and the journal for people (HTTP API, CLI, /health): message
lists, one message's trace, an entity's messages, figures."""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

from herald.engine.store.sqlite.common import FINAL_SQL, _now, to_epoch
from herald.engine.store.sqlite.delivery_log import DeliveryLogTables
from herald.engine.store.sqlite.journal import JournalTables
from herald.engine.store.sqlite.render import exchange_json, firing_json, message_json
from herald.engine.store.states import MessageState

_QUEUED, _SENDING, _DEFERRED = MessageState.QUEUED.value, MessageState.SENDING.value, MessageState.DEFERRED.value


class MessageReading(JournalTables, DeliveryLogTables):
    """Queries joining the outbox with the journal and the delivery log; writes nothing."""

    def messages(self, *, state: str | None = None, phone: str | None = None, rule: str | None = None,
                 event: str | None = None, since: datetime | None = None, limit: int = 50,
                 before_id: int | None = None) -> list[dict]:
        where, params = [], []
        for column, value in (("state", state), ("to_phone", phone), ("rule_id", rule), ("event_id", event)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("created_at >= ?")
            params.append(to_epoch(since))
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        sql = "SELECT * FROM outbox" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._execute(sql, (*params, limit)).fetchall()
        return [message_json(dict(r)) for r in rows]

    def message(self, message_id: int | str) -> dict | None:
        column = "reference" if isinstance(message_id, str) and not message_id.isdigit() else "id"
        with self._lock:
            row = self._execute(f"SELECT * FROM outbox WHERE {column} = ?", (message_id,)).fetchone()
        return message_json(dict(row)) if row else None

    def message_trace(self, message_id: int | str) -> dict | None:
        message = self.message(message_id)
        if message is None:
            return None
        with self._lock:
            firing = self._execute("SELECT * FROM firings WHERE id = ?", (message["firing_id"],)).fetchone() \
                if message.get("firing_id") else None
            exchanges = self._execute(
                "SELECT DISTINCT x.* FROM exchanges x JOIN exchange_refs r ON r.exchange_id = x.id "
                "WHERE r.reference IN (?, ?) ORDER BY x.id",
                (message["reference"], message.get("sms_reference") or message["reference"])).fetchall()
        event = self.event(message["event"]) if message.get("event") else None
        return {
            "message": message,
            "event": event.as_json() if event else None,
            "firing": firing_json(dict(firing)) if firing else None,
            "exchanges": [exchange_json(dict(x)) for x in exchanges],
            "attempts": self.attempts_of(message["id"]),
        }

    def timeline_messages(self, entity_key: str, event_ids: Sequence[str]) -> list[dict]:
        """Messages of an entity: linked to it (sent from it) or written for its events."""
        marks = ",".join("?" * len(event_ids))
        where = "entity = ?" + (f" OR event_id IN ({marks})" if event_ids else "")
        with self._lock:
            rows = self._execute(f"SELECT * FROM outbox WHERE {where} ORDER BY id",
                                 (entity_key, *event_ids)).fetchall()
        return [{**message_json(dict(r)), "entity": r["entity"]} for r in rows]

    def delivery_counts(self) -> dict:
        """Figures for /health: double deliveries (engine omni), uncertain outcomes, by endpoint."""
        with self._lock:
            doubles = self._execute("SELECT COUNT(*) FROM outbox WHERE double_delivery = 1").fetchone()[0]
            uncertain = self._execute("SELECT COUNT(*) FROM outbox WHERE uncertain_at IS NOT NULL "
                                      f"AND state NOT IN {FINAL_SQL}").fetchone()[0]
            by_endpoint = dict(self._execute("SELECT COALESCE(endpoint, '-'), COUNT(*) FROM outbox "
                                             "WHERE endpoint IS NOT NULL GROUP BY endpoint").fetchall())
        return {"double_deliveries": doubles, "uncertain": uncertain, "by_endpoint": by_endpoint}

    def stats(self) -> dict:
        with self._lock:
            counts = dict(self._execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
            oldest = self._execute("SELECT MIN(created_at) FROM outbox WHERE state IN (?, ?)",
                                   (_QUEUED, _SENDING)).fetchone()[0]
            pending_events = self._execute("SELECT COUNT(*) FROM events WHERE status = 'pending'").fetchone()[0]
            timers = self._execute("SELECT COUNT(*) FROM timers WHERE status = 'pending'").fetchone()[0]
        return {"messages": counts, "queue_depth": counts.get(_QUEUED, 0) + counts.get(_SENDING, 0),
                "deferred": counts.get(_DEFERRED, 0),
                "oldest_queued_age": round(_now() - oldest, 3) if oldest else 0.0,
                "pending_events": pending_events, "pending_timers": timers}
