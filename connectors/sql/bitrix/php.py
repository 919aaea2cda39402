"""C_FIELDS of `b_event`: PHP `serialize()` output (or, on very old rows, `KEY=VAL&…`),
read in one place — `decode_c_fields` in Python, and `php_field`, the SQL that reads one
top-level field inside the database for the preset's joins.

The string lengths in serialize() output are BYTE counts in the site charset (UTF-8, or
windows-1251 on older Russian sites). Anything malformed raises `BitrixDecodeError`;
there is never a half-decoded result.
"""

from __future__ import annotations

import codecs
import html
import io
import re
from typing import Any

import phpserialize

from herald.engine.errors import BitrixDecodeError

# The first bytes of PHP serialize() output: a type letter, then ":" (or "N;").
_PHP_START = re.compile(rb"(?:[aAOsSidbCrR]:|N;)")
_PHP_STRING = re.compile(rb's:(\d+):"')


def decode_c_fields(raw: bytes | str | None, charset: str = "utf-8") -> dict[str, Any]:
    """`b_event.C_FIELDS` → {field name: value}.

    `raw` should be the column's BYTES (`CAST(C_FIELDS AS BINARY)`): serialize()'s
    string lengths count bytes in the site `charset` ("utf-8", "windows-1251" /
    "cp1251"). A `str` is accepted and encoded back with `charset` first, which is
    right when the driver decoded the column correctly. Every byte string is decoded
    with `charset`; nested arrays become lists when their keys are 0..n-1 in order,
    else dicts (int keys as strings); HTML entities in values are unescaped. Empty or
    NULL C_FIELDS is no fields: {}.

    Raises BitrixDecodeError for anything malformed (truncated, a wrong length prefix,
    bytes that are not `charset`, trailing data, neither format).
    """
    codec = _codec(charset)
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            data = raw.encode(codec)
        except UnicodeEncodeError as exc:
            raise BitrixDecodeError(
                f"character {raw[exc.start]!r} at position {exc.start} cannot be written in {charset}; "
                "pass the column as bytes, or the right site charset") from None
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
    else:
        raise TypeError(f"C_FIELDS must be bytes or str, not {type(raw).__name__}")
    body = data.strip()
    if not body:
        return {}
    start = len(data) - len(data.lstrip())
    if _PHP_START.match(body):
        return _decode_php(data, start, codec, charset)
    return _decode_legacy(body, start, codec, charset)


def _codec(charset: str) -> str:
    try:
        return codecs.lookup(charset).name
    except (LookupError, TypeError):
        raise BitrixDecodeError(f"unknown charset {charset!r}; use the site charset, "
                                "e.g. utf-8 or windows-1251") from None


class _Reader(io.BytesIO):
    """A byte stream that remembers where its last read started: that is where
    phpserialize found what it did not expect."""

    last = 0

    def read(self, size: int | None = -1) -> bytes:
        self.last = self.tell()
        return super().read(size)


class _PhpArray(list):
    """A PHP array as (key, value) pairs, in order, until it is decoded."""


def _array_hook(pairs: list) -> _PhpArray:
    return _PhpArray(pairs)


def _object_hook(name: bytes, members: dict) -> _PhpArray:
    # An object's members as an array; private/protected names are "\0Class\0x"/"\0*\0x".
    return _PhpArray((k.rsplit(b"\0", 1)[-1] if isinstance(k, bytes) else k, v) for k, v in members.items())


def _decode_php(data: bytes, start: int, codec: str, charset: str) -> dict[str, Any]:
    reader = _Reader(data)
    reader.seek(start)
    try:
        value = phpserialize.load(reader, decode_strings=False, array_hook=_array_hook, object_hook=_object_hook)
    except RecursionError:
        raise BitrixDecodeError(f"arrays nested too deeply (at byte {reader.last})", reader.last) from None
    except Exception as exc:  # phpserialize raises ValueError mostly; any failure is bad data
        raise _php_error(data, reader, exc) from None
    end = reader.tell()
    if data[end:].strip():
        raise BitrixDecodeError(f"unexpected data after the end of the serialized array at byte {end} "
                                f"({_show(data[end:end + 20])})", end)
    if not isinstance(value, _PhpArray):
        kind = {bytes: "string", int: "integer", float: "float", bool: "boolean"}.get(type(value), "null")
        raise BitrixDecodeError(f"holds a PHP {kind}, not an array of fields (at byte {start})", start)
    return _convert_array(value, codec, charset, (), top=True)


def _php_error(data: bytes, reader: _Reader, exc: Exception) -> BitrixDecodeError:
    at = reader.last
    reason = str(exc)
    bad_string = _bad_string(data, at)
    if bad_string is not None:
        return bad_string
    if at >= len(data) or "end of stream" in reason or reason.endswith("got b''"):
        return BitrixDecodeError(f"data ends too early at byte {len(data)} (truncated C_FIELDS?)", len(data))
    if "unexpected opcode" in reason:
        return BitrixDecodeError(f"unexpected {_show(data[at:at + 1])} at byte {at}: expected a PHP value "
                                 "(a:, s:, i:, d:, b:, N; …)", at)
    if reason.startswith("failed expectation"):
        expected = reason.split("expected ", 1)[1].split(" got ", 1)[0]
        return BitrixDecodeError(f"expected {expected} at byte {at}, found {_show(data[at:at + 10])}", at)
    return BitrixDecodeError(f"malformed PHP serialize() data near byte {at} ({reason})", at)


def _bad_string(data: bytes, at: int) -> BitrixDecodeError | None:
    """The string whose declared byte length made the parse fail at `at`, if any: its
    text ends (its closing quote, or the data) elsewhere than the length says."""
    found = None
    for m in _PHP_STRING.finditer(data, 0, at + 1):
        end = m.end() + int(m.group(1))
        if end in (at, at - 1) or (end >= len(data) and at >= len(data)):
            found = m
    if found is None:
        return None
    start, length = found.start(), int(found.group(1))
    close = data.find(b'";', found.end())
    if close < 0:
        if found.end() + length < len(data):
            return None
        return BitrixDecodeError(
            f"data ends too early: the string at byte {start} declares {length} bytes but only "
            f"{len(data) - found.end()} follow (truncated C_FIELDS, or a wrong length)", start)
    if close - found.end() == length:
        return None
    return BitrixDecodeError(
        f"the string at byte {start} declares {length} bytes but its text is {close - found.end()} bytes "
        "long (string lengths count bytes in the site charset: is the charset right? was the text "
        "re-encoded after serialize()?)", start)


def _show(chunk: bytes) -> str:
    return repr(chunk.decode("ascii", "backslashreplace")) if chunk else "the end"


def _convert_array(pairs: _PhpArray, codec: str, charset: str, path: tuple, *, top: bool = False):
    keys: list[Any] = []
    values: list[Any] = []
    for key, value in pairs:
        if isinstance(key, bool) or not isinstance(key, (int, bytes)):
            raise BitrixDecodeError(f"array key {key!r} at {_where(path)} is not an integer or a string")
        if isinstance(key, bytes):
            key = _decode_text(key, codec, charset, path + ("(key)",))
        keys.append(key)
        values.append(_convert(value, codec, charset, path + (str(key),)))
    if not top and keys == list(range(len(keys))):
        return values
    return {str(k): v for k, v in zip(keys, values)}


def _convert(value: Any, codec: str, charset: str, path: tuple) -> Any:
    if isinstance(value, bytes):
        return clean_text(_decode_text(value, codec, charset, path))
    if isinstance(value, _PhpArray):
        return _convert_array(value, codec, charset, path)
    return value                       # int, float, bool, None


def _decode_text(raw: bytes, codec: str, charset: str, path: tuple) -> str:
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.start + 4]
        raise BitrixDecodeError(
            f"field {_where(path)} is not valid {charset}: byte {exc.start} of its value "
            f"({_show(bad)}) cannot be decoded; is the site charset right?") from None


def _where(path: tuple) -> str:
    return ".".join(path) if path else "(top level)"


def _decode_legacy(body: bytes, start: int, codec: str, charset: str) -> dict[str, Any]:
    """The old `KEY=VAL&KEY2=VAL2` form (CEvent::ExtractMailFields): split on "&", then
    on the first "="; in both halves `%1` → "&", `%3` → "=", `%2` → "%"."""
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        at = start + exc.start
        raise BitrixDecodeError(f"byte {at} ({_show(body[exc.start:exc.start + 4])}) is not valid {charset}; "
                                "is the site charset right?", at) from None
    fields: dict[str, Any] = {}
    pos = 0
    for part in text.split("&"):
        if part and "=" not in part:
            at = start + len(text[:pos].encode(codec))
            raise BitrixDecodeError(
                f"{part[:30]!r} at byte {at} has no \"=\": C_FIELDS is neither PHP serialize() output nor "
                "the old KEY=VALUE&KEY2=VALUE2 form", at)
        if part:
            key, value = part.split("=", 1)
            key = _unpercent(key)
            if key:                    # Bitrix skips empty names too
                fields[key] = clean_text(_unpercent(value))
        pos += len(part) + 1
    return fields


_PERCENT = re.compile(r"%[123]")
_PERCENT_CHARS = {"%1": "&", "%2": "%", "%3": "="}


def _unpercent(text: str) -> str:
    # One pass, so "%21" (an escaped "%" followed by "1") stays "%1".
    return _PERCENT.sub(lambda m: _PERCENT_CHARS[m.group()], text)


# Only entities closed by ";": html.unescape alone would also read HTML's legacy bare
# names, turning the "&para=1" of a URL's query string into "¶=1".
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")

# No-break spaces become plain spaces. SMS goes out in GSM-7 when it can, and GSM-7 has
# no NBSP: one U+00A0 (Bitrix puts "&nbsp;" in every formatted price) would force the
# whole message into UCS-2 — 70 characters per part instead of 160 — and a rule
# comparing with "1 500 руб." would not match either. Narrow and figure spaces (PHP
# intl number formats) likewise.
_NBSP = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2007": " "})


def clean_text(text: str) -> str:
    """HTML entities unescaped (`&quot;` → `"`, `&nbsp;` → a plain space); no-break
    spaces made plain spaces."""
    if "&" in text:
        text = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
    return text.translate(_NBSP)


# ---- one field, read by the database ------------------------------------------------

def php_field(dialect: str, column: str, key: str) -> str:
    """The text of top-level field `key` of a PHP-serialized array in `column`
    (`s:13:"ORDER_REAL_ID";s:2:"42";` or `…;i:42;` → 42), or NULL — an SQL expression
    for `dialect` ("mysql", "postgresql" or "sqlite"). The bitrix preset joins b_event to
    the order it names inside one SELECT; reading C_FIELDS in Python first would cost a
    round trip per row. Only plain top-level scalars are read, which is all a join needs;
    every event's fields still come from `decode_c_fields`."""
    assert re.fullmatch(r"[A-Z_]+", key)
    marker = f':"{key}";'
    n = len(marker)
    if dialect == "mysql":
        pos = f"LOCATE('{marker}', {column})"
        seg = f"SUBSTRING_INDEX(SUBSTRING({column}, {pos} + {n}, 80), ';', 1)"
        return f"(CASE WHEN {pos} > 0 THEN TRIM(BOTH '\"' FROM SUBSTRING_INDEX({seg}, ':', -1)) END)"
    if dialect == "postgresql":
        return f"substring({column} from '{marker}[a-zA-Z]:(?:[0-9]+:\")?([^\";]*)')"
    column = f"CAST({column} AS TEXT)"         # a BLOB would mix byte and character positions
    pos = f"instr({column}, '{marker}')"
    tail = f"substr({column}, {pos} + {n}, 80)"
    seg = f"substr({tail}, 1, instr({tail}, ';') - 1)"
    value = (f"(CASE WHEN substr({seg}, 1, 2) = 's:' THEN rtrim(substr({seg}, instr({seg}, '\"') + 1), '\"') "
             f"ELSE substr({seg}, 3) END)")
    return f"(CASE WHEN {pos} > 0 THEN {value} END)"
