"""The SQLite connection every table class of the backend shares: opening (WAL),
transactions, migrations, checkpoints, and a read-only look at what the file holds.

The connection is used from one worker thread at a time (the reactor serialises calls);
the re-entrant lock makes a method and a transaction around it one unit all the same.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import sqlite_utils

from herald.engine.store.sqlite import migrations


class SQLiteConnection:
    """Owns the connection; the table classes (journal, outbox, …) run their SQL through
    `_execute` under `_lock`, and `transaction()` joins them into one atomic unit."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._in_tx = 0
        # sqlite-utils over the same connection: bulk inserts (`insert_all`, which nests in
        # our transaction through a savepoint) and read-only introspection (`info`).
        self.db = sqlite_utils.Database(self._conn)
        self._execute("PRAGMA journal_mode=WAL")
        self._execute("PRAGMA synchronous=NORMAL")
        self._execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _execute(self, sql: str, params: Sequence | Mapping = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One atomic unit (yields the store). Nested uses join the outer transaction."""
        with self._lock:
            if self._in_tx:
                self._in_tx += 1
                try:
                    yield self
                finally:
                    self._in_tx -= 1
                return
            self._execute("BEGIN IMMEDIATE")
            self._in_tx = 1
            try:
                yield self
            except BaseException:
                self._execute("ROLLBACK")
                raise
            else:
                self._execute("COMMIT")
            finally:
                self._in_tx = 0

    def migrate(self) -> list[str]:
        """Apply the migrations this file lacks (engine/store/sqlite/migrations.py); their names."""
        with self.transaction():
            return migrations.apply(self._execute)

    def checkpoint(self) -> None:
        """Run off the hot path: automatic WAL checkpoints are the latency spikes."""
        with self._lock:
            self._execute("PRAGMA wal_checkpoint(PASSIVE)")

    def info(self) -> dict[str, Any]:
        """What the store file holds, read-only: its path, applied migrations, and each
        table's row count and columns (for a `herald store`-style report)."""
        with self._lock:
            applied = [r[0] for r in self._execute("SELECT name FROM migrations ORDER BY name")]
            tables = {name: {"rows": self.db[name].count, "columns": list(self.db[name].columns_dict)}
                      for name in self.db.table_names() if name not in ("migrations", "sqlite_sequence")}
        return {"path": self.path, "migrations": applied, "tables": tables}
