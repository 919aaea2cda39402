"""The SQL of the bitrix preset that differs between MySQL/MariaDB, PostgreSQL and SQLite,
the joins every source shares, and `_Catalog`: what `prepare` reads from the database."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from herald.connectors.sql.bitrix.codec import DEFAULT_ORDER_STATUSES, DEFAULT_SHIPMENT_STATUSES
from herald.connectors.sql.bitrix.php import php_field

DEFAULT_LANGUAGE = "ru"

# Which table each source reads; a missing one makes the source read nothing.
TABLES = {"mail": "b_event", "orders": "b_sale_order", "shipments": "b_sale_order_delivery", "users": "b_user",
          "subscriptions": "b_subscription", "tickets": "b_ticket", "tasks": "b_tasks"}
SALE_TABLES = ("b_sale_order", "b_user")          # what the mail source's order and phone joins need
PHONE_TABLES = ("b_sale_order_props_value", "b_sale_order_props")
PHONE_AUTH_TABLE = "b_user_phone_auth"



class _Dialect:
    """The few SQL pieces that differ between MySQL/MariaDB, PostgreSQL and SQLite.
    Identifiers are written unquoted (Bitrix's own style), so PostgreSQL folds them to
    lower case like its install script did."""

    def __init__(self, name: str):
        self.name = "mysql" if name in ("mysql", "mariadb") else name

    def raw(self, column: str) -> str:
        """C_FIELDS as its stored bytes (string lengths in it count bytes)."""
        if self.name == "mysql":
            return f"CAST({column} AS BINARY)"
        if self.name == "sqlite":
            return f"CAST({column} AS BLOB)"
        return column                      # PostgreSQL: text (the codec encodes it back with the charset)

    def php_field(self, column: str, key: str) -> str:
        """The text of top-level field `key` of a PHP-serialized array in `column`, or NULL
        (php.py: the SQL twin of the Python reader, for joins inside the SELECT)."""
        return php_field(self.name, column, key)

    def to_int(self, expr: str) -> str:
        """`expr` (text) as an integer when it is all digits, else NULL."""
        if self.name == "mysql":
            return f"(CASE WHEN {expr} REGEXP '^[0-9]{{1,18}}$' THEN CAST({expr} AS UNSIGNED) END)"
        if self.name == "postgresql":
            return f"(CASE WHEN {expr} ~ '^[0-9]{{1,18}}$' THEN CAST({expr} AS bigint) END)"
        return (f"(CASE WHEN {expr} <> '' AND {expr} NOT GLOB '*[^0-9]*' AND length({expr}) <= 18 "
                f"THEN CAST({expr} AS INTEGER) END)")

    def member_list(self, task: str, phone_auth: bool) -> str:
        """A scalar subquery: the task's accomplices (TYPE 'A') and auditors ('U') from
        b_tasks_member as one text, records split by RS (\\x1e), fields by US (\\x1f):
        USER_ID, NAME, LAST_NAME, PERSONAL_PHONE, PERSONAL_MOBILE, WORK_PHONE, phone
        registration (see `_members`)."""
        columns = ["m.USER_ID", "mu.NAME", "mu.LAST_NAME", "mu.PERSONAL_PHONE", "mu.PERSONAL_MOBILE",
                   "mu.WORK_PHONE", "mpa.PHONE_NUMBER" if phone_auth else None]
        text = "CHAR" if self.name == "mysql" else "TEXT"
        parts = [f"COALESCE(CAST({c} AS {text}), '')" if c else "''" for c in columns]
        join = f" LEFT JOIN {PHONE_AUTH_TABLE} mpa ON mpa.USER_ID = m.USER_ID" if phone_auth else ""
        tables = (f"FROM b_tasks_member m LEFT JOIN b_user mu ON mu.ID = m.USER_ID{join} "
                  f"WHERE m.TASK_ID = {task} AND m.TYPE IN ('A', 'U')")
        if self.name == "mysql":
            record = "CONCAT(" + ", '\x1f', ".join(parts) + ")"
            return f"(SELECT GROUP_CONCAT(DISTINCT {record} ORDER BY {record} SEPARATOR '\x1e') {tables})"
        record = " || '\x1f' || ".join(parts)
        if self.name == "postgresql":
            return f"(SELECT string_agg(DISTINCT {record}, '\x1e' ORDER BY {record}) {tables})"
        return f"(SELECT group_concat(r, '\x1e') FROM (SELECT DISTINCT {record} AS r {tables} ORDER BY r) q)"

    def same_text(self, column: str, expr: str) -> str:
        """column = expr for text taken out of C_FIELDS: byte-wise on MySQL, where the
        two may differ in collation ("Illegal mix of collations"); the index still serves."""
        if self.name == "mysql":
            return f"{column} = BINARY {expr}"
        return f"{column} = {expr}"


def _user_columns(alias: str, prefix: str, phone_auth: bool) -> tuple[str, str]:
    """(select list, extra join) of a b_user row aliased `alias`, labels `<prefix>_…`."""
    columns = (f"{alias}.LOGIN AS {prefix}_login, {alias}.EMAIL AS {prefix}_email, {alias}.NAME AS {prefix}_name, "
               f"{alias}.LAST_NAME AS {prefix}_last_name, {alias}.PERSONAL_PHONE AS {prefix}_personal_phone, "
               f"{alias}.PERSONAL_MOBILE AS {prefix}_personal_mobile, {alias}.WORK_PHONE AS {prefix}_work_phone")
    if phone_auth:
        return (columns + f", {alias}pa.PHONE_NUMBER AS {prefix}_phone_auth",
                f" LEFT JOIN {PHONE_AUTH_TABLE} {alias}pa ON {alias}pa.USER_ID = {alias}.ID")
    return columns + f", NULL AS {prefix}_phone_auth", ""


def _order_phone(order_id: str, available: bool) -> str:
    """A scalar subquery: the order's phone property (IS_PHONE='Y'), or NULL."""
    if not available:
        return "NULL"
    return ("(SELECT pv.VALUE FROM b_sale_order_props_value pv JOIN b_sale_order_props pp ON pp.ID = pv.ORDER_PROPS_ID"
            f" WHERE pv.ORDER_ID = {order_id} AND pv.ENTITY_TYPE = 'ORDER' AND pp.IS_PHONE = 'Y'"
            " AND pv.VALUE IS NOT NULL AND pv.VALUE <> '' ORDER BY pv.ID LIMIT 1)")


EMPTY = sa.text("SELECT e.x AS id FROM (SELECT 1 AS x) e WHERE 1 = 0")


class _Catalog:
    """What `prepare` reads: the tables present, status names and shipment status codes."""

    REUSE = 5.0                 # seconds

    def __init__(self, language: str):
        self.language = language
        self.tables: set[str] | None = None          # None: not read yet (assume everything is there)
        self.status_names: dict[str, str] = {}
        self.shipment_codes: set[str] = set(DEFAULT_SHIPMENT_STATUSES)
        self.loaded_at = 0.0

    def has(self, *tables: str) -> bool:
        return self.tables is None or all(t in self.tables for t in tables)

    def load(self, connection: sa.Connection) -> None:
        """Read the catalog — once per round of `prepare` calls (every source prepares
        after a (re)connect; the first one reads, the others within a few seconds reuse it)."""
        now = time.monotonic()
        if self.tables is not None and now - self.loaded_at < self.REUSE:
            return
        self.tables = {t.lower() for t in sa.inspect(connection).get_table_names()}
        names: dict[str, str] = {}
        codes = set(DEFAULT_SHIPMENT_STATUSES)
        if self.has("b_sale_status"):
            for code, kind in connection.execute(sa.text("SELECT s.ID, s.TYPE FROM b_sale_status s")):
                if kind is not None and str(kind).strip() == "D" and code is not None:
                    codes.add(str(code).strip())
        if self.has("b_sale_status_lang"):
            rows = connection.execute(sa.text("SELECT l.STATUS_ID, l.NAME FROM b_sale_status_lang l "
                                              "WHERE l.LID = :language"), {"language": self.language})
            for code, name in rows:
                if code is not None and name is not None and str(name).strip():
                    names[str(code).strip()] = str(name).strip()
        self.status_names = names
        self.shipment_codes = codes
        self.loaded_at = time.monotonic()

    def status_name(self, code: Any) -> str | None:
        if code in (None, ""):
            return None
        code = str(code).strip()
        if code in self.status_names:
            return self.status_names[code]
        if self.language == DEFAULT_LANGUAGE:     # the codec's defaults are Bitrix's Russian names
            return DEFAULT_ORDER_STATUSES.get(code) or DEFAULT_SHIPMENT_STATUSES.get(code)
        return None
