"""Manual sends (`POST /messages`, `herald send`): a message typed by a person, planned
like a rule's — recipients normalised, template rendered, window and senders applied."""

from __future__ import annotations

import uuid
from typing import Any, Mapping

from engine.errors import EventError
from engine.events import Event, EventScope
from engine.windows import parse_window
from grammar.model import EventTrigger, Recipient, Rule, Send

CHANNELS = ("sms", "viber", "omni")


def build_send(payload: Any, daemon) -> tuple[Send, str, Mapping]:
    if not isinstance(payload, Mapping):
        raise EventError("a manual send is a JSON object: {to, text | template, channel?, site?, sender?, data?, now?}",
                         "")
    to = payload.get("to")
    phones = [to] if isinstance(to, str) else to
    if not isinstance(phones, list) or not phones or not all(isinstance(p, str) and p for p in phones):
        raise EventError("to must be a phone number or a list of them", "/to")
    channel = payload.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise EventError(f"channel must be one of {', '.join(CHANNELS)}", "/channel")
    text, template = payload.get("text"), payload.get("template")
    if (text is None) == (template is None):
        raise EventError("give either text or template", "/text")
    if template is not None and daemon.project.templates.get(str(template)) is None:
        raise EventError(f"unknown template {template!r}", "/template")
    if text is not None and not isinstance(text, str):
        raise EventError("text must be a string", "/text")
    site = payload.get("site", next(iter(daemon.config.sites)))
    if site not in daemon.config.sites:
        raise EventError(f"unknown site {site!r}", "/site")
    sender = payload.get("sender")
    if sender is not None and sender not in (*daemon.config.senders.sms, *daemon.config.senders.viber):
        raise EventError(f"sender {sender!r} is not among the configured senders", "/sender")
    data = payload.get("data") or {}
    if not isinstance(data, Mapping):
        raise EventError("data must be an object (fields for the template's macros)", "/data")
    now = payload.get("now", False)
    if not isinstance(now, bool):
        raise EventError("now must be true or false", "/now")
    # a person sending by hand at night may mean it: `now` skips the site's sending window
    window = parse_window("00:00-24:00") if now else None
    send = Send(channel, tuple(Recipient("phone", p) for p in phones), template=template, text=text, sender=sender,
                window=window)
    return send, site, data


async def manual_send(daemon, payload: Any) -> list[int]:
    send, site_id, data = build_send(payload, daemon)
    now = daemon.clock.now()
    event = Event("manual", data, site_id, "manual-" + uuid.uuid4().hex[:16], now)
    rule = Rule("manual", None, EventTrigger("manual"), None, None, None, (send,))

    def plan_and_queue() -> list[int]:
        evaluator = daemon._evaluator()
        site = evaluator.site(site_id)
        planned = evaluator.plan_send(rule, send, event, EventScope(event), site, now)
        with daemon.store.transaction():
            return [daemon._enqueue(m, site_id, None, kind="manual") for m in planned]

    ids = await daemon.db(plan_and_queue)
    daemon.dispatch_wake.set()
    return ids
