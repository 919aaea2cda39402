"""The SQL connector's core: the `Source` protocol presets implement, cursor and value
encoding, and the only builders of event ids (`event_label`, `event_digest`)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from datetime import date, datetime, time as dtime, timedelta
from decimal import Decimal
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import sqlalchemy as sa

from herald.engine.config import ConnectorConfig

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
    """The type of DELETE (a name that prints in reprs and test failures)."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()
"""Return this as the snapshot from `Source.events` to forget a row's stored snapshot."""

# Why a row's state is kept twice — the connector's snapshots (store table `snapshots`,
# per connector, source and row key) beside the engine's entities (table `entities`, per
# entity, herald.engine.rules.evaluate.StateStore) — and not merged:
# - a snapshot is what this source mapped from the row last time, so the connector can
#   diff rows into `<entity>.created` / `.updated` events with `previous`; it is written
#   in the same transaction as the cursor (before any rule runs), also for rows that give
#   no event (the baseline read at `start: end`, rows of a skipped site), and two sources
#   may map the same entity differently;
# - an entity is what rules see: the merge of every event about it from any connector
#   (HTTP, spool, IMAP, SQL), updated when the processor evaluates the event, read by
#   state and change triggers.
# Merging them would make one source's diff depend on events from elsewhere, and the
# baseline rows would become entities no event ever described.


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


# ---------------------------------------------------------------------- event ids
# The only builders of the parts of SQL event ids (MappedSource and the bitrix preset both
# use them). The journal de-duplicates by event id: changing a single byte of what these
# return makes every row re-read after an upgrade a new event, sent again.

def event_label(cursor: str) -> str:
    """The cursor as it appears in event ids: itself when a plain integer, else a hash."""
    if re.fullmatch(r"-?\d{1,30}", cursor):
        return cursor
    return hashlib.sha1(cursor.encode()).hexdigest()[:12]


def event_digest(*parts: Any) -> str:
    """A short, stable hash of a change (JSON of `parts`, keys sorted) for update ids."""
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


PresetFactory = Callable[[ConnectorConfig, dict], "list[Source]"]
"""A preset: factory(config, settings) → a list of `Source`s (see presets.py)."""
