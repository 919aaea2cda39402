"""BSG's wire format, as the client reads and writes it: error codes and what each means for a
message (`Kind`), the values a send or a look-up gives back (`SendResult`, `Status` with
its `AltRoute`, `Balance`), the errors of a whole request, and the parsing of BSG's varied
answers (see shared/spec/BSG-API.md). No I/O here: engine/bsg/client.py does the requests.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, Callable, Iterable, Mapping, Sequence

import httpx

from herald.engine.config import Secret
from herald.engine.errors import HeraldError

MAX_RECIPIENTS = 50          # per request: the docs say 50, the spec 1000; we send 50

FINAL_SUCCESS = frozenset({"delivered", "read"})
FINAL_FAILURE = frozenset({"expired", "undeliverable", "rejected", "failed", "deleted",
                           "not_viber_user"})

# (method, path, request_json, status_code, response_json, seconds); status_code and
# response_json are None when no answer came; response_json is the text (cut to 2000
# characters) when the body is not JSON.
OnExchange = Callable[[str, str, Any, "int | None", Any, float], None]


# --------------------------------------------------------------------------- classification

class Kind(str, Enum):
    OK = "ok"
    RETRY = "retry"          # try again later, with backoff
    FATAL = "fatal"          # never retry this message
    OPERATOR = "operator"    # never retried; the admin must act (funds, key, tariff)
    DUPLICATE = "duplicate"  # BSG already has this reference: look it up instead

    def __str__(self) -> str:
        return self.value


DESCRIPTIONS: dict[int, str] = {
    0: "ok", 1: "invalid API key", 2: "account blocked", 3: "not enough parameters",
    4: "unknown method", 5: "unknown error", 6: "tariff does not exist",
    7: "invalid parameters", 8: "not enough funds", 9: "tariff inactive",
    10: "invalid send time", 11: "too many messages at once", 12: "batch too large",
    20: "SMS not found", 21: "invalid phone", 22: "reference missing",
    23: "reference already used", 24: "invalid payload", 25: "invalid originator",
    26: "text empty or too long", 27: "invalid reference", 28: "invalid validity",
    29: "invalid task id", 30: "task not found", 31: "phone repeated in request",
    32: "sender not allowed", 33: "direction not allowed", 35: "2-way not active",
    36: "wrong 2-way sender", 40: "Viber message not found", 41: "invalid phone (Viber)",
    43: "reference already used (Viber)", 44: "invalid payload (Viber)",
    45: "Viber sender not registered", 46: "Viber text empty or too long",
    47: "invalid reference (Viber)", 48: "invalid validity (Viber)",
    49: "invalid Viber options", 51: "phone repeated (Viber)",
}

_RETRY_CODES = frozenset({5, 11})
_DUPLICATE_CODES = frozenset({23, 43})
_OPERATOR_CODES = frozenset({1, 2, 6, 8, 9})
_NOT_FOUND_CODES = frozenset({20, 40})

OPERATOR_HINTS: dict[int, str] = {
    1: "check bsg.api_key in the config",
    2: "the BSG account is blocked — contact BSG support",
    6: "the tariff does not exist — check the tariff in the BSG account",
    8: "top up the account",
    9: "the tariff is inactive — activate it in the BSG account",
}


def classify(code: int | None, http_status: int | None = None) -> Kind:
    """The Kind of a BSG answer: its error code and/or the HTTP status.

    HTTP 429 and 5xx are RETRY whatever the body says. Then a non-zero code decides:
    5, 11 → RETRY; 23, 43 → DUPLICATE; 1, 2, 6, 8, 9 → OPERATOR; every other code,
    known or not → FATAL. With no code: HTTP 2xx (or none) → OK, 401/403 → OPERATOR,
    408 → RETRY, any other HTTP status (404: wrong URL) → FATAL.
    """
    if http_status is not None and (http_status == 429 or http_status >= 500):
        return Kind.RETRY
    if code:
        if code in _RETRY_CODES:
            return Kind.RETRY
        if code in _DUPLICATE_CODES:
            return Kind.DUPLICATE
        if code in _OPERATOR_CODES:
            return Kind.OPERATOR
        return Kind.FATAL
    if http_status is None or 200 <= http_status < 300:
        return Kind.OK
    if http_status in (401, 403):
        return Kind.OPERATOR
    if http_status == 408:
        return Kind.RETRY
    return Kind.FATAL


def describe(code: int) -> str:
    """Our words for a BSG error code ("not enough funds")."""
    return DESCRIPTIONS.get(code, f"unknown error code {code}")


# --------------------------------------------------------------------------- values

@dataclass(frozen=True, slots=True)
class SmsItem:
    msisdn: str
    body: str
    originator: str
    reference: str


@dataclass(frozen=True, slots=True)
class ViberItem:
    msisdn: str
    text: str
    alpha_name: str
    reference: str
    alt_sms_originator: str | None = None   # with it: SMS fallback when Viber fails
    alt_sms_text: str | None = None         # None: the Viber text
    is_promotional: bool = False


@dataclass(frozen=True, slots=True)
class SendResult:
    """What became of one item. `code` is BSG's error code (0 when BSG gave none);
    `http_status` is the HTTP status of the request (None: no answer);
    `unavailable` is True when BSG could not be reached (network error, timeout);
    `uncertain` is True when BSG may have taken the item although no success came back
    (a timeout or a dropped connection after the request was sent, HTTP 5xx, an answer
    that is not JSON): the reference must be looked up there before sending it anywhere else."""

    reference: str
    kind: Kind
    id: str | None = None
    price: Decimal | None = None
    currency: str | None = None
    code: int = 0
    description: str = ""
    http_status: int | None = None
    unavailable: bool = False
    uncertain: bool = False

    @property
    def ok(self) -> bool:
        return self.kind is Kind.OK


def _is_final(status: str) -> bool:
    return status in FINAL_SUCCESS or status in FINAL_FAILURE


@dataclass(frozen=True, slots=True)
class AltRoute:
    """The fallback of a Viber message (an SMS with its own id and status).

    Only the wire shape of provider omni (`omni: provider`); what a fallback means for a
    message is decided in engine/delivery/omni.py."""

    channel: str
    id: str | None
    status: str
    price: Decimal | None = None

    @property
    def final(self) -> bool:
        return _is_final(self.status)

    @property
    def success(self) -> bool:
        return self.status in FINAL_SUCCESS


@dataclass(frozen=True, slots=True)
class Status:
    """A message's delivery status. `final` and `success` follow BSG-API.md: delivered
    and read are final successes; expired, undeliverable, rejected, failed, deleted and
    not_viber_user final failures; anything else is pending. time_* are BSG's text
    (`YYYY-MM-DD HH:MM:SS`, assumed UTC)."""

    reference: str | None
    id: str | None
    status: str
    final: bool
    success: bool
    price: Decimal | None
    currency: str | None
    alt_route: tuple[AltRoute, ...] = ()
    msisdn: str | None = None
    time_in: str | None = None
    time_sent: str | None = None
    time_dr: str | None = None

    @property
    def pending(self) -> bool:
        return not self.final


@dataclass(frozen=True, slots=True)
class Balance:
    amount: Decimal          # may be negative (credit)
    currency: str
    limit: Decimal | None    # the credit limit, when BSG gives one


# --------------------------------------------------------------------------- errors

class BsgError(HeraldError):
    """A whole request failed: a top-level BSG error, an HTTP error, a body that is not
    the JSON expected. `kind` says what to do about it."""

    def __init__(self, message: str, *, code: int = 0, description: str = "",
                 kind: Kind = Kind.FATAL, http_status: int | None = None,
                 retry_after: float | None = None):
        self.code = code
        self.description = description
        self.kind = kind
        self.http_status = http_status
        self.retry_after = retry_after
        super().__init__(message)


class BsgUnavailable(BsgError):
    """BSG could not be reached: network error, timeout, connection refused. Always
    RETRY. From a send, `.results` holds one SendResult per item given (the requests
    made before the failure keep their real results; the rest are RETRY)."""

    def __init__(self, message: str, *, results: Sequence[SendResult] = (), reached: bool = True):
        super().__init__(message, kind=Kind.RETRY, description=message)
        self.results: list[SendResult] = list(results)
        # False only when the request certainly never reached BSG (connection refused,
        # no route, DNS): then nothing it carried can have been taken
        self.reached = reached


# --------------------------------------------------------------------------- helpers

_SECRET_KEYS = re.compile(r"(api[-_]?key|apikey|token|secret|password|passwd|authorization"
                          r"|x-api-key|^key$)", re.IGNORECASE)


def redact(obj: Any, secrets: Iterable[str | Secret] = ()) -> Any:
    """A deep copy of a request/response dict (or list) safe for traces: values under
    key-, token-, password-like keys become "****", and every occurrence of the given
    secret values inside strings is replaced too. Secret objects become "****"."""
    values = [s.reveal() if isinstance(s, Secret) else s for s in secrets]
    values = sorted((v for v in values if v), key=len, reverse=True)

    def walk(value: Any) -> Any:
        if isinstance(value, Secret):
            return "****"
        if isinstance(value, Mapping):
            return {k: ("****" if isinstance(k, str) and _SECRET_KEYS.search(k) and value[k] not in (None, "")
                        else walk(v)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, str):
            for s in values:
                if s in value:
                    value = value.replace(s, "****")
            return value
        return value

    return walk(obj)


def _int(value: Any, default: int = 0) -> int:
    """BSG's numbers come as ints or strings ("0")."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(Decimal(str(value).strip()))
    except (InvalidOperation, ValueError):
        return -1   # not a number: an unknown code, so FATAL


def _money(value: Any) -> Decimal | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        d = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _code(body: Mapping[str, Any]) -> int | None:
    """The error code of a dict, None when it has none."""
    if "error" not in body:
        return None
    return _int(body.get("error"))


def _description(body: Mapping[str, Any], code: int) -> str:
    d = body.get("errorDescription") or body.get("error_description") or body.get("message")
    return str(d) if d else describe(code)


def _status_name(value: Any) -> str:
    return str(value).strip().lower() if value not in (None, "") else "unknown"


def parse_status(data: Mapping[str, Any]) -> Status:
    """A Status from BSG's status shape (a status look-up, or a delivery-report POST).
    Accepts `{"result": {...}}` around it too."""
    inner = data.get("result")
    if isinstance(inner, Mapping):
        data = inner
    elif isinstance(inner, list) and inner and isinstance(inner[0], Mapping):
        data = inner[0]
    status = _status_name(data.get("status"))
    alt: list[AltRoute] = []
    raw_alt = data.get("alt_route")
    if isinstance(raw_alt, Mapping):
        raw_alt = [raw_alt]
    if isinstance(raw_alt, list):
        for a in raw_alt:
            if isinstance(a, Mapping):
                alt.append(AltRoute(channel=str(a.get("channel") or "sms"), id=_text(a.get("id")),
                                    status=_status_name(a.get("status")), price=_money(a.get("price"))))
    return Status(
        reference=_text(data.get("reference")), id=_text(data.get("id")), status=status,
        final=_is_final(status), success=status in FINAL_SUCCESS,
        price=_money(data.get("price")), currency=_text(data.get("currency")),
        alt_route=tuple(alt), msisdn=_text(data.get("msisdn")),
        time_in=_text(data.get("time_in")), time_sent=_text(data.get("time_sent")),
        time_dr=_text(data.get("time_dr")),
    )


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _chunks(items: Sequence[Any], key: Callable[[Any], str]) -> list[list[int]]:
    """Split indexes into lists of at most MAX_RECIPIENTS with no key (phone) twice."""
    out: list[list[int]] = []
    seen: list[set[str]] = []
    for i, item in enumerate(items):
        k = key(item)
        for chunk, keys in zip(out, seen):
            if len(chunk) < MAX_RECIPIENTS and k not in keys:
                chunk.append(i)
                keys.add(k)
                break
        else:
            out.append([i])
            seen.append({k})
    return out


def _msisdn(value: str) -> str:
    """BSG wants digits only: drop a leading +, spaces, dashes and brackets."""
    return re.sub(r"[\s\-()]", "", value).lstrip("+")


# --------------------------------------------------------------------------- the answer

@dataclass
class _Answer:
    """One HTTP exchange's outcome."""

    status_code: int
    body: Any                 # parsed JSON, or None when the body is not JSON
    text: str
    retry_after: float | None = None

    @property
    def is_json_object(self) -> bool:
        return isinstance(self.body, dict)


# --------------------------------------------------------------------------- request and result bodies

def sms_requests(group: list[SmsItem], indexes: list[int],
                 validity: int | None) -> list[tuple[list[int], dict[str, Any]]]:
    """The request for one chunk of SMS: "phone" (one), "phones" (one body and originator)
    or "individual"."""
    extra: dict[str, Any] = {} if validity is None else {"validity": validity}
    if len(group) == 1:
        it = group[0]
        return [(indexes, {"destination": "phone", "msisdn": _msisdn(it.msisdn),
                           "originator": it.originator, "body": it.body,
                           "reference": it.reference, **extra})]
    if len({(it.body, it.originator) for it in group}) == 1:
        return [(indexes, {"destination": "phones",
                           "phones": [{"msisdn": _msisdn(it.msisdn), "reference": it.reference}
                                      for it in group],
                           "originator": group[0].originator, "body": group[0].body,
                           **extra})]
    return [(indexes, {"destination": "individual",
                       "phones": [{"msisdn": _msisdn(it.msisdn), "body": it.body,
                                   "originator": it.originator, "reference": it.reference}
                                  for it in group],
                       **extra})]


def viber_request(group: list[ViberItem], validity: int | None) -> dict[str, Any]:
    """The request for one chunk of Viber messages, grouped by text, sender and alt_route (the
    SMS fallback's wire shape; whether a message carries one: engine/delivery/omni.py)."""
    messages: dict[tuple, dict[str, Any]] = {}
    for it in group:
        alt = ((it.alt_sms_originator, it.alt_sms_text if it.alt_sms_text is not None else it.text)
               if it.alt_sms_originator else None)
        key = (it.text, it.alpha_name, alt, bool(it.is_promotional))
        message = messages.get(key)
        if message is None:
            message = {"to": [], "text": it.text, "alpha_name": it.alpha_name,
                       "is_promotional": bool(it.is_promotional)}
            if alt:
                message["options"] = {"viber": {"alt_route": {"originator": alt[0],
                                                              "text": alt[1]}}}
            messages[key] = message
        message["to"].append({"msisdn": _msisdn(it.msisdn), "reference": it.reference})
    payload: dict[str, Any] = {"messages": list(messages.values())}
    if validity is not None:
        payload["validity"] = validity
    return payload


def item_result(reference: str, entry: Mapping[str, Any], http: int) -> SendResult:
    """One item's SendResult from its entry in a send answer."""
    code = _code(entry) or 0
    kind = classify(code)
    return SendResult(
        reference=reference, kind=kind, id=_text(entry.get("id")),
        price=_money(entry.get("price")), currency=_text(entry.get("currency")),
        code=code, description=_description(entry, code) if code else "",
        http_status=http,
    )
