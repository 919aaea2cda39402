"""What every delivery worker writes besides a message's columns (in the database thread):
a line of its attempts trace, and the `message.delivered` / `message.failed` event that
ends it."""

from __future__ import annotations

from typing import Any, Mapping

from herald.engine.delivery.omni import leg_of
from herald.engine.delivery.services import DeliveryServices
from herald.engine.events import Event
from herald.engine.store import OutboxRow


class Ledger:
    def __init__(self, services: DeliveryServices):
        self.services = services

    def log(self, message_id: int, what: str, outcome: str, endpoint: str | None = None,
            row: OutboxRow | Mapping[str, Any] | None = None, detail: str = "") -> None:
        """One line of the message's attempts trace, naming the leg and reference of `row`."""
        leg = reference = None
        if isinstance(row, OutboxRow):
            leg, reference = row.kind, row.leg_reference
        elif isinstance(row, Mapping):
            leg = leg_of(row)
            reference = row.get("sms_reference") if leg == "sms" and row.get("sms_reference") else row.get("reference")
        self.services.store.add_attempt(message_id, what, outcome, endpoint=endpoint, leg=leg, reference=reference,
                                        detail=detail)

    def emit_final(self, item: Mapping[str, Any], state: str, bsg_status: str) -> None:
        """Journal `message.<state>` for the message `item["id"]` (no event for a message
        that a message.* event caused)."""
        store = self.services.store
        message = store.message(item["id"])
        cause = store.event_type(message["event"]) if message.get("event") else None
        if cause is not None and cause.startswith("message."):
            # a message sent because of a message.* event ends without one: a rule like
            # `on message.failed send to admins …` can never feed itself
            return
        event = Event(f"message.{state}", {"message": {
            "id": message["id"], "status": bsg_status, "channel": message["channel"], "to": message["to"],
            "rule": message["rule"], "event": message["event"], "reference": message["reference"],
            "price": message["price"], "currency": message["currency"], "reason": message["reason"],
            "leg": message["leg"] or ("sms" if message["channel"] == "sms" else "viber"),
            "endpoint": message["endpoint"]}},
            message["site"], f"message:{message['reference']}:{state}", self.services.now())
        store.add_events([event], "herald")
