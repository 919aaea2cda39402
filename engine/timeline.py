"""An entity's timeline (`herald timeline order:42`, `GET /timeline/order/42`): every
event about it, every rule verdict on those events, `after` timers, every message
(written for its events or sent from it by hand), deferrals, attempts, fallbacks and
delivery reports — one list in time order.

Read from the store only; the daemon need not run. Times are ISO 8601 UTC.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from engine.errors import HeraldError

_TARGET = re.compile(r"^(?P<type>[A-Za-z_][A-Za-z0-9_]*):(?P<id>[^@\s]+)(?:@(?P<site>\S+))?$")

# attempts.what → the timeline's kind of entry
_ATTEMPT_KINDS = {"fallback": "fallback", "receipt": "receipt", "status": "status"}


class UnknownEntity(HeraldError):
    """Nothing is known about that entity: no state, no event, no message."""


def parse_target(text: str, default_site: str) -> tuple[str, str, str]:
    """`order:42` or `order:42@s2` → (entity type, id, site)."""
    m = _TARGET.match(text.strip())
    if not m:
        raise HeraldError(f"{text!r} is not an entity: write TYPE:ID, e.g. order:42 (or order:42@s2 for a site)")
    return m.group("type"), m.group("id"), m.group("site") or default_site


def entity_key(entity_type: str, entity_id: str, site: str) -> str:
    """The engine's key of an entity's state (see Event.entity_key)."""
    return f"{entity_type}:{entity_id}@{site}"


def build_timeline(store, entity_type: str, entity_id: str, site: str) -> dict[str, Any]:
    """The entity, its latest known state and its entries in time order. Raises
    UnknownEntity when the store knows nothing about it."""
    key = entity_key(entity_type, entity_id, site)
    state = store.get_state(key)
    events = store.entity_events(entity_type, entity_id, site)
    event_ids = [e.id for e in events]
    messages = store.timeline_messages(key, event_ids)
    if state is None and not events and not messages:
        raise UnknownEntity(f"no {entity_type} {entity_id} on site {site}: Herald has no event, state or message "
                            "for it")
    entries: list[dict] = []
    for e in events:
        entries.append({"at": e.time.astimezone(timezone.utc).isoformat(), "kind": "event", "event": e.id, "type": e.type,
                        "summary": f"{e.type} ({e.id})"})
        for f in store.firings_of(e.id):
            entries.append({"at": f["at"], "kind": "firing", "event": e.id, "rule": f["rule"], "fired": f["fired"],
                            "summary": f"rule {f['rule']}: {f['reason']}"})
    for t in store.timers_of(event_ids):
        entries.append({"at": t["created_at"], "kind": "timer", "event": t["event"], "rule": t["rule"],
                        "summary": f"rule {t['rule']} waits until {t['due']} ({t['status']}"
                                   + (f": {t['reason']}" if t["reason"] else "") + ")"})
    for m in messages:
        entries += _message_entries(store, m)
    entries.sort(key=lambda entry: _moment(entry["at"]))
    return {"entity": {"type": entity_type, "id": entity_id, "site": site, "key": key}, "state": state,
            "entries": entries}


def _message_entries(store, m: dict) -> list[dict]:
    who = m["to"] or "no phone"
    origin = f"rule {m['rule']}" if m["rule"] and m["rule"] != "manual" else "sent by hand"
    out = [{"at": m["created_at"], "kind": "message", "message": m["id"], "state": m["state"],
            "summary": f"message {m['id']} ({origin}): {m['channel']} to {who}"
                       + (f" ({m['recipient']})" if m["recipient"] and m["recipient"] != m["to"] else "")
                       + f" — {m['state']}" + (f": {m['reason']}" if m["reason"] else "")
                       + (f" — \"{m['text']}\"" if m["text"] else "")}]
    deferred = m["send_at"] and m["created_at"] and \
        _moment(m["send_at"]) - _moment(m["created_at"]) > timedelta(seconds=1)
    if deferred and m["state"] not in ("failed", "skipped", "expired"):
        out.append({"at": m["created_at"], "kind": "deferral", "message": m["id"],
                    "summary": f"message {m['id']} deferred until {m['send_at']} (the sending window)"})
    for a in store.attempts_of(m["id"]):
        where = " ".join(p for p in (a["endpoint"], a["leg"]) if p)
        out.append({"at": a["at"], "kind": _ATTEMPT_KINDS.get(a["what"], "attempt"), "message": m["id"],
                    "what": a["what"], "outcome": a["outcome"],
                    "summary": f"message {m['id']} {a['what']}: {a['outcome']}" + (f" [{where}]" if where else "")
                               + (f" — {a['detail']}" if a["detail"] else "")})
    return out


def _moment(at: str | None) -> datetime:
    return datetime.fromisoformat(at) if at else datetime.min.replace(tzinfo=timezone.utc)


def format_timeline(timeline: dict) -> str:
    """The readable text form of `herald timeline`."""
    entity = timeline["entity"]
    lines = [f"{entity['type']} {entity['id']} (site {entity['site']}): {len(timeline['entries'])} entries"]
    for entry in timeline["entries"]:
        at = (entry["at"] or "")[:23].replace("T", " ")      # to the millisecond: events and sends come close
        lines.append(f"{at}  {entry['kind']:<8}  {entry['summary']}")
    return "\n".join(lines)
