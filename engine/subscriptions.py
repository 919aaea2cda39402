"""Subscription lists: joining with a confirmation code, leaving by web, CLI and SMS.

    POST /subscriptions {phone, list}      → pending, a code; `subscription.created`
                                             (rules/subscriptions.rules sends the code by SMS)
    POST /subscriptions/confirm {phone, list, code}
                                           → confirmed; `subscription.confirmed`
    DELETE /subscriptions {phone, list?}   → cancelled; `subscription.cancelled` per list
                                             (no list: every list, and the opt-out list)

Guards against SMS pumping (someone making Herald text premium numbers for them): the
list must be configured, the number's country must be allowed for the site, code
requests are limited per client address and per phone (sliding windows kept in the
store, so a restart does not reset them), a code takes a few wrong guesses and then is
void, and it expires. A confirmed subscription or an unsubscribe happens at most once.

The opt-out list (`unsubscribe PATH from "*"`, e.g. the shipped STOP rule) is honoured by
every campaign and by `subscribers "LIST"`; confirming a new subscription is fresh consent
and takes the number off it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

import phonenumbers

from engine.errors import HeraldError, did_you_mean
from engine.events import Event
from engine.phones import normalize_phone

ALL_LISTS = "*"           # `unsubscribe PATH from "*"`: every list, and the opt-out list


class SubscriptionError(HeraldError):
    """A request that cannot be served: an HTTP status, a message, a JSON pointer."""

    def __init__(self, status: int, message: str, pointer: str | None = None):
        super().__init__(message)
        self.status, self.message, self.pointer = status, message, pointer


# ---- config (called by engine/config.py with its reader, so errors are located) ----------

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|m|min|h|d)\s*$")
_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_rate(text: str) -> tuple[int, float] | None:
    """`5/h`, `3/10m`, `100/d` → (count, seconds); None when it is not one."""
    m = _RATE.match(text)
    if not m:
        return None
    return int(m.group(1)), float(int(m.group(2) or 1) * _UNIT[m.group(3)])


def parse_config(reader, node, sites: Mapping[str, Any]):
    from engine.config import SubscriptionsConfig

    reader.check_keys(node, reader.SUBSCRIPTIONS_KEYS, "subscriptions")
    c = lambda key: reader.child(node, key)  # noqa: E731
    defaults = SubscriptionsConfig()
    poll = c("poll_incoming")
    return SubscriptionsConfig(
        lists=_lists(reader, c("lists")),
        countries=_countries(reader, c("countries"), sites),
        per_ip=_rate(reader, c("per_ip"), defaults.per_ip),
        per_phone=_rate(reader, c("per_phone"), defaults.per_phone),
        code_attempts=reader.number(c("code_attempts"), defaults.code_attempts, what="a whole number of tries",
                                    integer=True, positive=True),
        code_lifetime=reader.duration(c("code_lifetime"), defaults.code_lifetime),
        code_length=reader.number(c("code_length"), defaults.code_length, what="a number of digits (4-10)",
                                  integer=True, positive=True, maximum=10),
        poll_incoming=None if poll is not None and poll.raw in (False, "off", 0) else
        reader.duration(poll, defaults.poll_incoming),
    )


def _lists(reader, v) -> dict[str, str]:
    if v is None or v.raw is None:
        return {}
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    if isinstance(v.raw, CommentedSeq):
        return {name: name for name in reader.str_list(v, (), what="list names")}
    if isinstance(v.raw, CommentedMap):
        out = {}
        for key in v.raw:
            item = reader.child(v, key)
            out[str(key)] = reader.string(item, str(key), what="a title for the list") or str(key)
        return out
    reader.error(f"{v.path}: expected list names ([news, offers]) or a mapping of name → title", v.loc)
    return {}


def _rate(reader, v, default: tuple[int, float]) -> tuple[int, float]:
    if v is None or v.raw is None:
        return default
    raw, origin = reader.resolve(v)
    rate = parse_rate(raw) if isinstance(raw, str) else None
    if rate is None or rate[0] < 1:
        reader.error(f"{v.path}: expected a rate such as 5/h or 3/10m, got {reader.what(raw, origin)}", v.loc,
                     "COUNT/PERIOD: at most COUNT code requests per PERIOD (s, m, h, d)")
        return default
    return rate


def _codes(reader, v) -> tuple[int, ...]:
    from ruamel.yaml.comments import CommentedSeq
    if not isinstance(v.raw, CommentedSeq):
        reader.error(f"{v.path}: expected a list of country calling codes, e.g. [7, 375]", v.loc)
        return ()
    out = []
    for item in reader.items(v):
        text = str(item.raw).strip().lstrip("+")
        if isinstance(item.raw, bool) or not text.isdigit() or not phonenumbers.region_codes_for_country_code(
                int(text)):
            reader.error(f"{item.path}: {item.raw!r} is not a country calling code", item.loc,
                         "e.g. 7 (Russia, Kazakhstan), 375 (Belarus), 380 (Ukraine)")
            continue
        out.append(int(text))
    return tuple(out)


def _countries(reader, v, sites: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """A list (every site) or a mapping site → list."""
    if v is None or v.raw is None:
        return {}
    from ruamel.yaml.comments import CommentedMap
    if not isinstance(v.raw, CommentedMap):
        codes = _codes(reader, v)
        return {site: codes for site in sites}
    out = {}
    for key in v.raw:
        item = reader.child(v, key)
        if sites and str(key) not in sites:
            reader.error(f'{v.path}: unknown site "{key}"', item.key_loc,
                         did_you_mean(str(key), tuple(sites)) or "configured sites: " + ", ".join(sites))
            continue
        out[str(key)] = _codes(reader, item)
    return out


# ---- the requests ------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    phone: str          # E.164
    list: str
    site: str
    email: str | None = None


def _object(payload: Any, shape: str) -> Mapping:
    if not isinstance(payload, Mapping):
        raise SubscriptionError(400, f"expected a JSON object: {shape}", "")
    return payload


def _phone(payload: Mapping) -> str:
    raw = payload.get("phone")
    if not isinstance(raw, str) or not raw.strip():
        raise SubscriptionError(400, "phone is required (a phone number, e.g. \"+79001234567\")", "/phone")
    phone = normalize_phone(raw)
    if not phone.ok:
        raise SubscriptionError(400, f"phone: {phone.error}", "/phone")
    return phone.e164


def _list(payload: Mapping, config, *, required: bool = True) -> str | None:
    lists = config.subscriptions.lists
    name = payload.get("list")
    if name is None and not required:
        return None
    if not isinstance(name, str) or not name:
        known = ", ".join(lists) or "none are configured (subscriptions.lists)"
        raise SubscriptionError(400, f"list is required; lists: {known}", "/list")
    if name not in lists:
        hint = did_you_mean(name, tuple(lists)) or "lists: " + (", ".join(lists) or "none are configured")
        raise SubscriptionError(400 if lists else 404, f'unknown list "{name}" ({hint})', "/list")
    return name


def _site(payload: Mapping, config) -> str:
    site = payload.get("site", next(iter(config.sites)))
    if not isinstance(site, str) or site not in config.sites:
        raise SubscriptionError(400, f"unknown site {site!r}", "/site")
    return site


def parse_subscribe(payload: Any, config) -> Request:
    body = _object(payload, "{phone, list, site?, email?}")
    phone, name, site = _phone(body), _list(body, config), _site(body, config)
    email = body.get("email")
    if email is not None and (not isinstance(email, str) or "@" not in email):
        raise SubscriptionError(400, "email must be an e-mail address", "/email")
    allowed = config.subscriptions.countries.get(site)
    if allowed:
        code = phonenumbers.parse(phone).country_code
        if code not in allowed:
            raise SubscriptionError(403, f"numbers of country code +{code} cannot subscribe on site {site} "
                                         f"(allowed: {', '.join('+%d' % c for c in allowed)})", "/phone")
    return Request(phone, name, site, email)


def hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def new_code(length: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(length))


def subscription_json(row: Mapping, code: str | None = None) -> dict:
    data = {"id": row["id"], "list": row["list"], "phone": row["phone"], "confirmed": row["state"] == "confirmed"}
    if row.get("email"):
        data["email"] = row["email"]
    if code is not None:
        data["confirm_code"] = code
    return data


def _event(kind: str, row: Mapping, n: int | str, now: datetime, code: str | None = None) -> Event:
    data = subscription_json(row, code)
    if kind == "created":                 # the subscription's date (#SUBSCRIPTION_DATE#): this request's
        data["date"] = now.isoformat()
    return Event(f"subscription.{kind}", {"subscription": data}, row["site"],
                 f"subscription:{row['id']}:{kind}:{n}", now)


# ---- in the database thread (one transaction each) --------------------------------------

def subscribe(store, config, req: Request, client: str, now: datetime) -> tuple[int, dict]:
    """A code for (phone, list): (HTTP status, body). Raises SubscriptionError (429) over a limit."""
    settings = config.subscriptions
    with store.transaction():
        current = store.subscriber(req.list, req.phone)
        if current is not None and current["state"] == "confirmed":
            return 200, {"id": current["id"], "state": "confirmed", "list": req.list, "phone": req.phone}
        for key, (count, period), what in ((f"ip:{client}", settings.per_ip, "from your address"),
                                           (f"phone:{req.phone}", settings.per_phone, "for this number")):
            if not store.rate_hit(key, now, count, period):
                raise SubscriptionError(429, f"too many confirmation codes requested {what}; "
                                             f"try again later (at most {count} per {_period(period)})", "")
        code = new_code(settings.code_length)
        expires = now + timedelta(seconds=settings.code_lifetime)
        row = store.put_pending_subscriber(req.list, req.phone, req.site, req.email, hash_code(code), expires)
        store.add_events([_event("created", row, row["codes_sent"], now, code)], "subscriptions")
    return 202, {"id": row["id"], "state": "pending", "list": req.list, "phone": req.phone,
                 "expires_at": expires.isoformat()}


def confirm(store, config, payload: Any, now: datetime) -> dict:
    body = _object(payload, "{phone, list, code}")
    phone, name = _phone(body), _list(body, config)
    code = body.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        code = str(code)
    if not isinstance(code, str) or not code.strip():
        raise SubscriptionError(400, "code is required (the code from the SMS)", "/code")
    with store.transaction():
        row = store.subscriber(name, phone)
        if row is None or row["state"] == "cancelled":
            raise SubscriptionError(404, f"{phone} has not asked to join {name!r}: POST /subscriptions first",
                                    "/phone")
        if row["state"] == "confirmed":
            return {"id": row["id"], "state": "confirmed", "list": name, "phone": phone}
        if row["code_hash"] is None:
            raise SubscriptionError(410, "this code is void after too many wrong tries; ask for a new one",
                                    "/code")
        if now.timestamp() > row["code_expires"]:
            raise SubscriptionError(410, "the code has expired; ask for a new one", "/code")
        if hmac.compare_digest(hash_code(code.strip()), row["code_hash"]):
            row = store.confirm_subscriber(row["id"], now)
            store.add_events([_event("confirmed", row, 1, now)], "subscriptions")
            return {"id": row["id"], "state": "confirmed", "list": name, "phone": phone}
        left = store.wrong_code(row["id"], config.subscriptions.code_attempts)   # committed: the try counts
    if left <= 0:
        raise SubscriptionError(429, "wrong code; that was the last try: ask for a new code", "/code")
    raise SubscriptionError(400, f"wrong code ({left} tr{'y' if left == 1 else 'ies'} left)", "/code")


def unsubscribe(store, config, payload: Any, now: datetime, source: str = "http") -> dict:
    body = _object(payload, "{phone, list?}")
    phone = _phone(body)
    name = _list(body, config, required=False)
    with store.transaction():
        lists = cancel(store, phone, name or ALL_LISTS, now, source)
    return {"phone": phone, "cancelled": lists, "opted_out": name is None}


def cancel(store, phone: str, list_name: str, now: datetime, source: str) -> list[str]:
    """Take `phone` off a list (or every list and onto the opt-out list: ALL_LISTS), with a
    `subscription.cancelled` event per list left. Joins the caller's transaction."""
    rows = store.cancel_subscribers(phone, None if list_name == ALL_LISTS else list_name, now)
    if list_name == ALL_LISTS:
        store.add_opt_out(phone, source, now)
    store.add_events([_event("cancelled", row, int(now.timestamp()), now) for row in rows], "subscriptions")
    return [row["list"] for row in rows]


def apply_rule_actions(store, actions, site: str, now: datetime) -> None:
    """A rule's `subscribe` / `unsubscribe` actions (RuleRun.subscriptions), in the
    transaction that records the rule run. A rule-made subscription is confirmed at once:
    the rule itself stands for the consent (e.g. `on subscription.confirmed`)."""
    for verb, phone, list_name in actions:
        if not phone.startswith("+"):
            continue                                 # not a number: the trace already says so
        if verb == "unsubscribe":
            cancel(store, phone, list_name, now, "rule")
        elif list_name != ALL_LISTS:
            store.put_confirmed_subscriber(list_name, phone, site, now)


def _period(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds:g} s"


# ---- `subscribers "LIST"`: the people file plus the store, minus the opt-out list --------

class SubscribedDirectory:
    """Wraps the configured directory: `subscribers(list)` adds the store's confirmed
    subscribers and leaves out opted-out numbers; everything else is the directory's."""

    def __init__(self, directory, store):
        self._directory, self._store = directory, store

    def __getattr__(self, name: str):
        return getattr(self._directory, name)

    def subscribers(self, list_name: str):
        from engine.directory import Lookup, lookup

        base = lookup(self._directory, "subscribers", list_name)
        phones = list(dict.fromkeys([*base, *self._store.confirmed_subscribers(list_name)]))
        opted = self._store.opted_out(normalize_phone(p).e164 or p for p in phones)
        kept = [p for p in phones if (normalize_phone(p).e164 or p) not in opted]
        note = "; ".join(filter(None, [base.note, f"{len(phones) - len(kept)} opted out" if opted else ""]))
        return Lookup(kept, error="" if kept else base.error, note=note)

