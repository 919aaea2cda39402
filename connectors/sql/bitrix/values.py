"""Column values of Bitrix rows → event data: ids, texts, Y/N flags, money, dates, people."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from herald.connectors.sql.bitrix.codec import parse_money
from herald.connectors.sql.core import json_value
from herald.engine.helpers.phones import normalize_phone

def _text(value: Any, charset: str = "utf-8") -> str | None:
    value = json_value(value, charset)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _ident(value: Any) -> int | str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    text = _text(value)
    if text is None:
        return None
    return int(text) if text.isascii() and text.isdigit() and (text == "0" or text[0] != "0") else text


def _yes(value: Any) -> bool:
    return _text(value) == "Y"


def _money(value: Any) -> str | None:
    """b_sale_order.PRICE (decimal(18,4)) as "1500.00"."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            return None
        if not amount.is_finite():
            return None
        cents = amount.quantize(Decimal("0.01"))
        return str(cents) if cents == amount else str(amount)          # 2500.0000 → 2500.00
    return parse_money(_text(value))


def _when(value: Any) -> str | None:
    """A DATETIME as ISO 8601 text (server local time, as Bitrix stores it)."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    text = _text(value)
    if text and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.0+)?", text):
        return text[:19].replace(" ", "T")
    return text


def _site_date(value: Any) -> str | None:
    """Bitrix's site format of a date, as in its mails: 19.05.2024 14:03:11."""
    if isinstance(value, datetime):
        return value.strftime("%d.%m.%Y %H:%M:%S")
    iso = _when(value)
    if iso and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", iso):
        return datetime.fromisoformat(iso).strftime("%d.%m.%Y %H:%M:%S")
    return iso


def _pick_phone(*values: Any) -> str | None:
    """The first value that is a valid number, else the first one set (as found)."""
    present = [str(v).strip() for v in values if v is not None and str(v).strip()]
    for value in present:
        if normalize_phone(value).ok:
            return value
    return present[0] if present else None


def _phone_value(raw: str | None) -> str | None:
    if raw is None:
        return None
    phone = normalize_phone(raw)
    return phone.e164 if phone.ok else raw


def _put(obj: dict, key: str, value: Any) -> None:
    if value is not None and value != "":
        obj[key] = value


def _fill(obj: dict, key: str, value: Any) -> None:
    """Set a field the event does not have yet (what the mail said wins)."""
    if obj.get(key) in (None, "") and value is not None and value != "":
        obj[key] = value


def _person(row: Mapping[str, Any], prefix: str, user_id: Any, charset: str, *extra_phones: Any) -> dict:
    """A `user`/`customer` object from b_user columns labelled `<prefix>_…`."""
    person: dict[str, Any] = {}
    _put(person, "id", _ident(user_id))
    _put(person, "login", _text(row.get(f"{prefix}_login"), charset))
    name = " ".join(p for p in (_text(row.get(f"{prefix}_name"), charset),
                                _text(row.get(f"{prefix}_last_name"), charset)) if p)
    _put(person, "name", name)
    _put(person, "email", _text(row.get(f"{prefix}_email"), charset))
    phone = _pick_phone(*extra_phones, *(_text(row.get(f"{prefix}_{f}"), charset) for f in
                                         ("personal_phone", "personal_mobile", "work_phone", "phone_auth")))
    _put(person, "phone", _phone_value(phone))
    return person


US, RS = "\x1f", "\x1e"             # ASCII unit and record separators: never in a name or a phone
MEMBER_FIELDS = ("id", "name", "last_name", "personal_phone", "personal_mobile", "work_phone", "phone_auth")


def _members(value: Any, charset: str) -> list[dict]:
    """`task.members` from `_Dialect.member_list`'s text: one `user` per member, in
    user-id order, each once. A record cut short (MySQL's group_concat_max_len, 1024
    bytes by default: about a dozen members) is left out rather than read wrong."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode(charset, errors="replace")
    text = value if isinstance(value, str) else ""          # not _text: it strips, and US/RS are whitespace
    members: dict[Any, dict] = {}
    for record in text.split(RS):
        fields = record.split(US)
        if len(fields) != len(MEMBER_FIELDS) or not fields[0]:
            continue
        row = {f"m_{name}": field or None for name, field in zip(MEMBER_FIELDS, fields)}
        person = _person(row, "m", fields[0], charset)
        members.setdefault(person.get("id"), person)
    return sorted(members.values(), key=lambda p: (str(type(p.get("id"))), p.get("id")))


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict, bool]:
    """Compare two states shaped {entity: {field: value}} (every field present, None
    when empty): (the changed fields' old values, {entity: {field: old}}; whether `old`
    lacks a field `new` has — stored by an older Herald: not a change of the row).
    A field's value is compared whole (a nested user is one value)."""
    previous: dict[str, Any] = {}
    reshaped = False
    for entity, fields in new.items():
        before = old.get(entity)
        if not isinstance(before, Mapping) or not isinstance(fields, Mapping):
            reshaped = True
            continue
        changed = {}
        for key, value in fields.items():
            if key not in before:
                reshaped = True
            elif before[key] != value:
                changed[key] = before[key]
        if changed:
            previous[entity] = changed
    return previous, reshaped
