"""Runtime primitives every long-running component shares: wake-ups and clocks.

They sit below the daemon so that the dispatcher, the campaign feeder and the tests can use
them without importing the daemon."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import trio


class Pulse:
    """A wake-up call between tasks: `set()` from anywhere, `wait(timeout)` in one task."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    @property
    def pending(self) -> bool:
        """A `set()` the waiting task has not taken yet. Tests wait for it to clear to know
        the task woke (see tests/daemon_helpers.py `looked`) instead of sleeping a guess."""
        return self._event.is_set()

    async def wait(self, timeout: float) -> None:
        with trio.move_on_after(max(timeout, 0)):
            await self._event.wait()
        self._event = trio.Event()


class Clock:
    """Wall time for the daemon; tests swap in a virtual one driven by trio's clock."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class VirtualClock(Clock):
    """Starts at `start` and advances with trio's (mock) clock. The first `now()` must be
    called in the trio thread; it keeps the run's clock, so later calls work from the
    database thread too (where the daemon reads the time inside its transactions)."""

    def __init__(self, start: datetime):
        self.start = start
        self._clock: trio.abc.Clock | None = None
        self._t0 = 0.0

    def now(self) -> datetime:
        if self._clock is None:
            self._clock = trio.lowlevel.current_clock()
            self._t0 = self._clock.current_time()
        return self.start + timedelta(seconds=self._clock.current_time() - self._t0)
