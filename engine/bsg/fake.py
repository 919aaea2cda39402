"""A fake BSG REST API v1 server for tests and local runs.

No machine here reaches BSG, so Herald's client is tested against this: a real
HTTP server (Starlette app, served by hypercorn on trio) that speaks the API as
documented in BSG-API.md — the same routes, request bodies, response shapes
(both documented variants), error codes and limits — plus an admin API under
`/_fake/` to inject faults, inspect what was "sent" and drive incoming SMS.

Delivery is deterministic: the last two digits of the number pick the final
status (see `OUTCOMES` and docs/fake-bsg.md), and statuses move
new → sent → final over `delivery_delay` seconds of an injectable clock.

    fake = FakeBSG(delivery_delay=0)
    app = create_app(fake)                       # in-process, via httpx.ASGITransport
    port = await nursery.start(serve, fake)      # or over real HTTP on loopback

API keys are checked but never logged, echoed or listed.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
from collections import deque
import math
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import httpx
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from herald.engine.errors import FakeBsgRejection as _Reject   # a whole-request error: HTTP 200 with `error`
from herald.engine.helpers.segments import GSM7, analyze

__all__ = [
    "FakeBSG",
    "Fault",
    "create_app",
    "serve",
    "main",
    "ERRORS",
    "OUTCOMES",
    "FAULT_MODES",
]

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


class FakeBSG:
    """The fake's state: accounts, messages, statuses, faults. Not thread-safe (trio)."""

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

    # -- validation ----------------------------------------------------------

    def _originator_error(self, originator: object) -> int | None:
        if not isinstance(originator, str) or not (
            _NUMERIC_SENDER.fullmatch(originator) or _ALPHA_SENDER.fullmatch(originator)
        ):
            return 25
        if self.sms_senders is not None and originator not in self.sms_senders:
            return 32
        return None

    @staticmethod
    def _sms_text_error(text: object) -> int | None:
        if not isinstance(text, str) or not text.strip():
            return 26
        seg = analyze(text)
        if seg.units > _SMS_LIMITS.get(seg.encoding, _UCS2_LIMIT):
            return 26
        return None

    def _recipient_error(self, channel: str, msisdn: object, reference: object,
                         seen_phones: set[str], seen_refs: set[str], quote: bool) -> int | None:
        viber = channel == "viber"
        phone = _as_msisdn(msisdn)
        if phone is None:
            return 41 if viber else 21
        if not quote:
            if _missing(reference):
                return 22
            if not _valid_reference(reference):
                return 47 if viber else 27
        if phone in seen_phones:
            return 51 if viber else 31
        seen_phones.add(phone)
        if not quote:
            if reference in seen_refs or reference in self._refs[channel]:
                return 43 if viber else 23
            seen_refs.add(reference)
            if self.balance <= 0:
                return 8
        return None

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

    # -- SMS -----------------------------------------------------------------

    def create_sms(self, body: object, *, quote: bool = False) -> dict:
        """POST /sms/create (or /sms/price with quote=True); raises _Reject for whole-request errors."""
        self.advance()
        if not isinstance(body, dict):
            raise _Reject(24)
        destination = body.get("destination")
        if _missing(destination):
            raise _Reject(3)
        if "validity" in body and body["validity"] is not None and not _int_in(body["validity"], 1, 72):
            raise _Reject(28, body.get("reference"))
        if destination == "phone":
            return self._sms_single(body, quote)
        if destination == "phones":
            return self._sms_phones(body, quote)
        if destination == "individual":
            return self._sms_individual(body, quote)
        raise _Reject(7)

    def _quote(self, total: Decimal) -> dict:
        return self._ok(totalprice=total, currency=self.currency)

    def _sms_single(self, body: dict, quote: bool) -> dict:
        msisdn, originator, text = body.get("msisdn"), body.get("originator"), body.get("body")
        reference = body.get("reference")
        if _missing(msisdn) or _missing(originator) or text is None:
            raise _Reject(3, reference)
        code = self._recipient_error("sms", msisdn, reference, set(), set(), quote=True)
        if code is None and not quote:
            if _missing(reference):
                code = 22
            elif not _valid_reference(reference):
                code = 27
        code = code or self._originator_error(originator) or self._sms_text_error(text)
        if code is None and not quote:
            if reference in self._refs["sms"]:
                code = 23
            elif self.balance <= 0:
                code = 8
        if code is not None:
            raise _Reject(code, reference)
        parts = analyze(text).parts
        price = self.sms_price * parts
        if quote:
            return self._quote(price)
        m = self._add("sms", _as_msisdn(msisdn), reference, originator, text, price, parts=parts)
        item = self._ok(reference=m.reference, id=m.id, price=m.price, currency=self.currency)
        if self._shape == "flat":
            return item
        return {"result": item}

    def _batch(self, phones: object) -> list:
        if not isinstance(phones, list) or not phones:
            raise _Reject(3)
        if len(phones) > self.max_batch:
            raise _Reject(12)
        return phones

    def _sms_phones(self, body: dict, quote: bool) -> dict:
        originator, text = body.get("originator"), body.get("body")
        phones = self._batch(body.get("phones"))
        if _missing(originator) or text is None:
            raise _Reject(3)
        code = self._originator_error(originator) or self._sms_text_error(text)
        if code is not None:
            raise _Reject(code)
        if not quote and self.balance <= 0:
            raise _Reject(8)
        parts = analyze(text).parts
        price = self.sms_price * parts
        task = None
        results: list[dict] = []
        total = Decimal(0)
        seen_phones: set[str] = set()
        seen_refs: set[str] = set()
        for item in phones:
            if not isinstance(item, dict):
                results.append(self.error(24))
                continue
            reference = item.get("reference")
            code = self._recipient_error("sms", item.get("msisdn"), reference,
                                         seen_phones, seen_refs, quote)
            if code is not None:
                results.append(self.error(code, reference))
                continue
            total += price
            if quote:
                continue
            if task is None:
                self._task_seq += 1
                task = _Task(str(self._task_seq), originator, text)
                self._tasks[task.id] = task
            m = self._add("sms", _as_msisdn(item["msisdn"]), reference, originator, text, price,
                          parts=parts, task_id=task.id)
            task.message_ids.append(m.id)
            results.append(self._ok(reference=reference, id=m.id, price=price, currency=self.currency))
        if quote:
            return self._quote(total)
        out: dict[str, Any] = {}
        if task is not None:
            out["task_id"] = task.id
        out.update({"result": results, self._total_key(): total, "currency": self.currency})
        return out

    def _sms_individual(self, body: dict, quote: bool) -> dict:
        phones = self._batch(body.get("phones"))
        if not quote and self.balance <= 0:
            raise _Reject(8)
        results: list[dict] = []
        total = Decimal(0)
        seen_phones: set[str] = set()
        seen_refs: set[str] = set()
        for item in phones:
            if not isinstance(item, dict):
                results.append(self.error(24))
                continue
            reference, originator, text = item.get("reference"), item.get("originator"), item.get("body")
            if _missing(item.get("msisdn")) or _missing(originator) or text is None:
                results.append(self.error(3, reference))
                continue
            code = (self._originator_error(originator) or self._sms_text_error(text)
                    or self._recipient_error("sms", item.get("msisdn"), reference,
                                             seen_phones, seen_refs, quote))
            if code is not None:
                results.append(self.error(code, reference))
                continue
            parts = analyze(text).parts
            price = self.sms_price * parts
            total += price
            if quote:
                continue
            m = self._add("sms", _as_msisdn(item["msisdn"]), reference, originator, text, price,
                          parts=parts)
            results.append(self._ok(reference=reference, id=m.id, price=price, currency=self.currency))
        if quote:
            return self._quote(total)
        return {"result": results, self._total_key(): total, "currency": self.currency}

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

    def sms_status(self, message_id: str) -> dict:
        self.advance()
        m = self._messages.get(message_id)
        if m is None or m.channel != "sms":
            raise _Reject(20)
        return self._status_json(m)

    def sms_status_by_reference(self, reference: str) -> dict:
        self.advance()
        message_id = self._refs["sms"].get(reference)
        if message_id is None:
            raise _Reject(20, reference)
        return self._status_json(self._messages[message_id])

    def task_status(self, task_id: str) -> dict:
        self.advance()
        if not task_id.isdigit():
            raise _Reject(29)
        task = self._tasks.get(task_id)
        if task is None:
            raise _Reject(30)
        statuses = [self._status_json(self._messages[i]) for i in task.message_ids]
        total = sum((self._messages[i].price for i in task.message_ids), Decimal(0))
        return self._ok(task_id=task.id, originator=task.originator, body=task.body,
                        result=statuses, **{self._total_key(): total}, currency=self.currency)

    # -- Viber ---------------------------------------------------------------

    def _viber_options_error(self, options: object) -> int | None:
        if options is None:
            return None
        if not isinstance(options, dict):
            return 49
        viber = options.get("viber")
        if viber is None:
            return None
        if not isinstance(viber, dict):
            return 49
        if viber.get("img") and (_missing(viber.get("caption")) or _missing(viber.get("action"))):
            return 49
        alt = viber.get("alt_route")
        if alt is not None:
            if not isinstance(alt, dict):
                return 49
            # The fallback SMS must itself be sendable.
            if self._originator_error(alt.get("originator")) or self._sms_text_error(alt.get("text")):
                return 49
        return None

    def create_viber(self, body: object, *, quote: bool = False) -> dict:
        """POST /viber/create (or /viber/price with quote=True)."""
        self.advance()
        if not isinstance(body, dict):
            raise _Reject(44)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Reject(3)
        if "validity" in body and body["validity"] is not None and not _int_in(body["validity"], 15, 86400):
            raise _Reject(48)
        recipients = 0
        for msg in messages:
            if not isinstance(msg, dict):
                raise _Reject(44)
            to, text, alpha_name = msg.get("to"), msg.get("text"), msg.get("alpha_name")
            if not isinstance(to, list) or not to or text is None or _missing(alpha_name):
                raise _Reject(3)
            recipients += len(to)
            if not isinstance(text, str) or not text.strip() or len(text) > _VIBER_TEXT_LIMIT:
                raise _Reject(46)
            if (not isinstance(alpha_name, str) or len(alpha_name) > _ALPHA_NAME_LIMIT
                    or (self.viber_senders is not None and alpha_name not in self.viber_senders)):
                raise _Reject(45)
            code = self._viber_options_error(msg.get("options"))
            if code is not None:
                raise _Reject(code)
        if recipients > self.max_batch:
            raise _Reject(12)
        if not quote and self.balance <= 0:
            raise _Reject(8)
        results: list[dict] = []
        total = Decimal(0)
        seen_phones: set[str] = set()
        seen_refs: set[str] = set()
        for msg in messages:
            viber_opts = (msg.get("options") or {}).get("viber") or {}
            alt = viber_opts.get("alt_route")
            alt_route = {"originator": alt["originator"], "text": alt["text"]} if alt else None
            for item in msg["to"]:
                if not isinstance(item, dict):
                    results.append(self.error(44))
                    continue
                reference = item.get("reference")
                code = self._recipient_error("viber", item.get("msisdn"), reference,
                                             seen_phones, seen_refs, quote)
                if code is not None:
                    results.append(self.error(code, reference))
                    continue
                total += self.viber_price
                if quote:
                    continue
                m = self._add("viber", _as_msisdn(item["msisdn"]), reference, msg["alpha_name"],
                              msg["text"], self.viber_price, alt_route=alt_route)
                results.append(self._ok(reference=reference, id=m.id, price=m.price,
                                        currency=self.currency))
        if quote:
            return self._quote(total)
        return {"result": results, "total_price": total, "currency": self.currency}

    def viber_status(self, message_id: str) -> dict:
        self.advance()
        m = self._messages.get(message_id)
        if m is None or m.channel != "viber":
            raise _Reject(40)
        return self._status_json(m)

    def viber_status_by_reference(self, reference: str) -> dict:
        self.advance()
        message_id = self._refs["viber"].get(reference)
        if message_id is None:
            raise _Reject(40, reference)
        return self._status_json(self._messages[message_id])

    # -- account and 2-way ---------------------------------------------------

    def balance_json(self) -> dict:
        self.advance()
        return self._ok(amount=_fmt_money(self.balance), currency=self.currency, limit="0")

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

    def incoming(self, start_date: str | None, end_date: str | None, sender: str | None = None) -> dict:
        """GET /sms/2wayIncoming: injected SMS with start_date <= time <= end_date."""
        if _missing(start_date) or _missing(end_date):
            raise _Reject(3)
        try:
            start = datetime.strptime(start_date, _TIME_FORMAT).replace(tzinfo=timezone.utc)
            end = datetime.strptime(end_date, _TIME_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            raise _Reject(7) from None
        found = [self._incoming_json(r) for r in self._incoming
                 if start <= r.time <= end and (not sender or r.sender == sender)]
        return self._ok(result=found)

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


# -- ASGI app -------------------------------------------------------------------


def _json(fake: FakeBSG, obj: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(fake.render(obj), status_code=status)


async def _body(request: Request, invalid: int) -> object:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise _Reject(invalid) from None


def _api(handler: Callable) -> Callable:
    """Wrap an API endpoint: key check, whole-request errors, style rendering."""

    async def endpoint(request: Request) -> Response:
        fake: FakeBSG = request.app.state.fake
        if not fake.check_key(request.headers.get("x-api-key")):
            return _json(fake, fake.error(1))
        try:
            result = await handler(fake, request)
        except _Reject as rejected:
            result = fake.error(rejected.code, rejected.reference)
        return _json(fake, result)

    return endpoint


async def _sms_create(fake: FakeBSG, request: Request) -> dict:
    return fake.create_sms(await _body(request, 24))


async def _sms_price(fake: FakeBSG, request: Request) -> dict:
    return fake.create_sms(await _body(request, 24), quote=True)


async def _sms_get(fake: FakeBSG, request: Request) -> dict:
    return fake.sms_status(request.path_params["id"])


async def _sms_by_reference(fake: FakeBSG, request: Request) -> dict:
    return fake.sms_status_by_reference(request.path_params["reference"])


async def _sms_task(fake: FakeBSG, request: Request) -> dict:
    return fake.task_status(request.path_params["task_id"])


async def _viber_create(fake: FakeBSG, request: Request) -> dict:
    return fake.create_viber(await _body(request, 44))


async def _viber_price(fake: FakeBSG, request: Request) -> dict:
    return fake.create_viber(await _body(request, 44), quote=True)


async def _viber_get(fake: FakeBSG, request: Request) -> dict:
    return fake.viber_status(request.path_params["id"])


async def _viber_by_reference(fake: FakeBSG, request: Request) -> dict:
    return fake.viber_status_by_reference(request.path_params["reference"])


async def _balance(fake: FakeBSG, request: Request) -> dict:
    return fake.balance_json()


async def _incoming(fake: FakeBSG, request: Request) -> dict:
    q = request.query_params
    return fake.incoming(q.get("start_date"), q.get("end_date"), q.get("sender"))


# -- admin API (no key, never faulted) --

def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


async def _admin_body(request: Request) -> dict:
    raw = await request.body()
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _admin(handler: Callable) -> Callable:
    async def endpoint(request: Request) -> Response:
        fake: FakeBSG = request.app.state.fake
        try:
            return await handler(fake, request)
        except (ValueError, TypeError) as exc:  # bad JSON or bad values
            return _bad(str(exc))

    return endpoint


async def _faults_set(fake: FakeBSG, request: Request) -> Response:
    data = await _admin_body(request)
    kwargs = {k: data[k] for k in ("code", "status", "delay", "count") if data.get(k) is not None}
    fault = fake.set_fault(data.get("mode"), **kwargs)
    return JSONResponse({"fault": fault.as_json()})


async def _faults_get(fake: FakeBSG, request: Request) -> Response:
    return JSONResponse({"fault": fake.fault.as_json() if fake.fault else None})


async def _faults_clear(fake: FakeBSG, request: Request) -> Response:
    fake.clear_faults()
    return JSONResponse({"fault": None})


async def _messages(fake: FakeBSG, request: Request) -> Response:
    rows = fake.messages(request.query_params.get("channel"))
    return JSONResponse({"count": len(rows), "messages": rows})


async def _requests(fake: FakeBSG, request: Request) -> Response:
    rows = fake.requests()
    return JSONResponse({"count": len(rows), "requests": rows})


async def _reset(fake: FakeBSG, request: Request) -> Response:
    fake.reset()
    return JSONResponse({"ok": True})


async def _set_balance(fake: FakeBSG, request: Request) -> Response:
    data = await _admin_body(request)
    if "amount" not in data:
        raise ValueError('expected {"amount": "10"}')
    fake.set_balance(data["amount"])
    return JSONResponse({"amount": _fmt_money(fake.balance), "currency": fake.currency})


async def _inject_incoming(fake: FakeBSG, request: Request) -> Response:
    data = await _admin_body(request)
    if "msisdn" not in data or "body" not in data:
        raise ValueError('expected {"msisdn": "380501234567", "body": "..."}')
    record = fake.inject_incoming(data["msisdn"], data["body"], data.get("sender") or "testsms",
                                  data.get("time"))
    return JSONResponse(record)


async def _set_style(fake: FakeBSG, request: Request) -> Response:
    data = await _admin_body(request)
    if "response_style" in data:
        fake.response_style = data["response_style"]
    return JSONResponse({"response_style": fake.response_style})


class _FakeBSGApp(Starlette):
    """Starlette with faults applied before routing (outside its error middleware)."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_fake/"):
            fake: FakeBSG = self.state.fake
            fault = fake._take_fault()
            fake._log_request(scope["method"], scope["path"], fault)
            if fault is not None:
                if fault.mode == "slow":
                    await trio.sleep(fault.delay)
                else:
                    await _answer_fault(fake, fault, scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


async def _answer_fault(fake: FakeBSG, fault: Fault, scope, receive, send) -> None:
    if fault.mode == "down":
        # Read the request, then drop the connection without a final response.
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            more = message.get("more_body", False)
        if scope.get(_SOCKET_SCOPE_KEY):
            # hypercorn writes a 1xx at once; when the app then ends without a final
            # response it closes the connection. An HTTP client skips the 1xx and sees
            # the peer hang up: httpx raises RemoteProtocolError("Server disconnected
            # without sending a response.").
            await send({"type": "http.response.start", "status": 102, "headers": []})
            return
        # In-process (httpx.ASGITransport): there is no socket to drop, so raise what
        # httpx raises for the socket case; ASGITransport passes it to the caller.
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
    if fault.mode == "5xx":
        phrase = "Service Unavailable" if fault.status == 503 else "Internal Server Error"
        response: Response = PlainTextResponse(phrase, status_code=fault.status)
    elif fault.mode == "429":
        response = PlainTextResponse("too many duplicate requests", status_code=429)
    else:  # "error"
        response = _json(fake, fake.error(fault.code))
    await response(scope, receive, send)


def create_app(fake: FakeBSG | None = None) -> Starlette:
    """The fake BSG as an ASGI app; its state is `app.state.fake`."""
    api_create = ["POST", "PUT"]
    routes = [
        Route("/sms/create", _api(_sms_create), methods=api_create),
        Route("/sms/price", _api(_sms_price), methods=api_create),
        Route("/sms/2wayIncoming", _api(_incoming), methods=["GET"]),
        Route("/sms/reference/{reference}", _api(_sms_by_reference), methods=["GET"]),
        Route("/sms/task/{task_id}", _api(_sms_task), methods=["GET"]),
        Route("/sms/{id}", _api(_sms_get), methods=["GET"]),
        Route("/viber/create", _api(_viber_create), methods=api_create),
        Route("/viber/price", _api(_viber_price), methods=api_create),
        Route("/viber/reference/{reference}", _api(_viber_by_reference), methods=["GET"]),
        Route("/viber/{id}", _api(_viber_get), methods=["GET"]),
        Route("/common/balance", _api(_balance), methods=["GET"]),
        Route("/_fake/faults", _admin(_faults_set), methods=["POST"]),
        Route("/_fake/faults", _admin(_faults_get), methods=["GET"]),
        Route("/_fake/faults", _admin(_faults_clear), methods=["DELETE"]),
        Route("/_fake/messages", _admin(_messages), methods=["GET"]),
        Route("/_fake/requests", _admin(_requests), methods=["GET"]),
        Route("/_fake/reset", _admin(_reset), methods=["POST"]),
        Route("/_fake/balance", _admin(_set_balance), methods=["POST"]),
        Route("/_fake/incoming", _admin(_inject_incoming), methods=["POST"]),
        Route("/_fake/style", _admin(_set_style), methods=["POST"]),
    ]
    app = _FakeBSGApp(routes=routes)
    app.state.fake = fake if fake is not None else FakeBSG()
    return app


def _over_socket(app: Starlette) -> Callable:
    async def marked(scope, receive, send) -> None:
        if scope["type"] == "http":
            scope = {**scope, _SOCKET_SCOPE_KEY: True}
        await app(scope, receive, send)

    return marked


async def serve(fake: FakeBSG | None = None, host: str = "127.0.0.1", port: int = 0, *,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the fake over HTTP until cancelled; `task_status.started(port)` once listening.

    `port=0` picks a free port; the port reported is the one actually bound.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.loglevel = "WARNING"       # no banner; errors still reach stderr
    config.accesslog = None           # (and no headers are ever logged)
    config.graceful_timeout = 1.0
    app = create_app(fake)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(
            hypercorn_serve, _over_socket(app), config, shutdown_trigger=shutdown.wait, mode="asgi",
        ))
        # hypercorn reports "http://HOST:PORT" per socket after listen(), from getsockname().
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
        if app.state.fake.callback_url:
            nursery.start_soon(_callback_ticker, app.state.fake)


async def _callback_ticker(fake: FakeBSG) -> None:
    """Post each newly final message's status to `fake.callback_url` once, best effort:
    a failed post is logged and dropped (Herald's polling is the fallback)."""
    limiter = trio.CapacityLimiter(_CALLBACK_POSTS)
    async with httpx.AsyncClient(timeout=5.0) as client, trio.open_nursery() as posts:
        while True:
            await trio.sleep(CALLBACK_TICK)
            if not fake.callback_url:
                continue
            for body in fake.due_callbacks():
                posts.start_soon(_post_callback, client, fake.callback_url, body, limiter)


async def _post_callback(client: httpx.AsyncClient, url: str, body: dict, limiter: trio.CapacityLimiter) -> None:
    async with limiter:
        try:
            response = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            log.warning("delivery report for %s not posted: %s", body.get("reference"), exc)
            return
    if response.status_code >= 300:
        log.warning("delivery report for %s: HTTP %d", body.get("reference"), response.status_code)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """`herald fake-bsg`: run the fake until interrupted."""
    parser = argparse.ArgumentParser(prog="herald fake-bsg",
                                     description="Run a fake BSG REST API on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8781, help="0 picks a free port (default 8781)")
    parser.add_argument("--delivery-delay", type=float, default=0.5, metavar="SECONDS",
                        help="seconds until statuses are final (default 0.5)")
    parser.add_argument("--balance", default="100", help="starting balance (default 100)")
    parser.add_argument("--currency", default="EUR")
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                        help="accepted key (repeatable; default: any non-empty key)")
    parser.add_argument("--viber-sender", action="append", dest="viber_senders", metavar="NAME",
                        help="registered Viber sender (repeatable; default AdvInform and BSG)")
    parser.add_argument("--response-style", default="nested",
                        help="nested | flat, optionally +strings (default nested)")
    parser.add_argument("--callback-url", metavar="URL",
                        help="POST each message's final status here once (delivery reports), "
                             "e.g. http://127.0.0.1:8780/bsg/callback/SECRET")
    args = parser.parse_args(argv)
    try:
        fake = FakeBSG(
            api_keys=set(args.api_keys) if args.api_keys else None,
            balance=args.balance, currency=args.currency,
            delivery_delay=args.delivery_delay, response_style=args.response_style,
            callback_url=args.callback_url,
            **({"viber_senders": set(args.viber_senders)} if args.viber_senders else {}),
        )
    except ValueError as exc:
        parser.error(str(exc))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, fake, args.host, args.port)
            shown = f"[{args.host}]" if ":" in args.host else args.host
            print(f"fake BSG listening on http://{shown}:{port}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:  # SIGTERM: stop cleanly, exit 0
                    nursery.cancel_scope.cancel()
                    break

    failure: BaseException | None = None
    try:
        try:
            trio.run(run)
        except* KeyboardInterrupt:
            pass
        except* OSError as group:
            failure = _first_leaf(group)
    except KeyboardInterrupt:
        pass
    if failure is not None:
        print(f"herald fake-bsg: cannot listen on {args.host}:{args.port}: {failure}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
