"""Sending windows: the hours of the day in which a site (or a rule's `between`) may send.

A window is `HH:MM-HH:MM` in the site's local time: start inclusive, end exclusive.
It may wrap midnight (`22:00-06:00`); `24:00` is accepted as an end and means the end
of the day (it is stored as `00:00`); `00:00-24:00` is the whole day.

`SendWindow.next_opening` answers "when may this message go?" as an instant, and is
exact across DST changes: a window opening inside a spring-forward gap opens at the
moment the clocks jump, and on a fall-back day a window is open whenever the wall
clock shows a time inside it (so it may open twice that night).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

__all__ = ["SendWindow", "parse_window", "WINDOW_FORMAT"]

WINDOW_FORMAT = "window must look like HH:MM-HH:MM, e.g. 09:00-21:00"

_MIDNIGHT = dt.time(0, 0)
_UTC = dt.timezone.utc
_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class SendWindow:
    """Daily sending hours in local time. `end <= start` means the window wraps
    midnight; `end == 00:00` means "until the end of the day"; `start == end == 00:00`
    is the whole day."""

    start: dt.time
    end: dt.time

    def __post_init__(self) -> None:
        for t in (self.start, self.end):
            if not isinstance(t, dt.time):
                raise TypeError(f"SendWindow needs datetime.time values, got {type(t).__name__}")
            if t.tzinfo is not None:
                raise ValueError("SendWindow times are local wall-clock times; drop the tzinfo")
        if self.start == self.end and self.start != _MIDNIGHT:
            raise ValueError(f"empty window: it starts and ends at {_fmt(self.start)}")

    @property
    def text(self) -> str:
        """`HH:MM-HH:MM`; an end at midnight is written `24:00`."""
        end = "24:00" if self.end == _MIDNIGHT else _fmt(self.end)
        return f"{_fmt(self.start)}-{end}"

    def __str__(self) -> str:
        return self.text

    @property
    def wraps(self) -> bool:
        """True when the window runs past midnight (e.g. 22:00-06:00)."""
        return self.end < self.start and self.end != _MIDNIGHT

    @property
    def whole_day(self) -> bool:
        return self.start == self.end == _MIDNIGHT

    def contains(self, local: dt.time) -> bool:
        """Is the wall-clock time `local` inside the window? Start inclusive, end exclusive."""
        t = local.replace(tzinfo=None, fold=0)
        if self.start < self.end:
            return self.start <= t < self.end
        # Wraps midnight, ends at midnight (end == 00:00) or covers the whole day.
        return t >= self.start or t < self.end

    def next_opening(self, when: dt.datetime, tz: ZoneInfo) -> dt.datetime:
        """`when` itself if the window is open then (in `tz`), else the first later
        instant at which it is open, as an aware datetime in `tz`."""
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("next_opening needs an aware datetime (with a time zone)")
        if self.contains(when.astimezone(tz).time()):
            return when
        now = when.astimezone(_UTC)
        today = now.astimezone(tz).date()

        # Every instant at which the wall clock reads `start` (both folds of an
        # ambiguous time; a time inside a gap maps to some instant after it, which
        # the filter below keeps only if it is really inside the window).
        best: dt.datetime | None = None
        for days in range(-1, 4):
            day = today + dt.timedelta(days=days)
            for fold in (0, 1):
                local = dt.datetime.combine(day, self.start, tzinfo=tz).replace(fold=fold)
                t = local.astimezone(_UTC)
                if t > now and (best is None or t < best) and self._open_at(t, tz):
                    best = t
        if best is None:  # cannot happen in a real zone: `start` recurs every day
            raise RuntimeError(f"no opening of {self.text} found in {tz.key} after {when.isoformat()}")

        # A UTC-offset change (DST, or a zone changing its rules) can make the wall
        # clock jump into the window without ever reading `start`.
        for t in _transitions(now, best, tz):
            if t < best and self._open_at(t, tz):
                best = t
                break
        return best.astimezone(tz)

    def _open_at(self, instant: dt.datetime, tz: ZoneInfo) -> bool:
        return self.contains(instant.astimezone(tz).time())


def parse_window(text: str) -> SendWindow:
    """Parse `HH:MM-HH:MM` (hours may have one digit, spaces around `-` are fine,
    `24:00` ends the day). Raises ValueError with a message for the user."""
    if not isinstance(text, str):
        raise ValueError(WINDOW_FORMAT)
    m = _WINDOW_RE.match(text)
    if not m:
        raise ValueError(WINDOW_FORMAT)
    sh, sm, eh, em = (int(g) for g in m.groups())
    start = _time(sh, sm, is_end=False)
    end = _time(eh, em, is_end=True)
    if start == end and not (eh == 24 and start == _MIDNIGHT):
        raise ValueError(f"empty window: it starts and ends at {_fmt(start)}; "
                         "use 00:00-24:00 for the whole day")
    return SendWindow(start, end)


def _time(hour: int, minute: int, *, is_end: bool) -> dt.time:
    if minute > 59:
        raise ValueError(f"minute {minute} is out of range (00-59)")
    if hour == 24:
        if not is_end:
            raise ValueError("a window cannot start at 24:00; use 00:00")
        if minute != 0:
            raise ValueError(f"24:{minute:02d} is not a time; 24:00 (the end of the day) is the latest end")
        return _MIDNIGHT
    if hour > 23:
        raise ValueError(f"hour {hour} is out of range (00-23, or 24:00 as an end)")
    return dt.time(hour, minute)


def _fmt(t: dt.time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}"


def _offset(instant: dt.datetime, tz: ZoneInfo) -> dt.timedelta | None:
    return instant.astimezone(tz).utcoffset()


def _transitions(start: dt.datetime, stop: dt.datetime, tz: ZoneInfo):
    """Yield, in order, each instant in (start, stop] at which tz's UTC offset
    changes (the first instant with the new offset), to the second. Samples hourly,
    which is finer than any real zone's transitions are apart."""
    step = dt.timedelta(hours=1)
    a = start
    off_a = _offset(a, tz)
    while a < stop:
        b = min(a + step, stop)
        off_b = _offset(b, tz)
        if off_b != off_a:
            # Offsets change on whole seconds: bisect over integer timestamps.
            lo, hi = math.floor(a.timestamp()), math.ceil(b.timestamp())
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if dt.datetime.fromtimestamp(mid, tz).utcoffset() == off_a:
                    lo = mid
                else:
                    hi = mid
            yield dt.datetime.fromtimestamp(hi, _UTC)
        a, off_a = b, off_b
