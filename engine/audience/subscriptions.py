"""Subscription lists: joining with a confirmation code, leaving by web, CLI and SMS.

    POST /subscriptions {phone, list}      → pending, a code; `subscription.created`
                                             (rules/subscriptions.rules sends the code by SMS)
    POST /subscriptions/confirm {phone, list, code}
                                           → confirmed; `subscription.confirmed`
    DELETE /subscriptions {phone, list?}   → cancelled; `subscription.cancelled` per list
                                             (no list: every list, and the opt-out list)

Guards against SMS pumping (someone making Herald text premium numbers for them,
docs/subscriptions.md "Threat: SMS pumping"): the list must be configured; the number
must be a mobile one (by its line type) of a country allowed for the site; a list may ask
for a CAPTCHA token, checked by a verifier (fail closed); code requests are limited per
client address (the connection's, engine/helpers/client_address.py), per phone, per country
calling code and in total (sliding windows kept in the store, so a restart does not reset
them); a code takes a few wrong guesses and then is void, and it expires. Every refusal
is one log line (the number masked) and a count in GET /health. A confirmed subscription
or an unsubscribe happens at most once.

The opt-out list (`unsubscribe PATH from "*"`, e.g. the shipped STOP rule) is honoured by
every campaign and by `subscribers "LIST"`; confirming a new subscription is fresh consent
and takes the number off it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

import httpx
import phonenumbers
import trio

from herald.engine.config.subscriptions import OTHER_COUNTRIES
from herald.engine.errors import SubscriptionError, did_you_mean
from herald.engine.helpers.client_address import limit_key
from herald.engine.events import Event
from herald.engine.helpers.phones import describe_type, mask_phone, normalize_phone, number_type

log = logging.getLogger("herald.subscriptions")

ALL_LISTS = "*"           # `unsubscribe PATH from "*"`: every list, and the opt-out list
PROOF_FIELD = "captcha"   # the request field that carries the CAPTCHA token
PROOF_MAX = 4096          # bytes of a token (Turnstile's are at most 2,048)
PROOF_RETRY = 30          # seconds: Retry-After when the verifier cannot be asked
TOTAL_KEY = "codes:all"   # the rate_hits key of the overall cap (and of /health's count)


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
        raise SubscriptionError(400, "phone is required (a phone number, e.g. \"+79001234567\")", "/phone",
                                reason="invalid_phone")
    phone = normalize_phone(raw)
    if not phone.ok:
        raise SubscriptionError(400, f"phone: {phone.error}", "/phone", reason="invalid_phone")
    return phone.e164


def _list(payload: Mapping, config, *, required: bool = True) -> str | None:
    lists = config.subscriptions.lists
    name = payload.get("list")
    if name is None and not required:
        return None
    if not isinstance(name, str) or not name:
        known = ", ".join(lists) or "none are configured (subscriptions.lists)"
        raise SubscriptionError(400, f"list is required; lists: {known}", "/list", reason="unknown_list")
    if name not in lists:
        hint = did_you_mean(name, tuple(lists)) or "lists: " + (", ".join(lists) or "none are configured")
        raise SubscriptionError(400 if lists else 404, f'unknown list "{name}" ({hint})', "/list",
                                reason="unknown_list")
    return name


def _site(payload: Mapping, config) -> str:
    site = payload.get("site", next(iter(config.sites)))
    if not isinstance(site, str) or site not in config.sites:
        raise SubscriptionError(400, f"unknown site {site!r}", "/site")
    return site


def parse_subscribe(payload: Any, config) -> Request:
    body = _object(payload, "{phone, list, site?, email?, captcha?}")
    phone, name, site = _phone(body), _list(body, config), _site(body, config)
    email = body.get("email")
    if email is not None and (not isinstance(email, str) or "@" not in email):
        raise SubscriptionError(400, "email must be an e-mail address", "/email")
    allowed = config.subscriptions.countries.get(site)
    if allowed:
        code = phonenumbers.parse(phone).country_code
        if code not in allowed:
            raise SubscriptionError(403, f"numbers of country code +{code} cannot subscribe on site {site} "
                                         f"(allowed: {', '.join('+%d' % c for c in allowed)})", "/phone",
                                    reason="country")
    kind = number_type(phone)
    if kind not in config.subscriptions.number_types:
        # Premium-rate, shared-cost and toll-free numbers are what SMS pumping targets; a
        # landline cannot read the code anyway.
        raise SubscriptionError(400, f"phone: {describe_type(kind)} cannot get the code by SMS: give a mobile "
                                     "number", "/phone", reason="number_type")
    return Request(phone, name, site, email)


# ---- the proof step (a CAPTCHA token checked by the configured verifier) ----------------

def needs_proof(config, list_name: str) -> bool:
    proof = config.subscriptions.proof
    return proof is not None and list_name in proof.lists


def proof_token(payload: Mapping) -> str:
    token = payload.get(PROOF_FIELD)
    if not isinstance(token, str) or not token.strip():
        raise SubscriptionError(400, f"this list asks for a CAPTCHA: send the token of your CAPTCHA widget as "
                                     f"{PROOF_FIELD}", f"/{PROOF_FIELD}", reason="proof_missing")
    if len(token.encode("utf-8", "replace")) > PROOF_MAX:
        raise SubscriptionError(400, f"{PROOF_FIELD} is over {PROOF_MAX} bytes: not a CAPTCHA token",
                                f"/{PROOF_FIELD}", reason="proof_failed")
    return token


def _unavailable(why: str) -> SubscriptionError:
    log.error("CAPTCHA verifier: %s; code requests to lists with a proof step are refused (503) until "
              "it answers", why)
    return SubscriptionError(503, "the CAPTCHA verifier cannot be asked right now; try again in a minute", None,
                             reason="proof_unavailable", retry_after=PROOF_RETRY)


async def verify_proof(proof, token: str, client: str) -> None:
    """Ask the verifier siteverify-style (form: secret, response, remoteip; answer:
    {"success": bool, "error-codes": [...]}). Fails closed: no clear yes is a refusal."""
    form = {"secret": proof.secret.reveal(), "response": token, "remoteip": client}
    answer = None
    with trio.move_on_after(proof.timeout):
        try:
            async with httpx.AsyncClient(timeout=proof.timeout) as http:
                answer = await http.post(proof.url, data=form)
        except httpx.HTTPError as exc:
            raise _unavailable(f"{proof.url}: {type(exc).__name__}") from exc
    if answer is None:
        raise _unavailable(f"{proof.url}: no answer within {proof.timeout:g} s")
    try:
        result = answer.json() if answer.status_code == 200 else None
    except ValueError:
        result = None
    if not isinstance(result, dict) or not isinstance(result.get("success"), bool):
        raise _unavailable(f"{proof.url} answered HTTP {answer.status_code} without a JSON success")
    errors = [str(e)[:60] for e in result.get("error-codes") or [] if isinstance(e, str)][:5]
    if any(e.endswith("-input-secret") for e in errors):
        raise _unavailable(f"{proof.url} says the secret is wrong ({', '.join(errors)}): check "
                           "subscriptions.proof.secret")
    if not result["success"]:
        raise SubscriptionError(403, "the CAPTCHA was not solved (or the token was used already): solve it "
                                     "again" + (f" ({', '.join(errors)})" if errors else ""), f"/{PROOF_FIELD}",
                                reason="proof_failed")


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

def _limits(settings, req: Request, client: str) -> list[tuple[str, str, tuple[int, float], str]]:
    """(name, rate_hits key, rate, words) of each cap a code request counts against."""
    code = phonenumbers.parse(req.phone).country_code
    out = [("per_ip", f"ip:{limit_key(client)}", settings.per_ip, "from your address"),
           ("per_phone", f"phone:{req.phone}", settings.per_phone, "for this number")]
    country = settings.per_country.get(str(code)) or settings.per_country.get(OTHER_COUNTRIES)
    if country is not None:
        out.append(("per_country", f"country:{code}", country, f"for numbers of +{code}"))
    return out + [("total", TOTAL_KEY, settings.total, "in total (for everyone)")]


def _limited(store, name: str, key: str, rate: tuple[int, float], what: str, now: datetime) -> SubscriptionError:
    count, period = rate
    wait = store.rate_window(key, now, period)[1]
    wait = max(1, math.ceil(wait if wait is not None else period))
    return SubscriptionError(429, f"too many confirmation codes requested {what}: at most {count} per "
                                  f"{_period(period)}; try again in {_wait(wait)}", "",
                             reason=name, limit=name, retry_after=wait)


def peek_limits(store, config, req: Request, client: str, now: datetime) -> None:
    """The 429 `subscribe` would answer, counting nothing: asked before the CAPTCHA verifier,
    so that a flood over a limit does not become a flood of verifier calls."""
    for name, key, (count, period), what in _limits(config.subscriptions, req, client):
        if store.rate_window(key, now, period)[0] >= count:
            raise _limited(store, name, key, (count, period), what, now)


def subscribe(store, config, req: Request, client: str, now: datetime) -> tuple[int, dict]:
    """A code for (phone, list): (HTTP status, body). Raises SubscriptionError (429) over a
    limit; the transaction then rolls back, so a refused request counts against nothing."""
    settings = config.subscriptions
    with store.transaction():
        current = store.subscriber(req.list, req.phone)
        if current is not None and current["state"] == "confirmed":
            return 200, {"id": current["id"], "state": "confirmed", "list": req.list, "phone": req.phone}
        for name, key, (count, period), what in _limits(settings, req, client):
            if not store.rate_hit(key, now, count, period):
                raise _limited(store, name, key, (count, period), what, now)
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


def _wait(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    if minutes % 60 == 0:
        return f"{minutes // 60} hour{'s' if minutes != 60 else ''}"
    if minutes > 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


# ---- refusals in the logs and in GET /health -------------------------------------------

class Refusals:
    """Refused code requests since the daemon started, by reason (in memory: a count for
    GET /health, while each refusal is also one log line)."""

    def __init__(self) -> None:
        self.by_reason: Counter[str] = Counter()
        self._ip_noted = False

    def refused(self, exc: SubscriptionError, payload: Any, client: str) -> None:
        self.by_reason[exc.reason] += 1
        body = payload if isinstance(payload, Mapping) else {}
        # The message of an invalid number quotes it: leave the message out then.
        detail = "" if exc.reason == "invalid_phone" else f": {_safe(exc.message)}"
        log.warning("POST /subscriptions refused (%s, %d): phone %s, list %s, client %s%s", exc.reason, exc.status,
                    mask_phone(body.get("phone")), _shown(body.get("list")), client, detail)

    def note_ip_field(self, payload: Any) -> None:
        """Once per run: the body's `ip` no longer counts (docs/subscriptions.md)."""
        if not self._ip_noted and isinstance(payload, Mapping) and "ip" in payload:
            self._ip_noted = True
            log.warning("POST /subscriptions: the body's ip field is ignored; the per-address limit counts "
                        "the connection's address, or X-Forwarded-For from one of http.trusted_proxies")


def _safe(text: str) -> str:
    """Visitor-supplied text fit for a log line (a lone surrogate would break the handler)."""
    return text.encode("utf-8", "backslashreplace").decode()


def _shown(value: Any) -> str:
    return repr(_safe(value[:40])) if isinstance(value, str) else type(value).__name__


def health(store, config, refusals: Refusals, now: datetime) -> dict:
    """GET /health's `subscriptions`: refusals by reason, codes sent within the `total` window."""
    count, period = config.subscriptions.total
    return {"refused": dict(refusals.by_reason),
            "codes": {"sent": store.rate_window(TOTAL_KEY, now, period)[0], "limit": count,
                      "period": _period(period)}}


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
        from herald.engine.directory import Lookup, lookup

        base = lookup(self._directory, "subscribers", list_name)
        phones = list(dict.fromkeys([*base, *self._store.confirmed_subscribers(list_name)]))
        opted = self._store.opted_out(normalize_phone(p).e164 or p for p in phones)
        kept = [p for p in phones if (normalize_phone(p).e164 or p) not in opted]
        note = "; ".join(filter(None, [base.note, f"{len(phones) - len(kept)} opted out" if opted else ""]))
        return Lookup(kept, error="" if kept else base.error, note=note)

