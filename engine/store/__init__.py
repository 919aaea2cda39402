"""Herald's own state: the store and the read models over it.

Layout:
- interface.py — the contract, one Protocol per aggregate (journal and entities, connector
  state, timers, outbox, delivery log, message reads, campaigns, audience, rate hits,
  alerts) and `StoreBackend`, all of them. Callers depend on these names only.
- rows.py — the typed rows every backend hands out (OutboxRow, CampaignRow, PollItem,
  RecipientRow); states.py — `MessageState`.
- sqlite/ — the SQLite backend, the only place with SQL: one class per aggregate over its
  tables, the schema's migrations, and `Store` joining them.
- timeline.py — an entity's timeline, built from the interface (no SQL).

Why mixins, not composition: `Store` inherits its aggregate classes, which all share one
SQLiteConnection. Callers keep calling `store.claim_due(...)` and `store.transaction()`
unchanged, and a transaction spans aggregates for free (an event's firings, messages,
timers and entity state commit together; an opt-out skips outbox messages in the same
transaction). Composition (`store.outbox.claim_due`) would have meant either changing
every caller or ~90 one-line delegations that say nothing. The aggregates stay apart
where it matters: each class is one module with its tables' SQL, and the Protocols in
interface.py are the seams a PostgreSQL backend implements.
"""

from herald.engine.store.rows import CampaignRow, OutboxRow, PollItem, RecipientRow
from herald.engine.store.sqlite import MIGRATIONS, Store
from herald.engine.store.states import FINAL_STATES, MessageState

__all__ = ["FINAL_STATES", "MIGRATIONS", "CampaignRow", "MessageState", "OutboxRow", "PollItem", "RecipientRow",
           "Store"]
