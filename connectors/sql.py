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

The `Source` protocol below is what presets implement; `MappedSource` is the one built
from `sources:` entries. User documentation: docs/connectors/sql.md.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import json
import logging
import math
import random
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable
from urllib.parse import quote, quote_plus

import sqlalchemy as sa
import trio
from sqlalchemy.engine import URL, make_url

from herald.connectors.base import ConnectorContext
from herald.connectors.options import OptionChecker, number as _number, what as _what
from herald.connectors.outage import Outage
from herald.engine.config import ConnectorConfig, reveal
from herald.engine.errors import ConfigError, EventError, did_you_mean

log = logging.getLogger("herald.connectors.sql")

__all__ = [
    "Source", "MappedSource", "SqlConnector", "PRESETS", "PRESET_MODULES", "APPEND", "SNAPSHOT", "DELETE",
    "encode_cursor", "decode_cursor", "json_value", "bind", "CONNECTOR",
]

OPTIONS = ("url", "interval", "batch", "silence", "charset", "start", "name", "preset", "sources")
SOURCE_KEYS = ("name", "table", "query", "where", "key", "cursor", "mode", "event", "entity", "map",
               "site", "start")
MODES = ("append", "snapshot")
APPEND, SNAPSHOT = MODES
STARTS = ("end", "beginning")
DEFAULT_INTERVAL = 1.0
DEFAULT_BATCH = 500
DEFAULT_SILENCE = 60.0
DEFAULT_CHARSET = "utf-8"
BASELINE = "baseline:"             # a source cursor with this prefix: first read still going on
SUPPORTED = {"mysql": "pymysql", "mariadb": "pymysql", "postgresql": "psycopg", "sqlite": "pysqlite"}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EVENT_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# ====================================================================== the Source interface

class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()
"""Return this as the snapshot from `Source.events` to forget a row's stored snapshot."""


@runtime_checkable
class Source(Protocol):
    """One stream of rows the SQL connector polls. Presets return a list of these.

    All methods are synchronous and cheap; `query` runs in a worker thread, the others
    in the event loop. `row` is a dict of column label → value as the driver returned it
    (datetime, Decimal, bytes …); `json_value` turns a value into what an event may hold.
    """

    name: str     # unique within the connector; [A-Za-z0-9][A-Za-z0-9_.-]*; keys the cursor and snapshots
    mode: str     # APPEND ("append"): each row is new · SNAPSHOT ("snapshot"): rows change in place

    def query(self, cursor: str | None, limit: int) -> sa.Executable:
        """The SELECT of at most `limit` rows strictly after `cursor` (None: from the
        start), ordered by the cursor — a Core `select()` or `text(...).bindparams(...)`.
        Values are bound parameters, identifiers quoted by SQLAlchemy."""

    def cursor_of(self, row: Mapping[str, Any]) -> str:
        """The position right after this row, as a string (`encode_cursor` helps,
        JSON-encoding compound positions such as [timestamp, id])."""

    def key_of(self, row: Mapping[str, Any]) -> str:
        """The row's identity (its primary key as a string); keys the snapshots."""

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        """The events this row gives, and the row's new snapshot.

        `snapshot` is what this source stored for the row's key last time (snapshot
        sources; always None for append sources). Return `(events, new_snapshot)`:
        each event a dict in the shape of docs/events.md with an `id` deterministic
        from the row (unique within the source — the connector prefixes
        `sql:<connector>:<source>:`); `new_snapshot` a JSON-able mapping to store, None
        to keep what is stored, or `DELETE` to forget it."""

    # Optional:
    # - `def prepare(self, connection: sa.Connection) -> None` — called in the worker
    #   thread before the first poll after each (re)connect, e.g. to read lookup tables
    #   (status names). Its errors count as database errors.
    # - `start: str | None` — "end" / "beginning" for this source (else the connector's
    #   `start` option): where its first poll ever begins, see docs/connectors/sql.md.


# ---------------------------------------------------------------------- values and cursors

def json_value(value: Any, charset: str = DEFAULT_CHARSET) -> Any:
    """A column value as event data: bytes decoded with `charset`, Decimal → string,
    date/time → ISO 8601 string, UUID → string; JSON-able values unchanged."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode(charset, errors="replace")
    if isinstance(value, timedelta):                    # MySQL TIME columns
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v, charset) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_value(v, charset) for k, v in value.items()}
    return str(value)


def _tag(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    if isinstance(value, dtime):
        return {"time": value.isoformat()}
    if isinstance(value, Decimal):
        return {"dec": str(value)}
    if isinstance(value, timedelta):
        return {"td": value.total_seconds()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"hex": bytes(value).hex()}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, (list, tuple)):
        return [_tag(v) for v in value]
    raise TypeError(f"a {type(value).__name__} cannot be a cursor value")


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(v) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (kind, text), = value.items()
        if kind == "dt":
            return datetime.fromisoformat(text)
        if kind == "date":
            return date.fromisoformat(text)
        if kind == "time":
            return dtime.fromisoformat(text)
        if kind == "dec":
            return Decimal(text)
        if kind == "td":
            return timedelta(seconds=text)
        if kind == "hex":
            return bytes.fromhex(text)
        if kind == "uuid":
            return uuid.UUID(text)
    return value


def encode_cursor(value: Any) -> str:
    """A cursor value (or a list of them) as a string that `decode_cursor` turns back
    into the same Python types: `42`, `"abc"`, `[{"dt": "2024-05-19T14:03:11"}, 7]`."""
    return json.dumps(_tag(value), ensure_ascii=False, separators=(",", ":"))


def decode_cursor(text: str) -> Any:
    return _untag(json.loads(text))


def bind(value: Any) -> Any:
    """A bound parameter for a cursor value, typed so every dialect compares it right
    (big integers, aware timestamps)."""
    if isinstance(value, bool) or value is None:
        return sa.literal(value)
    if isinstance(value, int):
        return sa.literal(value, sa.BigInteger())
    if isinstance(value, datetime):
        return sa.literal(value, sa.DateTime(timezone=value.tzinfo is not None))
    return sa.literal(value)


def _label(cursor: str) -> str:
    """The cursor as it appears in event ids: itself when a plain integer, else a hash."""
    if re.fullmatch(r"-?\d{1,30}", cursor):
        return cursor
    return hashlib.sha1(cursor.encode()).hexdigest()[:12]


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
                        .encode()).hexdigest()[:16]


_ABSENT = object()


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, Mapping) or part not in data:
            return _ABSENT
        data = data[part]
    return data


def _put(out: dict, path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        out = out.setdefault(part, {})
    out[path[-1]] = value


# ---------------------------------------------------------------------- MappedSource

@dataclass(frozen=True, eq=False)
class MappedSource:
    """A source declared under `sources:` — a table or a SELECT, a key, a cursor and a
    map of event-data paths to columns. See docs/connectors/sql.md."""

    name: str
    mode: str
    key: tuple[str, ...]
    cursor_column: str
    tiebreak: str | None = None
    table: str | None = None
    schema: str | None = None
    sql: str | None = None                 # `query:` — a plain SELECT, wrapped as a derived table
    where: str | None = None               # extra condition for `table:` sources (SQL, no values)
    event: str | None = None               # append: the event type
    entity: str | None = None              # snapshot: <entity>.created / .updated
    fields: tuple[tuple[tuple[str, ...], str], ...] = ()   # (data path, column)
    site: str | None = None
    site_column: str | None = None
    charset: str = DEFAULT_CHARSET
    start: str | None = None               # "end" | "beginning" | None (the connector's)

    @property
    def columns(self) -> tuple[str, ...]:
        wanted = [*self.key, self.cursor_column, *([self.tiebreak] if self.tiebreak else []),
                  *([self.site_column] if self.site_column else []), *(c for _, c in self.fields)]
        return tuple(dict.fromkeys(wanted))

    def query(self, cursor: str | None, limit: int) -> sa.Executable:
        columns = [sa.column(c) for c in self.columns]
        if self.sql is not None:
            origin = sa.text(self.sql).columns(*columns).subquery("herald_q")
        else:
            origin = sa.table(self.table, *columns, schema=self.schema)
        c = origin.c
        col = c[self.cursor_column]
        stmt = sa.select(*(c[name] for name in self.columns)).where(col.is_not(None))
        if self.where:
            stmt = stmt.where(sa.text(f"({self.where})"))
        if self.tiebreak:
            tb = c[self.tiebreak]
            stmt = stmt.where(tb.is_not(None))
            if cursor is not None:
                at, after = decode_cursor(cursor)
                stmt = stmt.where(sa.or_(col > bind(at), sa.and_(col == bind(at), tb > bind(after))))
            stmt = stmt.order_by(col, tb)
        else:
            if cursor is not None:
                stmt = stmt.where(col > bind(decode_cursor(cursor)))
            stmt = stmt.order_by(col)
        return stmt.limit(limit)

    def cursor_of(self, row: Mapping[str, Any]) -> str:
        if self.tiebreak:
            return encode_cursor([row[self.cursor_column], row[self.tiebreak]])
        return encode_cursor(row[self.cursor_column])

    def key_of(self, row: Mapping[str, Any]) -> str:
        values = [json_value(row[c], self.charset) for c in self.key]
        if len(values) == 1:
            v = values[0]
            return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        return json.dumps(values, ensure_ascii=False, separators=(",", ":"))

    def data_of(self, row: Mapping[str, Any]) -> dict:
        data: dict = {}
        for path, column in self.fields:
            _put(data, path, json_value(row[column], self.charset))
        return data

    def _site(self, row: Mapping[str, Any]) -> str | None:
        if self.site_column:
            value = json_value(row[self.site_column], self.charset)
            return None if value in (None, "") else str(value).strip()
        return self.site

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        key, cursor = self.key_of(row), self.cursor_of(row)
        data = self.data_of(row)
        site = self._site(row)
        extra = {"site": site} if site else {}
        if self.mode == APPEND:
            label = _label(cursor)
            event_id = key if label == key else f"{key}:{label}"
            return [{"type": self.event, "id": event_id, "data": data, **extra}], None
        if snapshot is None:
            return [{"type": f"{self.entity}.created", "id": f"{key}:c:{_label(cursor)}", "data": data,
                     **extra}], data
        previous: dict = {}
        changed: dict = {}
        reshaped = False
        for path, _ in self.fields:
            old, new = _get(snapshot, path), _get(data, path)
            if old is _ABSENT:          # a path added to the map since: not a change of the row
                reshaped = True
            elif old != new:
                _put(previous, path, old)
                _put(changed, path, new)
        if not previous:
            return [], (data if reshaped or dict(snapshot) != data else None)
        event_id = f"{key}:u:{_digest(cursor, previous, changed)}"
        return [{"type": f"{self.entity}.updated", "id": event_id, "data": data, "previous": previous,
                 **extra}], data


# ---------------------------------------------------------------------- presets

PresetFactory = Callable[[ConnectorConfig, dict], "list[Source]"]

PRESETS: dict[str, PresetFactory] = {}
"""Preset name → factory(config, settings) returning a list of `Source`s. `settings`:
`{"name": the connector's name option or None, "dialect": "mysql" | "mariadb" |
"postgresql" | "sqlite", "charset": …, "batch": …, "start": "end" | "beginning",
"options": the mapping under the key named like the preset (e.g. `bitrix:`), or {},
"location": where that mapping is (or the entry)}`. A factory raises ConfigError with
located diagnostics for its own options."""

PRESET_MODULES: dict[str, str] = {"bitrix": "herald.connectors.bitrix:sources"}
"""Presets imported on first use ("module:attribute"), so a preset's module loads only
when a config names it."""


def _preset_factory(name: str) -> PresetFactory:
    """The factory of a preset; raises LookupError (unknown) or ImportError."""
    if name in PRESETS:
        return PRESETS[name]
    if name not in PRESET_MODULES:
        raise LookupError(name)
    module_name, _, attribute = PRESET_MODULES[name].partition(":")
    module = importlib.import_module(module_name)
    factory = PRESETS.get(name) or getattr(module, attribute or "sources")
    PRESETS[name] = factory
    return factory


# ====================================================================== option checks





def _bind_names(sql: str) -> list[str]:
    try:
        return list(sa.text(sql)._bindparams)
    except Exception:
        return []


class _Checker(OptionChecker):
    """Collects located diagnostics for one `type: sql` entry."""

    kind = "sql"

    def number(self, name: str, default: float, *, integer: bool = False, low: float = 0,
               high: float = 86400, example: str) -> float:
        raw = self.config.options.get(name, default)
        value = _number(reveal(raw))
        kind = "a whole number" if integer else "a number of seconds"
        if value is None or (integer and value != int(value)):
            self.error(f"{name}: expected {kind}, got {_what(raw)}", name, hint=f"e.g. {example}")
            return default
        if not (low < value <= high):
            self.error(f"{name}: {value:g} is out of range: more than {low:g} and at most {high:g}", name,
                       hint=f"e.g. {example}")
            return default
        return int(value) if integer else value


# ====================================================================== the connector

class SqlConnector:
    """`type: sql` — see the module docstring and docs/connectors/sql.md."""

    type = "sql"
    BACKOFF_MIN = 1.0           # seconds; tests lower these
    BACKOFF_MAX = 60.0

    def __init__(self, config: ConnectorConfig):
        self.config = config
        check = _Checker(config)
        options = config.options

        self.preset: str | None = None
        raw_preset = options.get("preset")
        if "preset" in options:
            known = sorted(set(PRESETS) | set(PRESET_MODULES))
            if not isinstance(raw_preset, str) or not raw_preset.strip():
                check.error(f"preset: expected a preset name, got {_what(raw_preset)}", "preset",
                            hint=f"presets: {', '.join(known)}")
            elif raw_preset.strip() not in known:
                check.error(f'preset: unknown preset "{raw_preset.strip()}"', "preset",
                            hint=did_you_mean(raw_preset.strip(), known) or f"presets: {', '.join(known)}")
            else:
                self.preset = raw_preset.strip()

        allowed = OPTIONS + ((self.preset,) if self.preset else ())
        for key in options:
            if key not in allowed:
                check.error(f'unknown option "{key}"', key, key=True,
                            hint=did_you_mean(key, allowed) or f"the sql connector has: {', '.join(OPTIONS)}")

        self.sqlite_path: Path | None = None
        self.url, self.dialect = self._check_url(check)
        self.safe_url = self.url.render_as_string(hide_password=True) if self.url is not None else "?"
        if self.sqlite_path is not None:
            self.safe_url = f"sqlite:///{self.sqlite_path}"
        self.interval = check.number("interval", DEFAULT_INTERVAL, example="interval: 1")
        self.batch = int(check.number("batch", DEFAULT_BATCH, integer=True, high=100_000, example="batch: 500"))
        self.silence = check.number("silence", DEFAULT_SILENCE, example="silence: 60")

        self.charset = DEFAULT_CHARSET
        raw_charset = options.get("charset", DEFAULT_CHARSET)
        try:
            if not isinstance(raw_charset, str):
                raise LookupError
            self.charset = codecs.lookup(raw_charset.strip()).name
        except LookupError:
            check.error(f"charset: unknown text encoding {_what(raw_charset)}", "charset",
                        hint="e.g. charset: utf-8 (or windows-1251 for older Russian sites)")

        self.start = STARTS[0]
        raw_start = options.get("start", STARTS[0])
        if raw_start not in STARTS:
            check.error(f"start: expected end or beginning, got {_what(raw_start)}", "start",
                        hint=(did_you_mean(str(raw_start), STARTS) if isinstance(raw_start, str) else None)
                        or "end: skip the rows already there at the first start; beginning: take them all")
        else:
            self.start = raw_start

        self.name = options.get("name")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            check.error(f"name: expected a non-empty string, got {_what(self.name)}", "name",
                        hint="e.g. name: shop (it keys the connector's cursors and its /health entry)")

        self.sources: list[Any] = []
        if "sources" in options:
            self.sources += self._check_sources(check)
        if self.preset and not check.problems:
            self.sources = self._preset_sources(check) + self.sources
        if "sources" not in options and "preset" not in options:
            check.error("sources or preset is required: what to read", hint="e.g. preset: bitrix, or sources: "
                        "[{name: orders, table: shop_orders, key: id, cursor: id, event: order.created, map: …}]")
        self._check_unique(check)

        if check.problems:
            raise ConfigError(check.problems)

        self.rows = 0                       # rows read since start
        self.new_events = 0
        self._cursors: dict[str, str | None] = {}
        self._engine: sa.Engine | None = None
        self._engine_lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._prepared: set[str] = set()
        self.outage = Outage(self.type, self.silence, log, self.safe_url, noun="poll", again="polling again",
                             hang="no answer from the database")

    # ------------------------------------------------------------------ option checks

    def _check_url(self, check: _Checker) -> tuple[URL | None, str]:
        options = self.config.options
        raw = options.get("url")
        hint = ("e.g. url: !env SHOP_DB_URL  (mysql+pymysql://user:password@host/db, "
                "postgresql+psycopg://…, sqlite:///shop.db)")
        if "url" not in options:
            check.error("url is required: the database to read", hint=hint)
            return None, ""
        text = reveal(raw)
        if not isinstance(text, str) or not text.strip():
            check.error(f"url: expected a database URL, got {_what(raw)}", "url", hint=hint)
            return None, ""
        try:
            url = make_url(text.strip())
        except Exception:                   # its message repeats the URL: never show it
            check.error("url: not a database URL (expected driver://user:password@host:port/database)", "url",
                        hint=hint)
            return None, ""
        backend = url.get_backend_name()
        if backend == "postgres":
            backend = "postgresql"
            url = url.set(drivername="postgresql")
        if backend not in SUPPORTED:
            check.error(f'url: unsupported database "{backend}"', "url",
                        hint=did_you_mean(backend, SUPPORTED) or "supported: mysql/mariadb, postgresql, sqlite")
            return None, ""
        if "+" not in url.drivername:       # the default DBAPI of mysql:// (mysqlclient) is not installed
            url = url.set(drivername=f"{backend}+{SUPPORTED[backend]}")
        try:
            url.get_dialect()
        except Exception as exc:
            check.error(f'url: the driver "{url.get_driver_name()}" is not available ({type(exc).__name__})', "url",
                        hint=f"use {backend}+{SUPPORTED[backend]}://")
            return None, ""
        if backend == "sqlite":
            url = self._sqlite_url(url, check)
        return url, backend

    def _sqlite_url(self, url: URL, check: _Checker) -> URL | None:
        """The file, resolved against the config's folder, opened read-only by URI."""
        database = url.database or ""
        query = dict(url.query)
        if database in ("", ":memory:"):
            check.error("url: a SQLite URL needs a database file", "url", hint="e.g. url: sqlite:///var/shop.db")
            return url
        if database.startswith("file:"):    # the user wrote a URI already: keep it, force read-only
            query.update({"uri": "true", "mode": "ro"})
            self.sqlite_path = None
            return url.set(query=query)
        path = self.config.path(database)
        self.sqlite_path = path
        query.update({"mode": "ro", "uri": "true"})
        return url.set(database="file:" + quote(str(path)), query=query)

    def _check_sources(self, check: _Checker) -> list[MappedSource]:
        raw = self.config.options.get("sources")
        if not isinstance(raw, list) or (not raw and not self.preset):
            check.error(f"sources: expected a list of sources, got {_what(raw)}", "sources",
                        hint="e.g. sources: [{name: orders, table: shop_orders, key: id, cursor: id, "
                             "event: order.created, map: {order.id: id}}]")
            return []
        out = []
        for i, item in enumerate(raw):
            source = self._check_source(check, i, item)
            if source is not None:
                out.append(source)
        return out

    def _check_source(self, check: _Checker, i: int, item: Any) -> MappedSource | None:
        at = ("sources", i)
        if not isinstance(item, dict):
            check.error(f"sources[{i}]: expected a source (name, table, key, cursor, …), got {_what(item)}", *at)
            return None
        before = len(check.problems)
        raw_name = item.get("name")
        label = f'source "{raw_name}"' if isinstance(raw_name, str) and raw_name.strip() else f"sources[{i}]"

        def error(message: str, *path: Any, key: bool = False, hint: str | None = None) -> None:
            check.error(f"{label}: {message}", *(at + path), key=key, hint=hint)

        for k in item:
            if k not in SOURCE_KEYS:
                error(f'unknown key "{k}"', k, key=True,
                      hint=did_you_mean(str(k), SOURCE_KEYS) or f"a source has: {', '.join(SOURCE_KEYS)}")

        def string(k: str, example: str, required: bool = True) -> str | None:
            if k not in item:
                if required:
                    error(f"{k} is required", hint=f"e.g. {example}")
                return None
            value = item[k]
            if not isinstance(value, str) or not value.strip():
                error(f"{k}: expected text, got {_what(value)}", k, hint=f"e.g. {example}")
                return None
            return value.strip()

        name = string("name", "name: orders")
        if name is not None and not _NAME.match(name):
            error(f'name: "{name}" may hold only letters, digits, _ . - (starting with a letter or digit)', "name")
            name = None

        table = string("table", "table: shop_orders", required=False)
        sql = string("query", "query: SELECT id, status FROM shop_orders", required=False)
        schema = None
        if table is None and sql is None and "table" not in item and "query" not in item:
            error("table or query is required: where the rows are",
                  hint="e.g. table: shop_orders, or query: SELECT id, status FROM shop_orders WHERE …")
        elif table is not None and sql is not None:
            error("give table or query, not both", "query", key=True)
        if table is not None and "." in table:
            schema, _, table = table.rpartition(".")
        if sql is not None:
            sql = sql.rstrip().rstrip(";").rstrip()
            if not re.match(r"(?is)^\s*select\b", sql):
                error("query: expected a plain SELECT", "query",
                      hint="the connector adds the cursor condition, ORDER BY and LIMIT itself")
            elif ";" in sql:
                error("query: one SELECT only (no ;)", "query")
            elif re.search(r"(?is)\b(order\s+by|limit)\b[^)]*$", sql):
                error("query: leave out ORDER BY and LIMIT", "query",
                      hint="the connector orders by the cursor and limits to `batch` rows itself")
            names = _bind_names(sql)
            if names:
                error(f"query: :{names[0]} is a parameter placeholder; the query takes no parameters", "query",
                      hint=r"the connector adds the cursor condition itself; write \: for a literal colon")
        where = string("where", "where: \"deleted = 'N'\"", required=False)
        if where is not None:
            if sql is not None:
                error("where: only with table (put the condition into the query)", "where", key=True)
            names = _bind_names(where)
            if names:
                error(f"where: :{names[0]} is a parameter placeholder; a condition here takes no parameters",
                      "where", hint=r"write \: for a literal colon")

        key: tuple[str, ...] = ()
        raw_key = item.get("key")
        if "key" not in item:
            error("key is required: the column(s) identifying a row", hint="e.g. key: id")
        elif isinstance(raw_key, str) and raw_key.strip():
            key = (raw_key.strip(),)
        elif isinstance(raw_key, list) and raw_key and all(isinstance(k, str) and k.strip() for k in raw_key):
            key = tuple(k.strip() for k in raw_key)
        else:
            error(f"key: expected a column name or a list of them, got {_what(raw_key)}", "key", hint="e.g. key: id")

        cursor_column, tiebreak = None, None
        raw_cursor = item.get("cursor")
        cursor_hint = "e.g. cursor: id (a growing id), or cursor: {column: updated_at, tiebreak: id}"
        if "cursor" not in item:
            error("cursor is required: the column the connector reads in order", hint=cursor_hint)
        elif isinstance(raw_cursor, str) and raw_cursor.strip():
            cursor_column = raw_cursor.strip()
        elif isinstance(raw_cursor, dict):
            for k in raw_cursor:
                if k not in ("column", "tiebreak"):
                    error(f'cursor: unknown key "{k}"', "cursor", k, key=True,
                          hint=did_you_mean(str(k), ("column", "tiebreak")) or "a cursor has column and tiebreak")
            col, tb = raw_cursor.get("column"), raw_cursor.get("tiebreak")
            if not isinstance(col, str) or not col.strip():
                error(f"cursor: column: expected a column name, got {_what(col)}", "cursor",
                      *(("column",) if "column" in raw_cursor else ()), hint=cursor_hint)
            else:
                cursor_column = col.strip()
            if tb is None and "tiebreak" not in raw_cursor:
                if len(key) == 1:
                    tiebreak = key[0]
                elif key:
                    error("cursor: tiebreak is required with a compound key: a unique, growing column", "cursor",
                          hint="e.g. cursor: {column: updated_at, tiebreak: id}")
            elif not isinstance(tb, str) or not tb.strip():
                error(f"cursor: tiebreak: expected a column name, got {_what(tb)}", "cursor", "tiebreak",
                      hint=cursor_hint)
            else:
                tiebreak = tb.strip()
            if cursor_column and tiebreak == cursor_column:
                tiebreak = None
        else:
            error(f"cursor: expected a column name or {{column, tiebreak}}, got {_what(raw_cursor)}", "cursor",
                  hint=cursor_hint)

        mode = APPEND
        raw_mode = item.get("mode", APPEND)
        if raw_mode not in MODES:
            error(f"mode: unknown mode {_what(raw_mode)}", "mode",
                  hint=(did_you_mean(raw_mode, MODES) if isinstance(raw_mode, str) else None)
                  or "append: each new row is an event; snapshot: rows change in place")
            mode = None
        else:
            mode = raw_mode

        event = entity = None
        if mode == APPEND:
            if "entity" in item:
                error("entity is for mode: snapshot; an append source names its event", "entity", key=True,
                      hint="e.g. event: order.created (or mode: snapshot)")
            event = string("event", "event: order.created")
            if event is not None and not _EVENT_TYPE.match(event):
                error(f'event: "{event}" is not an event type (dot-separated names)', "event",
                      hint="e.g. event: order.created")
        elif mode == SNAPSHOT:
            if "event" in item:
                error("event is for mode: append; a snapshot source names its entity", "event", key=True,
                      hint="e.g. entity: order (→ order.created, order.updated)")
            entity = string("entity", "entity: order")
            if entity is not None and not _IDENT.match(entity):
                error(f'entity: "{entity}" is not a name (letters, digits, _)', "entity", hint="e.g. entity: order")
            if cursor_column is not None and not tiebreak and cursor_column in key:
                error(f"cursor: {cursor_column} is the key, which never changes, so updates would never be seen",
                      "cursor", hint="a snapshot source needs a column that grows when a row changes, "
                                     "e.g. cursor: {column: updated_at, tiebreak: id}")

        fields: list[tuple[tuple[str, ...], str]] = []
        raw_map = item.get("map")
        if "map" not in item:
            error("map is required: event data paths ← columns", hint="e.g. map: {order.id: id, order.status: status}")
        elif not isinstance(raw_map, dict) or not raw_map:
            error(f"map: expected event data paths and their columns, got {_what(raw_map)}", "map",
                  hint="e.g. map: {order.id: id, order.status: status}")
        else:
            for path_text, column in raw_map.items():
                parts = tuple(str(path_text).split("."))
                if not all(_IDENT.match(p) for p in parts):
                    error(f'map: "{path_text}" is not a data path (names joined by dots)', "map", path_text, key=True,
                          hint="e.g. order.status: status")
                    continue
                if not isinstance(column, str) or not column.strip():
                    error(f"map: {path_text}: expected a column name, got {_what(column)}", "map", path_text)
                    continue
                clash = next((p for p, _ in fields if p[:len(parts)] == parts or parts[:len(p)] == p), None)
                if clash is not None:
                    error(f'map: "{path_text}" and "{".".join(clash)}" overlap: a path is either a value or '
                          "holds others", "map", path_text, key=True)
                    continue
                fields.append((parts, column.strip()))

        site = site_column = None
        if "site" in item:
            raw_site = item["site"]
            if isinstance(raw_site, str) and raw_site.strip():
                site = raw_site.strip()
            elif isinstance(raw_site, dict) and set(raw_site) == {"column"} and isinstance(raw_site["column"], str) \
                    and raw_site["column"].strip():
                site_column = raw_site["column"].strip()
            else:
                error(f"site: expected a site id or {{column: NAME}}, got {_what(raw_site)}", "site",
                      hint="e.g. site: s1, or site: {column: lid}")

        start = None
        if "start" in item:
            if item["start"] not in STARTS:
                error(f"start: expected end or beginning, got {_what(item['start'])}", "start")
            else:
                start = item["start"]

        if len(check.problems) > before or name is None or mode is None or cursor_column is None:
            return None
        return MappedSource(name=name, mode=mode, key=key, cursor_column=cursor_column, tiebreak=tiebreak,
                            table=table, schema=schema or None, sql=sql, where=where, event=event, entity=entity,
                            fields=tuple(fields), site=site, site_column=site_column, charset=self.charset,
                            start=start)

    def _preset_sources(self, check: _Checker) -> list:
        name = self.preset
        try:
            factory = _preset_factory(name)
        except ImportError as exc:
            check.error(f'preset: "{name}" is not available ({type(exc).__name__}: {exc})', "preset")
            return []
        settings = {"name": self.name, "dialect": self.dialect, "charset": self.charset, "batch": self.batch,
                    "start": self.start, "options": self.config.options.get(name) or {},
                    "location": self.config.locations.get(name) or self.config.location}
        try:
            sources = list(factory(self.config, settings))
        except ConfigError as exc:
            check.problems.extend(exc.diagnostics)
            return []
        for source in sources:
            if not isinstance(source, Source) or getattr(source, "mode", None) not in MODES:
                check.error(f'preset "{name}" gave {source!r}, which is not a Source', "preset")
                return []
        return sources

    def _check_unique(self, check: _Checker) -> None:
        seen: set[str] = set()
        for source in self.sources:
            name = getattr(source, "name", None)
            if not isinstance(name, str) or not _NAME.match(name):
                check.error(f"source name {name!r}: only letters, digits, _ . - (starting with a letter or digit)",
                            "sources")
            elif name in seen:
                index = next((i for i, s in enumerate(self.config.options.get("sources") or ())
                              if isinstance(s, dict) and s.get("name") == name), None)
                path = ("sources", index, "name") if index is not None else ("sources",)
                check.error(f'two sources are named "{name}"', *path,
                            hint="names keep the sources' cursors apart; each must be unique within the connector")
            seen.add(name)

    # ------------------------------------------------------------------ the database (worker threads)

    def _get_engine(self) -> sa.Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._create_engine()
            return self._engine

    def _create_engine(self) -> sa.Engine:
        url, dialect = self.url, self.dialect
        query = dict(url.query)
        connect_args: dict[str, Any] = {}
        kwargs: dict[str, Any] = {}
        if dialect in ("mysql", "mariadb"):
            for k, v in (("connect_timeout", 10), ("read_timeout", 120), ("write_timeout", 120)):
                if k not in query:
                    connect_args[k] = v
        elif dialect == "postgresql":
            if "connect_timeout" not in query:
                connect_args["connect_timeout"] = 10
        if dialect == "sqlite":
            kwargs["poolclass"] = sa.pool.NullPool     # a new open per poll sees the file moved or back
        else:
            kwargs.update(pool_pre_ping=True, pool_size=1, max_overflow=2, pool_recycle=1800)
        engine = sa.create_engine(url, connect_args=connect_args, **kwargs)
        sa.event.listen(engine, "connect", _read_only(dialect))
        return engine

    def connection(self) -> sa.Connection:
        """A read-only connection to the database (blocking; for tests and presets)."""
        return self._get_engine().connect()

    def _dispose(self) -> None:
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def _fetch(self, source: Any, cursor: str | None) -> list[dict]:
        with self.connection() as conn:
            if source.name not in self._prepared and hasattr(source, "prepare"):
                source.prepare(conn)
            self._prepared.add(source.name)
            result = conn.execute(source.query(cursor, self.batch))
            keys = list(result.keys())
            return [dict(zip(keys, row)) for row in result.fetchall()]

    def _describe(self, exc: BaseException) -> str:
        """The error for /health and the log: the driver's message, password scrubbed."""
        if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
            text = f"{type(exc.orig).__name__}: {exc.orig}"
        elif isinstance(exc, sa.exc.SQLAlchemyError):
            text = f"{type(exc).__name__}: {exc}".split("(Background on this error")[0]
        else:
            text = f"{type(exc).__name__}: {exc}"
        text = re.split(r"\n\[SQL: ", text)[0]
        text = " ".join(text.split())
        password = self.url.password if self.url is not None else None
        if password:
            for form in {password, quote_plus(password), quote(password, safe="")}:
                if len(form) >= 3:
                    text = text.replace(form, "****")
        return text[:500]

    # ------------------------------------------------------------------ the loop

    async def run(self, ctx: ConnectorContext, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        await self.resume(ctx)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.outage.watchdog, ctx)
                await self._loop(ctx)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await trio.to_thread.run_sync(self._dispose, abandon_on_cancel=True)

    async def resume(self, ctx: ConnectorContext) -> None:
        """Read back the sources' cursors and a reported outage after a restart."""
        for source in self.sources:
            self._cursors[source.name] = await ctx.get_cursor(source.name)
        await self.outage.resume(ctx)

    async def _loop(self, ctx: ConnectorContext) -> None:
        failures = 0
        while True:
            self.outage.started()
            try:
                more, problems = await self.poll(ctx)
            except Exception as exc:          # never BaseException: trio.Cancelled goes through
                failures += 1
                self._failed(ctx, exc)
                delay = min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2 ** min(failures - 1, 30))
                await trio.sleep(min(self.BACKOFF_MAX, delay * random.uniform(0.8, 1.2)))
                continue
            failures = 0
            await self.outage.succeeded(ctx)
            if problems:
                ctx.down("; ".join(problems))
            else:
                ctx.alive(f"{self.safe_url}: {len(self.sources)} source(s), {self.rows} row(s) read, "
                          f"{self.new_events} event(s) since start")
            if more:
                await trio.sleep(0)
            else:
                await trio.sleep(self.interval)

    async def poll(self, ctx: ConnectorContext) -> tuple[bool, list[str]]:
        """One round over every source: (a batch was full, problems with events).
        Database errors raise."""
        more, problems = False, []
        for source in self.sources:
            try:
                more |= await self.poll_source(ctx, source)
            except _RowProblem as exc:
                problems.append(str(exc))
        return more, problems

    async def poll_source(self, ctx: ConnectorContext, source: Any) -> bool:
        """Read one batch of a source and journal it; True when the batch was full."""
        stored = self._cursors.get(source.name)
        start = getattr(source, "start", None) or self.start
        baseline = False
        if stored is None:
            baseline, position = start == "end", None
        elif stored.startswith(BASELINE):
            baseline, position = True, stored[len(BASELINE):] or None
        else:
            position = stored or None
        rows = await trio.to_thread.run_sync(self._fetch, source, position, limiter=self._limiter,
                                             abandon_on_cancel=True)
        if not rows:
            if baseline:        # caught up: from now on every row is news
                await ctx.emit([], cursor=(source.name, position or ""))
                self._cursors[source.name] = position or ""
            return False
        self.rows += len(rows)
        full = len(rows) >= self.batch
        keys = [source.key_of(row) for row in rows]
        stored_snapshots: dict[str, Any] = {}
        if source.mode == SNAPSHOT:
            stored_snapshots = await ctx.get_snapshots(source.name, list(dict.fromkeys(keys)))
        events: list[dict] = []
        owners: list[str] = []
        writes: dict[str, Any] = {}
        prefix = f"sql:{ctx.name}:{source.name}:"
        for row, key in zip(rows, keys):
            old = stored_snapshots.get(key)
            made, new = source.events(row, old)
            if new is DELETE:
                stored_snapshots.pop(key, None)
                writes[key] = None
            elif new is not None and new != old:
                stored_snapshots[key] = new
                writes[key] = new
            if baseline:
                continue
            for i, event in enumerate(made):
                event = dict(event)
                local = event.get("id")
                event["id"] = prefix + (str(local) if local not in (None, "") else f"{key}:{i}")
                events.append(event)
                owners.append(key)
        position = source.cursor_of(rows[-1])
        value = BASELINE + position if baseline and full else position
        snapshots = [(source.name, key, data) for key, data in writes.items()]
        try:
            new_ids = await ctx.emit(events, cursor=(source.name, value), snapshots=snapshots)
        except EventError as exc:
            index = _index_of(exc.pointer)
            row = f"row {owners[index]}" if index is not None and index < len(owners) else "a row"
            raise _RowProblem(f"source {source.name}: {row}: {exc.pointer or '/'}: {exc.message}") from exc
        self.new_events += len(new_ids)
        self._cursors[source.name] = value
        return full

    # ------------------------------------------------------------------ down and up

    def _failed(self, ctx: ConnectorContext, exc: Exception) -> None:
        error = self._describe(exc)
        if not isinstance(exc, (sa.exc.SQLAlchemyError, OSError)):
            log.warning("sql connector %s: unexpected %s", ctx.name, error, exc_info=True)
        self._prepared.clear()
        self.outage.failing_now(ctx, error)


class _RowProblem(Exception):
    """A row gave an event Herald refuses (EventError): the source waits, the rest go on."""


def _index_of(pointer: str) -> int | None:
    m = re.match(r"^/(\d+)", pointer or "")
    return int(m.group(1)) if m else None


def _read_only(dialect: str) -> Callable:
    """A `connect` listener making every new DBAPI connection read-only."""
    statement = {"postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                 "mysql": "SET SESSION TRANSACTION READ ONLY",
                 "mariadb": "SET SESSION TRANSACTION READ ONLY",
                 "sqlite": "PRAGMA query_only = ON"}[dialect]

    def listener(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        if dialect != "sqlite":
            dbapi_connection.commit()

    return listener


CONNECTOR = SqlConnector

