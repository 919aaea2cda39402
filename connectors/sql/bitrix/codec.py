"""1C-Bitrix mail events → Herald events: pure functions, no database, no I/O.

Used by the Bitrix preset of the SQL connector (rows of `b_event`) and by the IMAP
connector (intercepted mails named by their `X-EVENT_NAME` header). Facts from
docs/spec BITRIX.md; the vocabulary produced is EVENTS.md's.

- `decode_c_fields(raw, charset)` (php.py, re-exported): `b_event.C_FIELDS` → a dict
  of fields; anything malformed raises `BitrixDecodeError`.
- `mail_event_to_events(...)`: one mail event → `mail.<EVENT_NAME>` with the flat
  fields, plus the canonical `order.*` / `shipment.*` event for sale mails.
- `with_phone(event, phone)`: put the buyer's phone (found elsewhere, e.g. the order
  properties) on the canonical events.
- `parse_money(text)`: a formatted price ("1&nbsp;500.00 руб.") → "1500.00".
"""

from __future__ import annotations

import copy
import re
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Collection, Mapping

from herald.connectors.sql.bitrix.php import clean_text, decode_c_fields
from herald.engine.errors import BitrixDecodeError
from herald.engine.helpers.phones import normalize_phone

__all__ = [
    "BitrixDecodeError", "decode_c_fields", "mail_event_to_events", "with_phone", "parse_money",
    "clean_text", "DEFAULT_ORDER_STATUSES", "DEFAULT_SHIPMENT_STATUSES", "PHONE_FIELDS",
]

# Bitrix's default statuses with the Russian names it ships (b_sale_status_lang, LID=ru).
# Shops rename them and add their own: pass the names read from b_sale_status_lang as
# `status_names` where possible.
DEFAULT_ORDER_STATUSES: Mapping[str, str] = MappingProxyType({
    "N": "Принят, ожидается оплата",
    "P": "Оплачен, формируется к отправке",
    "F": "Выполнен",
})
DEFAULT_SHIPMENT_STATUSES: Mapping[str, str] = MappingProxyType({
    "DN": "Ожидает обработки",
    "DA": "Собирается",
    "DG": "Ожидает поступления товара",
    "DT": "Ожидает забора перевозчиком",
    "DS": "Передан в службу доставки",
    "DF": "Отгружен",
})

# Sale mails carry no buyer phone; some shops add one to their mail fields under one
# of these names. The first non-empty one wins.
PHONE_FIELDS = ("PHONE", "ORDER_PHONE", "USER_PHONE", "PERSONAL_MOBILE", "PERSONAL_PHONE")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_STATUS_CHANGED = "SALE_STATUS_CHANGED_"

# ---- money --------------------------------------------------------------------------

_MONEY = re.compile(r"(?<!\d)([-\u2212] ?)?(\d(?:[\d.,' ]*\d)?)")
_SEP = re.compile(r"([.,' ])")


def parse_money(text: Any) -> str | None:
    """A formatted amount → a plain decimal string, or None when there is none.

    "1 500.50 руб." → "1500.50", "1&nbsp;500,50" → "1500.50", "$1,500.00" →
    "1500.00", "1.500,00 €" → "1500.00", "1500" → "1500". The last "." or "," is
    the decimal point when it occurs once and is not followed by exactly three digits
    (currencies have two decimals), or when other separators come before it; the
    others must group thousands consistently, or the text is not read as money.
    """
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, int):
        return str(text)
    if isinstance(text, float):
        text = repr(text) if text == text and abs(text) != float("inf") else ""
    elif isinstance(text, Decimal):
        return str(text) if text.is_finite() else None
    if not isinstance(text, str):
        return None
    text = clean_text(text).replace("\u2009", " ").replace("\u2008", " ").replace("\u200a", " ")
    m = _MONEY.search(text)
    if not m:
        return None
    parts = _SEP.split(m.group(2))
    groups, seps = parts[0::2], parts[1::2]
    if any(g == "" for g in groups):
        return None                    # two separators in a row
    fraction = None
    if seps and seps[-1] in ".," and seps.count(seps[-1]) == 1 \
            and (len(seps) > 1 or len(groups[-1]) != 3 or groups[0] == "0"):
        fraction = groups.pop()
        seps.pop()
    if seps and (len(set(seps)) != 1 or not 1 <= len(groups[0]) <= 3 or any(len(g) != 3 for g in groups[1:])):
        return None
    whole = "".join(groups).lstrip("0") or "0"
    sign = "-" if m.group(1) else ""
    return sign + whole + (f".{fraction}" if fraction is not None else "")


# ---- mail events → Herald events ----------------------------------------------------

def mail_event_to_events(event_name: str, fields: Mapping[str, Any], *, row_id: int | str, site: str,
                         time: str | datetime | None,
                         status_names: Mapping[str, str] = _EMPTY,
                         shipment_status_codes: Collection[str] = DEFAULT_SHIPMENT_STATUSES,
                         region: str = "RU") -> list[dict]:
    """One Bitrix mail event → Herald events (RULES.md shape: type, id, site, time, data).

    Always `mail.<EVENT_NAME>` (id `bitrix:b_event:<row_id>`) with the fields as sent.
    Sale mails also give one canonical event (id `bitrix:b_event:<row_id>:<type>`),
    whose data holds the canonical objects (`order`, `customer`, `shipment`) next to
    the same flat Bitrix fields, so templates written for Bitrix render unchanged. The
    ids depend on the row only: reading a row again never makes a second event.

    - SALE_NEW_ORDER → order.created (order.price parsed from PRICE; PRICE kept as text)
    - SALE_ORDER_PAID → order.updated, order.paid true (previous false)
    - SALE_ORDER_CANCEL → order.updated, order.canceled true (previous false), cancel_reason
    - SALE_ORDER_DELIVERY → order.updated, order.delivery_allowed true (previous false)
    - SALE_ORDER_TRACKING_NUMBER → order.updated, order.tracking_number (previous null)
    - SALE_STATUS_CHANGED_<CODE> → shipment.updated for shipment statuses (DN…DF, a code
      in `shipment_status_codes`, or fields with SHIPMENT_ID), else order.updated, with
      status = CODE and status_name from the mail, `status_names` or the defaults
    - SALE_ORDER_SHIPMENT_STATUS_CHANGED → shipment.updated (carrier tracking status)

    Status changes carry `previous` with the status (and its name) as null. The mail
    itself says the status has just been entered, but not what it was before. Null
    differs from every code, so a state rule `on order.status == "F"` fires on each
    such mail — also for an order Herald never saw, and when an order returns to a
    status it had before (which Herald's stored state could not tell apart from
    "still F", since statuses without NOTIFY='Y' send no mail). The matcher builds
    the previous state as the event's data with `previous` merged over it
    (herald.engine.events.merge_previous), and a become-true trigger fires when the old value
    differs. Consequence: `changes from "N" to "P"` cannot match mail-sourced status
    changes (the old value is unknown); `changes`, `changes to "P"` and `==` do.

    The buyer's phone is not among sale mail fields: customer.phone is set only when a
    field of PHONE_FIELDS exists (E.164 when it normalises, else as found); use
    `with_phone` to add the one from the order properties.
    """
    name = str(event_name or "").strip()
    if not name:
        raise BitrixDecodeError("the mail event has no EVENT_NAME")
    if row_id is None or isinstance(row_id, bool) or str(row_id).strip() == "":
        raise BitrixDecodeError(f"the {name} mail event has no row id")
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields must be a mapping, not {type(fields).__name__}")
    base_id = f"bitrix:b_event:{str(row_id).strip()}"
    flat = _plain(fields)
    when = time.isoformat() if isinstance(time, datetime) else time
    events = [_event(f"mail.{_type_segment(name)}", base_id, site, when, copy.deepcopy(flat))]

    canonical = _canonical(name.upper(), flat, status_names, shipment_status_codes, region)
    if canonical is not None:
        event_type, objects, previous = canonical
        data = copy.deepcopy(flat)
        data.update(objects)
        events.append(_event(event_type, f"{base_id}:{event_type}", site, when, data, previous))
    return events


def with_phone(event: Mapping[str, Any], phone: Any, *, region: str = "RU") -> dict:
    """A copy of `event` with data.customer.phone set to `phone` (E.164 when it
    normalises, else the text as found). `mail.*` events, and a missing or empty
    phone, leave the event as it was."""
    out = dict(event)
    if phone is None or not str(phone).strip() or str(out.get("type", "")).startswith("mail."):
        return out
    data = dict(out.get("data") or {})
    customer = dict(data.get("customer") or {})
    customer["phone"] = _phone(phone, region)
    data["customer"] = customer
    out["data"] = data
    return out


def _event(event_type: str, event_id: str, site: str, time: str | None, data: dict,
           previous: dict | None = None) -> dict:
    event: dict[str, Any] = {"type": event_type, "id": event_id, "site": site}
    if time is not None:
        event["time"] = time
    event["data"] = data
    if previous is not None:
        event["previous"] = previous
    return event


def _type_segment(name: str) -> str:
    # An event type segment is [A-Za-z_][A-Za-z0-9_]*; Bitrix names are, in practice.
    segment = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return "_" + segment if segment[0].isdigit() else segment


def _plain(value: Any) -> Any:
    """A deep, JSON-shaped copy: mappings → dicts with str keys, tuples → lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _canonical(name: str, f: Mapping[str, Any], status_names: Mapping[str, str],
               shipment_codes: Collection[str], region: str) -> tuple[str, dict, dict | None] | None:
    order = _order(f)
    customer = _customer(f, region)
    if name == "SALE_NEW_ORDER":
        _put(order, "price", parse_money(f.get("PRICE")))
        _put(order, "delivery_price", parse_money(f.get("DELIVERY_PRICE")))
        _put(order, "items", _text(f.get("ORDER_LIST")))
        return "order.created", {"order": order, "customer": customer}, None
    if name == "SALE_ORDER_PAID":
        order["paid"] = True
        return "order.updated", {"order": order, "customer": customer}, {"order": {"paid": False}}
    if name == "SALE_ORDER_CANCEL":
        order["canceled"] = True
        _put(order, "cancel_reason", _text(f.get("ORDER_CANCEL_DESCRIPTION")))
        return "order.updated", {"order": order, "customer": customer}, {"order": {"canceled": False}}
    if name == "SALE_ORDER_DELIVERY":
        order["delivery_allowed"] = True
        objects = {"order": order, "customer": customer}
        if _text(f.get("SHIPMENT_ID")) or _text(f.get("SHIPMENT_DATE")):
            shipment = _shipment(f, order)
            shipment["delivery_allowed"] = True
            _put(shipment, "date", _text(f.get("SHIPMENT_DATE")))
            objects["shipment"] = shipment
        return "order.updated", objects, {"order": {"delivery_allowed": False}}
    if name == "SALE_ORDER_TRACKING_NUMBER":
        tracking = _text(f.get("ORDER_TRACKING_NUMBER")) or _text(f.get("TRACKING_NUMBER"))
        _put(order, "tracking_number", tracking)
        objects = {"order": order, "customer": customer}
        if _text(f.get("SHIPMENT_ID")):
            shipment = _shipment(f, order)
            _put(shipment, "tracking_number", tracking)
            objects["shipment"] = shipment
        return "order.updated", objects, {"order": {"tracking_number": None}}
    if name.startswith(_STATUS_CHANGED) and len(name) > len(_STATUS_CHANGED):
        code = name[len(_STATUS_CHANGED):]
        known = _names(status_names)
        if code in DEFAULT_SHIPMENT_STATUSES or code in shipment_codes or _text(f.get("SHIPMENT_ID")):
            shipment = _shipment(f, order)
            shipment["status"] = code
            _put(shipment, "status_name", _text(f.get("SHIPMENT_STATUS")) or known.get(code)
                 or DEFAULT_SHIPMENT_STATUSES.get(code))
            return ("shipment.updated", {"shipment": shipment, "order": order, "customer": customer},
                    {"shipment": {"status": None, "status_name": None}})
        order["status"] = code
        _put(order, "status_name", _text(f.get("ORDER_STATUS")) or known.get(code) or DEFAULT_ORDER_STATUSES.get(code))
        _put(order, "status_description", _text(f.get("ORDER_DESCRIPTION")))
        return "order.updated", {"order": order, "customer": customer}, {"order": {"status": None, "status_name": None}}
    if name == "SALE_ORDER_SHIPMENT_STATUS_CHANGED":
        _put(order, "number", _text(f.get("ORDER_NO")), replace=False)
        shipment = _shipment(f, order)
        # The carrier's tracking status ("В пути", "Вручен"), not the shop's shipment
        # status (DN…DF): kept apart so the entity's status_name is never overwritten.
        _put(shipment, "tracking_status_name", _text(f.get("STATUS_NAME")))
        _put(shipment, "tracking_number", _text(f.get("TRACKING_NUMBER")))
        _put(shipment, "delivery_name", _text(f.get("DELIVERY_NAME")))
        return ("shipment.updated", {"shipment": shipment, "order": order, "customer": customer},
                {"shipment": {"tracking_status_name": None}})
    return None


def _order(f: Mapping[str, Any]) -> dict:
    order: dict[str, Any] = {}
    _put(order, "id", _ident(f.get("ORDER_REAL_ID")))
    _put(order, "number", _text(f.get("ORDER_ID")) or _text(f.get("ORDER_ACCOUNT_NUMBER")))
    _put(order, "date", _text(f.get("ORDER_DATE")))
    _put(order, "url", _text(f.get("ORDER_PUBLIC_URL")))
    return order


def _shipment(f: Mapping[str, Any], order: Mapping[str, Any]) -> dict:
    shipment: dict[str, Any] = {}
    _put(shipment, "id", _ident(f.get("SHIPMENT_ID")))
    _put(shipment, "number", _text(f.get("SHIPMENT_ACCOUNT_NUMBER")) or _text(f.get("SHIPMENT_NO")))
    _put(shipment, "order_id", order.get("id"))
    _put(shipment, "delivery_name", _text(f.get("DELIVERY_NAME")))
    return shipment


def _customer(f: Mapping[str, Any], region: str) -> dict:
    customer: dict[str, Any] = {}
    _put(customer, "id", _ident(f.get("USER_ID")))
    _put(customer, "name", _text(f.get("ORDER_USER")))
    _put(customer, "email", _text(f.get("EMAIL")))
    for key in PHONE_FIELDS:
        raw = _text(f.get(key))
        if raw:
            customer["phone"] = _phone(raw, region)
            break
    return customer


def _phone(raw: Any, region: str) -> str:
    phone = normalize_phone(raw, region)
    return phone.e164 if phone.ok else str(raw).strip()


def _names(status_names: Mapping[str, str] | None) -> Mapping[str, str]:
    return status_names if isinstance(status_names, Mapping) else _EMPTY


def _put(obj: dict, key: str, value: Any, *, replace: bool = True) -> None:
    if value is None or value == "" or (not replace and obj.get(key) not in (None, "")):
        return
    obj[key] = value


def _text(value: Any) -> str | None:
    """A scalar field as trimmed text; None for missing, empty or non-scalar."""
    if value is None or isinstance(value, (dict, list, tuple, Mapping)):
        return None
    if isinstance(value, bool):
        return "Y" if value else "N"
    text = str(value).strip()
    return text or None


def _ident(value: Any) -> int | str | None:
    """A table id: an int when it is one ("42" → 42), else the text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value)
    if text is None:
        return None
    if text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0")):
        return int(text)
    return text
