"""The SQL connector at run time: polls each source, journals its events with the new cursor
and the rows' snapshots, and reports the database down and up (see the package docstring)."""

from __future__ import annotations

import logging
import random
import re
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, quote_plus

import sqlalchemy as sa
import trio
from sqlalchemy.engine import URL

from herald.connectors.base import ConnectorContext
from herald.connectors.outage import Outage
from herald.connectors.sql.checks import SqlOptions
from herald.connectors.sql.core import BASELINE, DELETE, SNAPSHOT
from herald.engine.config import ConnectorConfig
from herald.engine.errors import EventError, SourceRowError

log = logging.getLogger("herald.connectors.sql")


class SqlConnector:
    """`type: sql` — see the module docstring and docs/connectors/sql.md."""

    type = "sql"
    BACKOFF_MIN = 1.0           # seconds; tests lower these
    BACKOFF_MAX = 60.0

    def __init__(self, config: ConnectorConfig):
        """Check the options (ConfigError with every problem, located) and get ready; the
        database is first connected to by `run`."""
        self.config = config
        options = SqlOptions(config)
        self.preset: str | None = options.preset
        self.url: URL | None = options.url
        self.dialect: str = options.dialect
        self.sqlite_path: Path | None = options.sqlite_path
        self.safe_url: str = options.safe_url
        self.interval: float = options.interval
        self.batch: int = options.batch
        self.silence: float = options.silence
        self.charset: str = options.charset
        self.start: str = options.start
        self.name: str | None = options.name
        self.sources: list[Any] = options.sources

        self.rows = 0                       # rows read since start
        self.new_events = 0
        self._cursors: dict[str, str | None] = {}
        self._engine: sa.Engine | None = None
        self._engine_lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._prepared: set[str] = set()
        self.outage = Outage(self.type, self.silence, log, self.safe_url, noun="poll", again="polling again",
                             hang="no answer from the database")

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
            except SourceRowError as exc:
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
            raise SourceRowError(f"source {source.name}: {row}: {exc.pointer or '/'}: {exc.message}") from exc
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
