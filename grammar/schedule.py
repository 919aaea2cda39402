"""When a schedule trigger fires next, in a site's time zone.

Pure date arithmetic beside the grammar that defines the triggers: the model's
`ScheduleTrigger.next_fire` and the compiler's cron check use it, and it imports
nothing of the engine's runtime (grammar stays below the engine)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Protocol

from croniter import croniter


class Schedule(Protocol):
    """What `next_fire` reads of a trigger (grammar/model.py's `ScheduleTrigger`, which
    imports this module: a Protocol here keeps the two without a cycle)."""

    kind: str                       # "interval" | "daily" | "cron"
    interval: timedelta | None
    times: tuple[str, ...]
    cron: str | None


def next_fire(trigger: Schedule, after: datetime) -> datetime:
    """The first firing strictly after `after`, an aware datetime in the site's zone.

    `every 15m` is aligned to the wall clock (:00, :15, :30 …) so that every site and
    every restart agree on the slots; `every day at` and cron follow local time, DST
    included.
    """
    if after.tzinfo is None:
        raise ValueError("next_fire needs an aware datetime")
    tz = after.tzinfo
    if trigger.kind == "interval":
        step = int(trigger.interval.total_seconds())
        local_midnight = datetime.combine(after.date(), time(0), tz)
        # count in absolute seconds from local midnight so DST days stay aligned
        elapsed = int((after - local_midnight).total_seconds())
        return local_midnight + timedelta(seconds=(elapsed // step + 1) * step)
    if trigger.kind == "daily":
        candidates = []
        for day in (after.date(), after.date() + timedelta(days=1)):
            for hhmm in trigger.times:
                hour, minute = map(int, hhmm.split(":"))
                at = datetime.combine(day, time(hour, minute), tz)
                if at > after:
                    candidates.append(at)
        return min(candidates)
    return croniter(trigger.cron, after).get_next(datetime)


def is_valid_cron(expression: str) -> bool:
    return croniter.is_valid(expression)
