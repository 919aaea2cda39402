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
        raise EventError("a manual send is a JSON object: {to | department | group, text | template, channel?, site?, "
                         "sender?, data?, now?}",
                         "")
    recipients = _recipients(payload)
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
    send = Send(channel, recipients, template=template, text=text, sender=sender, window=window)
    return send, site, data


def _recipients(payload: Mapping) -> tuple[Recipient, ...]:
    """`to` (phones), `department` and `group` (names, looked up in the directory):
    one of them at least; each a string or a list of strings."""
    out: list[Recipient] = []
    for key, kind, what in (("to", "phone", "a phone number"), ("department", "department", "a department name"),
                            ("group", "group", "a group name")):
        value = payload.get(key)
        if value is None:
            continue
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names:
            raise EventError(f"{key} must be {what} or a list of them", f"/{key}")
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise EventError(f"{key} must be {what} or a list of them",
                                 f"/{key}" if isinstance(value, str) else f"/{key}/{i}")
            out.append(Recipient(kind, name.strip()))
    if not out:
        raise EventError("give the recipients: to (phone numbers), department or group (names in the directory)",
                         "/to")
    return tuple(out)


async def manual_send(daemon, payload: Any) -> list[dict]:
    """Plan and queue a manual send; each recipient's own result as written: id, to,
    recipient, state (queued, deferred, or failed with the reason), send_at."""
    send, site_id, data = build_send(payload, daemon)
    now = daemon.clock.now()
    event = Event("manual", data, site_id, "manual-" + uuid.uuid4().hex[:16], now)
    rule = Rule("manual", None, EventTrigger("manual"), None, None, None, (send,))

    def plan_and_queue() -> list[dict]:
        evaluator = daemon._evaluator()
        site = evaluator.site(site_id)
        planned = evaluator.plan_send(rule, send, event, EventScope(event), site, now)
        with daemon.store.transaction():
            return [_result(daemon._enqueue(m, site_id, None, kind="manual"), m) for m in planned]

    results = await daemon.db(plan_and_queue)
    daemon.dispatch_wake.set()
    return results


def _result(message_id: int, m) -> dict:
    state = {"planned": "queued"}.get(m.status, m.status)
    return {"id": message_id, "to": m.to, "recipient": m.recipient, "state": state, "reason": m.reason,
            "send_at": m.send_at.isoformat()}
