"""The fake BSG's state (engine/bsg/fake.py serves it): the API's error codes, the final
status each number gets, faults, accepted messages and their statuses over time, delivery
reports still to post, incoming 2-way SMS, and the log of requests. The request handlers
that change it are engine/bsg/fake_api.py.
"""

from __future__ import annotations

import heapq
import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable

from herald.engine.errors import FakeBsgRejection as _Reject   # a whole-request error: HTTP 200 with `error`
from herald.engine.helpers.segments import GSM7, analyze

# Error code → description (BSG v1).
ERRORS: dict[int, str] = {
    0: "No errors",
    1: "Invalid API key",
    2: "Account blocked",
    3: "Not enough parameters",
    4: "Unknown method",
    5: "Unknown error",
    6: "Tariff does not exist",
    7: "Invalid parameters",
    8: "Not enough funds",
    9: "Tariff inactive",
    10: "Invalid send time",
    11: "Too many messages at once",
    12: "Batch too large",
    20: "SMS not found",
    21: "Invalid phone number",
    22: "Reference missing",
    23: "Reference already used",
    24: "Invalid payload",
    25: "Invalid originator",
    26: "Text empty or too long",
    27: "Invalid reference",
    28: "Invalid validity",
    29: "Invalid task id",
    30: "Task not found",
    31: "Phone repeated in request",
    32: "Sender not allowed",
    33: "Direction not allowed",
    35: "2-way not active",
    36: "Wrong 2-way sender",
    40: "Viber message not found",
    41: "Invalid phone number",
    43: "Reference already used",
    44: "Invalid payload",
    45: "Viber sender not registered",
    46: "Viber text empty or too long",
    47: "Invalid reference",
    48: "Invalid validity",
    49: "Invalid Viber options",
    51: "Phone repeated in request",
}

# Last two digits of the msisdn → final status, per channel. `None` means the
# message never becomes final (stays "sent"): for testing polling give-ups.
# Anything not listed is delivered.
OUTCOMES: dict[str, dict[str, str | None]] = {
    "00": {"sms": "undeliverable", "viber": "undeliverable"},
    "01": {"sms": "delivered", "viber": "not_viber_user"},
    "02": {"sms": "expired", "viber": "expired"},
    "03": {"sms": "rejected", "viber": "rejected"},
    "04": {"sms": "delivered", "viber": "read"},
    "05": {"sms": None, "viber": None},
}

# Viber final statuses after which an `alt_route` SMS is sent.
FALLBACK_ON = frozenset({"not_viber_user", "expired", "undeliverable"})

_FINAL = frozenset({"delivered", "read", "expired", "undeliverable", "rejected", "failed", "deleted",
                    "not_viber_user"})

FAULT_MODES = ("down", "5xx", "slow", "429", "error")

_SMS_LIMITS = {GSM7: 765}          # GSM-7 septets; UCS-2 code units below
_UCS2_LIMIT = 355
_VIBER_TEXT_LIMIT = 1000
_ALPHA_NAME_LIMIT = 14
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_REQUEST_LOG = 10_000           # newest API requests kept for /_fake/requests

_MSISDN = re.compile(r"\d{8,15}")
_REFERENCE = re.compile(r"[A-Za-z0-9]{1,32}")
_NUMERIC_SENDER = re.compile(r"\d{1,15}")
_ALPHA_SENDER = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ._&-]{1,11}")

# Marks requests that arrived over a real socket (set by `serve`), so "down" can
# drop the connection instead of raising into an in-process client.
_SOCKET_SCOPE_KEY = "herald.fakebsg.socket"

CALLBACK_TICK = 0.05            # seconds between looks for newly final messages (serve)
_CALLBACK_POSTS = 16            # delivery reports in flight at most

log = logging.getLogger("herald.fakebsg")


@dataclass
class Fault:
    """An injected fault; `count` is how many more requests it hits (None = until cleared)."""

    mode: str
    code: int = 5
    status: int = 503
    delay: float = 2.0
    count: int | None = None

    def as_json(self) -> dict:
        return {"mode": self.mode, "code": self.code, "status": self.status,
                "delay": self.delay, "count": self.count}


@dataclass
class _Message:
    id: str
    channel: str                 # "sms" | "viber"
    msisdn: str
    reference: str | None
    sender: str                  # originator (SMS) / alpha_name (Viber)
    text: str
    price: Decimal
    created: float               # clock() seconds
    outcome: str | None          # final status; None = never final
    parts: int = 1
    task_id: str | None = None
    alt_route: dict | None = None    # Viber: {"originator", "text"}
    fallback_id: str | None = None   # Viber: id of the alt-route SMS once sent
    fallback_for: str | None = None  # SMS: the Viber message it replaces


@dataclass
class _Task:
    id: str
    originator: str
    body: str
    message_ids: list[str] = field(default_factory=list)


@dataclass
class _Incoming:
    id: str
    msisdn: str
    sender: str
    body: str
    time: datetime


def _parse_style(style: str | Iterable[str]) -> tuple[str, bool]:
    """("nested"|"flat", strings?) from "flat", "flat+strings", ["nested", "strings"], …"""
    tokens = re.split(r"[+,\s]+", style) if isinstance(style, str) else list(style)
    tokens = [t.strip().lower() for t in tokens if t and t.strip()]
    unknown = [t for t in tokens if t not in ("nested", "flat", "strings", "numbers")]
    if unknown:
        raise ValueError(f"unknown response style {unknown[0]!r}: use nested, flat and/or strings")
    if "nested" in tokens and "flat" in tokens:
        raise ValueError("response style cannot be both nested and flat")
    if "strings" in tokens and "numbers" in tokens:
        raise ValueError("response style cannot be both strings and numbers")
    return ("flat" if "flat" in tokens else "nested"), "strings" in tokens


def _money(value: object) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValueError(f"not an amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    return amount


def _fmt_money(amount: Decimal) -> str:
    return f"{amount:.7f}"


def _as_msisdn(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and _MSISDN.fullmatch(value):
        return value
    return None


def _valid_reference(value: object) -> bool:
    return isinstance(value, str) and bool(_REFERENCE.fullmatch(value))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and value == "")


def _int_in(value: object, low: int, high: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return isinstance(value, int) and low <= value <= high


class FakeState:
    """The fake's state: accounts, messages, statuses, faults, delivery reports, what it was
    sent and asked. Not thread-safe (trio). `FakeBSG` (engine/bsg/fake_api.py) answers the
    API's requests on top of it."""

    def __init__(
        self,
        *,
        api_keys: set[str] | None = None,
        balance: Decimal | str | int = Decimal("100"),
        currency: str = "EUR",
        sms_price: Decimal | str = Decimal("0.02"),
        viber_price: Decimal | str = Decimal("0.015"),
        delivery_delay: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        viber_senders: set[str] | None = frozenset({"AdvInform", "BSG"}),
        sms_senders: set[str] | None = None,
        response_style: str | Iterable[str] = "nested",
        max_batch: int = 50,
        callback_url: str | None = None,
    ):
        self._api_keys = frozenset(api_keys) if api_keys is not None else None
        self._initial_balance = _money(balance)
        self.currency = currency
        self.sms_price = _money(sms_price)
        self.viber_price = _money(viber_price)
        self.delivery_delay = max(0.0, float(delivery_delay))
        self.clock = clock
        self.viber_senders = frozenset(viber_senders) if viber_senders is not None else None
        self.sms_senders = frozenset(sms_senders) if sms_senders is not None else None
        self.max_batch = max_batch
        self.callback_url = callback_url or None
        self._initial_style = response_style
        self.response_style = response_style
        self.reset()

    def __repr__(self) -> str:  # never shows the keys
        keys = "any" if self._api_keys is None else f"{len(self._api_keys)} key(s)"
        return (f"<FakeBSG keys={keys} balance={self.balance} {self.currency} "
                f"messages={len(self._messages)} style={self.response_style}>")

    # -- configuration -------------------------------------------------------

    @property
    def response_style(self) -> str:
        return self._shape + ("+strings" if self._strings else "")

    @response_style.setter
    def response_style(self, style: str | Iterable[str]) -> None:
        self._shape, self._strings = _parse_style(style)

    def check_key(self, key: str | None) -> bool:
        if not key:
            return False
        return self._api_keys is None or key in self._api_keys

    def reset(self) -> None:
        """Forget every message, task, incoming SMS, fault and request; restore balance and style."""
        self.balance: Decimal = self._initial_balance
        self.response_style = self._initial_style
        self._messages: dict[str, _Message] = {}
        self._refs: dict[str, dict[str, str]] = {"sms": {}, "viber": {}}
        self._tasks: dict[str, _Task] = {}
        self._incoming: list[_Incoming] = []
        self._requests: deque[dict] = deque(maxlen=_REQUEST_LOG)
        self._fault: Fault | None = None
        self._seq = 0
        self._task_seq = 0
        # delivery reports still to post: a heap of (due, seq, message id), so each
        # tick costs O(newly final) rather than a scan of every message
        self._callbacks: list[tuple[float, int, str]] = []
        self._mono0 = self.clock()
        self._wall0 = datetime.now(timezone.utc).replace(microsecond=0)

    def set_balance(self, amount: Decimal | str | int) -> None:
        self.balance = _money(amount)

    # -- faults --------------------------------------------------------------

    def set_fault(self, mode: str, *, code: int = 5, status: int | None = None,
                  delay: float = 2.0, count: int | None = None) -> Fault:
        """Make the next `count` API requests (all, when None) fail in `mode`."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}: use one of {', '.join(FAULT_MODES)}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer (omit it for 'until cleared')")
        if isinstance(code, bool) or not isinstance(code, int) or code < 1:
            raise ValueError("code must be a positive integer error code")
        if status is None:
            status = 503
        if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
            raise ValueError("status must be an HTTP 5xx status")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
            raise ValueError("delay must be a non-negative number of seconds")
        self._fault = Fault(mode, code, status, float(delay), count)
        return self._fault

    def clear_faults(self) -> None:
        self._fault = None

    @property
    def fault(self) -> Fault | None:
        return self._fault

    def _take_fault(self) -> Fault | None:
        fault = self._fault
        if fault is None:
            return None
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self._fault = None
        return fault

    # -- time and statuses ---------------------------------------------------

    def now(self) -> float:
        return self.clock()

    def wall(self, mono: float) -> datetime:
        """The UTC wall time of a clock() reading."""
        return self._wall0 + timedelta(seconds=mono - self._mono0)

    def _fmt_time(self, mono: float | None) -> str | None:
        return None if mono is None else self.wall(mono).strftime(_TIME_FORMAT)

    def _status(self, m: _Message, now: float) -> str:
        age = now - m.created
        if age >= self.delivery_delay:
            return m.outcome or "sent"
        if age >= self.delivery_delay / 2:
            return "sent"
        return "new"

    def advance(self) -> None:
        """Send the alt-route SMS of every Viber message that has failed by now."""
        now = self.now()
        for m in list(self._messages.values()):
            self._fallback(m, now)

    def _fallback(self, m: _Message, now: float) -> None:
        """Send `m`'s alt-route SMS if it is a Viber message that has failed by `now`."""
        if (m.channel == "viber" and m.alt_route and m.fallback_id is None
                and m.outcome in FALLBACK_ON and now - m.created >= self.delivery_delay):
            text = m.alt_route["text"]
            parts = max(1, analyze(text).parts)
            sms = self._add(
                "sms", m.msisdn, None, m.alt_route["originator"], text,
                self.sms_price * parts, created=m.created + self.delivery_delay, parts=parts,
            )
            sms.fallback_for = m.id
            m.fallback_id = sms.id

    # -- delivery reports (callback_url) --------------------------------------

    def _schedule_callback(self, m: _Message) -> None:
        """Queue `m`'s delivery report for when it (and its alt-route SMS) is final."""
        if not self.callback_url or m.reference is None or m.outcome is None:
            return
        due = m.created + self.delivery_delay
        if m.channel == "viber" and m.alt_route and m.outcome in FALLBACK_ON:
            tail = m.msisdn[-2:]
            if (OUTCOMES[tail]["sms"] if tail in OUTCOMES else "delivered") is None:
                return                                  # the fallback SMS never becomes final
            due += self.delivery_delay                  # report once the fallback is final too
        heapq.heappush(self._callbacks, (due, int(m.id), m.id))

    def due_callbacks(self) -> list[dict]:
        """Status JSON of every message that became final since the last call (each once)."""
        now = self.now()
        out: list[dict] = []
        later: list[tuple[float, int, str]] = []
        while self._callbacks and self._callbacks[0][0] <= now:
            entry = heapq.heappop(self._callbacks)
            m = self._messages.get(entry[2])
            if m is None:
                continue
            self._fallback(m, now)
            body = self._status_json(m)
            alt = body.get("alt_route") or []
            if body["status"] != m.outcome or any(a["status"] not in _FINAL for a in alt) or (
                    m.channel == "viber" and m.alt_route and m.outcome in FALLBACK_ON and not alt):
                later.append((now + 0.001, entry[1], entry[2]))     # clock rounding: not quite final yet
                continue
            out.append(self.render(body))
        for entry in later:
            heapq.heappush(self._callbacks, entry)
        return out

    def _add(self, channel: str, msisdn: str, reference: str | None, sender: str, text: str,
             price: Decimal, *, created: float | None = None, parts: int = 1,
             task_id: str | None = None, alt_route: dict | None = None) -> _Message:
        self._seq += 1
        tail = msisdn[-2:]
        outcome = OUTCOMES[tail][channel] if tail in OUTCOMES else "delivered"
        m = _Message(str(self._seq), channel, msisdn, reference, sender, text, price,
                     self.now() if created is None else created, outcome, parts, task_id, alt_route)
        self._messages[m.id] = m
        if reference is not None:
            self._refs[channel][reference] = m.id
        self.balance -= price
        self._schedule_callback(m)
        return m

    # -- rendering -----------------------------------------------------------

    def error(self, code: int, reference: object = None) -> dict:
        out: dict[str, Any] = {"error": code, "errorDescription": ERRORS.get(code, "Unknown error")}
        if isinstance(reference, str) and reference:
            out["reference"] = reference
        return out

    def _ok(self, **fields: Any) -> dict:
        return {"error": 0, "errorDescription": ERRORS[0], **fields}

    def render(self, obj: Any) -> Any:
        """JSON-ready copy of `obj` in the current style (Decimal → number or "0.0200000")."""
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k == "error" and isinstance(v, int) and not isinstance(v, bool) and self._strings:
                    out[k] = str(v)
                else:
                    out[k] = self.render(v)
            return out
        if isinstance(obj, list):
            return [self.render(v) for v in obj]
        if isinstance(obj, Decimal):
            return _fmt_money(obj) if self._strings else float(obj)
        return obj

    def _total_key(self) -> str:
        return "totalprice" if self._shape == "flat" else "total_price"
    # -- statuses and incoming SMS --------------------------------------------

    def _status_json(self, m: _Message) -> dict:
        now = self.now()
        status = self._status(m, now)
        age = now - m.created
        sent = m.created + self.delivery_delay / 2 if age >= self.delivery_delay / 2 else None
        final = m.created + self.delivery_delay if status == m.outcome and age >= self.delivery_delay else None
        out = self._ok(
            id=m.id, msisdn=m.msisdn, reference=m.reference,
            time_in=self._fmt_time(m.created), time_sent=self._fmt_time(sent),
            time_dr=self._fmt_time(final), status=status, price=m.price, currency=self.currency,
        )
        if m.channel == "viber" and m.fallback_id is not None:
            sms = self._messages[m.fallback_id]
            out["alt_route"] = [{"channel": "sms", "id": sms.id, "status": self._status(sms, now),
                                 "price": sms.price}]
        return out

    def inject_incoming(self, msisdn: str, body: str, sender: str = "testsms",
                        time: str | datetime | None = None) -> dict:
        """Record an incoming 2-way SMS; `time` is UTC ("YYYY-MM-DD HH:MM:SS"), default now."""
        phone = _as_msisdn(msisdn)
        if phone is None:
            raise ValueError("msisdn must be 8-15 digits, no '+'")
        if not isinstance(body, str):
            raise ValueError("body must be a string")
        if not isinstance(sender, str) or not sender:
            raise ValueError("sender must be a non-empty string")
        if time is None:
            when = self.wall(self.now()).replace(microsecond=0)
        elif isinstance(time, datetime):
            when = time.astimezone(timezone.utc) if time.tzinfo else time.replace(tzinfo=timezone.utc)
        else:
            when = datetime.strptime(time, _TIME_FORMAT).replace(tzinfo=timezone.utc)
        self._seq += 1
        record = _Incoming(str(self._seq), phone, sender, body, when)
        self._incoming.append(record)
        return self._incoming_json(record)

    @staticmethod
    def _incoming_json(r: _Incoming) -> dict:
        return {"id": r.id, "msisdn": r.msisdn, "sender": r.sender, "body": r.body,
                "time": r.time.strftime(_TIME_FORMAT)}

    # -- inspection ----------------------------------------------------------

    def messages(self, channel: str | None = None) -> list[dict]:
        """Every accepted message (fallback SMS included), oldest first."""
        self.advance()
        now = self.now()
        out = []
        for m in self._messages.values():
            if channel and m.channel != channel:
                continue
            row: dict[str, Any] = {"id": m.id, "channel": m.channel, "reference": m.reference,
                                   "msisdn": m.msisdn}
            if m.channel == "sms":
                row.update(originator=m.sender, body=m.text, parts=m.parts, task_id=m.task_id,
                           fallback_for=m.fallback_for)
            else:
                row.update(alpha_name=m.sender, text=m.text, alt_route=m.alt_route,
                           alt_route_sms_id=m.fallback_id)
            row.update(status=self._status(m, now), price=str(m.price),
                       time=self._fmt_time(m.created))
            out.append(row)
        return out

    def requests(self) -> list[dict]:
        """The newest API requests (method, path, fault applied); admin calls are not listed."""
        return list(self._requests)

    def _log_request(self, method: str, path: str, fault: Fault | None) -> None:
        self._requests.append({"method": method, "path": path,
                               "fault": fault.mode if fault else None,
                               "time": self._fmt_time(self.now())})
