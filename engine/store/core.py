"""Herald's own state in SQLite (WAL), and the only module that speaks SQL.

Tables: the event journal, the last known state of every entity, firings (with their
traces) and `once per` memory, durable timers, the outbox, BSG exchanges, connector
cursors. Exactly-once rests on two things here: an event is processed in the same
transaction that records its firings, messages, timers and new entity state (a crash
rolls all of it back, and the event is processed again), and every message gets its
BSG reference when it is written, before any send.

The connection is used from one worker thread at a time (the reactor serialises calls);
every method is synchronous.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import sqlite_utils

from herald.engine.events import Event

FINAL_STATES = ("delivered", "failed", "expired", "skipped", "cancelled", "undelivered")


def _now() -> float:
    return time.time()


_ENTITY_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _json_path(entity_type: str, field: str) -> str:
    """`$."order"."id"`: an entity type goes into a JSON path only as a checked name, quoted
    (a `.`, `[`, `"` or NUL in it would change the path or break it)."""
    if not _ENTITY_TYPE.fullmatch(entity_type):
        raise ValueError(f"{entity_type!r} is not an entity type (letters, digits and _)")
    return f'$."{entity_type}"."{field}"'


def to_epoch(when: datetime) -> float:
    return when.timestamp()


_LAST_EPOCH = 253402300799.0        # 9999-12-31T23:59:59Z, the last moment a datetime holds


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def new_reference() -> str:
    """A BSG reference: ≤ 32 characters of [A-Za-z0-9], unique across Herald instances."""
    return "hr" + secrets.token_hex(12)


# ---- migrations: named, applied once, in order ------------------------------------------

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_journal", """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL, site TEXT NOT NULL, time REAL NOT NULL,
            data TEXT NOT NULL, previous TEXT,
            source TEXT NOT NULL, received_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',        -- pending | done
            processed_at REAL
        );
        CREATE INDEX events_pending ON events(status, seq);
        CREATE TABLE entities (key TEXT PRIMARY KEY, data TEXT NOT NULL, updated_at REAL NOT NULL);
    """),
    ("0002_firings", """
        CREATE TABLE firings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL, rule_id TEXT NOT NULL, rule_version TEXT NOT NULL,
            fired INTEGER NOT NULL, reason TEXT, trace TEXT NOT NULL, at REAL NOT NULL,
            UNIQUE(event_id, rule_id, at)
        );
        CREATE INDEX firings_event ON firings(event_id);
        CREATE TABLE once_per (rule_id TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,
                               PRIMARY KEY (rule_id, key));
        CREATE TABLE timers (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rule_id TEXT NOT NULL, event_id TEXT NOT NULL, due REAL NOT NULL,
            previous TEXT, status TEXT NOT NULL DEFAULT 'pending',   -- pending | done | cancelled
            reason TEXT, created_at REAL NOT NULL, done_at REAL
        );
        CREATE INDEX timers_due ON timers(status, due);
    """),
    ("0003_outbox", """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            reference TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL DEFAULT 'rule',             -- rule | manual
            event_id TEXT, rule_id TEXT, firing_id INTEGER, site TEXT NOT NULL,
            channel TEXT NOT NULL, to_phone TEXT NOT NULL, recipient TEXT, copy INTEGER NOT NULL DEFAULT 0,
            sender TEXT, text TEXT, sms_sender TEXT, sms_text TEXT, encoding TEXT, parts INTEGER,
            template TEXT,
            state TEXT NOT NULL,     -- queued deferred sending sent delivered failed expired skipped cancelled
            reason TEXT, error_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
            bsg_id TEXT, bsg_status TEXT, sms_bsg_id TEXT, price TEXT, currency TEXT,
            created_at REAL NOT NULL, updated_at REAL NOT NULL,
            send_at REAL NOT NULL, stale_at REAL, next_attempt_at REAL NOT NULL,
            sent_at REAL, final_at REAL, next_poll_at REAL
        );
        CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
        CREATE INDEX outbox_poll ON outbox(state, next_poll_at);
        CREATE INDEX outbox_event ON outbox(event_id);
        CREATE INDEX outbox_phone ON outbox(to_phone);
        CREATE TABLE exchanges (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, endpoint TEXT NOT NULL,
            method TEXT NOT NULL, path TEXT NOT NULL, request TEXT, status INTEGER,
            response TEXT, seconds REAL
        );
        CREATE TABLE exchange_refs (exchange_id INTEGER NOT NULL, reference TEXT NOT NULL);
        CREATE INDEX exchange_refs_ref ON exchange_refs(reference);
    """),
    ("0004_cursors", """
        CREATE TABLE cursors (connector TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
                              updated_at REAL NOT NULL, PRIMARY KEY (connector, key));
    """),
    ("0005_snapshots", """
        CREATE TABLE snapshots (connector TEXT NOT NULL, source TEXT NOT NULL, key TEXT NOT NULL,
                                data TEXT NOT NULL, updated_at REAL NOT NULL,
                                PRIMARY KEY (connector, source, key));
    """),
    # BSG delivery reports (POST /bsg/callback/...) that could not be applied when they
    # came: the message was not yet recorded as sent (the report raced the send's commit),
    # or only an id was given that no message has yet. Applied when the send is recorded.
    ("0006_receipts", """
        CREATE TABLE receipts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            reference TEXT, bsg_id TEXT, status TEXT NOT NULL,
            body TEXT NOT NULL, received_at REAL NOT NULL, applied_at REAL
        );
        CREATE INDEX receipts_reference ON receipts(reference) WHERE applied_at IS NULL;
        CREATE INDEX receipts_bsg_id ON receipts(bsg_id) WHERE applied_at IS NULL;
        CREATE INDEX outbox_bsg_id ON outbox(bsg_id);
    """),
    # Admin alerts (engine/delivery/alerts.py): an incident is open until resolved, at most one open
    # per key (the partial unique index), so raising it again is a no-op; each opening and
    # each recovery queues one alert mail, kept until the SMTP server accepted it.
    ("0007_alerts", """
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL, site TEXT, subject TEXT NOT NULL,
            opened_at REAL NOT NULL, last_seen_at REAL NOT NULL,
            occurrences INTEGER NOT NULL DEFAULT 1, resolved_at REAL
        );
        CREATE UNIQUE INDEX incidents_open ON incidents(key) WHERE resolved_at IS NULL;
        CREATE TABLE alert_mails (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id INTEGER NOT NULL REFERENCES incidents(id),
            kind TEXT NOT NULL,                            -- opened | resolved
            recipients TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
            message_id TEXT NOT NULL, created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
            last_error TEXT, sent_at REAL
        );
        CREATE INDEX alert_mails_due ON alert_mails(next_attempt_at) WHERE sent_at IS NULL;
    """),
    # Delivery you can trust (docs/delivery.md): which endpoint each attempt went through
    # and whether its outcome is unknown there (then the reference is looked up on that
    # endpoint before the message may go anywhere else); Herald's own omni fallback (the
    # current leg, the SMS leg's own reference, the Viber deadline, a late Viber receipt);
    # replays; and a per-message timeline of attempts, so history explains every one.
    ("0008_delivery", """
        ALTER TABLE outbox ADD COLUMN omni TEXT;            -- engine | provider (omni messages)
        ALTER TABLE outbox ADD COLUMN leg TEXT;             -- engine omni: viber | sms (current leg)
        ALTER TABLE outbox ADD COLUMN sms_reference TEXT;   -- engine omni: the SMS leg's reference
        ALTER TABLE outbox ADD COLUMN fallback_after REAL;  -- engine omni: seconds Viber may take
        ALTER TABLE outbox ADD COLUMN fallback_at REAL;     -- engine omni: when the SMS goes anyway
        ALTER TABLE outbox ADD COLUMN viber_status TEXT;    -- engine omni: Viber's status after the fallback
        ALTER TABLE outbox ADD COLUMN viber_bsg_id TEXT;
        ALTER TABLE outbox ADD COLUMN double_delivery INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN endpoint TEXT;        -- endpoint of the current/last attempt
        ALTER TABLE outbox ADD COLUMN uncertain_at TEXT;    -- endpoint that may have taken it
        ALTER TABLE outbox ADD COLUMN replay_of INTEGER;    -- herald retry: the message replayed
        ALTER TABLE outbox ADD COLUMN replayed_by INTEGER;
        CREATE INDEX outbox_sms_reference ON outbox(sms_reference);
        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id INTEGER NOT NULL, at REAL NOT NULL,
            what TEXT NOT NULL,       -- send | lookup | status | receipt | fallback | retry | replay | expire
            endpoint TEXT, leg TEXT, reference TEXT,
            outcome TEXT NOT NULL,    -- ok | retry | fatal | operator | duplicate | unknown | ...
            detail TEXT
        );
        CREATE INDEX attempts_message ON attempts(message_id);
    """),
    # Campaigns, subscriptions, incoming SMS (engine/audience/campaigns.py, engine/audience/subscriptions.py):
    # a campaign's recipients wait in campaign_recipients until the feeder moves them into
    # the outbox (marked fed in the same transaction: never twice); outbox rows carry their
    # campaign, so its counts are exact queries. Subscribers of configured lists with their
    # confirmation codes (hashed), the opt-out list (STOP), sliding-window rate-limit hits.
    ("0009_campaigns", """
        ALTER TABLE outbox ADD COLUMN campaign_id INTEGER;
        CREATE INDEX outbox_campaign ON outbox(campaign_id, state) WHERE campaign_id IS NOT NULL;
        CREATE TABLE campaigns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT UNIQUE, origin TEXT NOT NULL, site TEXT NOT NULL,
            channel TEXT NOT NULL, template TEXT, text TEXT, sender TEXT, source TEXT NOT NULL,
            start_at REAL NOT NULL, end_at REAL NOT NULL, send_window TEXT, rate REAL NOT NULL,
            budget TEXT, state TEXT NOT NULL,  -- active paused stopped cancelled ended completed
            reason TEXT, total INTEGER NOT NULL DEFAULT 0, recalled INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, done_at REAL
        );
        CREATE TABLE campaign_recipients (
            campaign_id INTEGER NOT NULL, seq INTEGER NOT NULL, phone TEXT NOT NULL,
            data TEXT, tz TEXT,
            state TEXT NOT NULL DEFAULT 'pending',          -- pending fed skipped expired cancelled
            not_before REAL NOT NULL DEFAULT 0, message_id INTEGER, reason TEXT,
            PRIMARY KEY (campaign_id, seq)
        ) WITHOUT ROWID;
        CREATE INDEX campaign_recipients_due ON campaign_recipients(campaign_id, state, not_before);
        CREATE TABLE subscribers (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            list TEXT NOT NULL, phone TEXT NOT NULL, site TEXT NOT NULL, email TEXT,
            state TEXT NOT NULL,                            -- pending confirmed cancelled
            code_hash TEXT, code_expires REAL, attempts INTEGER NOT NULL DEFAULT 0,
            codes_sent INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, confirmed_at REAL, cancelled_at REAL,
            UNIQUE (list, phone)
        );
        CREATE INDEX subscribers_phone ON subscribers(phone);
        CREATE TABLE opt_outs (phone TEXT PRIMARY KEY, source TEXT NOT NULL, at REAL NOT NULL);
        CREATE TABLE rate_hits (key TEXT NOT NULL, at REAL NOT NULL);
        CREATE INDEX rate_hits_key ON rate_hits(key, at);
    """),
    # Timelines (engine/store/timeline.py): a message sent from an entity (herald send --order,
    # POST /orders/{id}/messages) is linked to it by its entity key (order:42@s1), so the
    # order's timeline shows it; a rule's messages are found through their events.
    ("0010_timeline", """
        ALTER TABLE outbox ADD COLUMN entity TEXT;
        CREATE INDEX outbox_entity ON outbox(entity) WHERE entity IS NOT NULL;
    """),
    # A paused campaign's messages are `held` (a state of their own), no longer `deferred`
    # until 1e12 — a date the dispatcher could not turn into a datetime.
    ("0011_campaign_held", """
        UPDATE outbox SET state = 'held' WHERE state = 'deferred' AND next_attempt_at >= 1e12
            AND campaign_id IS NOT NULL;
    """),
    # When a message's outcome became unknown at `uncertain_at` (daemon clock, epoch
    # seconds): bsg.uncertain_failover_after counts from here.
    ("0012_uncertain_since", """
        ALTER TABLE outbox ADD COLUMN uncertain_since REAL;
    """),
]


@dataclass(frozen=True)
class OutboxRow:
    id: int
    reference: str
    site: str
    channel: str
    to_phone: str
    sender: str | None
    text: str | None
    sms_sender: str | None
    sms_text: str | None
    state: str
    attempts: int
    stale_at: float | None
    send_at: float
    rule_id: str | None
    event_id: str | None
    omni: str | None = None          # engine | provider (omni messages)
    leg: str | None = None           # engine omni: the leg to send now (viber | sms)
    sms_reference: str | None = None
    fallback_after: float | None = None
    endpoint: str | None = None      # where the last attempt went
    uncertain_at: str | None = None  # an endpoint that may have taken it (outcome unknown)
    uncertain_since: float | None = None  # when its outcome there became unknown

    @property
    def msisdn(self) -> str:
        return self.to_phone.lstrip("+")

    @property
    def kind(self) -> str:
        """What goes out on this attempt: `sms` or `viber` (an omni's Viber leg, with
        BSG's alt_route when omni is `provider`)."""
        if self.channel == "sms" or (self.channel == "omni" and self.leg == "sms"):
            return "sms"
        return "viber"

    @property
    def leg_reference(self) -> str:
        """The BSG reference of this attempt (an engine omni's SMS leg has its own)."""
        return self.sms_reference if self.kind == "sms" and self.sms_reference else self.reference


_OUTBOX_FIELDS = ("id", "reference", "site", "channel", "to_phone", "sender", "text", "sms_sender", "sms_text",
                  "state", "attempts", "stale_at", "send_at", "rule_id", "event_id", "omni", "leg",
                  "sms_reference", "fallback_after", "endpoint", "uncertain_at", "uncertain_since")


class Store:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._in_tx = 0
        self.db = sqlite_utils.Database(self._conn)
        self._execute("PRAGMA journal_mode=WAL")
        self._execute("PRAGMA synchronous=NORMAL")
        self._execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- plumbing ----
    def _execute(self, sql: str, params: Sequence | Mapping = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator["Store"]:
        """One atomic unit. Nested uses join the outer transaction."""
        with self._lock:
            if self._in_tx:
                self._in_tx += 1
                try:
                    yield self
                finally:
                    self._in_tx -= 1
                return
            self._execute("BEGIN IMMEDIATE")
            self._in_tx = 1
            try:
                yield self
            except BaseException:
                self._execute("ROLLBACK")
                raise
            else:
                self._execute("COMMIT")
            finally:
                self._in_tx = 0

    def migrate(self) -> list[str]:
        with self.transaction():
            self._execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            done = {r[0] for r in self._execute("SELECT name FROM migrations")}
            applied = []
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    self._execute(statement)
                self._execute("INSERT INTO migrations VALUES (?, ?)", (name, _now()))
                applied.append(name)
        return applied

    def checkpoint(self) -> None:
        """Run off the hot path: automatic WAL checkpoints are the latency spikes."""
        with self._lock:
            self._execute("PRAGMA wal_checkpoint(PASSIVE)")

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
            for connector, src, key, data in snapshots:
                if data is None:
                    self._execute("DELETE FROM snapshots WHERE connector = ? AND source = ? AND key = ?",
                                  (connector, src, key))
                else:
                    self._execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?) ON CONFLICT(connector, source, key) "
                                  "DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                                  (connector, src, key, _json(data), now))
        return out

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

    # ---- firings, timers ----
    def add_firing(self, event_id: str, rule_id: str, rule_version: str, fired: bool, reason: str,
                   trace: Mapping, when: datetime) -> int:
        with self._lock:
            cur = self._execute(
                "INSERT INTO firings (event_id, rule_id, rule_version, fired, reason, trace, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event_id, rule_id, rule_version, int(fired), reason, _json(trace), to_epoch(when)))
            return cur.lastrowid

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

    # ---- the outbox ----
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
        final = now if state in FINAL_STATES else None
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
                 sender, text, sms_sender, sms_text, encoding, parts, template, state, reason, now, now,
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
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = ? "
                "WHERE id IN (SELECT id FROM outbox WHERE state IN ('queued', 'deferred') AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, id LIMIT ?) RETURNING " + ", ".join(_OUTBOX_FIELDS),
                (_now(), ts, limit)).fetchall()
        return sorted((OutboxRow(*r) for r in rows), key=lambda r: r.id)

    def next_due(self) -> datetime | None:
        with self._lock:
            row = self._execute("SELECT MIN(next_attempt_at) FROM outbox WHERE state IN ('queued', 'deferred')").fetchone()
        if not row or row[0] is None:
            return None
        return from_epoch(min(row[0], _LAST_EPOCH))      # a date past year 9999 must not crash the dispatcher

    def in_state(self, state: str, limit: int = 1000) -> list[OutboxRow]:
        with self._lock:
            rows = self._execute(f"SELECT {', '.join(_OUTBOX_FIELDS)} FROM outbox WHERE state = ? ORDER BY id LIMIT ?",
                                 (state, limit)).fetchall()
        return [OutboxRow(*r) for r in rows]

    def update_message(self, message_id: int, **fields: Any) -> None:
        """Set columns of one message (state, reason, bsg_id, price …), stamping updated_at."""
        fields["updated_at"] = _now()
        if fields.get("state") in FINAL_STATES and "final_at" not in fields:
            fields["final_at"] = fields["updated_at"]
        for key in ("price",):
            if isinstance(fields.get(key), Decimal):
                fields[key] = str(fields[key])
        for key, value in list(fields.items()):
            if isinstance(value, datetime):
                fields[key] = to_epoch(value)
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._execute(f"UPDATE outbox SET {sets} WHERE id = ?", (*fields.values(), message_id))

    def due_polls(self, now: datetime, limit: int = 100) -> list[dict]:
        with self._lock:
            rows = self._execute(
                "SELECT id, reference, site, channel, sent_at, attempts, omni, leg, sms_reference, endpoint, "
                "fallback_at, stale_at FROM outbox WHERE state = 'sent' "
                "AND (next_poll_at IS NULL OR next_poll_at <= ?) ORDER BY next_poll_at LIMIT ?",
                (to_epoch(now), limit)).fetchall()
        return [dict(r) for r in rows]

    def next_poll_due(self) -> datetime | None:
        with self._lock:
            row = self._execute("SELECT MIN(COALESCE(next_poll_at, 0)) FROM outbox WHERE state = 'sent'").fetchone()
        return from_epoch(row[0]) if row and row[0] is not None else None

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

    # ---- replays (herald retry) ----
    def replayable(self, *, states: Sequence[str], since: datetime | None = None, until: datetime | None = None,
                   rule: str | None = None, ids: Sequence[int] = (), limit: int = 10_000) -> list[dict]:
        """Final messages matching a filter that were not replayed yet (oldest first)."""
        marks = ",".join("?" * len(states))
        where, params = [f"state IN ({marks})", "replayed_by IS NULL"], list(states)
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
            cur = self._execute(f"UPDATE outbox SET next_attempt_at = ?, updated_at = ? WHERE state = 'queued' "
                                f"AND error_code IN ({marks}) AND next_attempt_at > ?{where}",
                                (at, _now(), *codes, at, *params))
        return cur.rowcount

    def count_attempts(self, message_id: int, what: str, outcome: str) -> int:
        with self._lock:
            return self._execute("SELECT COUNT(*) FROM attempts WHERE message_id = ? AND what = ? AND outcome = ?",
                                 (message_id, what, outcome)).fetchone()[0]

    def delivery_counts(self) -> dict:
        """Figures for /health: double deliveries (engine omni), uncertain outcomes, by endpoint."""
        with self._lock:
            doubles = self._execute("SELECT COUNT(*) FROM outbox WHERE double_delivery = 1").fetchone()[0]
            uncertain = self._execute("SELECT COUNT(*) FROM outbox WHERE uncertain_at IS NOT NULL "
                                      "AND state NOT IN ('delivered','failed','expired','skipped','cancelled',"
                                      "'undelivered')").fetchone()[0]
            by_endpoint = dict(self._execute("SELECT COALESCE(endpoint, '-'), COUNT(*) FROM outbox "
                                             "WHERE endpoint IS NOT NULL GROUP BY endpoint").fetchall())
        return {"double_deliveries": doubles, "uncertain": uncertain, "by_endpoint": by_endpoint}

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

    # ---- cursors (connectors) ----
    def get_cursor(self, connector: str, key: str) -> str | None:
        with self._lock:
            row = self._execute("SELECT value FROM cursors WHERE connector = ? AND key = ?", (connector, key)).fetchone()
        return row[0] if row else None

    def set_cursor(self, connector: str, key: str, value: str) -> None:
        with self._lock:
            self._execute("INSERT INTO cursors VALUES (?, ?, ?, ?) ON CONFLICT(connector, key) DO UPDATE SET "
                          "value = excluded.value, updated_at = excluded.updated_at", (connector, key, value, _now()))

    # ---- reading (HTTP API, CLI) ----
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
            "firing": _firing_json(dict(firing)) if firing else None,
            "exchanges": [_exchange_json(dict(x)) for x in exchanges],
            "attempts": self.attempts_of(message["id"]),
        }

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

    def timeline_messages(self, entity_key: str, event_ids: Sequence[str]) -> list[dict]:
        """Messages of an entity: linked to it (sent from it) or written for its events."""
        marks = ",".join("?" * len(event_ids))
        where = "entity = ?" + (f" OR event_id IN ({marks})" if event_ids else "")
        with self._lock:
            rows = self._execute(f"SELECT * FROM outbox WHERE {where} ORDER BY id",
                                 (entity_key, *event_ids)).fetchall()
        return [{**message_json(dict(r)), "entity": r["entity"]} for r in rows]

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

    def firings_of(self, event_id: str) -> list[dict]:
        with self._lock:
            rows = self._execute("SELECT * FROM firings WHERE event_id = ? ORDER BY id", (event_id,)).fetchall()
        return [_firing_json(dict(r)) for r in rows]

    # ---- alerts (engine/delivery/alerts.py) ----
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
        return [self._alert_mail(r) for r in rows]

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
        return [self._alert_mail(r) for r in rows]

    def alert_mail_backlog(self) -> int:
        """How many alert mails wait for the SMTP server."""
        with self._lock:
            return self._execute("SELECT COUNT(*) FROM alert_mails WHERE sent_at IS NULL").fetchone()[0]

    @staticmethod
    def _alert_mail(row: sqlite3.Row) -> dict:
        mail = dict(row)
        mail["recipients"] = json.loads(mail["recipients"])
        for column in ("created_at", "next_attempt_at", "sent_at"):
            mail[column] = from_epoch(mail[column])
        return mail

    # ---- campaigns, subscriptions, incoming SMS ----
    def create_campaign(self, fields: Mapping[str, Any], recipients: Iterable[tuple[str, str | None, str | None]],
                        chunk: int = 50_000) -> int:
        """A campaign and its recipients (phone, data JSON, time zone), atomically."""
        now = _now()
        row = {**fields, "created_at": now, "updated_at": now}
        with self.transaction():
            cur = self._execute(f"INSERT INTO campaigns ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                tuple(row.values()))
            campaign_id = cur.lastrowid
            total, batch = 0, []
            for phone, data, tz in recipients:
                total += 1
                batch.append((campaign_id, total, phone, data, tz))
                if len(batch) >= chunk:
                    self._conn.executemany("INSERT INTO campaign_recipients (campaign_id, seq, phone, data, tz)"
                                           " VALUES (?, ?, ?, ?, ?)", batch)
                    batch = []
            if batch:
                self._conn.executemany("INSERT INTO campaign_recipients (campaign_id, seq, phone, data, tz)"
                                       " VALUES (?, ?, ?, ?, ?)", batch)
            self._execute("UPDATE campaigns SET total = ? WHERE id = ?", (total, campaign_id))
        return campaign_id

    def campaign(self, key: int | str) -> dict | None:
        column = "id" if isinstance(key, int) or str(key).isdigit() else "name"
        with self._lock:
            row = self._execute(f"SELECT * FROM campaigns WHERE {column} = ?", (key,)).fetchone()
        return dict(row) if row else None

    def campaigns(self, *, live: bool = False) -> list[dict]:
        where = " WHERE state IN ('active', 'paused', 'stopped', 'completed')" if live else ""
        with self._lock:
            rows = self._execute(f"SELECT * FROM campaigns{where} ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def live_campaigns(self) -> list[dict]:
        return self.campaigns(live=True)

    def set_campaign_state(self, campaign_id: int, state: str, reason: str = "",
                           only_from: Sequence[str] = ()) -> bool:
        """Change a campaign's state (only from `only_from` when given); True when it changed."""
        now = _now()
        done = now if state in ("cancelled", "ended", "completed") else None
        guard = f" AND state IN ({','.join('?' * len(only_from))})" if only_from else ""
        with self._lock:
            cur = self._execute(f"UPDATE campaigns SET state = ?, reason = ?, updated_at = ?, "
                                f"done_at = COALESCE(?, done_at) WHERE id = ?{guard}",
                                (state, reason, now, done, campaign_id, *only_from))
        return cur.rowcount == 1

    def update_campaign(self, campaign_id: int, fields: Mapping[str, Any]) -> None:
        """Change settable columns (rate, budget, end_at); a new end is also the deadline
        (`stale_at`) of its messages not yet handed to BSG."""
        if not fields:
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction():
            self._execute(f"UPDATE campaigns SET {sets}, updated_at = ? WHERE id = ?",
                          (*fields.values(), _now(), campaign_id))
            if "end_at" in fields:
                self._execute("UPDATE outbox SET stale_at = ? WHERE campaign_id = ? "
                              "AND state IN ('queued', 'deferred', 'held')", (fields["end_at"], campaign_id))

    def due_recipients(self, campaign_id: int, now: float, limit: int) -> list[dict]:
        with self._lock:
            rows = self._execute("SELECT seq, phone, data, tz FROM campaign_recipients WHERE campaign_id = ? "
                                 "AND state = 'pending' AND not_before <= ? ORDER BY not_before, seq LIMIT ?",
                                 (campaign_id, now, limit)).fetchall()
        return [dict(r) for r in rows]

    def next_recipient_due(self, campaign_id: int) -> float | None:
        with self._lock:
            row = self._execute("SELECT MIN(not_before) FROM campaign_recipients WHERE campaign_id = ? "
                                "AND state = 'pending'", (campaign_id,)).fetchone()
        return row[0]

    def defer_recipients(self, campaign_id: int, items: Iterable[tuple[int, float]]) -> None:
        """(seq, not_before): outside their window until then."""
        with self._lock:
            self._conn.executemany("UPDATE campaign_recipients SET not_before = ? WHERE campaign_id = ? AND seq = ?",
                                   [(at, campaign_id, seq) for seq, at in items])

    def mark_recipient(self, campaign_id: int, seq: int, state: str, message_id: int | None = None,
                       reason: str = "") -> None:
        """Only a pending recipient changes: a recipient is fed (or skipped) once."""
        with self._lock:
            cur = self._execute("UPDATE campaign_recipients SET state = ?, message_id = ?, reason = ? "
                                "WHERE campaign_id = ? AND seq = ? AND state = 'pending'",
                                (state, message_id, reason, campaign_id, seq))
        if cur.rowcount != 1:
            raise RuntimeError(f"campaign {campaign_id} recipient {seq} is not pending")

    def set_message_campaign(self, message_id: int, campaign_id: int) -> None:
        with self._lock:
            self._execute("UPDATE outbox SET campaign_id = ? WHERE id = ?", (campaign_id, message_id))

    def campaign_counts(self, campaign_id: int) -> dict:
        """Exact figures: recipients by state, messages by state, cost (sum of BSG prices)."""
        with self._lock:
            recipients = dict(self._execute("SELECT state, COUNT(*) FROM campaign_recipients WHERE campaign_id = ? "
                                            "GROUP BY state", (campaign_id,)).fetchall())
            messages = dict(self._execute("SELECT state, COUNT(*) FROM outbox WHERE campaign_id = ? GROUP BY state",
                                          (campaign_id,)).fetchall())
            cost, currency, priced = self._execute(
                "SELECT TOTAL(CAST(price AS REAL)), MAX(currency), COUNT(price) FROM outbox "
                "WHERE campaign_id = ?", (campaign_id,)).fetchone()
            top = self._execute("SELECT MAX(CAST(price AS REAL)) FROM outbox WHERE campaign_id = ?",
                                (campaign_id,)).fetchone()[0]
        return {"recipients": recipients, "messages": messages, "cost": cost, "currency": currency or "",
                "priced": priced, "max_price": top}

    def campaign_held_operator(self, campaign_id: int, codes: Sequence[int]) -> int:
        """Queued messages of the campaign that BSG refused for an account reason (funds…)."""
        marks = ",".join("?" * len(codes))
        with self._lock:
            return self._execute(f"SELECT COUNT(*) FROM outbox WHERE campaign_id = ? AND state = 'queued' "
                                 f"AND error_code IN ({marks})", (campaign_id, *codes)).fetchone()[0]

    def recall_campaign(self, campaign_id: int, state: str, reason: str) -> tuple[int, int]:
        """Everything of the campaign not yet handed to BSG — pending recipients and its
        queued/deferred messages — becomes `state` with `reason`. (recipients, messages)."""
        now = _now()
        with self.transaction():
            people = self._execute("UPDATE campaign_recipients SET state = ?, reason = ? WHERE campaign_id = ? "
                                   "AND state = 'pending'", (state, reason, campaign_id)).rowcount
            messages = self._execute("UPDATE outbox SET state = ?, reason = ?, updated_at = ?, final_at = ? "
                                     "WHERE campaign_id = ? AND state IN ('queued', 'deferred', 'held')",
                                     (state, reason, now, now, campaign_id)).rowcount
            if state == "expired":    # messages the dispatcher found stale at the end: same cause
                self._execute("UPDATE outbox SET reason = ? WHERE campaign_id = ? AND state = 'expired'",
                              (reason, campaign_id))
            self._execute("UPDATE campaigns SET recalled = recalled + ? WHERE id = ?",
                          (people + messages, campaign_id))
        return people, messages

    def hold_campaign(self, campaign_id: int, until: float | None, reason: str) -> int:
        """Pause (until None) or release (until = now) its queued messages. A paused
        campaign's messages are `held`: a state that claim_due and next_due never look
        at, so no far-future date is needed (one crashed the dispatcher once)."""
        with self._lock:
            if until is None:
                return self._execute("UPDATE outbox SET state = 'held', reason = ?, updated_at = ? "
                                     "WHERE campaign_id = ? AND state IN ('queued', 'deferred')",
                                     (reason, _now(), campaign_id)).rowcount
            return self._execute("UPDATE outbox SET state = 'queued', next_attempt_at = MIN(next_attempt_at, ?), "
                                 "reason = ?, updated_at = ? WHERE campaign_id = ? AND state = 'held'",
                                 (until, reason, _now(), campaign_id)).rowcount

    def release_campaign_held(self, campaign_id: int, codes: Sequence[int], at: float) -> int:
        """The campaign's messages waiting on an operator error (funds…) become due at `at`,
        the error mark cleared: an operator resumed it after fixing the cause."""
        marks = ",".join("?" * len(codes))
        with self._lock:
            return self._execute(f"UPDATE outbox SET next_attempt_at = ?, error_code = NULL, updated_at = ? "
                                 f"WHERE campaign_id = ? AND state = 'queued' AND error_code IN ({marks})",
                                 (at, _now(), campaign_id, *codes)).rowcount

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

    def add_opt_out(self, phone: str, source: str, when: datetime) -> int:
        """Put `phone` on the opt-out list and, in the same transaction, skip every campaign
        message to it not yet handed to BSG (queued, deferred, held): how many."""
        now = _now()
        with self.transaction():
            self._execute("INSERT OR IGNORE INTO opt_outs VALUES (?, ?, ?)", (phone, source, to_epoch(when)))
            return self._execute("UPDATE outbox SET state = 'skipped', reason = 'opted out', updated_at = ?, "
                                 "final_at = ? WHERE to_phone = ? AND campaign_id IS NOT NULL "
                                 "AND state IN ('queued', 'deferred', 'held')", (now, now, phone)).rowcount

    def opted_out(self, phones: Iterable[str]) -> set[str]:
        phones = list(phones)
        out: set[str] = set()
        with self._lock:
            for i in range(0, len(phones), 500):
                chunk = phones[i:i + 500]
                out.update(r[0] for r in self._execute(
                    f"SELECT phone FROM opt_outs WHERE phone IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def rate_hit(self, key: str, when: datetime, count: int, period: float) -> bool:
        """Count one hit on `key` unless it already had `count` within `period`: True when allowed."""
        at = to_epoch(when)
        with self._lock:
            self._execute("DELETE FROM rate_hits WHERE key = ? AND at <= ?", (key, at - period))
            used = self._execute("SELECT COUNT(*) FROM rate_hits WHERE key = ?", (key,)).fetchone()[0]
            if used >= count:
                return False
            self._execute("INSERT INTO rate_hits VALUES (?, ?)", (key, at))
        return True

    def rate_window(self, key: str, when: datetime, period: float) -> tuple[int, float | None]:
        """Hits on `key` within `period` before `when`: (how many, seconds until the oldest
        leaves the window, None without hits)."""
        at = to_epoch(when)
        with self._lock:
            used, oldest = self._execute("SELECT COUNT(*), MIN(at) FROM rate_hits WHERE key = ? AND at > ?",
                                         (key, at - period)).fetchone()
        return used, None if oldest is None else oldest + period - at

    def stats(self) -> dict:
        with self._lock:
            counts = dict(self._execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
            oldest = self._execute("SELECT MIN(created_at) FROM outbox WHERE state IN ('queued', 'sending')").fetchone()[0]
            pending_events = self._execute("SELECT COUNT(*) FROM events WHERE status = 'pending'").fetchone()[0]
            timers = self._execute("SELECT COUNT(*) FROM timers WHERE status = 'pending'").fetchone()[0]
        return {"messages": counts, "queue_depth": counts.get("queued", 0) + counts.get("sending", 0),
                "deferred": counts.get("deferred", 0),
                "oldest_queued_age": round(_now() - oldest, 3) if oldest else 0.0,
                "pending_events": pending_events, "pending_timers": timers}


def _like(text: str) -> str:
    """text as a literal in a LIKE pattern (ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _iso(value: float | None) -> str | None:
    moment = from_epoch(value)
    return moment.isoformat() if moment else None


def message_json(row: dict) -> dict:
    return {
        "id": row["id"], "reference": row["reference"], "kind": row["kind"], "state": row["state"],
        "reason": row["reason"] or "", "error_code": row["error_code"], "attempts": row["attempts"],
        "site": row["site"], "channel": row["channel"], "to": row["to_phone"], "recipient": row["recipient"],
        "copy": bool(row["copy"]), "sender": row["sender"], "text": row["text"], "sms_sender": row["sms_sender"],
        "sms_text": row["sms_text"], "encoding": row["encoding"], "parts": row["parts"], "template": row["template"],
        "rule": row["rule_id"], "event": row["event_id"], "firing_id": row["firing_id"],
        "bsg_id": row["bsg_id"], "bsg_status": row["bsg_status"], "sms_bsg_id": row["sms_bsg_id"],
        "price": row["price"], "currency": row["currency"],
        "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"]),
        "send_at": _iso(row["send_at"]), "stale_at": _iso(row["stale_at"]), "sent_at": _iso(row["sent_at"]),
        "final_at": _iso(row["final_at"]),
        "omni": row.get("omni"), "leg": row.get("leg"), "sms_reference": row.get("sms_reference"),
        "viber_bsg_id": row.get("viber_bsg_id"), "viber_status": row.get("viber_status"),
        "double_delivery": bool(row.get("double_delivery")), "endpoint": row.get("endpoint"),
        "uncertain_at": row.get("uncertain_at"), "uncertain_since": _iso(row.get("uncertain_since")),
        "replay_of": row.get("replay_of"),
        "replayed_by": row.get("replayed_by"), "fallback_at": _iso(row.get("fallback_at")),
    }


def _firing_json(row: dict) -> dict:
    return {"id": row["id"], "event": row["event_id"], "rule": row["rule_id"], "rule_version": row["rule_version"],
            "fired": bool(row["fired"]), "reason": row["reason"], "at": _iso(row["at"]),
            "trace": json.loads(row["trace"])}


def _exchange_json(row: dict) -> dict:
    return {"at": _iso(row["at"]), "endpoint": row["endpoint"], "method": row["method"], "path": row["path"],
            "request": json.loads(row["request"]) if row["request"] else None, "status": row["status"],
            "response": json.loads(row["response"]) if row["response"] else None, "seconds": row["seconds"]}
