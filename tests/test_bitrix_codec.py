"""Bitrix codec: C_FIELDS decoding (PHP serialize in the site charset, the legacy
KEY=VAL form) and sale mail events → canonical Herald events."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import phpserialize
import pytest
from hypothesis import given, settings, strategies as st

from herald.connectors.sql.bitrix.codec import (
    DEFAULT_ORDER_STATUSES, DEFAULT_SHIPMENT_STATUSES, BitrixDecodeError, decode_c_fields,
    mail_event_to_events, parse_money, with_phone,
)
from herald.engine.errors import HeraldError
from herald.engine.events import merge_previous, parse_event
from herald.engine.rules.matcher import Matcher
from herald.grammar.compiler import compile_text


def php_serialize(obj, charset: str = "utf-8") -> bytes:
    """What PHP's serialize() writes: string lengths are BYTES in `charset`."""
    if obj is None:
        return b"N;"
    if isinstance(obj, bool):
        return b"b:1;" if obj else b"b:0;"
    if isinstance(obj, int):
        return b"i:%d;" % obj
    if isinstance(obj, float):
        return b"d:%s;" % repr(obj).encode()
    if isinstance(obj, str):
        raw = obj.encode(charset)
        return b's:%d:"%s";' % (len(raw), raw)
    if isinstance(obj, (list, tuple)):
        obj = dict(enumerate(obj))
    if isinstance(obj, dict):
        body = b"".join(php_serialize(k, charset) + php_serialize(v, charset) for k, v in obj.items())
        return b"a:%d:{%s}" % (len(obj), body)
    raise TypeError(type(obj))


# Written by hand exactly as PHP emits them. "1&nbsp;500.00 руб." is 21 bytes in UTF-8
# (each Cyrillic letter 2 bytes) and 18 in windows-1251; "Иван Петров" 21 and 11.
HAND_UTF8 = (b'a:3:{s:8:"ORDER_ID";s:3:"123";s:5:"PRICE";s:21:"1&nbsp;500.00 \xd1\x80\xd1\x83\xd0\xb1.";'
             b's:10:"ORDER_USER";s:21:"\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd \xd0\x9f\xd0\xb5\xd1\x82\xd1\x80\xd0\xbe\xd0\xb2";}')
HAND_CP1251 = (b'a:3:{s:8:"ORDER_ID";s:3:"123";s:5:"PRICE";s:18:"1&nbsp;500.00 \xf0\xf3\xe1.";'
               b's:10:"ORDER_USER";s:11:"\xc8\xe2\xe0\xed \xcf\xe5\xf2\xf0\xee\xe2";}')
HAND_NESTED = (b'a:3:{s:8:"ORDER_ID";s:2:"42";s:5:"ITEMS";a:2:{i:0;a:2:{s:4:"NAME";s:5:"Shirt";s:3:"QTY";i:2;}'
               b'i:1;a:2:{s:4:"NAME";s:4:"Cap ";s:3:"QTY";i:1;}}s:4:"PROP";a:2:{s:5:"COLOR";s:3:"red";i:5;N;}}')
EXPECTED = {"ORDER_ID": "123", "PRICE": "1 500.00 руб.", "ORDER_USER": "Иван Петров"}


# ---- C_FIELDS: PHP serialize -------------------------------------------------------

def test_helper_matches_phpserialize():
    value = {"ORDER_ID": "7", "LIST": ["a", "б"], "N": 3, "X": None, "B": True}
    assert php_serialize(value) == phpserialize.dumps(value)


def test_hand_written_fixtures_utf8_and_cp1251():
    assert decode_c_fields(HAND_UTF8) == EXPECTED
    assert decode_c_fields(HAND_CP1251, "windows-1251") == EXPECTED
    assert decode_c_fields(HAND_CP1251, "cp1251") == EXPECTED
    # the same text, different byte lengths
    sent = {**EXPECTED, "PRICE": "1&nbsp;500.00 руб."}
    assert php_serialize(sent) == HAND_UTF8
    assert php_serialize(sent, "cp1251") == HAND_CP1251


def test_str_input_is_encoded_back_with_the_charset():
    assert decode_c_fields(HAND_UTF8.decode("utf-8")) == EXPECTED
    assert decode_c_fields(HAND_CP1251.decode("cp1251"), "windows-1251") == EXPECTED


def test_nested_arrays_become_lists_or_dicts():
    fields = decode_c_fields(HAND_NESTED)
    assert fields == {"ORDER_ID": "42",
                      "ITEMS": [{"NAME": "Shirt", "QTY": 2}, {"NAME": "Cap ", "QTY": 1}],
                      "PROP": {"COLOR": "red", "5": None}}
    # keys not 0..n-1 in order stay a dict with string keys
    assert decode_c_fields(php_serialize({"A": {1: "x", 0: "y"}})) == {"A": {"1": "x", "0": "y"}}
    assert decode_c_fields(php_serialize({"A": [], "B": {"X": []}})) == {"A": [], "B": {"X": []}}
    # the top level is always a dict of fields
    assert decode_c_fields(php_serialize(["a", "b"])) == {"0": "a", "1": "b"}


def test_cyrillic_in_nested_arrays_and_keys_cp1251():
    value = {"ПОЛЕ": ["Привет", {"ключ": "значение &quot;ок&quot;"}]}
    assert decode_c_fields(php_serialize(value, "cp1251"), "cp1251") == {
        "ПОЛЕ": ["Привет", {"ключ": 'значение "ок"'}]}


def test_entities_unescaped_and_nbsp_is_a_plain_space():
    raw = php_serialize({"PRICE": "1&nbsp;500&nbsp;руб.", "T": "&laquo;Шуба&raquo; &amp; &#8470;5 &#x41;",
                         "NB": "1\u00a0500", "URL": "https://x.ru/?a=1&para=2&copy=3"})
    fields = decode_c_fields(raw)
    assert fields["PRICE"] == "1 500 руб."
    assert "\u00a0" not in fields["PRICE"] and "\u00a0" not in fields["NB"]
    assert fields["NB"] == "1 500"
    assert fields["T"] == "«Шуба» & №5 A"
    # bare legacy entity names in a URL's query are not entities
    assert fields["URL"] == "https://x.ru/?a=1&para=2&copy=3"


def test_scalars_and_empty():
    assert decode_c_fields(b'a:3:{s:1:"I";i:5;s:1:"D";d:1.5;s:1:"B";b:0;}') == {"I": 5, "D": 1.5, "B": False}
    assert decode_c_fields(b"a:0:{}") == {}
    assert decode_c_fields(b"") == {}
    assert decode_c_fields(None) == {}
    assert decode_c_fields(b"  " + HAND_UTF8 + b"\n") == EXPECTED


def test_php_object_becomes_its_members():
    raw = b'a:1:{s:1:"D";O:8:"DateTime":2:{s:4:"date";s:10:"2024-05-19";s:11:"\x00*\x00timezone";s:3:"UTC";}}'
    assert decode_c_fields(raw) == {"D": {"date": "2024-05-19", "timezone": "UTC"}}


# ---- C_FIELDS: the legacy form ------------------------------------------------------

def test_legacy_form_with_escapes():
    raw = "ORDER_ID=12&TEXT=a%1b%3c%2d&PCT=100%2&LIT=%21&EMAIL=x@y.ru".encode()
    assert decode_c_fields(raw) == {"ORDER_ID": "12", "TEXT": "a&b=c%d", "PCT": "100%",
                                    "LIT": "%1", "EMAIL": "x@y.ru"}


def test_legacy_form_cp1251_entities_and_empty_parts():
    raw = "ИМЯ=Иван&&PRICE=1&nbsp;500 руб.&EMPTY=&=skipped".replace("&nbsp;", "%1nbsp;").encode("cp1251")
    assert decode_c_fields(raw, "cp1251") == {"ИМЯ": "Иван", "PRICE": "1 500 руб.", "EMPTY": ""}


def test_legacy_form_key_escapes_and_last_wins():
    assert decode_c_fields(b"A%3B=1&A%3B=2") == {"A=B": "2"}


# ---- C_FIELDS: malformed ------------------------------------------------------------

def _error(raw, charset="utf-8") -> BitrixDecodeError:
    with pytest.raises(BitrixDecodeError) as info:
        decode_c_fields(raw, charset)
    assert isinstance(info.value, HeraldError)
    return info.value


@pytest.mark.parametrize("fixture", [HAND_UTF8, HAND_NESTED])
def test_every_truncation_is_an_error(fixture):
    for cut in range(1, len(fixture)):
        _error(fixture[:cut])


def test_truncated_inside_a_string_names_it():
    err = _error(HAND_UTF8[:60])
    assert "ends too early" in str(err) and "byte 42" in str(err)
    assert err.offset == 42                 # s:21:"… of PRICE
    assert _error(HAND_UTF8[:-1]).offset == len(HAND_UTF8) - 1


def test_wrong_length_names_the_string_and_offset():
    err = _error(HAND_UTF8.replace(b"s:21:\"1&nbsp;", b"s:18:\"1&nbsp;"))
    assert err.offset == 42
    assert "declares 18 bytes but its text is 21 bytes" in str(err)
    assert _error(HAND_UTF8.replace(b's:3:"123"', b's:4:"123"')).offset == 20


def test_character_counts_instead_of_bytes_are_an_error():
    # a writer that counted characters, not bytes: "Иван Петров" is 11 characters
    bad = HAND_UTF8.replace(b"s:21:\"\xd0\x98", b"s:11:\"\xd0\x98")
    assert "declares 11 bytes but its text is 21 bytes" in str(_error(bad))


def test_wrong_charset_is_an_error_not_mojibake():
    # cp1251 bytes read as UTF-8: the lengths are right, the bytes are not UTF-8
    err = _error(HAND_CP1251, "utf-8")
    assert "ORDER_USER" in str(err) or "PRICE" in str(err)
    assert "not valid utf-8" in str(err)
    # UTF-8 bytes with cp1251 lengths would never line up
    _error(HAND_UTF8.replace(b"s:21", b"s:18", 1), "utf-8")


@pytest.mark.parametrize("raw, words", [
    (HAND_UTF8 + b"junk", "after the end"),
    (b's:3:"abc";', "not an array"),
    (b"i:5;", "not an array"),
    (b"a:1:{i:0;X}", "unexpected 'X' at byte 9"),
    (b"a:x:{}", "near byte 3"),
    (b"a:1:[i:0;i:1;}", "expected b'{' at byte 4"),
    (b"a:1:{a:0:{}i:1;}", "not an integer or a string"),
    (b"hello world", "neither PHP serialize() output nor"),
    (b"A=1&B", "has no \"=\""),
    (b'a:1:{s:1:"A";r:1;}', "unexpected 'r'"),
])
def test_malformed_inputs(raw, words):
    assert words in str(_error(raw))


def test_too_deep_nesting_is_an_error():
    raw = b"a:1:{i:0;" * 5000 + b"N;" + b"}" * 5000
    assert "nested too deeply" in str(_error(raw))


def test_unknown_charset():
    assert "unknown charset" in str(_error(HAND_UTF8, "utf-99"))


def test_legacy_bad_bytes_offset():
    err = _error(b"A=1&B=\xff\xfe", "utf-8")
    assert err.offset == 6


TEXT = st.text(alphabet=st.sampled_from("abcsXYZ019 .,:;\"'{}&аБвЁёжЩ№-_\n"), max_size=12)
VALUES = st.recursive(TEXT | st.integers(-10**6, 10**6) | st.none(),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT.filter(lambda s: not s.isdigit()), inner, max_size=3),
                      max_leaves=10)


def _as_php_reads(value):
    """A nested value as it comes back: an empty array has no keys, so it is a list."""
    if isinstance(value, dict):
        return [] if not value else {k: _as_php_reads(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_php_reads(v) for v in value]
    return value


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(TEXT.filter(lambda s: not s.isdigit()), VALUES, max_size=5),
       st.sampled_from(["utf-8", "cp1251"]))
def test_roundtrip_and_truncation_property(fields, charset):
    raw = php_serialize(fields, charset)
    assert decode_c_fields(raw, charset) == {k: _as_php_reads(v) for k, v in fields.items()}
    for cut in range(1, len(raw), max(1, len(raw) // 25)):
        with pytest.raises(BitrixDecodeError):
            decode_c_fields(raw[:cut], charset)


# ---- money -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1 500.50 руб.", "1500.50"),
    ("1&nbsp;500,50", "1500.50"),
    ("1500", "1500"),
    ("1&nbsp;500.00 ₽", "1500.00"),
    ("1\u00a0500 руб.", "1500"),
    ("1\u202f234\u202f567,8 ₽", "1234567.8"),
    ("$1,500.00", "1500.00"),
    ("1.500,00 €", "1500.00"),
    ("1,500", "1500"),
    ("12,5", "12.5"),
    ("0.50", "0.50"),
    ("Итого: 990 руб.", "990"),
    ("-200 руб.", "-200"),
    (1500, "1500"),
    (12.5, "12.5"),
    ("бесплатно", None),
    ("", None),
    (None, None),
    ("19.05.2024", None),
    ("1 50 руб.", None),
])
def test_parse_money(text, expected):
    assert parse_money(text) == expected


# ---- mail events → events ----------------------------------------------------------

NEW_ORDER = {
    "ORDER_ID": "A-1024", "ORDER_REAL_ID": "1024", "ORDER_ACCOUNT_NUMBER_ENCODE": "A-1024",
    "ORDER_DATE": "19.05.2024 14:03:11", "ORDER_USER": "Иван Петров", "PRICE": "1 500.00 руб.",
    "EMAIL": "ivan@example.ru", "BCC": "", "ORDER_LIST": "Рубашка - 1 шт.: 1 500 руб.",
    "SALE_EMAIL": "sale@shop.ru", "DELIVERY_PRICE": "300 руб.", "ORDER_PUBLIC_URL": "https://shop.ru/p/?h=abc",
}
BASE = {"ORDER_ID": "A-1024", "ORDER_REAL_ID": "1024", "ORDER_DATE": "19.05.2024 14:03:11",
        "EMAIL": "ivan@example.ru", "SALE_EMAIL": "sale@shop.ru", "ORDER_PUBLIC_URL": "https://shop.ru/p/?h=abc"}
TIME = "2024-05-19T14:03:11+03:00"


def convert(name, fields, row_id=77, **kw):
    events = mail_event_to_events(name, fields, row_id=row_id, site="s1", time=TIME, **kw)
    for event in events:            # every event is valid at Herald's boundary and JSON
        parse_event(json.loads(json.dumps(event)), default_site="s1")
    return events


def test_mail_event_always_first_with_flat_fields():
    mail, = convert("SUBSCRIBE_CONFIRM", {"ID": "5", "EMAIL": "a@b.ru", "CONFIRM_CODE": "x"})
    assert mail == {"type": "mail.SUBSCRIBE_CONFIRM", "id": "bitrix:b_event:77", "site": "s1", "time": TIME,
                    "data": {"ID": "5", "EMAIL": "a@b.ru", "CONFIRM_CODE": "x"}}
    mail, = mail_event_to_events("SALE_ORDER_REMIND_PAYMENT", BASE, row_id="9", site="s2", time=None)
    assert "time" not in mail and mail["site"] == "s2" and mail["id"] == "bitrix:b_event:9"


def test_new_order():
    mail, created = convert("SALE_NEW_ORDER", NEW_ORDER)
    assert mail["type"] == "mail.SALE_NEW_ORDER" and mail["data"] == NEW_ORDER
    assert created["type"] == "order.created"
    assert created["id"] == "bitrix:b_event:77:order.created"
    assert "previous" not in created
    data = created["data"]
    assert data["order"] == {"id": 1024, "number": "A-1024", "date": "19.05.2024 14:03:11",
                             "url": "https://shop.ru/p/?h=abc", "price": "1500.00", "delivery_price": "300",
                             "items": "Рубашка - 1 шт.: 1 500 руб."}
    assert data["customer"] == {"name": "Иван Петров", "email": "ivan@example.ru"}
    # the flat Bitrix fields are kept, the formatted PRICE as text
    assert {k: data[k] for k in NEW_ORDER} == NEW_ORDER
    assert data["PRICE"] == "1 500.00 руб."


def test_new_order_from_c_fields_with_nbsp_price():
    fields = decode_c_fields(php_serialize({**NEW_ORDER, "PRICE": "1&nbsp;500.00 ₽"}))
    _, created = convert("SALE_NEW_ORDER", fields)
    assert created["data"]["PRICE"] == "1 500.00 ₽"
    assert created["data"]["order"]["price"] == "1500.00"


def test_unparseable_price_is_left_out():
    _, created = convert("SALE_NEW_ORDER", {**NEW_ORDER, "PRICE": "по запросу"})
    assert "price" not in created["data"]["order"] and created["data"]["PRICE"] == "по запросу"


def test_paid():
    _, ev = convert("SALE_ORDER_PAID", BASE)
    assert ev["type"] == "order.updated" and ev["id"] == "bitrix:b_event:77:order.updated"
    assert ev["data"]["order"]["paid"] is True and ev["data"]["order"]["id"] == 1024
    assert ev["previous"] == {"order": {"paid": False}}
    assert ev["data"]["ORDER_ID"] == "A-1024"


def test_cancel():
    _, ev = convert("SALE_ORDER_CANCEL", {**BASE, "ORDER_CANCEL_DESCRIPTION": "Передумал"})
    assert ev["data"]["order"]["canceled"] is True
    assert ev["data"]["order"]["cancel_reason"] == "Передумал"
    assert ev["previous"] == {"order": {"canceled": False}}


def test_delivery_allowed_with_shipment():
    _, ev = convert("SALE_ORDER_DELIVERY", {**BASE, "SHIPMENT_ID": "311", "SHIPMENT_DATE": "20.05.2024"})
    assert ev["type"] == "order.updated"
    assert ev["data"]["order"]["delivery_allowed"] is True
    assert ev["previous"] == {"order": {"delivery_allowed": False}}
    assert ev["data"]["shipment"] == {"id": 311, "order_id": 1024, "delivery_allowed": True, "date": "20.05.2024"}
    _, plain = convert("SALE_ORDER_DELIVERY", BASE)
    assert "shipment" not in plain["data"]


def test_tracking_number():
    _, ev = convert("SALE_ORDER_TRACKING_NUMBER", {**BASE, "ORDER_TRACKING_NUMBER": "RA123456789RU"})
    assert ev["type"] == "order.updated"
    assert ev["data"]["order"]["tracking_number"] == "RA123456789RU"
    assert ev["previous"] == {"order": {"tracking_number": None}}
    assert "shipment" not in ev["data"]
    _, ev = convert("SALE_ORDER_TRACKING_NUMBER", {**BASE, "ORDER_TRACKING_NUMBER": "RA1RU", "SHIPMENT_ID": "8",
                                                   "DELIVERY_NAME": "СДЭК"})
    assert ev["data"]["shipment"] == {"id": 8, "order_id": 1024, "delivery_name": "СДЭК", "tracking_number": "RA1RU"}


def test_order_status_changed():
    fields = {**BASE, "ORDER_STATUS": "Выполнен", "ORDER_DESCRIPTION": "Спасибо"}
    _, ev = convert("SALE_STATUS_CHANGED_F", fields)
    assert ev["type"] == "order.updated"
    assert ev["data"]["order"]["status"] == "F"
    assert ev["data"]["order"]["status_name"] == "Выполнен"
    assert ev["data"]["order"]["status_description"] == "Спасибо"
    assert ev["previous"] == {"order": {"status": None, "status_name": None}}
    # the name from status_names, then the default, when the mail has none
    _, ev = convert("SALE_STATUS_CHANGED_P", BASE, status_names={"P": "Оплачен"})
    assert ev["data"]["order"]["status_name"] == "Оплачен"
    _, ev = convert("SALE_STATUS_CHANGED_N", BASE)
    assert ev["data"]["order"]["status_name"] == DEFAULT_ORDER_STATUSES["N"] == "Принят, ожидается оплата"
    _, ev = convert("SALE_STATUS_CHANGED_ZZ", BASE)
    assert ev["data"]["order"]["status"] == "ZZ" and "status_name" not in ev["data"]["order"]


def test_shipment_status_changed():
    fields = {**BASE, "SHIPMENT_ID": "311", "SHIPMENT_STATUS": "Отгружен"}
    _, ev = convert("SALE_STATUS_CHANGED_DF", fields)
    assert ev["type"] == "shipment.updated" and ev["id"] == "bitrix:b_event:77:shipment.updated"
    assert ev["data"]["shipment"] == {"id": 311, "order_id": 1024, "status": "DF", "status_name": "Отгружен"}
    assert ev["data"]["order"]["number"] == "A-1024"
    assert ev["previous"] == {"shipment": {"status": None, "status_name": None}}
    # a default shipment code without SHIPMENT_ID, the default name
    _, ev = convert("SALE_STATUS_CHANGED_DA", BASE)
    assert ev["type"] == "shipment.updated" and ev["data"]["shipment"]["status_name"] == "Собирается"
    # a shop's own shipment status, by code list or by SHIPMENT_ID
    _, ev = convert("SALE_STATUS_CHANGED_DX", BASE, shipment_status_codes={"DX"}, status_names={"DX": "На складе"})
    assert ev["type"] == "shipment.updated" and ev["data"]["shipment"]["status_name"] == "На складе"
    _, ev = convert("SALE_STATUS_CHANGED_QQ", {**BASE, "SHIPMENT_ID": "5"})
    assert ev["type"] == "shipment.updated"
    _, ev = convert("SALE_STATUS_CHANGED_DX", BASE)
    assert ev["type"] == "order.updated"


def test_tracking_status_changed():
    fields = {"ORDER_NO": "A-1024", "ORDER_DATE": "19.05.2024", "ORDER_USER": "Иван", "SHIPMENT_NO": "A-1024/1",
              "EMAIL": "ivan@example.ru", "STATUS_NAME": "В пути", "STATUS_DESCRIPTION": "",
              "TRACKING_NUMBER": "RA1RU", "DELIVERY_NAME": "Почта России"}
    _, ev = convert("SALE_ORDER_SHIPMENT_STATUS_CHANGED", fields)
    assert ev["type"] == "shipment.updated"
    assert ev["data"]["shipment"] == {"number": "A-1024/1", "tracking_status_name": "В пути",
                                      "tracking_number": "RA1RU", "delivery_name": "Почта России"}
    assert ev["data"]["order"] == {"number": "A-1024", "date": "19.05.2024"}
    assert ev["data"]["STATUS_NAME"] == "В пути"
    assert ev["previous"] == {"shipment": {"tracking_status_name": None}}


def test_ids_are_deterministic_and_per_row():
    first = convert("SALE_ORDER_PAID", BASE, row_id=5)
    assert convert("SALE_ORDER_PAID", dict(BASE), row_id=5) == first
    assert convert("SALE_ORDER_PAID", BASE, row_id="5") == first
    other = convert("SALE_ORDER_PAID", BASE, row_id=6)
    assert {e["id"] for e in first}.isdisjoint(e["id"] for e in other)
    assert [e["id"] for e in first] == ["bitrix:b_event:5", "bitrix:b_event:5:order.updated"]


def test_events_do_not_share_or_alias_input():
    fields = {**BASE, "NESTED": {"A": ["1"]}}
    mail, ev = convert("SALE_ORDER_PAID", fields)
    mail["data"]["NESTED"]["A"].append("2")
    assert ev["data"]["NESTED"] == {"A": ["1"]} and fields["NESTED"] == {"A": ["1"]}


def test_phone_only_from_phone_fields():
    _, ev = convert("SALE_ORDER_PAID", BASE)
    assert "phone" not in ev["data"]["customer"]
    _, ev = convert("SALE_ORDER_PAID", {**BASE, "ORDER_PHONE": "8 (912) 345-67-89"})
    assert ev["data"]["customer"]["phone"] == "+79123456789"
    _, ev = convert("SALE_ORDER_PAID", {**BASE, "PHONE": " звонить вечером "})
    assert ev["data"]["customer"]["phone"] == "звонить вечером"


def test_with_phone():
    mail, ev = convert("SALE_NEW_ORDER", NEW_ORDER)
    out = with_phone(ev, "8 912 345 67 89")
    assert out["data"]["customer"] == {"name": "Иван Петров", "email": "ivan@example.ru", "phone": "+79123456789"}
    assert "phone" not in ev["data"]["customer"]                  # a copy
    assert with_phone(ev, "12")["data"]["customer"]["phone"] == "12"
    assert with_phone(ev, None) == ev and with_phone(ev, "  ") == ev
    assert with_phone(mail, "89123456789") == mail
    assert with_phone({"type": "order.updated", "data": {}}, "+79123456789")["data"] == {
        "customer": {"phone": "+79123456789"}}


def test_odd_event_names_and_bad_rows():
    mail, = convert("MY-FORM.1", {"A": "1"})
    assert mail["type"] == "mail.MY_FORM_1"
    mail, = convert("1C_EXPORT", {})
    assert mail["type"] == "mail._1C_EXPORT"
    with pytest.raises(BitrixDecodeError):
        mail_event_to_events("", {}, row_id=1, site="s1", time=None)
    with pytest.raises(BitrixDecodeError):
        mail_event_to_events("SALE_NEW_ORDER", {}, row_id=None, site="s1", time=None)
    # no fields at all: still both events, with empty objects
    mail, created = convert("SALE_NEW_ORDER", {})
    assert created["data"] == {"order": {}, "customer": {}}


def test_datetime_time_is_iso():
    when = datetime(2024, 5, 19, 11, 3, tzinfo=timezone.utc)
    mail, = mail_event_to_events("X", {}, row_id=1, site="s1", time=when)
    assert mail["time"] == "2024-05-19T11:03:00+00:00"


def test_default_status_tables():
    assert dict(DEFAULT_ORDER_STATUSES) == {"N": "Принят, ожидается оплата",
                                            "P": "Оплачен, формируется к отправке", "F": "Выполнен"}
    assert list(DEFAULT_SHIPMENT_STATUSES) == ["DN", "DA", "DG", "DT", "DS", "DF"]
    assert DEFAULT_SHIPMENT_STATUSES["DF"] == "Отгружен"


# ---- with Herald's matcher ---------------------------------------------------------

RULES = compile_text('''
rule "done" on order.status == "F" send sms to a text "x"
rule "status" on order.status changes send sms to a text "x"
rule "n-to-p" on order.status changes from "N" to "P" send sms to a text "x"
rule "paid" on order.paid == true send sms to a text "x"
rule "shipped" on shipment.status == "DF" send sms to a text "x"
rule "mail" on mail.SALE_ORDER_PAID send sms to a text "x"
''', "t.rules")
assert RULES.diagnostics == ()
MATCHER = Matcher(RULES.rules)


def fired(event_dict) -> list[str]:
    event = parse_event(event_dict, default_site="s1")
    previous = merge_previous(event.data, event.previous) if event.previous is not None else None
    return sorted(r.name for r in MATCHER.match(event, previous))


def test_status_mail_fires_state_rules_even_for_an_unseen_or_returning_order():
    _, ev = convert("SALE_STATUS_CHANGED_F", {**BASE, "ORDER_STATUS": "Выполнен"})
    # previous holds status null: the old value differs from "F", so become-true fires
    assert fired(ev) == ["done", "status"]
    _, ev = convert("SALE_STATUS_CHANGED_P", BASE)
    assert fired(ev) == ["status"]          # "changes from N" needs an old value the mail lacks
    _, ev = convert("SALE_STATUS_CHANGED_DF", {**BASE, "SHIPMENT_ID": "3"})
    assert fired(ev) == ["shipped"]


def test_paid_mail_fires_both_the_mail_and_the_state_rule():
    mail, ev = convert("SALE_ORDER_PAID", BASE)
    assert fired(mail) == ["mail"]
    assert fired(ev) == ["paid"]
