"""The states an outbox message can be in (docs/delivery.md "Every state a message can be in")."""

from __future__ import annotations

from enum import StrEnum


class MessageState(StrEnum):
    """A message's place in the outbox. A `StrEnum`, so a member is the very string stored in
    the `outbox.state` column and compares equal to it."""

    QUEUED = "queued"            # due now or waiting for a retry
    DEFERRED = "deferred"        # outside its sending window
    HELD = "held"                # a paused campaign's message
    SENDING = "sending"          # claimed, its BSG call in flight
    SENT = "sent"                # BSG accepted it; a final status is awaited
    DELIVERED = "delivered"      # final
    FAILED = "failed"            # final, replayable
    EXPIRED = "expired"          # final (stale after), replayable
    SKIPPED = "skipped"          # final: empty text or opted out
    CANCELLED = "cancelled"      # final: a cancelled campaign's message

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({MessageState.DELIVERED, MessageState.FAILED, MessageState.EXPIRED,
                          MessageState.SKIPPED, MessageState.CANCELLED})
# Claimable by the dispatcher when due.
WAITING_STATES = (MessageState.QUEUED, MessageState.DEFERRED)
