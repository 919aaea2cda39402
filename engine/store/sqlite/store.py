"""`Store`: the SQLite backend's one object, the table classes joined by inheritance."""

from __future__ import annotations

from herald.engine.store.sqlite.alerts import AlertTables
from herald.engine.store.sqlite.audience import AudienceTables
from herald.engine.store.sqlite.campaigns import CampaignTables
from herald.engine.store.sqlite.outbox import OutboxTables
from herald.engine.store.sqlite.rate_hits import RateHitTables
from herald.engine.store.sqlite.reading import MessageReading
from herald.engine.store.sqlite.timers import TimerTables


class Store(MessageReading, OutboxTables, TimerTables, CampaignTables, AudienceTables, RateHitTables,
            AlertTables):
    """Herald's state in one SQLite file (WAL). Every method is synchronous; callers run
    them on the database thread. Implements `herald.engine.store.interface.StoreBackend`.

    MessageReading brings the journal, the connector state and the delivery log (it reads
    across them); the rest are one aggregate each. They share one connection
    (SQLiteConnection), so `with store.transaction():` spans aggregates — an event's
    firings, messages, timers and entity state commit together."""
