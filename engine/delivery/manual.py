"""Manual sends (`POST /messages`, `herald send`): a message typed by a person, planned
like a rule's — recipients normalised, template rendered, window and senders applied."""

from __future__ import annotations

import uuid
from typing import Any, Callable, Mapping

from herald.engine.directory import known_names, lookup
from herald.engine.errors import EventError, UnresolvableRecipients as Unresolvable, did_you_mean
from herald.engine.events import Event, EventScope, merge_previous
from herald.engine.helpers.windows import parse_window
from herald.engine.rules.evaluate import PlannedMessage
from herald.engine.services import Services
from herald.engine.store.states import MessageState
from herald.engine.store.timeline import UnknownEntity, entity_key, resolve_id
from herald.grammar.model import EventTrigger, Recipient, Rule, Send

CHANNELS = ("sms", "viber", "omni")


def build_send(payload: Any, services: Services, default_to: tuple[Recipient, ...] = ()) -> tuple[Send, str, Mapping]:
    if not isinstance(payload, Mapping):
        raise EventError("a manual send is a JSON object: {to | department | group, text | template, channel?, site?, "
                         "sender?, data?, now?}",
                         "")
    recipients = _recipients(payload, default_to)
    channel = payload.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise EventError(f"channel must be one of {', '.join(CHANNELS)}", "/channel")
    text, template = payload.get("text"), payload.get("template")
    if (text is None) == (template is None):
        raise EventError("give either text or template", "/text")
    if template is not None and services.project.templates.get(str(template)) is None:
        raise EventError(f"unknown template {template!r}", "/template")
    if text is not None and not isinstance(text, str):
        raise EventError("text must be a string", "/text")
    site = payload.get("site", next(iter(services.config.sites)))
    if not isinstance(site, str) or site not in services.config.sites:
        raise EventError(f"unknown site {site!r}", "/site")
    sender = payload.get("sender")
    if sender is not None and sender not in (*services.config.senders.sms, *services.config.senders.viber):
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


def _recipients(payload: Mapping, default: tuple[Recipient, ...] = ()) -> tuple[Recipient, ...]:
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
    if not out and default:
        return default
    if not out:
        raise EventError("give the recipients: to (phone numbers), department or group (names in the directory)",
                         "/to")
    return tuple(out)


# lookup errors that are the directory's fault, not the request's: those recipients get
# failed messages with the reason, as a rule's would
_DIRECTORY_DOWN = ("the Bitrix database failed", "the directory failed")


def check_resolvable(services: Services, send: Send, payload: Any) -> None:
    """In the database thread (a Bitrix lookup blocks): raise Unresolvable when every
    recipient is a department or group the directory does not know."""
    named = [r for r in send.recipients if r.kind in ("department", "group")]
    if not named or len(named) != len(send.recipients):
        return
    problems = []
    for r in named:
        found = lookup(services.directory, r.kind, r.value)
        if not found.error or found.error.startswith(_DIRECTORY_DOWN):
            return
        problems.append((r, found.error))
    r, error = problems[0]
    hint = did_you_mean(r.value, known_names(services.directory, r.kind) or ())
    message = f'{r.kind} "{r.value}": {error}'
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more: no recipient could be found)"
    raise Unresolvable(message, _pointer(payload, r.kind, r.value), hint)


def _pointer(payload: Any, kind: str, name: str) -> str:
    value = payload.get(kind) if isinstance(payload, Mapping) else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str) and item.strip() == name:
                return f"/{kind}/{i}"
    return f"/{kind}"


async def manual_send(services: Services, payload: Any) -> list[dict]:
    """Plan and queue a manual send; each recipient's own result as written: id, to,
    recipient, state (queued, deferred, or failed with the reason), send_at. Raises
    Unresolvable when no recipient can be found."""
    send, site_id, data = build_send(payload, services)
    await services.db(check_resolvable, services, send, payload)
    results = await services.db(_plan_and_queue, services, send, site_id, lambda: data, None)
    services.wakes.dispatch.set()
    return results


async def order_send(services: Services, order_id: str, payload: Any) -> list[dict]:
    """Send from an order (`herald send --order 42`, POST /orders/{id}/messages): rendered
    with the order's latest known state (its data overlaid by the payload's `data`), to
    the order's customer by default, and linked to the order (its timeline shows it).
    Raises UnknownEntity when Herald has no state for that order on that site."""

    send, site_id, extra = build_send(payload, services, default_to=(Recipient("path", ("customer", "phone")),))
    await services.db(check_resolvable, services, send, payload)
    # the internal id, or else the order whose public number it is (A-42: what staff type)
    internal, _ = await services.db(resolve_id, services.store, "order", str(order_id), site_id)
    key = entity_key("order", internal, site_id)

    def data() -> Mapping:
        state = services.store.get_state(key)
        if state is None:
            raise UnknownEntity(f"no order {order_id} on site {site_id}: Herald has not seen an event about it "
                                "(by id or by number)")
        return merge_previous(state, extra)

    results = await services.db(_plan_and_queue, services, send, site_id, data, key)
    services.wakes.dispatch.set()
    return results


def _plan_and_queue(services: Services, send: Send, site_id: str, data: Callable[[], Mapping],
                    entity: str | None) -> list[dict]:
    """In the database thread: plan the send against `data()` and write its messages
    (linked to `entity` when given) in one transaction."""
    now = services.clock.now()
    event = Event("manual", data(), site_id, "manual-" + uuid.uuid4().hex[:16], now)
    rule = Rule("manual", None, EventTrigger("manual"), None, None, None, (send,))
    evaluator = services.evaluator()
    planned = evaluator.plan_send(rule, send, event, EventScope(event), evaluator.site(site_id), now)
    results = []
    with services.store.transaction():
        for m in planned:
            message_id = services.enqueue(m, site_id, None, kind="manual")
            if entity is not None:
                services.store.update_message(message_id, entity=entity)
            if m.status == "deferred":      # why it waits, kept after the reason is cleared by the send
                services.store.add_attempt(message_id, "defer", "deferred", detail=m.reason)
            results.append(_result(message_id, m))
    return results


def send_answer(results: list[dict]) -> dict:
    """The body of a 202 to a manual send: `queued` holds the messages that will go
    (queued or deferred), `failed` those that will not, `messages` every result."""
    return {"queued": [r["id"] for r in results if r["state"] in (MessageState.QUEUED, MessageState.DEFERRED)],
            "failed": [r["id"] for r in results if r["state"] == MessageState.FAILED],
            "messages": results}


def _result(message_id: int, m: PlannedMessage) -> dict:
    state = {"planned": MessageState.QUEUED}.get(m.status, m.status)
    return {"id": message_id, "to": m.to, "recipient": m.recipient, "state": state, "reason": m.reason,
            "send_at": m.send_at.isoformat()}
