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

from engine.errors import EventError
from engine.events import parse_time

REPLAYABLE = ("failed", "expired", "undelivered")
MAX_REPLAY = 10_000


@dataclass(frozen=True)
class ReplayFilter:
    states: tuple[str, ...] = ("failed",)
    since: datetime | None = None
    until: datetime | None = None
    rule: str | None = None
    ids: tuple[int, ...] = ()
    dry_run: bool = False


def parse_filter(payload: Any) -> ReplayFilter:
    """The body of POST /messages/retry; errors name the JSON pointer."""
    if not isinstance(payload, Mapping):
        raise EventError("expected a JSON object such as {\"status\": \"failed\", \"since\": \"2026-11-27T00:00\"}",
                         "")
    unknown = set(payload) - {"status", "since", "until", "rule", "ids", "dry_run"}
    if unknown:
        raise EventError(f"unknown key {sorted(unknown)[0]!r}: use status, since, until, rule, ids, dry_run",
                         f"/{sorted(unknown)[0]}")
    status = payload.get("status", "failed")
    states = tuple(status) if isinstance(status, list) else (status,)
    for i, state in enumerate(states):
        if state not in REPLAYABLE:
            where = f"/status/{i}" if isinstance(status, list) else "/status"
            raise EventError(f"cannot replay {state!r} messages: only {', '.join(REPLAYABLE)} ones", where)
    ids = payload.get("ids") or ()
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        if ids:
            raise EventError("expected a list of message ids (numbers)", "/ids")
    rule = payload.get("rule")
    if rule is not None and not isinstance(rule, str):
        raise EventError("expected a rule name (a string)", "/rule")
    if not any(k in payload for k in ("since", "ids", "rule")):
        raise EventError("say which messages: give `since`, `rule` or `ids` (a replay of everything that "
                         "ever failed is rarely what you want)", "")
    return ReplayFilter(
        states=states,
        since=parse_time(payload["since"], "/since") if payload.get("since") is not None else None,
        until=parse_time(payload["until"], "/until") if payload.get("until") is not None else None,
        rule=rule, ids=tuple(ids), dry_run=bool(payload.get("dry_run", False)))


def replay(store, flt: ReplayFilter) -> list[dict]:
    """Queue a replay of every matching message (database thread, one transaction).
    Returns [{"original", "replay", "to", "rule", "reason"}]; `replay` is None on a dry run."""
    out = []
    with store.transaction():
        rows = store.replayable(states=flt.states, since=flt.since, until=flt.until, rule=flt.rule,
                                ids=flt.ids, limit=MAX_REPLAY)
        for row in rows:
            new_id = None
            if not flt.dry_run:
                new_id = _copy(store, row)
            out.append({"original": row["id"], "replay": new_id, "to": row["to_phone"], "rule": row["rule_id"],
                        "reason": row["reason"] or ""})
    return out


def _copy(store, row: dict) -> int:
    now = datetime.now().astimezone()
    new_id, reference = store.add_message(
        site=row["site"], channel=row["channel"], to_phone=row["to_phone"], state="queued", send_at=now,
        kind=row["kind"], event_id=row["event_id"], rule_id=row["rule_id"], firing_id=row["firing_id"],
        recipient=row["recipient"] or "", copy=bool(row["copy"]), sender=row["sender"], text=row["text"],
        sms_sender=row["sms_sender"], sms_text=row["sms_text"], encoding=row["encoding"], parts=row["parts"] or 0,
        template=row["template"], reason=f"replay of message {row['id']}", omni=row["omni"],
        fallback_after=row["fallback_after"], replay_of=row["id"])
    store.update_message(row["id"], replayed_by=new_id)
    store.add_attempt(row["id"], "replay", "queued", detail=f"replayed as message {new_id} ({reference})")
    store.add_attempt(new_id, "replay", "queued", reference=reference,
                      detail=f"replay of message {row['id']} ({row['reference']}), which "
                             f"{row['state']}: {row['reason'] or 'no reason recorded'}")
    return new_id
