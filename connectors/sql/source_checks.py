"""The checks of one `sources:` item of a `type: sql` entry (docs/connectors/sql.md)."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from herald.connectors.options import OptionChecker, what as _what
from herald.connectors.sql.core import (
    _EVENT_TYPE, _IDENT, _NAME, APPEND, MODES, SNAPSHOT, SOURCE_KEYS, STARTS,
)
from herald.connectors.sql.mapped import MappedSource
from herald.engine.errors import did_you_mean


def _bind_names(sql: str) -> list[str]:
    try:
        return list(sa.text(sql)._bindparams)
    except Exception:
        return []


def check_source(check: OptionChecker, i: int, item: Any, charset: str) -> MappedSource | None:
    """The MappedSource of `sources[i]`, or None after reporting its problems to `check`."""
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
                        fields=tuple(fields), site=site, site_column=site_column, charset=charset,
                        start=start)
