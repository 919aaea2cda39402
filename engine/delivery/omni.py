"""Viber→SMS fallback ("omni"): every decision about it, in one module.

An omni message goes to Viber first and to SMS when Viber does not make it. How is fixed
when the message is written (`omni_options`, from its site's `omni`):

- `provider`: BSG falls back itself. The Viber request carries an SMS `alt_route`
  (`provider_alt_route`; engine/bsg/wire.py `AltRoute` is only its wire shape). The message
  is final once the Viber status and every alt_route status are (`settled`), delivered
  when either made it (`delivered`).
- `engine`: Herald falls back. Viber goes without alt_route; the message is on its `viber`
  leg with a deadline (`fallback_at`). `transition` says what a status means for it: when
  Viber fails finally, or has no final status by the deadline, the SMS leg (its own
  reference) is queued (`fallback_fields`). A Viber report that comes after that is a
  late one: recorded, and it triggers nothing more — except that it makes the message
  delivered when the SMS failed or had not gone yet.

The store keeps the legs in columns (`omni`, `leg`, `sms_reference`, `fallback_at`,
`viber_status`, `viber_bsg_id`, `double_delivery`); the dispatcher (engine/delivery/status.py)
carries out the step `transition` returns. Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Mapping

from herald.engine.bsg.wire import FINAL_SUCCESS, Status
from herald.engine.store import MessageState, OutboxRow

DEFAULT_DEADLINE = 600.0          # seconds a Viber leg waits for a final status (no omni_deadline set)


class Step(StrEnum):
    """What an omni message does next, given a status of its Viber leg."""

    CONTINUE = "continue"              # no omni decision: the status applies as to any message
    FALL_BACK = "fall back"            # Viber did not make it: the SMS leg is queued now
    RECORD = "record"                  # a late Viber report that changes nothing: recorded only
    DELIVERED_LATE = "delivered late"  # the SMS failed, Viber made it after all: delivered
    CANCEL_SMS = "cancel sms"          # Viber made it before the queued SMS went: delivered, no SMS
    DOUBLE = "double delivery"         # Viber made it after the SMS went: recorded and counted


@dataclass(frozen=True)
class Next:
    step: Step
    why: str = ""                      # for the message's reason and trace


def transition(message: Mapping[str, Any], status: Status | None, now: float) -> Next:
    """The next step of `message` (a stored outbox row: `omni`, `leg`, `state`, `fallback_at`,
    `uncertain_at`, and `receipt_leg` when `status` is a delivery report) given `status` —
    a poll's or a report's, None when BSG knew nothing yet — at `now` (epoch seconds)."""
    if message.get("omni") != "engine":
        return Next(Step.CONTINUE)
    if message.get("leg") == "sms" and message.get("receipt_leg") == "viber":
        return _late_viber(message, status)
    if message.get("leg") != "viber":
        return Next(Step.CONTINUE)
    if status is not None and status.final and not status.success:
        return Next(Step.FALL_BACK, f"Viber: {status.status}")
    deadline = message.get("fallback_at")
    if (status is None or not status.final) and deadline is not None and now >= deadline:
        return Next(Step.FALL_BACK, "no final Viber status by the deadline")
    return Next(Step.CONTINUE)


def _late_viber(message: Mapping[str, Any], status: Status | None) -> Next:
    """A report on the Viber leg of a message that already fell back to SMS."""
    if status is None or not status.success:
        return Next(Step.RECORD, "late Viber report after the SMS fallback: recorded only")
    state = message.get("state")
    if state == MessageState.FAILED:
        return Next(Step.DELIVERED_LATE, "Viber delivered late, after the SMS fallback failed")
    if state in (MessageState.QUEUED, MessageState.DEFERRED) and not message.get("uncertain_at"):
        return Next(Step.CANCEL_SMS, "Viber delivered before the SMS fallback went out; no SMS sent")
    return Next(Step.DOUBLE, "late Viber report: Viber delivered after the SMS fallback went out "
                             "(double delivery)")


# What a late Viber report writes on the message, by step (besides `viber_status`), and the
# detail of its trace line.
LATE_VIBER: dict[Step, tuple[dict[str, Any], str]] = {
    Step.RECORD: ({}, "late Viber report after the SMS fallback: recorded only"),
    Step.DELIVERED_LATE: ({"state": MessageState.DELIVERED},
                          "late Viber report: delivered after all (the SMS fallback had failed)"),
    Step.CANCEL_SMS: ({"state": MessageState.DELIVERED},
                      "Viber delivered late; the queued SMS fallback is cancelled"),
    Step.DOUBLE: ({"double_delivery": 1},
                  "late Viber report: Viber delivered after the SMS fallback went out (double delivery)"),
}


def can_fall_back(row: Mapping[str, Any] | None) -> bool:
    """Only a message still sent on its Viber leg falls back (a repeated status, or one that
    raced a receipt, finds it moved on already)."""
    return row is not None and row["state"] == MessageState.SENT and row["leg"] == "viber"


def fallback_fields(row: Mapping[str, Any], status: Status | None, now: float, why: str) -> dict[str, Any]:
    """The columns that put a message on its SMS leg, queued now, its Viber leg remembered."""
    return dict(state=MessageState.QUEUED, leg="sms", next_attempt_at=now, attempts=0,
                viber_status=status.status if status else row["bsg_status"], viber_bsg_id=row["bsg_id"],
                bsg_id=None, bsg_status=None, next_poll_at=None, sent_at=None, uncertain_at=None,
                uncertain_since=None, reason=f"falling back to SMS: {why}")


def leg_of(item: Mapping[str, Any]) -> str:
    """The leg a stored message is on now: sms or viber."""
    if item.get("channel") == "sms" or (item.get("omni") == "engine" and item.get("leg") == "sms"):
        return "sms"
    return "viber"


def provider_alt_route(row: OutboxRow) -> bool:
    """Whether the Viber request carries BSG's SMS alt_route (provider omni)."""
    return row.channel == "omni" and row.omni != "engine"


def fallback_at(row: OutboxRow, now: float) -> float | None:
    """The deadline of an engine omni's Viber leg sent at `now` (None: no deadline)."""
    if row.omni == "engine" and row.kind == "viber":
        return now + (row.fallback_after or DEFAULT_DEADLINE)
    return None


def next_poll(item: Mapping[str, Any], when: float, now: float) -> float:
    """An engine omni's Viber leg is looked at again by its deadline at the latest."""
    if item.get("omni") == "engine" and item.get("leg") == "viber" and item.get("fallback_at"):
        return min(when, max(item["fallback_at"], now + 1))
    return when


def settled(status: Status) -> bool:
    """Final, fallback included: a failed Viber whose SMS alt_route is on its way is not."""
    return status.final and all(a.final for a in status.alt_route)


def delivered(status: Status) -> bool:
    return status.success or any(a.status in FINAL_SUCCESS for a in status.alt_route)


def sms_leg_id(item: Mapping[str, Any], status: Status) -> dict[str, Any]:
    """The SMS leg's BSG id, when a final status names one: the alt_route's (provider) or the
    status's own (engine, on its SMS leg)."""
    if status.alt_route:
        return {"sms_bsg_id": status.alt_route[0].id}
    if leg_of(item) == "sms" and item.get("omni") == "engine":
        return {"sms_bsg_id": status.id}
    return {}


def omni_options(sites: Mapping, channel: str, site_id: str, fallback_after: float | None) -> dict:
    """How an omni message falls back, fixed when it is written (a reload that changes the
    site's `omni` does not change messages already queued)."""
    if channel != "omni":
        return {}
    site = sites.get(site_id) or next(iter(sites.values()))
    return {"omni": site.omni, "fallback_after": fallback_after or site.omni_deadline}
