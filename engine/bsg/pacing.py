"""The one slot pacer: requests spaced `1/rate` apart, shared by every caller.

Used by the BSG client (its send and look-up budgets) and by the dispatcher's status polls
(their share of the send rate), so both pace the same way and follow a reload the same way.
"""

from __future__ import annotations

import math

import trio

CATCH_UP = 1.0               # seconds of slots a late caller may still catch up (the rate is per second)


class Pacer:
    """Requests spaced `1/rate` apart, in the order callers arrive (trio.Lock is fair).

    Only the caller at the head of the line sleeps, until its slot or until the rate
    changes: a new rate applies at once to everyone already waiting, rather than to the
    slots handed out under the old one. `pause()` (429, error 11) holds the line.

    `catch_up`: how late (seconds) a caller may be and still count from its slot, so that
    the next few go sooner; 0 counts every late caller from now (no burst at all)."""

    def __init__(self, rate: float, *, catch_up: float = CATCH_UP):
        self.interval = 1.0 / positive_rate(rate)
        self.catch_up = catch_up
        self._last = -math.inf          # trio time the last request was let through
        self._paused_until = -math.inf
        self._line = trio.Lock()
        self._changed = trio.Event()

    def _slot(self) -> float:
        return max(self._last + self.interval, self._paused_until)

    async def wait(self) -> None:
        async with self._line:
            while (slot := self._slot()) > trio.current_time():
                with trio.move_on_at(slot):
                    await self._changed.wait()
            # count from the slot, not from a late wake-up: a busy loop must not slow the
            # rate down (the next few catch up); after an idle spell, from now (no burst)
            now = trio.current_time()
            self._last = slot if now - slot < self.catch_up else now

    def set_rate(self, rate: float) -> None:
        self.interval = 1.0 / positive_rate(rate)
        try:
            # the next slot comes one new interval after the last request, or now: the
            # time that passed under the old rate is no debt to catch up in a burst
            self._last = max(self._last, trio.current_time() - self.interval)
        except RuntimeError:            # outside trio: nothing waits
            pass
        self._changed.set()             # the head of the line recomputes its slot
        self._changed = trio.Event()

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, trio.current_time() + seconds)


def positive_rate(rate: float) -> float:
    if not rate or rate <= 0 or math.isnan(rate):
        raise ValueError("rate must be a positive number of requests per second")
    return float(rate)

