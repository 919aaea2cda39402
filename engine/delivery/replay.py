"""Replaying dead letters: `herald retry` and `POST /messages/retry` (docs/delivery.md).

A replay is a new message — a copy of the original's content with a new BSG reference —
linked both ways (`replay_of` / `replayed_by`), so each replay is a fresh attempt under
the same exactly-once rules, the original keeps its history, and running the same
replay twice replays nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from herald.engine.errors import EventError
from herald.engine.events import parse_time
from herald.engine.store.states import MessageState

REPLAYABLE = (MessageState.FAILED, MessageState.EXPIRED)
MAX_REPLAY = 10_000


@dataclass(frozen=True)
class ReplayFilter:
    states: tuple[str, ...] = (MessageState.FAILED,)
    since: datetime | None = None
    until: datetime | None = None
    rule: str | None = None
    ids: tuple[int, ...] = ()
    dry_run: bool = False
    now: bool = False          # send at once, outside the site's sending window too


def parse_filter(payload: Any) -> ReplayFilter:
    """The body of POST /messages/retry; errors name the JSON pointer."""
    if not isinstance(payload, Mapping):
        raise EventError("expected a JSON object such as {\"status\": \"failed\", \"since\": \"2026-11-27T00:00\"}",
                         "")
    unknown = set(payload) - {"status", "since", "until", "rule", "ids", "dry_run", "now"}
    if unknown:
        raise EventError(f"unknown key {sorted(unknown)[0]!r}: use status, since, until, rule, ids, dry_run, now",
                         f"/{sorted(unknown)[0]}")
    status = payload.get("status", MessageState.FAILED)
    states = tuple(status) if isinstance(status, list) else (status,)
    for i, state in enumerate(states):
        if state not in REPLAYABLE:
            where = f"/status/{i}" if isinstance(status, list) else "/status"
            raise EventError(f"cannot replay {state!r} messages: only {', '.join(REPLAYABLE)} ones", where)
    ids = payload.get("ids") or ()
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        if ids:
            raise EventError("expected a list of message ids (numbers)", "/ids")
    if len(ids) > MAX_REPLAY:
        raise EventError(f"at most {MAX_REPLAY} ids at a time: send the rest in another request", "/ids")
    rule = payload.get("rule")
    if rule is not None and not isinstance(rule, str):
        raise EventError("expected a rule name (a string)", "/rule")
    if not any(k in payload for k in ("since", "ids", "rule")):
        raise EventError("say which messages: give `since`, `rule` or `ids` (a replay of everything that "
                         "ever failed is rarely what you want)", "")
    return ReplayFilter(
        states=tuple(dict.fromkeys(states)),        # ["failed"] * 100000 is one state, not 100000 variables
        since=parse_time(payload["since"], "/since") if payload.get("since") is not None else None,
        until=parse_time(payload["until"], "/until") if payload.get("until") is not None else None,
        rule=rule, ids=tuple(ids), dry_run=bool(payload.get("dry_run", False)), now=bool(payload.get("now", False)))


def replay(store, flt: ReplayFilter, config, now: datetime) -> list[dict]:
    """Queue a replay of every matching message (database thread, one transaction).
    Returns [{"original", "replay", "to", "rule", "reason", "state"}]; `replay` is None on a
    dry run, and for a number that opted out since (it is never messaged again)."""
    out = []
    with store.transaction():
        rows = store.replayable(states=flt.states, since=flt.since, until=flt.until, rule=flt.rule,
                                ids=flt.ids, limit=MAX_REPLAY)
        opted = store.opted_out([r["to_phone"] for r in rows]) if rows else set()
        for row in rows:
            item = {"original": row["id"], "replay": None, "to": row["to_phone"], "rule": row["rule_id"],
                    "reason": row["reason"] or "", "state": None}
            if row["to_phone"] in opted:
                item["state"] = "skipped: the number opted out"
            elif not flt.dry_run:
                item["replay"], item["state"] = _copy(store, row, _send_at(config, row["site"], now, flt.now), now)
            out.append(item)
    return out


def _send_at(config, site_id: str, now: datetime, at_once: bool) -> datetime:
    """Now, or the next opening of the site's sending window (a replay keeps to it, like a
    manual send, unless `now` was asked for)."""
    site = config.sites.get(site_id) or next(iter(config.sites.values()))
    if at_once or site.send_window is None:
        return now
    tz = site.tz
    return site.send_window.next_opening(now.astimezone(tz), tz)


def _copy(store, row: dict, send_at: datetime, now: datetime) -> tuple[int, str]:
    state = MessageState.DEFERRED if send_at > now else MessageState.QUEUED
    new_id, reference = store.add_message(
        site=row["site"], channel=row["channel"], to_phone=row["to_phone"], state=state, send_at=send_at,
        kind=row["kind"], event_id=row["event_id"], rule_id=row["rule_id"], firing_id=row["firing_id"],
        recipient=row["recipient"] or "", copy=bool(row["copy"]), sender=row["sender"], text=row["text"],
        sms_sender=row["sms_sender"], sms_text=row["sms_text"], encoding=row["encoding"], parts=row["parts"] or 0,
        template=row["template"], reason=f"replay of message {row['id']}", omni=row["omni"],
        fallback_after=row["fallback_after"], replay_of=row["id"])
    links = {k: row[k] for k in ("campaign_id", "entity") if row.get(k) is not None}
    if links:                         # a replay stays on its campaign's counts and its order's timeline
        store.update_message(new_id, **links)
    store.update_message(row["id"], replayed_by=new_id)
    store.add_attempt(row["id"], "replay", state, detail=f"replayed as message {new_id} ({reference})")
    store.add_attempt(new_id, "replay", state, reference=reference,
                      detail=f"replay of message {row['id']} ({row['reference']}), which "
                             f"{row['state']}: {row['reason'] or 'no reason recorded'}")
    return new_id, state
