"""Sliding-window rate limits (subscription codes, incoming SMS): one row per hit."""

from __future__ import annotations

from datetime import datetime

from herald.engine.store.sqlite.common import to_epoch
from herald.engine.store.sqlite.connection import SQLiteConnection


class RateHitTables(SQLiteConnection):
    """Table `rate_hits`."""

    def rate_hit(self, key: str, when: datetime, count: int, period: float) -> bool:
        """Count one hit on `key` unless it already had `count` within `period`: True when allowed."""
        at = to_epoch(when)
        with self._lock:
            self._execute("DELETE FROM rate_hits WHERE key = ? AND at <= ?", (key, at - period))
            used = self._execute("SELECT COUNT(*) FROM rate_hits WHERE key = ?", (key,)).fetchone()[0]
            if used >= count:
                return False
            self._execute("INSERT INTO rate_hits VALUES (?, ?)", (key, at))
        return True

    def rate_window(self, key: str, when: datetime, period: float) -> tuple[int, float | None]:
        """Hits on `key` within `period` before `when`: (how many, seconds until the oldest
        leaves the window, None without hits)."""
        at = to_epoch(when)
        with self._lock:
            used, oldest = self._execute("SELECT COUNT(*), MIN(at) FROM rate_hits WHERE key = ? AND at > ?",
                                         (key, at - period)).fetchone()
        return used, None if oldest is None else oldest + period - at
