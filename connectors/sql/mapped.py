"""`MappedSource`: a source declared under `sources:` (docs/connectors/sql.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import sqlalchemy as sa

from herald.connectors.sql.core import (
    _ABSENT, APPEND, DEFAULT_CHARSET, _get, _put, bind, decode_cursor, encode_cursor, event_digest, event_label,
    json_value,
)


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
            label = event_label(cursor)
            event_id = key if label == key else f"{key}:{label}"
            return [{"type": self.event, "id": event_id, "data": data, **extra}], None
        if snapshot is None:
            return [{"type": f"{self.entity}.created", "id": f"{key}:c:{event_label(cursor)}", "data": data,
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
        event_id = f"{key}:u:{event_digest(cursor, previous, changed)}"
        return [{"type": f"{self.entity}.updated", "id": event_id, "data": data, "previous": previous,
                 **extra}], data
