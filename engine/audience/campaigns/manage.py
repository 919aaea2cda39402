"""Creating a campaign, its status, pause / resume / cancel, and changing it (in the database thread)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo


from herald.engine.directory import lookup
from herald.engine.audience.subscriptions import SubscribedDirectory
from herald.engine.errors import CampaignError, did_you_mean
from herald.engine.helpers.phones import normalize_phone
from herald.engine.services import Services
from herald.engine.audience.campaigns.spec import (
    FUNDS_CODES, LIVE_STATES, RATE_FORMAT, Spec, _budget, _time, parse_rate, read_csv,
)

log = logging.getLogger("herald.campaigns")

# ---- creating (in the database thread) ---------------------------------------------------

def create(services: Services, spec: Spec) -> dict:
    """Resolve the recipients and store the campaign; its status (with `invalid`: numbers
    that were left out). A name already used answers 409."""
    store = services.store
    if spec.name is not None and store.campaign(spec.name) is not None:
        raise CampaignError(409, f"a campaign named {spec.name!r} exists already", "/name")
    recipients, invalid = resolve(services, spec)
    if not recipients:
        kind = next(iter(spec.source))
        why = (f"all {len(invalid)} number(s) are invalid, e.g. {invalid[0]}" if invalid else
               f"the list {spec.source[kind]!r} has no confirmed subscribers (or they opted out)" if kind == "list"
               else f"{kind} {spec.source[kind]!r} has nobody with a phone number" if kind in ("department", "group")
               else "nobody to send to")
        raise CampaignError(400, f"no recipients: {why}; nothing was created", f"/{kind}")
    site = services.config.sites[spec.site]
    window = spec.window or (site.send_window.text if site.send_window else None)
    fields = {"name": spec.name, "origin": spec.origin, "site": spec.site, "channel": spec.channel,
              "template": spec.template, "text": spec.text, "sender": spec.sender,
              "source": json.dumps(describe_source(spec.source), ensure_ascii=False),
              "start_at": spec.start.timestamp(), "end_at": spec.end.timestamp(), "send_window": window,
              "rate": spec.rate, "budget": str(spec.budget) if spec.budget is not None else None,
              "state": "active", "reason": ""}
    campaign_id = store.create_campaign(fields, recipients)
    result = status(services, campaign_id)
    result["invalid"] = {"count": len(invalid), "examples": invalid[:5]}
    log.info("campaign %s (%s): %d recipient(s), %d invalid number(s) left out", campaign_id,
             spec.name or "unnamed", result["total"], len(invalid))
    return result


def describe_source(source: dict) -> dict:
    kind, value = next(iter(source.items()))
    if kind == "csv":
        return {"csv": f"{max(value.count(chr(10)), 1)} line(s)"}
    if kind == "phones":
        return {"phones": len(value)}
    return {kind: value}


def resolve(services: Services, spec: Spec) -> tuple[Iterable[tuple[str, str | None, str | None]], list[str]]:
    """The recipients (E.164, macros JSON, zone), each number once, and the invalid ones."""
    kind, value = next(iter(spec.source.items()))
    rows: list[tuple[str, dict | None, str | None]]
    if kind == "phones":
        rows = [(p, None, None) for p in value]
    elif kind == "csv":
        rows = read_csv(value)
    elif kind == "list":
        directory = SubscribedDirectory(services.directory, services.store)
        phones = directory.subscribers(value)
        if not phones and value not in services.config.subscriptions.lists and not phones.error:
            known = tuple(services.config.subscriptions.lists)
            hint = did_you_mean(value, known) or "configured lists: " + (", ".join(known) or "none")
            raise CampaignError(400, f'list "{value}" has no subscribers and is not configured ({hint})', "/list")
        rows = [(p, None, None) for p in phones]
    else:
        found = lookup(services.directory, kind, value)
        if found.error:
            raise CampaignError(400, f"{kind} {value!r}: {found.error}", f"/{kind}")
        rows = [(phone, None, None) for _, phone in found if phone]
    seen: set[str] = set()
    out, invalid = [], []
    for raw, data, tz in rows:
        phone = normalize_phone(raw)
        if not phone.ok:
            invalid.append(f"{raw}: {phone.error}")
            continue
        if phone.e164 in seen:
            continue
        seen.add(phone.e164)
        out.append((phone.e164, json.dumps(data, ensure_ascii=False) if data else None, tz))
    return out, invalid


# ---- status ------------------------------------------------------------------------------

def status(services: Services, key: int | str) -> dict | None:
    store = services.store
    c = store.campaign(key)
    if c is None:
        return None
    counts = store.campaign_counts(c["id"])
    r, m = counts["recipients"], counts["messages"]
    now = services.clock.now().timestamp()
    state = c["state"]
    shown = {"active": "scheduled" if now < c["start_at"] else "running"}.get(state, state)
    queued = r.get("pending", 0) + sum(m.get(s, 0) for s in ("queued", "deferred", "held", "sending"))
    in_flight = queued + m.get("sent", 0)
    body = {
        "id": c["id"], "name": c["name"], "state": shown, "reason": c["reason"] or "", "site": c["site"],
        "channel": c["channel"], "template": c["template"], "text": c["text"], "sender": c["sender"],
        "source": json.loads(c["source"]), "origin": c["origin"],
        "start": _iso(c["start_at"]), "end": _iso(c["end_at"]), "window": c["send_window"],
        "rate": c["rate"], "budget": c["budget"], "total": c["total"],
        "queued": queued, "sent": m.get("sent", 0), "delivered": m.get("delivered", 0),
        "failed": m.get("failed", 0) + m.get("undelivered", 0),
        "expired": r.get("expired", 0) + m.get("expired", 0),
        "skipped": r.get("skipped", 0) + m.get("skipped", 0),
        "cancelled": r.get("cancelled", 0) + m.get("cancelled", 0),
        "cost": f"{counts['cost']:.4f}".rstrip("0").rstrip(".") if counts["cost"] else "0",
        "currency": counts["currency"],
        "done": state in ("ended", "cancelled") and in_flight - queued == 0
        or (state == "completed" and in_flight == 0),
    }
    return body


def list_status(services: Services) -> list[dict]:
    return [status(services, c["id"]) for c in services.store.campaigns()]


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts is not None else None


# ---- pause / resume / cancel (in the database thread) ------------------------------------

def change_state(services: Services, key: str, action: str) -> dict:
    """Pause, resume or cancel a campaign (in the database thread); its status. The feeder
    hears of it through `wakes.campaigns`; a resumed campaign reads its balance first."""
    store = services.store
    c = store.campaign(key)
    if c is None:
        raise CampaignError(404, f"no campaign {key}")
    cid, state = c["id"], c["state"]
    with store.transaction():
        if action == "pause":
            if not store.set_campaign_state(cid, "paused", "paused by an operator", ("active", "completed")):
                raise CampaignError(409, f"campaign {cid} is {state}: only a running or scheduled one can pause")
            store.hold_campaign(cid, None, "campaign paused")
        elif action == "resume":
            if not store.set_campaign_state(cid, "active", "", ("paused", "stopped")):
                raise CampaignError(409, f"campaign {cid} is {state}: only a paused or stopped one can resume")
            now = services.clock.now().timestamp()
            store.hold_campaign(cid, now, "")
            # an operator resumes after fixing the cause (a top-up): what BSG refused for it
            # goes now, unmarked, so the funds check does not stop the campaign again at once
            store.release_campaign_held(cid, FUNDS_CODES, now)
            if services.alerter is not None:
                services.alerter.resolve(f"campaign.stopped:{cid}", f"Campaign {c['name'] or cid} resumed",
                                       "An operator resumed the campaign.")
        elif action == "cancel":
            if not store.set_campaign_state(cid, "cancelled", "cancelled by an operator", LIVE_STATES):
                raise CampaignError(409, f"campaign {cid} is {state} already")
            store.recall_campaign(cid, "cancelled", "campaign cancelled")
            if services.alerter is not None and state == "stopped":
                # a cancelled campaign will not resume: its stop is no longer an open problem
                services.alerter.resolve(f"campaign.stopped:{cid}", f"Campaign {c['name'] or cid} cancelled",
                                       "An operator cancelled the stopped campaign.")
    return status(services, cid)


# ---- changing a campaign (`herald campaign set`, PATCH /campaigns/ID) --------------------

SETTABLE = ("budget", "end", "rate")


def update(services: Services, key: str, payload: Any) -> dict:
    """Change the budget, end or rate of a campaign that is not over yet (in the database
    thread). A stopped campaign stays stopped: `resume` goes on with the new figures."""
    if not isinstance(payload, Mapping) or not payload:
        raise CampaignError(400, "give what to change: {budget?, end?, rate?}", "")
    for k in payload:
        if k not in SETTABLE:
            hint = did_you_mean(str(k), SETTABLE) or "only " + ", ".join(SETTABLE) + " can change"
            raise CampaignError(400, f"unknown key {k!r} ({hint})", f"/{k}")
    store = services.store
    c = store.campaign(key)
    if c is None:
        raise CampaignError(404, f"no campaign {key}")
    if c["state"] not in LIVE_STATES:
        raise CampaignError(409, f"campaign {c['id']} is {c['state']}: it cannot change any more")
    fields: dict[str, Any] = {}
    if "rate" in payload:
        rate = parse_rate(payload["rate"])
        if rate is None:
            raise CampaignError(400, RATE_FORMAT, "/rate")
        fields["rate"] = rate
    if "budget" in payload:
        budget = _budget(payload["budget"])
        fields["budget"] = str(budget) if budget is not None else None
    if "end" in payload:
        site = services.config.sites.get(c["site"])
        tz = ZoneInfo(site.timezone) if site is not None else timezone.utc
        if payload["end"] is None:
            raise CampaignError(400, "end is required: when unsent messages are recalled (ISO 8601)", "/end")
        end = _time(payload["end"], "/end", tz)
        if end.timestamp() <= c["start_at"]:
            raise CampaignError(400, "end must be after start", "/end")
        if end <= services.clock.now():
            raise CampaignError(400, f"end ({end.isoformat()}) is in the past", "/end")
        fields["end_at"] = end.timestamp()
    store.update_campaign(c["id"], fields)
    log.info("campaign %s changed: %s", c["id"], ", ".join(f"{k} {v}" for k, v in fields.items()))
    return status(services, c["id"])
