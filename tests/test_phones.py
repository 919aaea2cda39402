"""Phone normalisation: what a shop's recipient list turns into."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.engine.helpers.phones import Phone, normalize_many, normalize_phone


@pytest.mark.parametrize(
    "raw",
    [
        "8 (912) 345-67-89",
        "8-912-345-67-89",
        "89123456789",
        "+7 912 345-67-89",
        "+7(912)3456789",
        "7 912 345 67 89",
        "79123456789",
        "9123456789",
        " 8 912 345 67 89 ",
        89123456789,
        79123456789,
        89123456789.0,  # a spreadsheet column of numbers
    ],
)
def test_russian_formats_become_e164(raw):
    phone = normalize_phone(raw)
    assert phone.e164 == "+79123456789"
    assert phone.error is None
    assert phone.ok


def test_trunk_8_becomes_plus_7():
    assert normalize_phone("89001234567").e164 == "+79001234567"
    assert normalize_phone("8 800 555-35-35").e164 == "+78005553535"
    assert normalize_phone("8 (495) 123-45-67").e164 == "+74951234567"


def test_raw_text_is_kept_for_reports():
    assert normalize_phone("8 (912) 345-67-89").raw == "8 (912) 345-67-89"
    assert normalize_phone(89123456789).raw == "89123456789"


@pytest.mark.parametrize(
    "raw, e164",
    [
        ("+380 50 123 4567", "+380501234567"),    # Ukraine
        ("+375 29 123-45-67", "+375291234567"),   # Belarus
        ("+49 151 23456789", "+4915123456789"),   # Germany, mobile
        ("+49 30 123456", "+4930123456"),         # Germany, Berlin landline
        ("+7 701 123 45 67", "+77011234567"),     # Kazakhstan shares +7
        ("0049 151 23456789", "+4915123456789"),  # "00" international prefix
        ("810 49 151 23456789", "+4915123456789"),  # Russian international prefix
    ],
)
def test_foreign_numbers(raw, e164):
    assert normalize_phone(raw).e164 == e164


def test_foreign_number_with_another_default_region():
    assert normalize_phone("050 123 4567", "UA").e164 == "+380501234567"
    assert normalize_phone("050 123 4567", "ua").e164 == "+380501234567"


@pytest.mark.parametrize(
    "raw",
    [
        "+7 900 123-45-67 доб. 123",
        "+7 900 123-45-67 ext. 12",
        "+7 900 123-45-67 x12",
        "+7 900 123-45-67 (мобильный)",
        "тел: 8 900 123 45 67",
        "Иван 8-900-123-45-67 звонить после 18",
    ],
)
def test_extensions_and_remarks_are_dropped(raw):
    assert normalize_phone(raw).e164 == "+79001234567"


@pytest.mark.parametrize("raw", ["", "   ", None])
def test_missing_number(raw):
    phone = normalize_phone(raw)
    assert not phone.ok
    assert phone.e164 is None
    assert phone.error == "no phone number"


def test_invalid_number_is_an_error_not_an_exception():
    phone = normalize_phone("12345")
    assert not phone.ok
    assert phone.e164 is None
    assert phone.error.startswith('"12345" is not a valid phone number (region RU)')


@pytest.mark.parametrize(
    "raw",
    ["abc", "+7 900 123 45 678", "8 900 123", "+1 555", "7", "0000000000", True, 12345, [], {}, object()],
)
def test_garbage_is_reported(raw):
    phone = normalize_phone(raw)
    assert not phone.ok
    assert phone.error


def test_plus_number_error_does_not_blame_the_region():
    assert "region" not in normalize_phone("+1 555").error


def test_two_numbers_in_one_field():
    phone = normalize_phone("89001234567, 89007654321")
    assert not phone.ok
    assert "more than one" in phone.error


def test_very_long_input():
    phone = normalize_phone("8" * 10_000)
    assert not phone.ok
    assert len(phone.error) < 100  # the message quotes only the start


def test_unknown_region_only_matters_without_plus():
    assert not normalize_phone("89001234567", "XX").ok
    assert normalize_phone("+79001234567", "XX").e164 == "+79001234567"


def test_normalize_many_keeps_order_and_bad_entries():
    phones = normalize_many(["8 912 345 67 89", "", "+380501234567", "12"], "RU")
    assert [p.e164 for p in phones] == ["+79123456789", None, "+380501234567", None]
    assert [p.ok for p in phones] == [True, False, True, False]


def test_normalize_many_given_a_single_string():
    assert [p.e164 for p in normalize_many("89001234567")] == ["+79001234567"]


def test_normalize_many_default_region():
    assert [p.e164 for p in normalize_many(["050 123 4567"], default_region="UA")] == ["+380501234567"]


def test_phone_is_immutable():
    phone = normalize_phone("89001234567")
    with pytest.raises(AttributeError):
        phone.e164 = "+1"  # type: ignore[misc]


@settings(max_examples=300)
@given(st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.binary()),
       st.sampled_from(["RU", "UA", "DE", "US", "XX", ""]))
def test_never_raises(raw, region):
    phone = normalize_phone(raw, region)
    assert isinstance(phone, Phone)
    assert phone.ok == (phone.e164 is not None)
    assert (phone.e164 is None) == (phone.error is not None)
    if phone.ok:
        assert phone.e164.startswith("+") and phone.e164[1:].isdigit()


@given(st.text(alphabet="0123456789 ()-+.x", max_size=30))
def test_never_raises_on_phone_like_text(raw):
    phone = normalize_phone(raw)
    assert (phone.e164 is None) == (phone.error is not None)
