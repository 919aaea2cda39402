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

The decoding is pure: bytes in, an event dict (as `POST /events` takes it) or a
`HookError` out. The HTTP route (engine/api/routes.py) reads the body, calls `decode` and
journals the result like any posted event.

With `bitrix24.rest_url` (an incoming webhook of the portal) `enrich` fills the task of
ONTASKADD/ONTASKUPDATE from Bitrix24's REST API (`tasks.task.get`, then `user.get` for
its people), so the event carries the canonical `task` object (spec/EVENTS.md). The URL
holds the webhook's token: no message, log line or error here ever shows it.
"""

from __future__ import annotations

import hmac
import logging
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

import httpx
import trio

from herald.engine.directory import phone_field
from herald.engine.errors import Bitrix24RestError as RestError, HookError
from herald.engine.helpers.phones import normalize_phone
from herald.engine.redaction import rest_token

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


MAX_ID = 100        # characters of an entity id in a post (Bitrix24's are numbers)


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
                where = f"data[{key}][ID]"
                if isinstance(raw, str) and len(raw.strip()) > MAX_ID:
                    raise HookError(400, f"the id of the {code} entity is longer than {MAX_ID} characters", where)
                if isinstance(raw, str) and raw.strip():
                    return _ident(raw), dict(fields)
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



# ---- REST enrichment ----------------------------------------------------------------------

FETCHED = ("ONTASKADD", "ONTASKUPDATE")          # the events whose task still exists to be read
REST_TIMEOUT = 5.0      # seconds for one REST call
REST_BUDGET = 10.0      # seconds for all of one post's calls: Bitrix24 waits for the answer
TASK_SELECT = ("ID", "TITLE", "STATUS", "PRIORITY", "DEADLINE", "RESPONSIBLE_ID", "CREATED_BY",
               "ACCOMPLICES", "AUDITORS")
PHONE_ORDER = ("PERSONAL_MOBILE", "WORK_PHONE", "PERSONAL_PHONE")
USER_PAGE = 50          # user.get answers at most 50 users a call

log = logging.getLogger("herald.http")


def redact_url(url: str) -> str:
    token = rest_token(url)
    return url.replace(token, "****") if token else url


class _HideToken(logging.Filter):
    """httpx logs every request's URL at INFO, and this URL holds the token."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.token and self.token in text:
            record.msg, record.args = text.replace(self.token, "****"), ()
        return True


_hidden: set[str] = set()


def _hide_in_httpx_logs(token: str) -> None:
    if token and token not in _hidden:
        _hidden.add(token)
        logging.getLogger("httpx").addFilter(_HideToken(token))


class Rest:
    """Calls of one Bitrix24 incoming webhook: POST URL + method, JSON in and out."""

    def __init__(self, url: str, http: httpx.AsyncClient):
        self.url = url if url.endswith("/") else url + "/"
        self.token = rest_token(self.url)
        self.http = http
        _hide_in_httpx_logs(self.token)

    def _clean(self, text: str) -> str:
        return text.replace(self.token, "****") if self.token else text

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        """The call's `result`, or RestError (HTTP failure, Bitrix24's `error`, not JSON)."""
        try:
            response = await self.http.post(self.url + method, json=params)
        except httpx.TimeoutException as exc:
            raise RestError(f"{method}: no answer within {REST_TIMEOUT:g} s") from exc
        except httpx.HTTPError as exc:
            raise RestError(self._clean(f"{method}: {type(exc).__name__}: {exc}")) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("error"):
            detail = body.get("error_description") or ""
            raise RestError(self._clean(f"{method}: HTTP {response.status_code} {body['error']}"
                                        + (f": {detail}" if detail else "")))
        if response.status_code != 200 or not isinstance(body, dict) or "result" not in body:
            raise RestError(f"{method}: HTTP {response.status_code}, not a Bitrix24 REST answer")
        return body["result"]


def _get(obj: dict[str, Any], *names: str) -> Any:
    """A field by its camelCase name (what tasks.task.get answers) or its upper-case one."""
    for name in names:
        if name in obj:
            return obj[name]
    return None


def _ident(value: Any) -> int | str | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    if not text:
        return None
    # a whole number only within 64 bits (what the store holds): a longer one stays text
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else text


def _ids(value: Any) -> list[int | str]:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [i for i in (_ident(v) for v in items) if i not in (None, 0)]


def _deadline(value: Any) -> str | None:
    """ISO 8601 as Bitrix24 gives it (2026-01-10T18:00:00+03:00); anything else as found."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        return text


def person(user: dict[str, Any] | None, user_id: int | str) -> dict[str, Any]:
    """A canonical `user` from a user.get record (just the id when Bitrix24 did not give one)."""
    out: dict[str, Any] = {"id": user_id}
    if not user:
        return out
    name = " ".join(str(user.get(k) or "").strip() for k in ("NAME", "LAST_NAME")).strip()
    if name:
        out["name"] = name
    for key, field in (("login", "LOGIN"), ("email", "EMAIL")):
        if str(user.get(field) or "").strip():
            out[key] = str(user[field]).strip()
    _, raw = phone_field(user, PHONE_ORDER, prefer_valid=True)
    if raw is not None:
        phone = normalize_phone(raw)
        out["phone"] = phone.e164 if phone.ok else raw.strip()
    return out


def build_task(task_id: int | str, task: dict[str, Any], users: dict[Any, dict]) -> dict[str, Any]:
    """The canonical `task` object (spec/EVENTS.md) from tasks.task.get's `task` and the
    user.get records by id. Members are the accomplices and auditors, each once, by id."""
    responsible = _ident(_get(task, "responsibleId", "RESPONSIBLE_ID"))
    creator = _ident(_get(task, "createdBy", "CREATED_BY"))
    members = sorted(set(_ids(_get(task, "accomplices", "ACCOMPLICES"))
                         + _ids(_get(task, "auditors", "AUDITORS"))), key=lambda i: (str(type(i)), i))
    title = _get(task, "title", "TITLE")
    return {
        "id": _ident(_get(task, "id", "ID")) or task_id,
        "title": str(title).strip() if title is not None and str(title).strip() else None,
        "status": _ident(_get(task, "status", "STATUS")),
        "priority": _ident(_get(task, "priority", "PRIORITY")),
        "deadline": _deadline(_get(task, "deadline", "DEADLINE")),
        "responsible": person(users.get(responsible), responsible) if responsible else {},
        "creator": person(users.get(creator), creator) if creator else {},
        "members": [person(users.get(m), m) for m in members],
    }


async def fetch_task(rest: Rest, task_id: int | str) -> dict[str, Any]:
    """tasks.task.get, then user.get for its people (50 a call): the canonical task."""
    result = await rest.call("tasks.task.get", {"taskId": task_id, "select": list(TASK_SELECT)})
    task = result.get("task") if isinstance(result, dict) else None
    if not isinstance(task, dict):
        raise RestError("tasks.task.get: the answer has no task")
    wanted = [_ident(_get(task, "responsibleId", "RESPONSIBLE_ID")), _ident(_get(task, "createdBy", "CREATED_BY")),
              *_ids(_get(task, "accomplices", "ACCOMPLICES")), *_ids(_get(task, "auditors", "AUDITORS"))]
    ids = list(dict.fromkeys(i for i in wanted if i not in (None, 0)))
    users: dict[Any, dict] = {}
    for start in range(0, len(ids), USER_PAGE):
        found = await rest.call("user.get", {"FILTER": {"ID": ids[start:start + USER_PAGE]}})
        for user in found if isinstance(found, list) else []:
            if isinstance(user, dict) and _ident(user.get("ID")) is not None:
                users[_ident(user.get("ID"))] = user
    return build_task(task_id, task, users)


async def enrich(event: dict[str, Any], rest_url: str, *, timeout: float = REST_TIMEOUT,
                 budget: float = REST_BUDGET) -> dict[str, Any]:
    """Fill `event["data"]["task"]` from the REST API. Returns what the answer says about
    it: `{"enriched": True}`, or `{"enriched": False, "why": …}` with the event untouched
    (it is still journaled, with the id only)."""
    task_id = event["data"]["task"]["id"]
    try:
        with trio.fail_after(budget):
            async with httpx.AsyncClient(timeout=timeout) as http:
                task = await fetch_task(Rest(rest_url, http), task_id)
    except RestError as exc:
        return {"enriched": False, "why": str(exc)}
    except trio.TooSlowError:
        return {"enriched": False, "why": f"Bitrix24's REST API took over {budget:g} s"}
    except (ValueError, TypeError, AttributeError, httpx.InvalidURL) as exc:
        # An answer of a shape nobody documented: the event must still be journaled.
        # Only the error's type is said: its text might quote the URL.
        return {"enriched": False, "why": f"an unexpected REST answer ({type(exc).__name__})"}
    event["data"]["task"] = task
    return {"enriched": True}


def from_last_state(event: dict[str, Any], state: dict[str, Any] | None) -> dict[str, Any]:
    """ONTASKDELETE: the task is gone from Bitrix24, so the event gets the last state
    Herald knew of it (from an earlier enriched event), if any."""
    last = state.get("task") if isinstance(state, dict) else None
    if not isinstance(last, dict) or len(last) <= 1:
        return {"enriched": False, "why": "the task is deleted and Herald knew nothing more of it than its id"}
    event["data"]["task"] = {**last, "id": event["data"]["task"]["id"]}
    return {"enriched": True, "from": "last known state"}
