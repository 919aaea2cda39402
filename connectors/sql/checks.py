"""The checks of a `type: sql` entry's options: every problem found, located, raised at once
as one ConfigError. `SqlOptions` holds what they give the connector; a `sources:` item is
checked by source_checks.py."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url

from herald.connectors.options import OptionChecker, number as _number, what as _what
from herald.connectors.sql.core import (
    DEFAULT_BATCH, DEFAULT_CHARSET, DEFAULT_INTERVAL, DEFAULT_SILENCE, MODES, OPTIONS, STARTS, SUPPORTED, _NAME,
    Source,
)
from herald.connectors.sql.mapped import MappedSource
from herald.connectors.sql.presets import PRESETS
from herald.connectors.sql.source_checks import check_source
from herald.engine.config import ConnectorConfig, reveal
from herald.engine.errors import ConfigError, did_you_mean
from herald.engine.helpers.drivers import missing_driver


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


class SqlOptions:
    """The checked options of one `type: sql` entry (raises ConfigError on any problem)."""

    def __init__(self, config: ConnectorConfig):
        self.config = config
        check = _Checker(config)
        options = config.options

        self.preset: str | None = None
        raw_preset = options.get("preset")
        if "preset" in options:
            known = sorted(PRESETS)
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

    # ------------------------------------------------------------------ the parts

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
        missing = missing_driver(url)
        if missing is not None:
            problem, install = missing
            check.error(f"url: {problem}", "url", hint=install)
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
            source = check_source(check, i, item, self.charset)
            if source is not None:
                out.append(source)
        return out

    def _preset_sources(self, check: _Checker) -> list:
        name = self.preset
        factory = PRESETS[name]
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
