"""Incoming SMS: polled from BSG's `/sms/2wayIncoming` and pushed to `POST /sms/incoming`.

Each incoming SMS becomes one `sms.received` event (EVENTS.md: `sms.from`, `sms.to`,
`sms.text`, `sms.time`, plus BSG's `sms.id`). Its event id is `sms:ID` for BSG's ids, so
the journal takes it once however often it is seen: polls overlap on purpose (BSG's
times have one second resolution, and an SMS may be listed late), and a push of an SMS
in BSG's own shape (`msisdn`, `body`) that a poll also finds is the same event. A push
in Herald's shape (`from`, `text`) carries the sender's own id: `sms:push:ID`, a
namespace of its own, so it never collides with a BSG id.

The poll's cursor (the newest time seen) is stored with the events it journals, in one
transaction; a restart goes on from there. Each BSG account is polled — the main one and
every site with its own `api_key` — with a cursor of its own; a site's SMS are its events.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import trio

from herald.engine.bsg.client import BsgClient, BsgError
from herald.engine.errors import EventError
from herald.engine.events import Event, parse_time
from herald.engine.helpers.phones import normalize_phone
from herald.engine.services import Services

log = logging.getLogger("herald.incoming")

BSG_TIME = "%Y-%m-%d %H:%M:%S"
OVERLAP = timedelta(minutes=10)       # each poll looks this far behind the cursor
FIRST_LOOK_BACK = timedelta(hours=1)  # the very first poll
CURSOR = ("incoming", "bsg")
TWO_WAY_OFF = 35                      # BSG: 2-way is not active on the account


def sms_event(item: Mapping[str, Any], site: str, now: datetime, pointer: str = "") -> Event:
    """One incoming SMS as an `sms.received` event. Takes Herald's shape
    {id, from, to?, text, time?, site?} or BSG's {id, msisdn, sender, body, time}."""
    if not isinstance(item, Mapping):
        raise EventError("an incoming SMS is an object: {id, from, text, to?, time?}", pointer)
    sender = item.get("from", item.get("msisdn"))
    if isinstance(sender, int) and not isinstance(sender, bool):
        sender = str(sender)
    if not isinstance(sender, str) or not sender.strip():
        raise EventError("from is required: the phone number the SMS came from", f"{pointer}/from")
    text = item.get("text", item.get("body"))
    if not isinstance(text, str):
        raise EventError("text is required: the SMS text (a string)", f"{pointer}/text")
    raw = sender.strip()
    phone = normalize_phone(raw if raw.startswith("+") or not raw.isdigit() else "+" + raw)
    if not phone.ok:
        raise EventError(f"from: {phone.error}", f"{pointer}/from")
    when = _time(item.get("time"), now, f"{pointer}/time")
    sms_id = item.get("id")
    if sms_id is None:
        # no id: the same SMS (number, text, second) is still one event
        sms_id = "h" + hashlib.sha1(f"{phone.e164}|{text}|{when.isoformat()}".encode()).hexdigest()[:20]
    elif isinstance(sms_id, bool) or not isinstance(sms_id, (str, int)) or not str(sms_id).strip():
        raise EventError("id must be a string: the incoming SMS's id at BSG (or your own unique id)",
                         f"{pointer}/id")
    to = item.get("to", item.get("sender"))
    data = {"sms": {"id": str(sms_id), "from": phone.e164, "to": str(to) if to is not None else "",
                    "text": text, "time": when.isoformat()}}
    # BSG's ids (polled, or pushed in BSG's own shape) and the caller's own ids are
    # separate namespaces: a pushed `{"id": "77", "from": …}` is not BSG's SMS 77
    own = "from" in item and "msisdn" not in item and item.get("id") is not None
    event_id = f"sms:push:{sms_id}" if own else f"sms:{sms_id}"
    return Event("sms.received", data, str(item.get("site") or site), event_id, when)


def _time(value: Any, now: datetime, pointer: str) -> datetime:
    if value is None:
        return now
    if isinstance(value, str):
        try:                        # BSG's own format, in UTC
            return datetime.strptime(value.strip(), BSG_TIME).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return parse_time(value, pointer)


def parse_push(payload: Any, services: Services) -> list[Event]:
    """`POST /sms/incoming`: one SMS or a list of them."""
    many = isinstance(payload, list)
    items = payload if many else [payload]
    if many and not items:
        raise EventError("an empty list has no SMS", "")
    sites = services.config.sites
    default = next(iter(sites))
    now = services.clock.now()
    events = []
    for i, item in enumerate(items):
        at = f"/{i}" if many else ""
        event = sms_event(item, default, now, at)
        if event.site not in sites:
            raise EventError(f"unknown site {event.site!r}", f"{at}/site")
        events.append(event)
    return events


def accounts(services: Services) -> list[str | None]:
    """The BSG accounts: None for the main one (bsg.api_key), then each site that has its
    own (sites.X.api_key, docs/multisite.md)."""
    return [None, *(sid for sid, site in services.config.sites.items() if site.api_key is not None)]


def account_client(services: Services, site: str | None) -> BsgClient | None:
    """The client of an account (None: the main one) on the endpoint in use, or None."""
    sending = services.sending()
    if sending is None or sending.client is None:
        return None
    if site is None:
        return sending.client
    router = sending.router
    return sending.client_for(router.pick() or router.endpoints[0], site)


def _account_site(services: Services, account: str | None) -> str:
    """The site an account's incoming SMS belong to: its own, or for the main account the
    first site without a key of its own."""
    if account is not None:
        return account
    sites = services.config.sites
    return next((sid for sid, site in sites.items() if site.api_key is None), next(iter(sites)))


async def poll_incoming(services: Services, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Poll BSG for incoming SMS every `subscriptions.poll_incoming` (re-read after a
    reload), once per account (the main one and each site's own), each with its cursor."""
    task_status.started()
    quiet_until: dict[str | None, float] = {}
    while True:
        interval = services.config.subscriptions.poll_incoming
        # the first poll waits an interval too: startup belongs to the messages waiting to go
        await trio.sleep(interval if interval is not None else 60.0)
        if interval is None:
            continue
        for account in accounts(services):
            client = account_client(services, account)
            if client is None or trio.current_time() < quiet_until.get(account, 0.0):
                continue
            name = f"site {account}'s BSG account" if account else "the BSG account"
            try:
                count = await poll_once(services, client, account)
                if count:
                    log.info("incoming SMS (%s): %d new", name, count)
            except BsgError as exc:
                if exc.code == TWO_WAY_OFF:
                    log.warning("incoming SMS: 2-way is not active on %s (%s); asking again in an hour "
                                "(set subscriptions.poll_incoming: off to stop asking)", name, exc.description)
                    quiet_until[account] = trio.current_time() + 3600
                else:
                    log.info("incoming SMS not read (%s): %s", name, exc)


async def poll_once(services: Services, client: BsgClient, account: str | None = None) -> int:
    """One poll of one account (None: the main one): journal what is new; the number of
    new events. Each account has its own cursor."""
    now = services.clock.now().astimezone(timezone.utc)
    cursor_key = CURSOR if account is None else (CURSOR[0], f"{CURSOR[1]}:{account}")
    stored = await services.db(services.store.get_cursor, *cursor_key)
    since = datetime.fromisoformat(stored) if stored else now - FIRST_LOOK_BACK
    items = await client.incoming((since - OVERLAP).strftime(BSG_TIME),
                                  (now + timedelta(minutes=1)).strftime(BSG_TIME))
    site = _account_site(services, account)
    events = []
    for item in items:
        try:
            event = sms_event(item, site, now)
            if account is not None:      # another account: BSG's ids are its own namespace
                event = dataclasses.replace(event, id=f"sms:{account}:{event.id.removeprefix('sms:')}")
            events.append(event)
        except EventError as exc:
            log.warning("incoming SMS %s skipped: %s", item.get("id"), exc)
    newest = max([since, *(e.time for e in events)])
    cursor = (*cursor_key, newest.isoformat())
    accepted = await services.accept(events, "bsg-incoming", cursor)
    return sum(1 for _, new in accepted if new)
