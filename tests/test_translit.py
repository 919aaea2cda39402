"""Cyrillic → Latin so that a Russian SMS fits GSM-7."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.engine.helpers.segments import analyze
from herald.engine.helpers.translit import needs_translit, to_latin


def test_order_message_becomes_gsm7():
    latin = to_latin("Ваш заказ №123 принят")
    assert latin == "Vash zakaz N123 prinyat"
    assert analyze(latin).encoding == "GSM-7"
    assert not needs_translit(latin)


def test_translit_reduces_parts():
    text = "Ваш заказ №123 принят и будет доставлен завтра с 10:00 до 14:00. " * 2
    assert analyze(text).parts == 2
    assert analyze(to_latin(text)).parts == 1


@pytest.mark.parametrize(
    "cyr, lat",
    [
        ("Заказ", "Zakaz"),
        ("заказ", "zakaz"),
        ("ЗАКАЗ", "ZAKAZ"),
        ("ЩИ", "SCHI"),
        ("Щи", "Schi"),
        ("ЦЕНТР", "TSENTR"),
        ("Юлия", "Yuliya"),
        ("Ещё", "Esche"),
        ("объявление", "obyavlenie"),
        ("Новый", "Novy"),
    ],
)
def test_readable_russian(cyr, lat):
    assert to_latin(cyr) == lat


def test_ukrainian_unsubscribe_is_latin_only():
    latin = to_latin("ВІДПИСАТИСЯ")
    assert re.fullmatch(r"[A-Z]+", latin), latin
    assert latin == "VIDPISATISYA"


@pytest.mark.parametrize(
    "cyr, lat",
    [
        ("Їжак", "Yizhak"),
        ("Україна", "Ukrayina"),
        ("Єва", "Yeva"),
        ("синє", "sine"),
        ("ґанок", "ganok"),
        ("Ґанок", "Ganok"),
        ("Ўсё", "Use"),
        ("і", "i"),
    ],
)
def test_ukrainian_and_belarusian_letters(cyr, lat):
    assert to_latin(cyr) == lat


@pytest.mark.parametrize(
    "text",
    ["", "Hello, world!", "Order #123: 50% off, code SALE-2024", "😀👍🏽", "€ [x] {y} ~ | \\", "a\nb\tc", "Müller café"],
)
def test_non_cyrillic_passes_through(text):
    assert to_latin(text) == text
    assert not needs_translit(text)


def test_mixed_text_keeps_everything_around_cyrillic():
    assert to_latin("Код: 4821 😀 — SMS-код для #shop") == "Kod: 4821 😀 — SMS-kod dlya #shop"


def test_needs_translit():
    assert needs_translit("Привет")
    assert needs_translit("Hello, мир")
    assert needs_translit("ВІДПИСАТИСЯ")
    assert not needs_translit("Hello")
    assert not needs_translit("№ 5")
    assert not needs_translit("")


def test_decomposed_letters_do_not_leave_marks():
    assert to_latin("и\u0306од") == "yod"


def test_other_cyrillic_alphabets_become_latin():
    assert not needs_translit(to_latin("Қазақстан"))
    assert not needs_translit(to_latin("Ђорђе Јовановић"))


@given(st.text())
def test_never_raises_and_only_touches_cyrillic(text):
    latin = to_latin(text)
    assert isinstance(latin, str)
    if not needs_translit(text):
        assert latin == text.replace("№", "N")


@given(st.text(alphabet="абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯіїєґўІЇЄҐЎ .,!?-0123456789№"))
def test_russian_ukrainian_text_becomes_gsm7(text):
    latin = to_latin(text)
    assert not needs_translit(latin)
    assert analyze(latin).encoding == "GSM-7"
