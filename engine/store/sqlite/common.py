"""Small helpers of the SQLite backend: how times, JSON and states are written in its
columns (epoch seconds as REAL, compact JSON text, state names as SQL literals)."""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any

from herald.engine.store.states import WAITING_STATES, MessageState

_LAST_EPOCH = 253402300799.0        # 9999-12-31T23:59:59Z, the last moment a datetime holds

_ENTITY_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STATE_NAME = re.compile(r"[a-z]+")


def _now() -> float:
    return time.time()


def to_epoch(when: datetime) -> float:
    return when.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _iso(value: float | None) -> str | None:
    moment = from_epoch(value)
    return moment.isoformat() if moment else None


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def _json_path(entity_type: str, field: str) -> str:
    """`$."order"."id"`: an entity type goes into a JSON path only as a checked name, quoted
    (a `.`, `[`, `"` or NUL in it would change the path or break it)."""
    if not _ENTITY_TYPE.fullmatch(entity_type):
        raise ValueError(f"{entity_type!r} is not an entity type (letters, digits and _)")
    return f'$."{entity_type}"."{field}"'


def _like(text: str) -> str:
    """text as a literal in a LIKE pattern (ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def new_reference() -> str:
    """A BSG reference: ≤ 32 characters of [A-Za-z0-9], unique across Herald instances."""
    return "hr" + secrets.token_hex(12)


def states_sql(*states: MessageState | str) -> str:
    """`('queued', 'deferred')`: states as an SQL list of literals. Built from the enum (or,
    for the legacy 'undelivered', a fixed name), never from input, so quoting is safe; kept
    as literals rather than parameters so the planner sees them (the outbox indexes lead
    with `state`)."""
    names = [str(s) for s in states]
    if not all(_STATE_NAME.fullmatch(n) for n in names):
        raise ValueError(f"not state names: {names}")
    return "(" + ", ".join(f"'{n}'" for n in names) + ")"


# A message that reached one of these is done. 'undelivered' is not a MessageState — no code
# writes it today — but rows of older versions may carry it, so it still counts as final.
FINAL = (*(s for s in MessageState if s.final), "undelivered")
FINAL_SQL = states_sql(*FINAL)
# Not yet handed to BSG: what a campaign's pause, end or an opt-out may take back.
UNSENT_SQL = states_sql(MessageState.QUEUED, MessageState.DEFERRED, MessageState.HELD)
# Claimable by the dispatcher when due.
WAITING_SQL = states_sql(*WAITING_STATES)
