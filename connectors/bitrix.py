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
| `mail` | `b_event` | append, `ID` | `mail.<EVENT_NAME>` for every row; sale mails also `order.*` / `shipment.*` (bitrix_codec) |
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
string functions (`_Dialect.php_field`) and joins on them — indexed lookups per row,
no per-row round trips. `prepare()` (once per connection) reads the status names and
which tables exist: a source whose table is missing (no support or tasks module) reads
nothing and says so in the log once.

Every value goes in as a bound parameter; the only text put into SQL is this module's
own (table and column names, and the field names it extracts).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import codecs
import hashlib
import json
import logging
import re
import time
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

import sqlalchemy as sa

from herald.connectors.bitrix_codec import (
    DEFAULT_ORDER_STATUSES, DEFAULT_SHIPMENT_STATUSES, BitrixDecodeError, decode_c_fields,
    mail_event_to_events, parse_money, with_phone,
)
from herald.connectors.sql import APPEND, DELETE, SNAPSHOT, decode_cursor, encode_cursor, json_value
from herald.connectors.options import what as _what
from herald.engine.config import ConnectorConfig
from herald.engine.errors import ConfigError, Diagnostic, Location, did_you_mean
from herald.engine.helpers.phones import normalize_phone

log = logging.getLogger("herald.connectors.bitrix")

__all__ = ["sources", "SOURCES", "DEFAULT_SOURCES"]

SOURCES = ("mail", "orders", "shipments", "users", "subscriptions", "tickets", "tasks")
DEFAULT_SOURCES = ("mail", "users", "subscriptions", "tickets", "tasks")
SNAPSHOT_SALE = ("orders", "shipments")
OPTIONS = ("charset", "site", "language", "sources")
CHARSETS = {"utf-8": "utf-8", "cp1251": "cp1251"}      # codecs.lookup names → what the codec is given
DEFAULT_LANGUAGE = "ru"
PREFIX = "bitrix preset"

# Which table each source reads; a missing one makes the source read nothing.
TABLES = {"mail": "b_event", "orders": "b_sale_order", "shipments": "b_sale_order_delivery", "users": "b_user",
          "subscriptions": "b_subscription", "tickets": "b_ticket", "tasks": "b_tasks"}
SALE_TABLES = ("b_sale_order", "b_user")          # what the mail source's order and phone joins need
PHONE_TABLES = ("b_sale_order_props_value", "b_sale_order_props")
PHONE_AUTH_TABLE = "b_user_phone_auth"


# ====================================================================== options

def sources(config: ConnectorConfig, settings: dict) -> list:
    """The preset's factory (herald.connectors.sql.PRESET_MODULES): check the `bitrix:`
    options and build the chosen sources. Raises ConfigError with located problems."""
    preset = _Preset.from_settings(config, settings)
    builders = {"mail": MailSource, "orders": OrdersSource, "shipments": ShipmentsSource, "users": UsersSource,
                "subscriptions": SubscriptionsSource, "tickets": TicketsSource, "tasks": TasksSource}
    return [builders[name](preset) for name in preset.sources]


class _Options:
    """Collects located diagnostics for the `bitrix:` mapping."""

    def __init__(self, config: ConnectorConfig, settings: dict):
        self.config = config
        self.fallback: Location | None = settings.get("location") or config.location
        self.problems: list[Diagnostic] = []
        try:                                  # line:col of nested keys, when herald.connectors.sql offers it
            from herald.connectors.options import Locator
            self._locator = Locator(config)
        except Exception:                     # noqa: BLE001 — only the precision of a location is lost
            self._locator = None

    def at(self, *path: Any, key: bool = False) -> Location | None:
        if self._locator is not None:
            try:
                return self._locator.at("bitrix", *path, key=key) or self.fallback
            except Exception:                 # noqa: BLE001
                pass
        return self.fallback

    def error(self, message: str, *path: Any, key: bool = False, hint: str | None = None) -> None:
        self.problems.append(Diagnostic(f"{PREFIX}: {message}", self.at(*path, key=key), hint=hint))



class _Preset:
    """The checked options, and what the sources share: the catalog read in `prepare`."""

    def __init__(self, *, dialect: str, charset: str, sites: str | dict | None, language: str,
                 sources: tuple[str, ...], connector: str | None = None):
        self.dialect = _Dialect(dialect)
        self.charset = charset
        self.sites = sites
        self.language = language
        self.sources = sources
        self.connector = connector
        self.catalog = _Catalog(language)

    @classmethod
    def from_settings(cls, config: ConnectorConfig, settings: dict) -> "_Preset":
        check = _Options(config, settings)
        raw = settings.get("options")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            check.error(f"bitrix: expected a mapping of options, got {_what(raw)}",
                        hint="e.g. bitrix: {charset: windows-1251, site: {s1: s1}}")
            raise ConfigError(check.problems)
        for key in raw:
            if key not in OPTIONS:
                check.error(f'unknown option "{key}"', key, key=True,
                            hint=did_you_mean(str(key), OPTIONS) or f"the bitrix preset has: {', '.join(OPTIONS)}")

        inherited = _charset(settings.get("charset") or "utf-8")      # the connector's `charset:`
        charset = inherited or "utf-8"
        if "charset" in raw:
            found = _charset(raw["charset"])
            if found is None:
                check.error(f"charset: expected utf-8 or windows-1251, got {_what(raw['charset'])}", "charset",
                            hint="the site charset of the Bitrix installation (Settings → Sites): utf-8, or "
                                 "windows-1251 on older Russian sites")
            else:
                charset = found
        elif inherited is None:
            check.error(f"charset: a Bitrix site is utf-8 or windows-1251, not {settings.get('charset')}",
                        hint="set bitrix: {charset: utf-8} or {charset: windows-1251}")

        sites: str | dict | None = None
        if "site" in raw:
            value = raw["site"]
            if isinstance(value, str) and value.strip():
                sites = value.strip()
            elif isinstance(value, dict) and value:
                sites = {}
                for lid, target in value.items():
                    if not isinstance(lid, str) or not lid.strip():
                        check.error(f"site: {_what(lid)} is not a Bitrix site id (LID)", "site", lid, key=True,
                                    hint="e.g. site: {s1: shop}")
                    elif target is not None and (not isinstance(target, str) or not target.strip()):
                        check.error(f"site: {lid}: expected a Herald site id or null (skip that site), got "
                                    f"{_what(target)}", "site", lid, hint="e.g. site: {s1: shop, s2: null}")
                    else:
                        sites[lid.strip()] = target.strip() if isinstance(target, str) else None
            else:
                check.error(f"site: expected a Herald site id or a mapping of Bitrix site ids (LID) to Herald "
                            f"site ids, got {_what(value)}", "site", hint="e.g. site: {s1: shop, s2: outlet}")

        language = DEFAULT_LANGUAGE
        if "language" in raw:
            value = raw["language"]
            if isinstance(value, str) and re.fullmatch(r"[A-Za-z]{2}", value.strip()):
                language = value.strip().lower()
            else:
                check.error(f"language: expected a two-letter language id, got {_what(value)}", "language",
                            hint="the LID of b_sale_status_lang, e.g. language: ru")

        chosen = DEFAULT_SOURCES
        if "sources" in raw:
            value = raw["sources"]
            if not isinstance(value, list) or not value:
                check.error(f"sources: expected a list of sources, got {_what(value)}", "sources",
                            hint=f"choose from: {', '.join(SOURCES)}")
            else:
                picked: list[str] = []
                for i, item in enumerate(value):
                    if not isinstance(item, str) or item.strip() not in SOURCES:
                        check.error(f"sources: unknown source {_what(item)}", "sources", i,
                                    hint=(did_you_mean(item.strip(), SOURCES) if isinstance(item, str) else None)
                                    or f"choose from: {', '.join(SOURCES)}")
                    elif item.strip() in picked:
                        check.error(f'sources: "{item.strip()}" is listed twice', "sources", i)
                    else:
                        picked.append(item.strip())
                chosen = tuple(picked)
                both = [s for s in SNAPSHOT_SALE if s in chosen]
                if "mail" in chosen and both:
                    check.error(
                        f"sources: mail and {' and '.join(both)} together would notify twice", "sources",
                        hint="sale mails in b_event already give order.* and shipment.* events for every order "
                             "change; read b_sale_order / b_sale_order_delivery only when the shop's sale mail "
                             "events are off — then leave mail out (e.g. sources: [orders, shipments, users])")
        if check.problems:
            raise ConfigError(check.problems)
        return cls(dialect=settings.get("dialect") or "mysql", charset=charset, sites=sites, language=language,
                   sources=chosen, connector=settings.get("name"))

    def site_of(self, lid: Any) -> tuple[bool, str | None]:
        """(keep, Herald site id or None for the default site) for a Bitrix LID value
        ("s1", or "s1,s2" on b_event: the first)."""
        if isinstance(self.sites, str):
            return True, self.sites
        text = json_value(lid, self.charset)
        text = str(text).split(",")[0].strip() if text not in (None, "") else ""
        if not text:
            return True, None
        if isinstance(self.sites, dict) and text in self.sites:
            target = self.sites[text]
            return target is not None, target
        return True, text

    def fixed_site(self) -> str | None:
        """The site of rows that name none (users, subscriptions, tasks)."""
        return self.sites if isinstance(self.sites, str) else None


def _charset(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        name = codecs.lookup(value.strip()).name
    except LookupError:
        return None
    return CHARSETS.get(name)


# ====================================================================== SQL by dialect

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
        """The text of top-level field `key` of a PHP-serialized array in `column`
        (`s:13:"ORDER_REAL_ID";s:2:"42";` or `…;i:42;` → 42), or NULL."""
        assert re.fullmatch(r"[A-Z_]+", key)
        marker = f':"{key}";'
        n = len(marker)
        if self.name == "mysql":
            pos = f"LOCATE('{marker}', {column})"
            seg = f"SUBSTRING_INDEX(SUBSTRING({column}, {pos} + {n}, 80), ';', 1)"
            return f"(CASE WHEN {pos} > 0 THEN TRIM(BOTH '\"' FROM SUBSTRING_INDEX({seg}, ':', -1)) END)"
        if self.name == "postgresql":
            return f"substring({column} from '{marker}[a-zA-Z]:(?:[0-9]+:\")?([^\";]*)')"
        column = f"CAST({column} AS TEXT)"         # a BLOB would mix byte and character positions
        pos = f"instr({column}, '{marker}')"
        tail = f"substr({column}, {pos} + {n}, 80)"
        seg = f"substr({tail}, 1, instr({tail}, ';') - 1)"
        value = (f"(CASE WHEN substr({seg}, 1, 2) = 's:' THEN rtrim(substr({seg}, instr({seg}, '\"') + 1), '\"') "
                 f"ELSE substr({seg}, 3) END)")
        return f"(CASE WHEN {pos} > 0 THEN {value} END)"

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


# ====================================================================== values

def _text(value: Any, charset: str = "utf-8") -> str | None:
    value = json_value(value, charset)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _ident(value: Any) -> int | str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    text = _text(value)
    if text is None:
        return None
    return int(text) if text.isascii() and text.isdigit() and (text == "0" or text[0] != "0") else text


def _yes(value: Any) -> bool:
    return _text(value) == "Y"


def _money(value: Any) -> str | None:
    """b_sale_order.PRICE (decimal(18,4)) as "1500.00"."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            return None
        if not amount.is_finite():
            return None
        cents = amount.quantize(Decimal("0.01"))
        return str(cents) if cents == amount else str(amount)          # 2500.0000 → 2500.00
    return parse_money(_text(value))


def _when(value: Any) -> str | None:
    """A DATETIME as ISO 8601 text (server local time, as Bitrix stores it)."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    text = _text(value)
    if text and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.0+)?", text):
        return text[:19].replace(" ", "T")
    return text


def _site_date(value: Any) -> str | None:
    """Bitrix's site format of a date, as in its mails: 19.05.2024 14:03:11."""
    if isinstance(value, datetime):
        return value.strftime("%d.%m.%Y %H:%M:%S")
    iso = _when(value)
    if iso and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", iso):
        return datetime.fromisoformat(iso).strftime("%d.%m.%Y %H:%M:%S")
    return iso


def _pick_phone(*values: Any) -> str | None:
    """The first value that is a valid number, else the first one set (as found)."""
    present = [str(v).strip() for v in values if v is not None and str(v).strip()]
    for value in present:
        if normalize_phone(value).ok:
            return value
    return present[0] if present else None


def _phone_value(raw: str | None) -> str | None:
    if raw is None:
        return None
    phone = normalize_phone(raw)
    return phone.e164 if phone.ok else raw


def _put(obj: dict, key: str, value: Any) -> None:
    if value is not None and value != "":
        obj[key] = value


def _fill(obj: dict, key: str, value: Any) -> None:
    """Set a field the event does not have yet (what the mail said wins)."""
    if obj.get(key) in (None, "") and value is not None and value != "":
        obj[key] = value


def _person(row: Mapping[str, Any], prefix: str, user_id: Any, charset: str, *extra_phones: Any) -> dict:
    """A `user`/`customer` object from b_user columns labelled `<prefix>_…`."""
    person: dict[str, Any] = {}
    _put(person, "id", _ident(user_id))
    _put(person, "login", _text(row.get(f"{prefix}_login"), charset))
    name = " ".join(p for p in (_text(row.get(f"{prefix}_name"), charset),
                                _text(row.get(f"{prefix}_last_name"), charset)) if p)
    _put(person, "name", name)
    _put(person, "email", _text(row.get(f"{prefix}_email"), charset))
    phone = _pick_phone(*extra_phones, *(_text(row.get(f"{prefix}_{f}"), charset) for f in
                                         ("personal_phone", "personal_mobile", "work_phone", "phone_auth")))
    _put(person, "phone", _phone_value(phone))
    return person


US, RS = "\x1f", "\x1e"             # ASCII unit and record separators: never in a name or a phone
MEMBER_FIELDS = ("id", "name", "last_name", "personal_phone", "personal_mobile", "work_phone", "phone_auth")


def _members(value: Any, charset: str) -> list[dict]:
    """`task.members` from `_Dialect.member_list`'s text: one `user` per member, in
    user-id order, each once. A record cut short (MySQL's group_concat_max_len, 1024
    bytes by default: about a dozen members) is left out rather than read wrong."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode(charset, errors="replace")
    text = value if isinstance(value, str) else ""          # not _text: it strips, and US/RS are whitespace
    members: dict[Any, dict] = {}
    for record in text.split(RS):
        fields = record.split(US)
        if len(fields) != len(MEMBER_FIELDS) or not fields[0]:
            continue
        row = {f"m_{name}": field or None for name, field in zip(MEMBER_FIELDS, fields)}
        person = _person(row, "m", fields[0], charset)
        members.setdefault(person.get("id"), person)
    return sorted(members.values(), key=lambda p: (str(type(p.get("id"))), p.get("id")))


def _label(cursor: str) -> str:
    return cursor if re.fullmatch(r"-?\d{1,30}", cursor) else hashlib.sha1(cursor.encode()).hexdigest()[:12]


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
                        .encode()).hexdigest()[:16]


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict, bool]:
    """Compare two states shaped {entity: {field: value}} (every field present, None
    when empty): (the changed fields' old values, {entity: {field: old}}; whether `old`
    lacks a field `new` has — stored by an older Herald: not a change of the row).
    A field's value is compared whole (a nested user is one value)."""
    previous: dict[str, Any] = {}
    reshaped = False
    for entity, fields in new.items():
        before = old.get(entity)
        if not isinstance(before, Mapping) or not isinstance(fields, Mapping):
            reshaped = True
            continue
        changed = {}
        for key, value in fields.items():
            if key not in before:
                reshaped = True
            elif before[key] != value:
                changed[key] = before[key]
        if changed:
            previous[entity] = changed
    return previous, reshaped


# ====================================================================== sources

class _Source(ABC):
    """What every Bitrix source shares: the Source protocol of herald.connectors.sql."""

    name = ""
    mode = APPEND
    table = ""
    start = None                  # the connector's `start`

    def __init__(self, preset: _Preset):
        self.preset = preset
        self._warned = False

    @property
    def charset(self) -> str:
        return self.preset.charset

    @property
    def catalog(self) -> _Catalog:
        return self.preset.catalog

    def prepare(self, connection: sa.Connection) -> None:
        self.catalog.load(connection)
        if not self.catalog.has(self.table):
            if not self._warned:
                log.warning("bitrix preset: there is no table %s in this database (its module is not installed?): "
                            "the %s source reads nothing; leave it out of bitrix: sources", self.table, self.name)
                self._warned = True
        else:
            self._warned = False

    def query(self, cursor: str | None, limit: int) -> sa.Executable:
        if not self.catalog.has(self.table):
            return EMPTY
        return self._query(cursor, limit)

    @abstractmethod
    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        """The source's SELECT after `cursor`."""

    def key_of(self, row: Mapping[str, Any]) -> str:
        return str(_ident(row["id"]))

    def site(self, row: Mapping[str, Any], column: str = "lid") -> tuple[bool, dict]:
        """(keep the row, {"site": id} or {} for the default site)."""
        keep, site = self.preset.site_of(row.get(column)) if column in row else (True, self.preset.fixed_site())
        return keep, ({"site": site} if site else {})


class _AppendSource(_Source):
    """Rows after the last ID seen."""

    mode = APPEND
    id_column = "ID"

    def _after(self, alias: str, cursor: str | None, limit: int, sql: str) -> sa.Executable:
        """`sql` holds {where} where the cursor condition goes; ordered and limited here."""
        where = f"{alias}.{self.id_column} > :after" if cursor is not None else "1 = 1"
        statement = sa.text(sql.replace("{where}", where) + f" ORDER BY {alias}.{self.id_column} LIMIT :limit")
        params = [sa.bindparam("limit", limit, type_=sa.Integer)]
        if cursor is not None:
            params.append(sa.bindparam("after", int(decode_cursor(cursor)), type_=sa.BigInteger))
        return statement.bindparams(*params)

    def cursor_of(self, row: Mapping[str, Any]) -> str:
        return encode_cursor(int(row["id"]))


class _SnapshotSource(_Source):
    """Rows changed since the last (timestamp, ID) seen; each compared with its last
    stored state: first sight `<entity>.created`, a change `<entity>.updated` with
    `previous` holding only the changed fields' old values."""

    mode = SNAPSHOT
    entity = ""
    time_column = "DATE_UPDATE"

    def _after(self, alias: str, cursor: str | None, limit: int, sql: str) -> sa.Executable:
        t, i = f"{alias}.{self.time_column}", f"{alias}.ID"
        where = f"{t} IS NOT NULL"
        params = [sa.bindparam("limit", limit, type_=sa.Integer)]
        if cursor is not None:
            at, after = decode_cursor(cursor)
            where += f" AND ({t} > :at OR ({t} = :at AND {i} > :after))"
            params += [sa.bindparam("at", at), sa.bindparam("after", int(after), type_=sa.BigInteger)]
        statement = sa.text(sql.replace("{where}", where) + f" ORDER BY {t}, {i} LIMIT :limit")
        return statement.bindparams(*params)

    def cursor_of(self, row: Mapping[str, Any]) -> str:
        return encode_cursor([row["changed_at"], int(row["id"])])

    @abstractmethod
    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        """(the part compared between polls — {entity: {...}}, the rest of the data)."""

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        keep, site = self.site(row)
        state, rest = self.state(row)
        key, label = self.key_of(row), _label(self.cursor_of(row))
        if not keep:
            return [], state
        if snapshot is None:
            data = {**state, **rest}
            return [{"type": f"{self.entity}.created", "id": f"{key}:c:{label}", "data": data, **site}], state
        previous, reshaped = _changes(snapshot, state)
        if not previous:
            return [], (state if reshaped or dict(snapshot) != state else None)
        data = {**state, **rest}
        self.annotate(data, previous)
        event_id = f"{key}:u:{_digest(label, previous, state)}"
        return [{"type": f"{self.entity}.updated", "id": event_id, "data": data, "previous": previous,
                 **site}], state

    def annotate(self, data: dict, previous: dict) -> None:
        """Add what an update says about itself (ticket.changed)."""


# ---------------------------------------------------------------------- b_event

class MailSource(_AppendSource):
    """`b_event`, the mail queue: every row → `mail.<EVENT_NAME>`, sale mails also the
    canonical event, with the buyer, the order's price and the shipment's tracking
    number joined in from the shop's tables. Never filtered on SUCCESS_EXEC (Bitrix
    rewrites it within seconds): the cursor is our own, on ID."""

    name = "mail"
    table = "b_event"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        d = self.preset.dialect
        inner = ("SELECT ev.ID AS id, ev.EVENT_NAME AS event_name, ev.LID AS lid, "
                 f"{d.raw('ev.C_FIELDS')} AS c_fields")
        sale = self.catalog.has(*SALE_TABLES)
        if sale:
            is_sale = "substr(ev.EVENT_NAME, 1, 5) = 'SALE_'"
            real = d.php_field("ev.C_FIELDS", "ORDER_REAL_ID")
            number = f"COALESCE({d.php_field('ev.C_FIELDS', 'ORDER_ID')}, {d.php_field('ev.C_FIELDS', 'ORDER_NO')})"
            shipment = d.php_field("ev.C_FIELDS", "SHIPMENT_ID")
            inner += (f", CASE WHEN {is_sale} THEN {real} END AS h_real"
                      f", CASE WHEN {is_sale} THEN {number} END AS h_number"
                      f", CASE WHEN {is_sale} THEN {shipment} END AS h_shipment")
        inner += " FROM b_event ev WHERE {where} ORDER BY ev.ID LIMIT :limit"
        if not sale:
            sql = ("SELECT e.id, e.event_name, e.lid, e.c_fields FROM (" + inner + ") e ORDER BY e.id")
        else:
            users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
            has_shipments = self.catalog.has("b_sale_order_delivery")
            shipment_columns = ("d.ID AS shipment_id, d.ACCOUNT_NUMBER AS shipment_number, "
                                "d.TRACKING_NUMBER AS shipment_tracking_number, "
                                "d.DELIVERY_NAME AS shipment_delivery_name") if has_shipments else (
                "NULL AS shipment_id, NULL AS shipment_number, NULL AS shipment_tracking_number, "
                "NULL AS shipment_delivery_name")
            shipment_join = (f" LEFT JOIN b_sale_order_delivery d ON d.ID = {d.to_int('e.h_shipment')}"
                             " AND d.ORDER_ID = o.ID") if has_shipments else ""
            sql = ("SELECT e.id, e.event_name, e.lid, e.c_fields, "
                   "o.ID AS order_id, o.ACCOUNT_NUMBER AS order_number, o.PRICE AS order_price, "
                   "o.CURRENCY AS order_currency, o.PAYED AS order_payed, o.CANCELED AS order_canceled, "
                   "o.ALLOW_DELIVERY AS order_allow_delivery, o.USER_ID AS user_id, "
                   f"{users}, {_order_phone('o.ID', self.catalog.has(*PHONE_TABLES))} AS order_phone, "
                   f"{shipment_columns} "
                   f"FROM ({inner}) e "
                   f"LEFT JOIN b_sale_order o1 ON o1.ID = {d.to_int('e.h_real')} "
                   f"LEFT JOIN b_sale_order o2 ON o1.ID IS NULL AND {d.same_text('o2.ACCOUNT_NUMBER', 'e.h_number')} "
                   "LEFT JOIN b_sale_order o ON o.ID = COALESCE(o1.ID, o2.ID) "
                   f"LEFT JOIN b_user u ON u.ID = o.USER_ID{user_join}{shipment_join} "
                   "ORDER BY e.id")
        # the cursor and LIMIT belong to the inner SELECT of b_event
        where = "ev.ID > :after" if cursor is not None else "1 = 1"
        statement = sa.text(sql.replace("{where}", where))
        params = [sa.bindparam("limit", limit, type_=sa.Integer)]
        if cursor is not None:
            params.append(sa.bindparam("after", int(decode_cursor(cursor)), type_=sa.BigInteger))
        return statement.bindparams(*params)

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        keep, site = self.preset.site_of(row.get("lid"))
        if not keep:
            return [], None
        row_id = int(row["id"])
        name = _text(row.get("event_name"), self.charset) or ""
        try:
            fields = decode_c_fields(row.get("c_fields"), self.charset)
            made = mail_event_to_events(name, fields, row_id=row_id, site=site or "", time=None,
                                        status_names=self.catalog.status_names,
                                        shipment_status_codes=self.catalog.shipment_codes)
        except BitrixDecodeError as exc:
            return [self._malformed(row_id, name, site, exc)], None
        out = []
        for event in made:
            if not site:
                event.pop("site", None)
            if not event["type"].startswith("mail."):
                self._enrich(event, row)
            out.append(event)
        return out, None

    def _malformed(self, row_id: int, name: str, site: str | None, exc: BitrixDecodeError) -> dict:
        """A row whose C_FIELDS cannot be read: logged, and recorded in the journal as one
        `connector.error` event (rules may alert on it); no mail.* event, since its
        fields are unknown. The cursor moves past it, so polling goes on."""
        log.warning("bitrix preset: b_event row %s (%s) skipped: %s", row_id, name or "no EVENT_NAME", exc)
        about = {"type": "sql", "source": self.name, "status": "error",
                 "error": f"b_event row {row_id} ({name or '?'}): {exc}"}
        if self.preset.connector:
            about["name"] = self.preset.connector
        event = {"type": "connector.error", "id": f"bitrix:b_event:{row_id}:error",
                 "data": {"connector": about, "row": {"table": "b_event", "ID": row_id, "EVENT_NAME": name}}}
        if site:
            event["site"] = site
        return event

    def _enrich(self, event: dict, row: Mapping[str, Any]) -> None:
        """Fill what the mail does not say from the joined rows; the mail's own fields win."""
        data = event["data"]
        cs = self.charset
        order_id = _ident(row.get("order_id"))
        order = data.get("order")
        if order_id is not None and isinstance(order, dict):
            _fill(order, "id", order_id)
            _fill(order, "number", _text(row.get("order_number"), cs))
            _fill(order, "price", _money(row.get("order_price")))
            _fill(order, "currency", _text(row.get("order_currency"), cs))
            if event["type"] == "order.updated":
                # the current flags, for conditions such as `if order.paid != true`; the
                # event's `previous` is what the mail says changed, so these cannot fire a
                # state trigger on their own
                _fill(order, "paid", _yes(row.get("order_payed")))
                _fill(order, "canceled", _yes(row.get("order_canceled")))
                _fill(order, "delivery_allowed", _yes(row.get("order_allow_delivery")))
        shipment = data.get("shipment")
        if isinstance(shipment, dict) and row.get("shipment_id") is not None:
            _fill(shipment, "id", _ident(row.get("shipment_id")))
            _fill(shipment, "number", _text(row.get("shipment_number"), cs))
            _fill(shipment, "order_id", order_id)
            _fill(shipment, "tracking_number", _text(row.get("shipment_tracking_number"), cs))
            _fill(shipment, "delivery_name", _text(row.get("shipment_delivery_name"), cs))
        if order_id is None:
            return
        customer = data.setdefault("customer", {})
        person = _person(row, "user", row.get("user_id"), cs, _text(row.get("order_phone"), cs))
        for key in ("id", "login", "name", "email"):
            _fill(customer, key, person.get(key))
        if not customer.get("phone") and person.get("phone"):
            data["customer"] = with_phone(event, person["phone"])["data"]["customer"]


# ---------------------------------------------------------------------- b_sale_order

def _order_object(row: Mapping[str, Any], prefix: str, catalog: _Catalog, charset: str) -> dict:
    """The canonical `order` from b_sale_order columns labelled `<prefix>…` (every field
    present, None when empty: it is also the snapshot compared between polls)."""
    p = prefix
    status = _text(row.get(f"{p}status_id"), charset)
    return {
        "id": _ident(row.get(f"{p}id")),
        "number": _text(row.get(f"{p}account_number"), charset),
        "status": status,
        "status_name": catalog.status_name(status),
        "paid": _yes(row.get(f"{p}payed")),
        "canceled": _yes(row.get(f"{p}canceled")),
        "cancel_reason": _text(row.get(f"{p}reason_canceled"), charset),
        "delivery_allowed": _yes(row.get(f"{p}allow_delivery")),
        "price": _money(row.get(f"{p}price")),
        "currency": _text(row.get(f"{p}currency"), charset),
        "tracking_number": _text(row.get(f"{p}tracking_number"), charset),
        "date": _when(row.get(f"{p}date_insert")),
        "user_id": _ident(row.get("user_id")),
    }


def _order_flat(order: Mapping[str, Any], customer: Mapping[str, Any], date_value: Any) -> dict:
    """The flat fields Bitrix's own sale mails carry, so Bitrix-style templates render."""
    flat: dict[str, Any] = {}
    _put(flat, "ORDER_ID", order.get("number"))
    _put(flat, "ORDER_REAL_ID", order.get("id"))
    _put(flat, "ORDER_DATE", _site_date(date_value))
    _put(flat, "ORDER_USER", customer.get("name"))
    _put(flat, "PRICE", order.get("price"))
    _put(flat, "EMAIL", customer.get("email"))
    return flat


class OrdersSource(_SnapshotSource):
    """`b_sale_order` by DATE_UPDATE: for shops whose sale mail events are off."""

    name = "orders"
    table = "b_sale_order"
    entity = "order"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
        sql = ("SELECT o.ID AS id, o.LID AS lid, o.ACCOUNT_NUMBER AS account_number, o.STATUS_ID AS status_id, "
               "o.PAYED AS payed, o.CANCELED AS canceled, o.REASON_CANCELED AS reason_canceled, "
               "o.ALLOW_DELIVERY AS allow_delivery, o.PRICE AS price, o.CURRENCY AS currency, "
               "o.TRACKING_NUMBER AS tracking_number, o.DATE_INSERT AS date_insert, o.DATE_UPDATE AS changed_at, "
               f"o.USER_ID AS user_id, {users}, {_order_phone('o.ID', self.catalog.has(*PHONE_TABLES))} AS order_phone "
               f"FROM b_sale_order o LEFT JOIN b_user u ON u.ID = o.USER_ID{user_join} WHERE {{where}}")
        return self._after("o", cursor, limit, sql)

    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        order = _order_object(row, "", self.catalog, self.charset)
        customer = _person(row, "user", row.get("user_id"), self.charset, _text(row.get("order_phone"), self.charset))
        return {"order": order}, {"customer": customer, **_order_flat(order, customer, row.get("date_insert"))}


# ---------------------------------------------------------------------- b_sale_order_delivery

class ShipmentsSource(_SnapshotSource):
    """`b_sale_order_delivery` by DATE_UPDATE, never the technical SYSTEM='Y' shipment."""

    name = "shipments"
    table = "b_sale_order_delivery"
    entity = "shipment"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
        sql = ("SELECT d.ID AS id, d.ORDER_ID AS shipment_order_id, d.ACCOUNT_NUMBER AS shipment_number, "
               "d.STATUS_ID AS shipment_status_id, d.ALLOW_DELIVERY AS shipment_allow_delivery, "
               "d.DEDUCTED AS shipment_deducted, d.DELIVERY_NAME AS shipment_delivery_name, "
               "d.TRACKING_NUMBER AS shipment_tracking_number, d.CANCELED AS shipment_canceled, "
               "d.DATE_UPDATE AS changed_at, "
               "o.ID AS order_id, o.LID AS lid, o.ACCOUNT_NUMBER AS order_account_number, "
               "o.STATUS_ID AS order_status_id, o.PAYED AS order_payed, o.CANCELED AS order_canceled, "
               "o.REASON_CANCELED AS order_reason_canceled, o.ALLOW_DELIVERY AS order_allow_delivery, "
               "o.PRICE AS order_price, o.CURRENCY AS order_currency, o.TRACKING_NUMBER AS order_tracking_number, "
               "o.DATE_INSERT AS order_date_insert, o.USER_ID AS user_id, "
               f"{users}, {_order_phone('o.ID', self.catalog.has(*PHONE_TABLES))} AS order_phone "
               "FROM b_sale_order_delivery d LEFT JOIN b_sale_order o ON o.ID = d.ORDER_ID "
               f"LEFT JOIN b_user u ON u.ID = o.USER_ID{user_join} "
               "WHERE (d.SYSTEM IS NULL OR d.SYSTEM <> 'Y') AND {where}")
        return self._after("d", cursor, limit, sql)

    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        cs = self.charset
        status = _text(row.get("shipment_status_id"), cs)
        shipment = {
            "id": _ident(row.get("id")),
            "number": _text(row.get("shipment_number"), cs),
            "order_id": _ident(row.get("shipment_order_id")),
            "status": status,
            "status_name": self.catalog.status_name(status),
            "tracking_number": _text(row.get("shipment_tracking_number"), cs),
            "delivery_name": _text(row.get("shipment_delivery_name"), cs),
            "shipped": _yes(row.get("shipment_deducted")),
            "delivery_allowed": _yes(row.get("shipment_allow_delivery")),
            "canceled": _yes(row.get("shipment_canceled")),
        }
        order = _order_object(row, "order_", self.catalog, cs) if row.get("order_id") is not None else {}
        customer = _person(row, "user", row.get("user_id"), cs, _text(row.get("order_phone"), cs))
        flat = _order_flat(order, customer, row.get("order_date_insert"))
        _put(flat, "SHIPMENT_ID", shipment.get("id"))
        _put(flat, "TRACKING_NUMBER", shipment.get("tracking_number"))
        _put(flat, "DELIVERY_NAME", shipment.get("delivery_name"))
        return {"shipment": shipment}, {"order": order, "customer": customer, **flat}


# ---------------------------------------------------------------------- b_user

class UsersSource(_AppendSource):
    """`b_user` by ID: `user.created` (Bitrix sends NEW_USER mails past b_event)."""

    name = "users"
    table = "b_user"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
        sql = (f"SELECT u.ID AS id, {users}, u.ACTIVE AS active, u.DATE_REGISTER AS date_register "
               f"FROM b_user u{user_join} WHERE {{where}}")
        return self._after("u", cursor, limit, sql)

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        keep, site = self.site(row)
        user = _person(row, "user", row.get("id"), self.charset)
        user["active"] = _yes(row.get("active"))
        _put(user, "date_register", _when(row.get("date_register")))
        return [{"type": "user.created", "id": self.key_of(row), "data": {"user": user}, **site}], None


# ---------------------------------------------------------------------- b_subscription

class SubscriptionsSource(_AppendSource):
    """`b_subscription` by ID: `subscription.created`, the phone from the subscriber's
    user account when there is one."""

    name = "subscriptions"
    table = "b_subscription"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
        sql = ("SELECT s.ID AS id, s.USER_ID AS user_id, s.EMAIL AS email, s.CONFIRM_CODE AS confirm_code, "
               "s.CONFIRMED AS confirmed, s.ACTIVE AS active, s.DATE_INSERT AS date_insert, "
               f"{users} FROM b_subscription s LEFT JOIN b_user u ON u.ID = s.USER_ID{user_join} WHERE {{where}}")
        return self._after("s", cursor, limit, sql)

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        keep, site = self.site(row)
        cs = self.charset
        subscription: dict[str, Any] = {}
        _put(subscription, "id", _ident(row.get("id")))
        _put(subscription, "email", _text(row.get("email"), cs))
        _put(subscription, "confirm_code", _text(row.get("confirm_code"), cs))
        subscription["confirmed"] = _yes(row.get("confirmed"))
        subscription["active"] = _yes(row.get("active"))
        _put(subscription, "date", _when(row.get("date_insert")))
        data: dict[str, Any] = {"subscription": subscription}
        if row.get("user_id") is not None:
            user = _person(row, "user", row.get("user_id"), cs)
            _put(subscription, "user_id", user.get("id"))
            _put(subscription, "phone", user.get("phone"))
            data["user"] = user
        return [{"type": "subscription.created", "id": self.key_of(row), "data": data, **site}], None


# ---------------------------------------------------------------------- b_ticket

class TicketsSource(_SnapshotSource):
    """`b_ticket` (support module) by TIMESTAMP_X: `ticket.created` / `ticket.updated`.
    Status, criticality and category are the dictionary ids as stored; `closed` is
    whether DATE_CLOSE is set; `changed` lists the fields an update changed."""

    name = "tickets"
    table = "b_ticket"
    entity = "ticket"
    time_column = "TIMESTAMP_X"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        auth = self.catalog.has(PHONE_AUTH_TABLE)
        owner, owner_join = _user_columns("ou", "owner", auth)
        resp, resp_join = _user_columns("ru", "resp", auth)
        sql = ("SELECT t.ID AS id, t.SITE_ID AS lid, t.TITLE AS title, t.STATUS_ID AS status_id, "
               "t.CRITICALITY_ID AS criticality_id, t.CATEGORY_ID AS category_id, t.DATE_CREATE AS date_create, "
               "t.DATE_CLOSE AS date_close, t.TIMESTAMP_X AS changed_at, t.OWNER_USER_ID AS owner_id, "
               f"t.RESPONSIBLE_USER_ID AS resp_id, {owner}, {resp} FROM b_ticket t "
               f"LEFT JOIN b_user ou ON ou.ID = t.OWNER_USER_ID{owner_join} "
               f"LEFT JOIN b_user ru ON ru.ID = t.RESPONSIBLE_USER_ID{resp_join} WHERE {{where}}")
        return self._after("t", cursor, limit, sql)

    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        cs = self.charset
        owner = _person(row, "owner", row.get("owner_id"), cs) if row.get("owner_id") is not None else {}
        responsible = _person(row, "resp", row.get("resp_id"), cs) if row.get("resp_id") is not None else {}
        ticket = {
            "id": _ident(row.get("id")),
            "title": _text(row.get("title"), cs),
            "status": _ident(row.get("status_id")),
            "criticality": _ident(row.get("criticality_id")),
            "category": _ident(row.get("category_id")),
            "date": _when(row.get("date_create")),
            "closed": row.get("date_close") is not None,
            "owner": owner,
            "responsible": responsible,
        }
        return {"ticket": ticket}, {"customer": dict(owner)}

    def annotate(self, data: dict, previous: dict) -> None:
        data["ticket"] = {**data["ticket"], "changed": sorted(previous.get("ticket", {}))}

    def events(self, row, snapshot):
        made, state = super().events(row, snapshot)
        for event in made:
            if event["type"] == "ticket.created":
                event["data"]["ticket"] = {**event["data"]["ticket"], "changed": []}
        return made, state


# ---------------------------------------------------------------------- b_tasks

class TasksSource(_SnapshotSource):
    """`b_tasks` (portal tasks) by CHANGED_DATE: `task.created` / `task.updated`, and
    `task.deleted` when a task Herald knew turns ZOMBIE='Y' (Bitrix's recycle bin)."""

    name = "tasks"
    table = "b_tasks"
    entity = "task"
    time_column = "CHANGED_DATE"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        auth = self.catalog.has(PHONE_AUTH_TABLE)
        resp, resp_join = _user_columns("ru", "resp", auth)
        creator, creator_join = _user_columns("cu", "creator", auth)
        members = (self.preset.dialect.member_list("k.ID", auth) if self.catalog.has("b_tasks_member")
                   else "NULL")
        sql = ("SELECT k.ID AS id, k.TITLE AS title, k.STATUS AS status, k.PRIORITY AS priority, "
               "k.DEADLINE AS deadline, k.ZOMBIE AS zombie, k.CHANGED_DATE AS changed_at, "
               f"k.RESPONSIBLE_ID AS resp_id, k.CREATED_BY AS creator_id, {resp}, {creator}, "
               f"{members} AS members FROM b_tasks k "
               f"LEFT JOIN b_user ru ON ru.ID = k.RESPONSIBLE_ID{resp_join} "
               f"LEFT JOIN b_user cu ON cu.ID = k.CREATED_BY{creator_join} WHERE {{where}}")
        return self._after("k", cursor, limit, sql)

    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        cs = self.charset
        task = {
            "id": _ident(row.get("id")),
            "title": _text(row.get("title"), cs),
            "status": _ident(row.get("status")),
            "priority": _ident(row.get("priority")),
            "deadline": _when(row.get("deadline")),
            "responsible": _person(row, "resp", row.get("resp_id"), cs) if row.get("resp_id") is not None else {},
            "creator": _person(row, "creator", row.get("creator_id"), cs) if row.get("creator_id") is not None
            else {},
            "members": _members(row.get("members"), cs),
        }
        return {"task": task}, {}

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        if not _yes(row.get("zombie")):
            return super().events(row, snapshot)
        if snapshot is None:                      # deleted before Herald ever saw it: nothing to say
            return [], None
        keep, site = self.site(row)
        state, _ = self.state(row)
        label = _label(self.cursor_of(row))
        event = {"type": "task.deleted", "id": f"{self.key_of(row)}:d:{label}", "data": state, **site}
        return ([event] if keep else []), DELETE
