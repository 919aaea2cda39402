"""The SQLite backend of the store: every line of SQL Herald runs against its own state.

One module per aggregate (journal.py, connectors.py, timers.py, outbox.py,
delivery_log.py, reading.py, campaigns.py, audience.py, rate_hits.py, alerts.py), each a
class over its tables; connection.py owns the connection and transactions,
migrations.py the schema; store.py joins them into `Store`.
"""

from herald.engine.store.sqlite.migrations import MIGRATIONS
from herald.engine.store.sqlite.store import Store

__all__ = ["MIGRATIONS", "Store"]
