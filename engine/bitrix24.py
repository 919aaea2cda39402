"""Bitrix24 outbound webhooks → canonical events (`POST /hooks/bitrix24`, docs/bitrix24.md).

Bitrix24 posts each event as `application/x-www-form-urlencoded` fields with PHP-style
nested names (Bitrix24's REST event documentation; what we assume is in the docs):

    event=ONTASKADD&event_handler_id=5&data[FIELDS_BEFORE]=undefined
    &data[FIELDS_AFTER][ID]=42&data[IS_ACCESSIBLE_BEFORE]=N&ts=1700000000
    &auth[domain]=example.bitrix24.ru&auth[member_id]=…&auth[application_token]=…

Task events carry the task's id in `data[FIELDS_AFTER][ID]` (ONTASKDELETE: in
`data[FIELDS_BEFORE][ID]`), CRM deal events in `data[FIELDS][ID]` — ids only, never the
task's title or people. `auth[application_token]` is the credential: Bitrix24 shows it
once when the webhook is made, and the receiver compares it with its own copy.

Everything here is pure: bytes in, an event dict (as `POST /events` takes it) or a
`HookError` out. The HTTP route (engine/http.py) reads the body, calls `decode` and
journals the result like any posted event.
"""

from __future__ import annotations

import hmac
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

# Bitrix24 event → canonical event type, and the object its id goes to.
EVENTS: dict[str, tuple[str, str]] = {
    "ONTASKADD": ("task.created", "task"),
    "ONTASKUPDATE": ("task.updated", "task"),
    "ONTASKDELETE": ("task.deleted", "task"),
    "ONCRMDEALADD": ("deal.created", "deal"),
    "ONCRMDEALUPDATE": ("deal.updated", "deal"),
    "ONCRMDEALDELETE": ("deal.deleted", "deal"),
}
FORM_TYPE = "application/x-www-form-urlencoded"
TOKEN_FIELD = "auth[application_token]"
# Where the entity's id may be, in order (tasks: FIELDS_AFTER, deleted tasks:
# FIELDS_BEFORE; CRM events: FIELDS).
ID_FIELDS = ("FIELDS_AFTER", "FIELDS", "FIELDS_BEFORE")
MAX_FIELDS = 1000                       # a real post has about twenty

NOT_CONFIGURED = ("Bitrix24 webhooks are off: add a bitrix24: section to herald.yaml with "
                  "application_token: !env B24_TOKEN (the token Bitrix24 shows for the outbound "
                  "webhook) and restart or reload Herald; see docs/bitrix24.md")

_NAME = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


class HookError(Exception):
    """A refused post: the HTTP status, what is wrong and, where it is one field, which."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


def parse_form(body: bytes, content_type: str | None = FORM_TYPE) -> dict[str, Any]:
    """The form's fields as nested dicts: `data[FIELDS_AFTER][ID]=42` →
    `{"data": {"FIELDS_AFTER": {"ID": "42"}}}`. As in PHP, a later field wins over an
    earlier one of the same name, and `[]` appends (keys "0", "1" …)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and kind != FORM_TYPE:
        raise HookError(400, f"expected a {FORM_TYPE} body (Bitrix24's outbound webhook), got {kind}")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError as exc:
        raise HookError(400, "the body is not UTF-8 form data") from exc
    except ValueError as exc:
        raise HookError(400, f"the form has more than {MAX_FIELDS} fields") from exc
    form: dict[str, Any] = {}
    for name, value in pairs:
        _put(form, name, value)
    if not form:
        raise HookError(400, "the body has no form fields; expected event, data[…], ts and auth[…]")
    return form


def _put(form: dict[str, Any], name: str, value: str) -> None:
    m = _NAME.match(name)
    if m is None:
        raise HookError(400, f"malformed field name {name!r}", name)
    keys = [m.group(1)] + _SEGMENT.findall(m.group(2))
    node = form
    for key in keys[:-1]:
        key = key or str(len(node))
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1] or str(len(node))] = value


def check_token(form: dict[str, Any], expected: str) -> None:
    """401 without `auth[application_token]`, 403 when it is not the configured one
    (compared in constant time). Neither message repeats what was sent."""
    auth = form.get("auth")
    given = auth.get("application_token") if isinstance(auth, dict) else None
    if not isinstance(given, str) or not given:
        raise HookError(401, f"unsigned post: {TOKEN_FIELD} is missing", TOKEN_FIELD)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HookError(403, f"{TOKEN_FIELD} does not match bitrix24.application_token in herald.yaml",
                        TOKEN_FIELD)


def to_event(form: dict[str, Any], *, site: str | None = None) -> dict[str, Any]:
    """The canonical event of a (token-checked) post, shaped as `POST /events` takes it."""
    name = form.get("event")
    if not isinstance(name, str) or not name.strip():
        raise HookError(400, "the post has no event name", "event")
    code = name.strip().upper()
    if code not in EVENTS:
        raise HookError(400, f"unsupported Bitrix24 event {name.strip()!r}; Herald takes "
                        + ", ".join(EVENTS), "event")
    event_type, entity = EVENTS[code]
    entity_id, fields = _entity_id(form.get("data"), code)
    when = _time(form.get("ts"))
    auth = form.get("auth") if isinstance(form.get("auth"), dict) else {}
    domain = auth.get("domain") if isinstance(auth.get("domain"), str) else ""
    origin: dict[str, Any] = {"event": code, "domain": domain, "fields": fields}
    for key in ("member_id",):                 # never the tokens: auth also carries OAuth ones
        if isinstance(auth.get(key), str):
            origin[key] = auth[key]
    if isinstance(form.get("event_handler_id"), str):
        origin["handler_id"] = form["event_handler_id"]
    event: dict[str, Any] = {
        "type": event_type,
        "id": f"bitrix24:{domain}:{code}:{entity_id}:{form['ts'].strip()}",
        "time": when,
        "data": {entity: {"id": entity_id}, "bitrix24": origin},
    }
    if site:
        event["site"] = site
    return event


def _entity_id(data: Any, code: str) -> tuple[int | str, dict[str, Any]]:
    if isinstance(data, dict):
        for key in ID_FIELDS:
            fields = data.get(key)
            if isinstance(fields, dict):
                raw = fields.get("ID")
                if isinstance(raw, str) and raw.strip():
                    value = raw.strip()
                    return (int(value) if value.isdigit() else value), dict(fields)
    where = "data[FIELDS][ID]" if code.startswith("ONCRM") else "data[FIELDS_AFTER][ID]"
    raise HookError(400, f"the post has no id of the {code} entity ({where})", where)


def _time(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip().isdigit():
        raise HookError(400, "ts must be the event's Unix time in seconds", "ts")
    try:
        return datetime.fromtimestamp(int(raw.strip()), timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError) as exc:
        raise HookError(400, "ts is not a possible Unix time", "ts") from exc


def decode(body: bytes, content_type: str | None, *, token: str, site: str | None = None) -> dict[str, Any]:
    """A whole post: the form, then the token, then the event (so an unsigned post is
    refused before anything about its content is said)."""
    form = parse_form(body, content_type)
    check_token(form, token)
    return to_event(form, site=site)

