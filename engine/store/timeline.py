"""An entity's timeline (`herald timeline order:42`, `GET /timeline/order/42`): every
event about it, every rule verdict on those events, `after` timers, every message
(written for its events or sent from it by hand), deferrals, attempts, fallbacks and
delivery reports — one list in time order.

Read from the store only; the daemon need not run. Times are ISO 8601 UTC (the text
form: `YYYY-MM-DD HH:MM:SS.mmm`, UTC).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from herald.engine.errors import HeraldError, UnknownEntity
from herald.engine.store.interface import StoreBackend
from herald.engine.store.states import MessageState

_TARGET = re.compile(r"^(?P<type>[A-Za-z_][A-Za-z0-9_]*):(?P<id>[^@\s]+)(?:@(?P<site>\S+))?$")

# attempts.what → the timeline's kind of entry
_ATTEMPT_KINDS = {"fallback": "fallback", "receipt": "receipt", "status": "status"}


def parse_target(text: str, default_site: str) -> tuple[str, str, str]:
    """`order:42` or `order:42@s2` → (entity type, id, site)."""
    m = _TARGET.match(text.strip())
    if not m:
        raise HeraldError(f"{text!r} is not an entity: write TYPE:ID, e.g. order:42 (or order:42@s2 for a site)")
    return m.group("type"), m.group("id"), m.group("site") or default_site


def entity_key(entity_type: str, entity_id: str, site: str) -> str:
    """The engine's key of an entity's state (see Event.entity_key)."""
    return f"{entity_type}:{entity_id}@{site}"


def resolve_id(store: StoreBackend, entity_type: str, given: str, site: str) -> tuple[str, str | None]:
    """(internal id, the public number given) for what a person typed: the entity's id
    when Herald knows that id, else the id of the entity whose `number` it is (an order's
    A-42 — what shop staff and Bitrix's ORDER_ID use), else `given` unchanged."""
    if store.get_state(entity_key(entity_type, given, site)) is not None \
            or store.entity_events(entity_type, given, site):
        return given, None
    found = store.entity_id_by_number(entity_type, given, site)
    return (found, given) if found is not None and found != given else (given, None)


def build_timeline(store: StoreBackend, entity_type: str, entity_id: str, site: str) -> dict[str, Any]:
    """The entity, its latest known state and its entries in time order. `entity_id`
    may be the entity's number (see resolve_id). Raises UnknownEntity when the store
    knows nothing about it."""
    entity_id, number = resolve_id(store, entity_type, entity_id, site)
    key = entity_key(entity_type, entity_id, site)
    state = store.get_state(key)
    events = store.entity_events(entity_type, entity_id, site)
    event_ids = [e.id for e in events]
    messages = store.timeline_messages(key, event_ids)
    if state is None and not events and not messages:
        raise UnknownEntity(f"no {entity_type} {entity_id} on site {site}: Herald has no event, state or message "
                            f"for it (by id or by number)")
    entries: list[dict] = []
    firings: dict[int, dict] = {}
    for e in events:
        entries.append({"at": _utc(e.time), "kind": "event", "event": e.id, "type": e.type,
                        "summary": f"{e.type} ({e.id})" + _event_detail(e)})
        for f in store.firings_of(e.id):
            firings[f["id"]] = f
            entries.append({"at": f["at"], "kind": "firing", "event": e.id, "rule": f["rule"], "fired": f["fired"],
                            "summary": f"rule {f['rule']}: {f['reason']}"})
    for t in store.timers_of(event_ids):
        entries.append({"at": t["created_at"], "kind": "timer", "event": t["event"], "rule": t["rule"],
                        "summary": f"rule {t['rule']} waits until {_text_time(t['due'])} ({t['status']}"
                                   + (f": {t['reason']}" if t["reason"] else "") + ")"})
    for m in messages:
        entries += _message_entries(store, m, firings.get(m.get("firing_id")))
    entries.sort(key=lambda entry: _moment(entry["at"]))
    entity = {"type": entity_type, "id": entity_id, "site": site, "key": key}
    if number is not None:
        entity["number"] = number
    return {"entity": entity, "state": state, "entries": entries}


def _event_detail(e) -> str:
    """What a person looks for in an event that is not the entity's own: a shipment's
    number, status and tracking number."""
    shipment = e.data.get("shipment") if isinstance(e.data, dict) else None
    if not isinstance(shipment, dict):
        return ""
    parts = [f"{k} {shipment[k]}" for k in ("number", "status", "tracking_number") if shipment.get(k) not in (None, "")]
    return f": shipment {shipment.get('id', '')}".rstrip() + (f" ({', '.join(parts)})" if parts else "")


def _message_entries(store, m: dict, firing: dict | None) -> list[dict]:
    who = m["to"] or "no phone"
    origin = f"rule {m['rule']}" if m["rule"] and m["rule"] != "manual" else "sent by hand"
    out = [{"at": m["created_at"], "kind": "message", "message": m["id"], "state": m["state"],
            "summary": f"message {m['id']} ({origin}): {m['channel']} to {who}"
                       + (f" ({m['recipient']})" if m["recipient"] and m["recipient"] != m["to"] else "")
                       + f" — {m['state']}" + (f": {m['reason']}" if m["reason"] else "")
                       + (f" — \"{m['text']}\"" if m["text"] else "")}]
    attempts = store.attempts_of(m["id"])
    deferred = m["send_at"] and m["created_at"] and \
        _moment(m["send_at"]) - _moment(m["created_at"]) > timedelta(seconds=1)
    if deferred and m["state"] not in (MessageState.FAILED, MessageState.SKIPPED, MessageState.EXPIRED):
        cause = _deferral_cause(m, firing, attempts)
        out.append({"at": m["created_at"], "kind": "deferral", "message": m["id"], "until": m["send_at"],
                    "cause": cause,
                    "summary": f"message {m['id']} deferred until {_text_time(m['send_at'])}"
                               + (f": {cause}" if cause else "")})
    for a in attempts:
        if a["what"] == "defer":            # the deferral's recorded cause, shown on the deferral above
            continue
        where = " ".join(p for p in (a["endpoint"], a["leg"]) if p)
        out.append({"at": a["at"], "kind": _ATTEMPT_KINDS.get(a["what"], "attempt"), "message": m["id"],
                    "what": a["what"], "outcome": a["outcome"],
                    "summary": f"message {m['id']} {a['what']}: {a['outcome']}" + (f" [{where}]" if where else "")
                               + (f" — {a['detail']}" if a["detail"] else "")})
    return out


def _deferral_cause(m: dict, firing: dict | None, attempts: list[dict]) -> str:
    """Why a message waited, as recorded — never guessed: a `defer` attempt (manual
    sends), the message's own reason while it is still deferred, or the rule's verdict
    that planned it (the firing's trace keeps each planned message's status and reason).
    "" when nothing recorded says why."""
    recorded = [a["detail"] for a in attempts if a["what"] == "defer" and a["detail"]]
    if not recorded and m["state"] == MessageState.DEFERRED and m["reason"]:
        recorded = [m["reason"]]
    if not recorded and firing is not None:
        recorded = [p.get("reason") or "" for p in (firing.get("trace") or {}).get("messages", [])
                    if p.get("status") == "deferred" and p.get("to") == m["to"]]
    return _cause_of(recorded[0]) if recorded else ""


def _cause_of(reason: str) -> str:
    """"outside the sending window 09:00-21:00; waits until it opens; unknown macros …"
    → "outside the sending window 09:00-21:00": the cause, not the rest of the story."""
    parts = [p.strip() for p in reason.split(";")]
    kept = [p for p in parts if p and p != "waits until it opens" and not p.startswith("unknown macros")]
    return "; ".join(kept)


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def _moment(at: str | None) -> datetime:
    return datetime.fromisoformat(at) if at else datetime.min.replace(tzinfo=timezone.utc)


def _text_time(at: str | None) -> str:
    """An ISO time as the text form shows it: UTC, to the millisecond (events and sends
    come close together), e.g. 2026-11-27 19:00:00.000."""
    if not at:
        return " " * 23
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:            # the store writes aware times; a naive one is UTC
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_timeline(timeline: dict) -> str:
    """The readable text form of `herald timeline`; times in UTC."""
    entity = timeline["entity"]
    named = f" (number {entity['number']})" if entity.get("number") else ""
    lines = [f"{entity['type']} {entity['id']}{named} (site {entity['site']}): {len(timeline['entries'])} entries"]
    for entry in timeline["entries"]:
        lines.append(f"{_text_time(entry['at'])}  {entry['kind']:<8}  {entry['summary']}")
    return "\n".join(lines)
