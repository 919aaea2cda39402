"""The outbox's front door: how a planned message (a rule's, a campaign's, a manual send's)
is written into the outbox, with its omni fallback fixed at that moment (how: engine/delivery/omni.py)."""

from __future__ import annotations

from typing import Mapping

from herald.engine.delivery.omni import omni_options
from herald.engine.rules.evaluate import PlannedMessage
from herald.engine.store import MessageState, Store

# A planned message's status -> the outbox state it is written in.
_OUTBOX_STATE = {"planned": MessageState.QUEUED, "deferred": MessageState.DEFERRED}


def enqueue(store: Store, sites: Mapping, m: PlannedMessage, site: str, firing_id: int | None,
            kind: str = "rule") -> int:
    """Write `m` into the outbox (inside the caller's transaction); returns the message id."""
    state = _OUTBOX_STATE.get(m.status, m.status)
    message_id, _ = store.add_message(
        site=site, channel=m.channel, to_phone=m.to, state=state, send_at=m.send_at, kind=kind,
        event_id=m.event_id or None, rule_id=m.rule_id or None, firing_id=firing_id, recipient=m.recipient,
        copy=m.copy, sender=m.sender, text=m.text, sms_sender=m.sms_sender, sms_text=m.sms_text,
        encoding=m.encoding, parts=m.parts, template=m.template, reason=m.reason, stale_at=m.stale_at,
        **omni_options(sites, m.channel, site, m.fallback_after))
    return message_id

