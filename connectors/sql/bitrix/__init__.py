"""The `bitrix` preset of the SQL connector: a 1C-Bitrix database becomes Herald events.

    connectors:
      - type: sql
        name: shop
        url: !env SHOP_DB_URL
        preset: bitrix
        bitrix:
          charset: windows-1251                 # utf-8 (default: the connector's charset)
          site: {s1: s1}                        # Bitrix LID → Herald site id
          language: ru                          # of the status names in b_sale_status_lang
          sources: [mail, users, subscriptions, tickets, tasks]     # the default

Sources (facts from shared/spec/BITRIX.md; user documentation docs/connectors/bitrix.md):

| source | table | mode, cursor | events |
|---|---|---|---|
| `mail` | `b_event` | append, `ID` | `mail.<EVENT_NAME>` for every row; sale mails also `order.*` / `shipment.*` (codec.py) |
| `orders` | `b_sale_order` | snapshot, (`DATE_UPDATE`, `ID`) | `order.created` / `order.updated` |
| `shipments` | `b_sale_order_delivery` (not `SYSTEM='Y'`) | snapshot, (`DATE_UPDATE`, `ID`) | `shipment.created` / `shipment.updated` |
| `users` | `b_user` | append, `ID` | `user.created` |
| `subscriptions` | `b_subscription` | append, `ID` | `subscription.created` |
| `tickets` | `b_ticket` | snapshot, (`TIMESTAMP_X`, `ID`) | `ticket.created` / `ticket.updated` |
| `tasks` | `b_tasks` | snapshot, (`CHANGED_DATE`, `ID`) | `task.created` / `task.updated` / `task.deleted` (`ZOMBIE='Y'`) |

`mail` and `orders`/`shipments` exclude each other: a shop with sale mail templates on
writes a `b_event` row for every order change, so reading `b_sale_order` as well would
send every message twice.

Where the work is done. `events()` runs in the event loop, so every database lookup
happens in the one SELECT each source gives the connector (run in a worker thread):
the buyer's phone, the order's price and the shipment's tracking number are LEFT
JOINed into the row. For `b_event` that needs the order id, which only C_FIELDS
holds: the SELECT reads `ORDER_REAL_ID` (else `ORDER_ID`/`ORDER_NO` against
`ACCOUNT_NUMBER`) and `SHIPMENT_ID` out of the serialized text with the dialect's
string functions (`_Dialect.php_field`, php.py) and joins on them — indexed lookups per row,
no per-row round trips. `prepare()` (once per connection) reads the status names and
which tables exist: a source whose table is missing (no support or tasks module) reads
nothing and says so in the log once.

Every value goes in as a bound parameter; the only text put into SQL is this package's
own (table and column names, and the field names it extracts).

The package: preset.py (the `bitrix:` options), dialect.py (the SQL that differs by
database, and what `prepare` reads), sources.py and sale.py (one class per source),
values.py (column values → event data), php.py (C_FIELDS: PHP serialize() read in Python,
and one field read inside the database), codec.py (mail events → Herald events).
"""

from __future__ import annotations

from herald.connectors.sql.bitrix.preset import DEFAULT_SOURCES, SOURCES, _Preset
from herald.connectors.sql.bitrix.sale import MailSource, OrdersSource, ShipmentsSource
from herald.connectors.sql.bitrix.sources import SubscriptionsSource, TasksSource, TicketsSource, UsersSource
from herald.engine.config import ConnectorConfig

__all__ = ["sources", "SOURCES", "DEFAULT_SOURCES"]


def sources(config: ConnectorConfig, settings: dict) -> list:
    """The preset's factory (herald.connectors.sql.presets.PRESETS): check the `bitrix:`
    options and build the chosen sources. Raises ConfigError with located problems."""
    preset = _Preset.from_settings(config, settings)
    builders = {"mail": MailSource, "orders": OrdersSource, "shipments": ShipmentsSource, "users": UsersSource,
                "subscriptions": SubscriptionsSource, "tickets": TicketsSource, "tasks": TasksSource}
    return [builders[name](preset) for name in preset.sources]

