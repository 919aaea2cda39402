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
import re
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping
from urllib.parse import urlsplit

import httpx
import phonenumbers
import trio

from herald.engine.helpers.client_address import limit_key
from herald.engine.errors import HeraldError, did_you_mean
from herald.engine.events import Event
from herald.engine.helpers.phones import NUMBER_TYPES, describe_type, mask_phone, normalize_phone, number_type

log = logging.getLogger("herald.subscriptions")

ALL_LISTS = "*"           # `unsubscribe PATH from "*"`: every list, and the opt-out list
OTHER_COUNTRIES = "*"     # `per_country`: every calling code not named
PROOF_FIELD = "captcha"   # the request field that carries the CAPTCHA token
PROOF_MAX = 4096          # bytes of a token (Turnstile's are at most 2,048)
PROOF_RETRY = 30          # seconds: Retry-After when the verifier cannot be asked
TOTAL_KEY = "codes:all"   # the rate_hits key of the overall cap (and of /health's count)


class SubscriptionError(HeraldError):
    """A request that cannot be served: an HTTP status, a message, a JSON pointer; `reason`
    names a refusal for the logs and /health, `limit` the cap that was hit, `retry_after`
    the seconds until asking again can succeed."""

    def __init__(self, status: int, message: str, pointer: str | None = None, *, reason: str = "invalid",
                 limit: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.pointer = status, message, pointer
        self.reason, self.limit, self.retry_after = reason, limit, retry_after

    def as_json(self) -> dict:
        body: dict[str, Any] = {"error": self.message, "reason": self.reason}
        if self.pointer is not None:
            body["pointer"] = self.pointer
        if self.limit is not None:
            body["limit"] = self.limit
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


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
    from herald.engine.config import SubscriptionsConfig

    reader.check_keys(node, reader.SUBSCRIPTIONS_KEYS, "subscriptions")
    c = lambda key: reader.child(node, key)  # noqa: E731
    defaults = SubscriptionsConfig()
    poll = c("poll_incoming")
    lists = _lists(reader, c("lists"))
    return SubscriptionsConfig(
        lists=lists,
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
        total=_rate(reader, c("total"), defaults.total),
        per_country=_per_country(reader, c("per_country"), defaults.per_country),
        number_types=_number_types(reader, c("number_types"), defaults.number_types),
        proof=_proof(reader, reader.section(node, "proof"), lists),
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


def _calling_code(text: str) -> int | None:
    text = text.strip().lstrip("+")
    if not text.isdigit() or not phonenumbers.region_codes_for_country_code(int(text)):
        return None
    return int(text)


def _per_country(reader, v, default: Mapping[str, tuple[int, float]]) -> dict[str, tuple[int, float]]:
    """`20/h` (each calling code) or `{7: 500/h, 375: 20/h, other: 10/h}`; unnamed codes keep
    the default unless `other` (or "*") says otherwise."""
    if v is None or v.raw is None:
        return dict(default)
    from ruamel.yaml.comments import CommentedMap
    if not isinstance(v.raw, CommentedMap):
        return {OTHER_COUNTRIES: _rate(reader, v, default[OTHER_COUNTRIES])}
    out = dict(default)
    for key in v.raw:
        item = reader.child(v, key)
        name = str(key).strip()
        code = None if isinstance(key, bool) or name in ("other", OTHER_COUNTRIES) else _calling_code(name)
        if code is None and name not in ("other", OTHER_COUNTRIES):
            reader.error(f"{v.path}: {key!r} is not a country calling code", item.key_loc,
                         "e.g. 7 (Russia, Kazakhstan), 375 (Belarus); `other` for the rest")
            continue
        out[str(code) if code is not None else OTHER_COUNTRIES] = _rate(reader, item, default[OTHER_COUNTRIES])
    return out


def _number_types(reader, v, default: tuple[str, ...]) -> tuple[str, ...]:
    if v is None or v.raw is None:
        return default
    from ruamel.yaml.comments import CommentedSeq
    if not isinstance(v.raw, CommentedSeq):
        reader.error(f"{v.path}: expected a list of number types, e.g. [{', '.join(default)}]", v.loc)
        return default
    known, out = tuple(NUMBER_TYPES), []
    for item in reader.items(v):
        name = str(item.raw).strip().lower()
        if name not in known:
            hint = did_you_mean(name, known)
            reader.error(f'{item.path}: unknown number type "{item.raw}"', item.loc,
                         (hint + "; " if hint else "") + "number types: " + ", ".join(known))
            continue
        out.append(name)
    if not out:
        reader.error(f"{v.path}: expected at least one number type, e.g. [mobile]", v.loc)
        return default
    return tuple(out)


PROOF_KEYS = ("url", "secret", "lists", "timeout")


def _proof(reader, node, lists: Mapping[str, str]):
    """`proof: {url, secret, lists?, timeout?}`: a CAPTCHA step for `lists` (default: all)."""
    from herald.engine.config import ProofConfig
    if node is None:
        return None
    reader.check_keys(node, PROOF_KEYS, "subscriptions.proof")
    c = lambda key: reader.child(node, key)  # noqa: E731
    url = reader.string(c("url"), "", what="the verifier's URL", allow_empty=False)
    parts = urlsplit(url)
    if c("url") is None or (url and (parts.scheme not in ("http", "https") or not parts.netloc)):
        reader.error(f"{node.path}.url: expected the verifier's http(s) URL", (c("url") or node).loc,
                     "e.g. https://challenges.cloudflare.com/turnstile/v0/siteverify")
    reported = len(reader.sink.items)
    secret = reader.secret(c("secret"))
    if secret is None and len(reader.sink.items) == reported:   # absent or empty: never a silent "no CAPTCHA"
        reader.error(f"{node.path}.secret: the verifier's secret key is required", (c("secret") or node).loc,
                     "secret: !env CAPTCHA_SECRET (set and not empty)")
    names = tuple(lists)
    v = c("lists")
    if v is not None:
        names = reader.str_list(v, names, what="list names")
        for name in names:
            if name not in lists:
                reader.error(f'{v.path}: unknown list "{name}"', v.loc,
                             did_you_mean(name, tuple(lists)) or "lists: " + (", ".join(lists) or "none"))
    return ProofConfig(url=url, secret=secret, lists=names, timeout=reader.duration(c("timeout"), 5.0)) \
        if secret is not None else None


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
        from herald.engine.audience.directory import Lookup, lookup

        base = lookup(self._directory, "subscribers", list_name)
        phones = list(dict.fromkeys([*base, *self._store.confirmed_subscribers(list_name)]))
        opted = self._store.opted_out(normalize_phone(p).e164 or p for p in phones)
        kept = [p for p in phones if (normalize_phone(p).e164 or p) not in opted]
        note = "; ".join(filter(None, [base.note, f"{len(phones) - len(kept)} opted out" if opted else ""]))
        return Lookup(kept, error="" if kept else base.error, note=note)

