"""Events as rules see them, parsed at the boundary with JSON-pointer errors."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any

from herald.engine.helpers.bounds import MAX_INT, MIN_INT, text_problem
from herald.engine.errors import EventError

_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ALLOWED_KEYS = {"type", "site", "id", "time", "data", "previous"}
MAX_ID = 500          # characters of an event id (a shop's order id, a mail's Message-ID, a hook's id)


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: Mapping[str, Any]
    site: str
    id: str
    time: datetime
    previous: Mapping[str, Any] | None = None
    id_given: bool = field(default=True, compare=False)

    @property
    def entity_type(self) -> str:
        return self.type.split(".", 1)[0]

    @property
    def entity_id(self) -> Any:
        """The id of the entity this event is about (`data.order.id` for `order.*`)."""
        obj = self.data.get(self.entity_type)
        return obj.get("id") if isinstance(obj, Mapping) else None

    @property
    def entity_key(self) -> str | None:
        entity_id = self.entity_id
        if entity_id is None or isinstance(entity_id, (dict, list)):
            return None
        return f"{self.entity_type}:{entity_id}@{self.site}"

    def as_json(self) -> dict:
        out = {"type": self.type, "site": self.site, "id": self.id, "time": self.time.isoformat(),
               "data": self.data}
        if self.previous is not None:
            out["previous"] = self.previous
        return out


def parse_time(value: Any, pointer: str, default_tz=timezone.utc) -> datetime:
    if not isinstance(value, str):
        raise EventError("time must be an ISO 8601 string, e.g. 2026-11-27T10:00:00+03:00", pointer)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise EventError(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-27T10:00:00+03:00", pointer) from exc
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=default_tz)
    try:        # 0001-01-01T00:00+05:00 is before year 1 in UTC: no datetime (nor epoch) holds it
        parsed.astimezone(timezone.utc).timestamp()
    except (OverflowError, ValueError) as exc:
        raise EventError(f"{value!r} is out of range: times go from year 1 to 9999 (UTC)", pointer) from exc
    return parsed


def parse_event(obj: Any, *, default_site: str, known_sites: Mapping | None = None,
                now: datetime | None = None, pointer: str = "") -> Event:
    """Validate one event object (RULES.md "Events"). Raises EventError with a JSON pointer."""
    if not isinstance(obj, Mapping):
        raise EventError("an event must be a JSON object with at least type and data", pointer or "")
    unknown = sorted(set(obj) - _ALLOWED_KEYS)
    if unknown:
        raise EventError(f"unknown key {unknown[0]!r}; an event has type, site, id, time, data, previous",
                         f"{pointer}/{_escape(unknown[0])}")
    event_type = obj.get("type")
    if not isinstance(event_type, str) or not _TYPE.match(event_type):
        raise EventError("type is required: dot-separated names like order.updated", f"{pointer}/type")
    data = obj.get("data")
    if not isinstance(data, Mapping):
        raise EventError("data is required and must be an object", f"{pointer}/data")
    site = obj.get("site", default_site)
    if not isinstance(site, str) or not site:
        raise EventError("site must be a site id string", f"{pointer}/site")
    if known_sites is not None and site not in known_sites:
        raise EventError(f"unknown site {site!r}; configured sites: {', '.join(known_sites)}", f"{pointer}/site")
    previous = obj.get("previous")
    if previous is not None and not isinstance(previous, Mapping):
        raise EventError("previous must be an object holding the changed fields' old values", f"{pointer}/previous")
    when = parse_time(obj["time"], f"{pointer}/time") if "time" in obj else (now or datetime.now(timezone.utc))
    event_id = obj.get("id")
    id_given = event_id is not None
    if event_id is None:
        event_id = "h" + hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]
    elif not isinstance(event_id, (str, int)) or isinstance(event_id, bool) or str(event_id) == "":
        raise EventError("id must be a non-empty string", f"{pointer}/id")
    elif isinstance(event_id, str) and (problem := text_problem(event_id, max_length=MAX_ID, controls=True)):
        raise EventError(f"id {problem}; send the source's own id as text", f"{pointer}/id")
    elif isinstance(event_id, int) and not MIN_INT <= event_id <= MAX_INT:
        raise EventError(f"id is out of range ({MIN_INT} to {MAX_INT}); send it as a string", f"{pointer}/id")
    return Event(event_type, data, site, str(event_id), when, previous, id_given)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def merge_previous(current: Mapping, changes: Mapping) -> dict:
    """The previous state: the current one with the changed fields' old values put back."""
    merged = dict(current)
    for key, old in changes.items():
        if isinstance(old, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_previous(merged[key], old)
        else:
            merged[key] = old
    return merged


_MISSING = object()


def lookup(data: Any, path: tuple[str, ...]) -> Any:
    """A field by path; a missing field reads as None. List items by index (`items.0`)."""
    for part in path:
        if type(data) is dict or isinstance(data, Mapping):     # the dict test first: hot path
            data = data.get(part, _MISSING)
            if data is _MISSING:
                return None
        elif isinstance(data, (list, tuple)) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


class EventScope:
    """What paths in a rule read: the event's data, `event.*`, `previous.*`, `site.*`."""

    __slots__ = ("event", "data", "previous", "site")

    def __init__(self, event: Event, data: Mapping | None = None, previous: Mapping | None = None,
                 site: Mapping | None = None):
        self.event = event
        self.data = event.data if data is None else data
        self.previous = previous
        self.site = site or {}

    def get(self, path: tuple[str, ...]) -> Any:
        root = path[0]
        if root == "event" and len(path) == 2:
            return {"type": self.event.type, "site": self.event.site, "id": self.event.id,
                    "time": self.event.time.isoformat()}.get(path[1])
        if root == "previous":
            return lookup(self.previous, path[1:]) if self.previous is not None else None
        if root == "site" and root not in self.data:
            return lookup(self.site, path[1:])
        return lookup(self.data, path)
