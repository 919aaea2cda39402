"""The SQL connector: rows of a shop's database become events.

    connectors:
      - type: sql
        url: !env SHOP_DB_URL          # mysql+pymysql://…, postgresql+psycopg://…, sqlite:///file.db
        sources:
          - name: orders
            table: shop_orders
            key: id
            cursor: id
            mode: append
            event: order.created
            map: {order.id: id, order.status: status, customer.phone: phone}

Every `interval` seconds, for each *source* (declared under `sources:`, or provided by
a `preset:` such as `bitrix`), the connector reads up to `batch` rows after the
source's cursor, ordered by it, turns them into events and journals them with
`ctx.emit(events, cursor=…, snapshots=…)`: the events, the new cursor and the rows'
snapshots are committed in one transaction, so a crash neither loses nor repeats a
row. A full batch is followed at once by the next one.

Two kinds of source:
- `append`: every new row is one event (a log table, a mail queue, new orders);
- `snapshot`: rows change in place (an orders table with `updated_at`). The connector
  keeps the last mapped state of each row (Herald's store, not the shop's database);
  first sight gives `<entity>.created`, a change `<entity>.updated` whose `previous`
  holds only the changed fields' old values.

Exactly once: event ids derive from the connector, the source, the row key and the
cursor (and, for updates, a hash of the change) — re-reading rows after a crash gives
the same ids, which the journal ignores.

The connection is read-only (PostgreSQL and MySQL/MariaDB: the session is set READ
ONLY; SQLite: opened with `mode=ro` and `PRAGMA query_only`), every value goes in as a
bound parameter, and identifiers from the config are quoted by SQLAlchemy's dialect.
The URL's password never reaches a log line, an error or /health.

When the database fails, the connector reports down at once (`/health`), retries with
exponential back-off (1 s … 60 s, jittered), and after `silence` seconds without a
successful poll journals one `connector.down` event; the first successful poll after
that journals one `connector.up` (connectors/outage.py, shared with the IMAP connector).

The package: core.py (the `Source` protocol presets implement, cursors, values, the only
builders of event ids), mapped.py (`MappedSource`, the source built from a `sources:`
entry), checks.py and source_checks.py (the options), presets.py (the preset registry),
bitrix/ (the `bitrix` preset), connector.py (polling at run time).
User documentation: docs/connectors/sql.md.
"""

from herald.connectors.sql.connector import SqlConnector
from herald.connectors.sql.core import (
    APPEND, DELETE, SNAPSHOT, PresetFactory, Source, bind, decode_cursor, encode_cursor, json_value,
)
from herald.connectors.sql.mapped import MappedSource
from herald.connectors.sql.presets import PRESETS

__all__ = [
    "Source", "MappedSource", "SqlConnector", "PRESETS", "PresetFactory", "APPEND", "SNAPSHOT", "DELETE",
    "encode_cursor", "decode_cursor", "json_value", "bind", "CONNECTOR",
]

CONNECTOR = SqlConnector
"""What herald.connectors.find("sql") returns."""
