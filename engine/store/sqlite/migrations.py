"""The SQLite schema, as named migrations applied once each, in order — the one place
where Herald's tables are defined.

`apply` runs inside the caller's transaction: a migration that fails leaves nothing
behind, and the `migrations` table says which ones ran. The DDL stays plain SQL (not
sqlite-utils' `table.create`/`transform`): these statements are the schema every existing
database was built with, and replaying them through another generator could differ in a
default, an index or a WITHOUT ROWID clause.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Sequence

from herald.engine.store.sqlite.common import _now


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


def apply(execute: Callable[..., sqlite3.Cursor],
          migrations: Sequence[tuple[str, str]] = MIGRATIONS) -> list[str]:
    """Apply the migrations not applied yet (call within a transaction); their names."""
    execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {r[0] for r in execute("SELECT name FROM migrations")}
    applied = []
    for name, sql in migrations:
        if name in done:
            continue
        for statement in filter(str.strip, sql.split(";")):
            execute(statement)
        execute("INSERT INTO migrations VALUES (?, ?)", (name, _now()))
        applied.append(name)
    return applied
