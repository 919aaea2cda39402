"""Phone number normalisation to E.164.

Shops hand us numbers as people typed them: "8 (912) 345-67-89", "+7 900 123-45-67
доб. 12", an int from a spreadsheet, or nothing at all. A bad number is a problem
with one recipient, not with the send, so nothing here raises: every outcome is a
`Phone`, and `Phone.error` says in plain words what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

__all__ = ["Phone", "normalize_phone", "normalize_many", "NUMBER_TYPES", "SMS_TYPES", "number_type",
           "describe_type", "mask_phone"]

# Real phone fields are short; anything longer is pasted prose. Refusing it early
# also keeps huge strings out of the LRU cache.
_MAX_INPUT = 200

# How much of the raw input to echo back inside an error message.
_SHOWN = 40

_REASONS = {
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.INVALID_LENGTH: "wrong number of digits",
}

# Only digits and the usual separators: anything else (letters, "+") means the
# author wrote something we should not second-guess with the trunk-prefix rule.
_PLAIN_DIGITS = re.compile(r"[\d\s()\-.]+")


@dataclass(frozen=True, slots=True)
class Phone:
    """One recipient's number: `e164` when usable, otherwise `error` says why not."""

    raw: str
    e164: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.e164 is not None


def normalize_phone(raw: object, default_region: str = "RU") -> Phone:
    """Normalise free text (or an int) to E.164; never raises.

    Numbers without a leading "+" are read as local to `default_region`, so
    "8 912 345-67-89" in RU is +79123456789. An extension ("доб. 12", "ext. 12")
    is dropped: SMS cannot dial it.
    """
    text = _as_text(raw)
    region = default_region.strip().upper() if isinstance(default_region, str) else "RU"
    if text is None or not text.strip():
        return Phone(text or "", None, "no phone number")
    if len(text) > _MAX_INPUT:
        return Phone(text, None, f"{_quote(text)} is too long to be a phone number")
    return _normalize_text(text, region or "RU")


def normalize_many(values: Iterable[object], default_region: str = "RU") -> list[Phone]:
    """`normalize_phone` over each value, in order (invalid ones included)."""
    if isinstance(values, (str, bytes, bytearray)):
        # One number, not a sequence of one-character "numbers".
        return [normalize_phone(values, default_region)]
    try:
        return [normalize_phone(v, default_region) for v in values]
    except TypeError:
        # `values` was not iterable at all (a bare int, None): treat it as one value
        # rather than failing the whole send.
        return [normalize_phone(values, default_region)]


def _as_text(raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        # bool is an int subclass; True is not the phone number "1".
        return str(raw)
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        # Spreadsheets export 89001234567 as 89001234567.0.
        if raw.is_integer():
            return str(int(raw))
        return repr(raw)
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).decode("utf-8", errors="replace")
    try:
        return str(raw)
    except Exception:  # a hostile __str__ must not take the send down
        return f"<{type(raw).__name__}>"


# The same admin/manager numbers are normalised on every event; parsing with
# phonenumbers is comparatively slow, and Phone is immutable, so sharing is safe.
@lru_cache(maxsize=1024)
def _normalize_text(text: str, region: str) -> Phone:
    try:
        return _parse(text, region)
    except Exception:  # phonenumbers has its own edge cases; never let them escape
        return Phone(text, None, _invalid(text, region))


def _parse(text: str, region: str) -> Phone:
    stripped = text.strip()
    failure: phonenumbers.PhoneNumber | None = None

    for candidate in _candidates(stripped, region):
        try:
            number = phonenumbers.parse(candidate, region)
        except NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return Phone(text, _e164(number), None)
        failure = failure or number

    # Direct parsing failed; the field may hold a number plus a remark
    # ("+7 900 123-45-67 (мобильный)") or several numbers.
    found = {
        _e164(m.number)
        for m in phonenumbers.PhoneNumberMatcher(stripped, region, leniency=phonenumbers.Leniency.VALID)
    }
    if len(found) == 1:
        return Phone(text, found.pop(), None)
    if len(found) > 1:
        return Phone(text, None, f"{_quote(text)} contains more than one phone number")

    reason = None
    if failure is not None:
        reason = _REASONS.get(phonenumbers.is_possible_number_with_reason(failure))
    return Phone(text, None, _invalid(text, region, reason))


def _candidates(text: str, region: str) -> list[str]:
    """Spellings to try in order; the first valid parse wins."""
    out: list[str] = []
    digits = re.sub(r"\D", "", text)
    if (
        _PLAIN_DIGITS.fullmatch(text)
        and len(digits) == 11
        and digits[0] in "78"
        and phonenumbers.country_code_for_region(region) == 7
    ):
        # Russian habit: trunk "8" or country "7" without "+" in front of the
        # 10-digit national number. phonenumbers mostly copes, but we want this
        # rule to hold regardless of metadata quirks.
        out.append("+7" + digits[1:])
    out.append(text)
    if text.startswith("00") and digits.startswith("00"):
        # "00" is the international prefix almost everywhere but not in RU
        # metadata ("810"), so "0049 …" would be read as a local number.
        out.append("+" + digits[2:])
    return out


def _e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _quote(text: str) -> str:
    shown = " ".join(text.split())
    if len(shown) > _SHOWN:
        shown = shown[: _SHOWN - 1] + "…"
    return f'"{shown}"'


def _invalid(text: str, region: str, reason: str | None = None) -> str:
    # A "+" number ignores the default region, so naming it would only mislead.
    where = "" if text.strip().startswith("+") else f" (region {region})"
    because = f": {reason}" if reason else ""
    return f"{_quote(text)} is not a valid phone number{where}{because}"


# ---- what kind of line a number is (phonenumbers' metadata) ------------------------------

# Names as in the config (`subscriptions.number_types`), in words for error messages.
NUMBER_TYPES = {
    "mobile": "a mobile number",
    "fixed_line_or_mobile": "a number that may be mobile",       # e.g. US and Canada
    "fixed_line": "a landline number",
    "toll_free": "a toll-free number",
    "premium_rate": "a premium-rate number",
    "shared_cost": "a shared-cost number",
    "voip": "a VoIP number",
    "personal_number": "a personal (forwarding) number",
    "pager": "a pager number",
    "uan": "a universal access number",
    "voicemail": "a voicemail number",
    "unknown": "a number of unknown type",
}
SMS_TYPES = ("mobile", "fixed_line_or_mobile")    # the ones that surely or possibly take an SMS


def number_type(e164: str) -> str:
    """The line type of an E.164 number, a key of NUMBER_TYPES (`unknown` when unsure)."""
    try:
        kind = phonenumbers.number_type(phonenumbers.parse(e164))
    except NumberParseException:
        return "unknown"
    for name in NUMBER_TYPES:
        if getattr(phonenumbers.PhoneNumberType, name.upper(), None) == kind:
            return name
    return "unknown"


def describe_type(name: str) -> str:
    return NUMBER_TYPES.get(name, NUMBER_TYPES["unknown"])


def mask_phone(raw: object) -> str:
    """A number fit for a log line: the country and area digits and the last two, the rest
    hidden (`+7900****67`); the prefix is what tells a pumped range apart."""
    text = _as_text(raw) or ""
    digits = re.sub(r"\D", "", text)[:20]
    if len(digits) < 7:
        return "****"
    return f"{'+' if text.strip().startswith('+') else ''}{digits[:4]}****{digits[-2:]}"
