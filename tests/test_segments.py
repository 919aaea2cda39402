"""SMS encoding and part counts: what the shop will be billed for."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.engine.helpers.segments import Segments, analyze, split


def test_empty_text_has_no_parts():
    assert analyze("") == Segments("GSM-7", 0, 0, 160)
    assert split("") == []


def test_short_latin_is_one_gsm7_part():
    assert analyze("Your order #123 is ready!") == Segments("GSM-7", 25, 1, 160)


@pytest.mark.parametrize(
    "length, parts",
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_boundaries(length, parts):
    seg = analyze("a" * length)
    assert seg.encoding == "GSM-7"
    assert seg.units == length
    assert seg.parts == parts
    assert seg.per_part == (160 if parts == 1 else 153)


@pytest.mark.parametrize(
    "length, parts",
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_boundaries(length, parts):
    seg = analyze("ж" * length)
    assert seg.encoding == "UCS-2"
    assert seg.units == length
    assert seg.parts == parts
    assert seg.per_part == (70 if parts == 1 else 67)


def test_cyrillic_text_is_ucs2():
    assert analyze("Ваш заказ №123 принят").encoding == "UCS-2"
    # One Cyrillic letter is enough to switch the whole message.
    assert analyze("a" * 100 + "я").encoding == "UCS-2"


@pytest.mark.parametrize("char", ["€", "[", "]", "{", "}", "^", "~", "|", "\\", "\f"])
def test_extension_chars_count_twice(char):
    seg = analyze(char)
    assert seg.encoding == "GSM-7"
    assert seg.units == 2
    assert analyze("a" * 158 + char).parts == 1   # 160 septets
    assert analyze("a" * 159 + char).parts == 2   # 161 septets


@pytest.mark.parametrize("char", ["@", "£", "$", "¥", "è", "é", "Ä", "ñ", "ü", "à", "Δ", "_", "\n", "\r", " "])
def test_basic_gsm_chars_count_once(char):
    assert analyze(char) == Segments("GSM-7", 1, 1, 160)


@pytest.mark.parametrize("text", ["`", "«цитата»", "—", "…", "’", "😀", "\x1b"])
def test_non_gsm_chars_switch_to_ucs2(text):
    assert analyze(text).encoding == "UCS-2"


def test_extension_char_is_not_split_across_parts():
    # 152 basic + "€" at septets 153-154: the pair may not straddle parts,
    # so part one holds only 152 septets and "€" opens part two.
    text = "a" * 152 + "€" + "b" * 10
    parts = split(text)
    assert parts == ["a" * 152, "€" + "b" * 10]
    assert analyze(text).parts == 2


def test_extension_chars_fill_a_part_exactly():
    text = "€" * 81  # 162 septets: 76 fit in part one (152), the rest in part two
    assert analyze(text).units == 162
    assert [len(p) for p in split(text)] == [76, 5]


def test_extension_chars_can_add_a_part():
    # 306 septets of "a" fit 2 parts; with every part losing one septet to a
    # straddling "€" the same length needs 3.
    assert analyze("a" * 152 + "€" + "a" * 151).parts == 2   # 152 | 2+151 = 153
    assert analyze("a" * 152 + "€" + "a" * 152).parts == 3


def test_emoji_counts_two_units():
    seg = analyze("😀")
    assert seg == Segments("UCS-2", 2, 1, 70)
    assert analyze("😀" * 35).parts == 1   # 70 units
    assert analyze("😀" * 35 + "a").parts == 2


def test_surrogate_pair_is_not_split_across_parts():
    text = "ж" * 66 + "😀" + "ж" * 5
    parts = split(text)
    assert parts == ["ж" * 66, "😀" + "ж" * 5]
    assert analyze(text).parts == 2


def test_only_emoji_multipart():
    # 67 units a part, but pairs cannot be split: 33 emoji (66 units) per part.
    text = "😀" * 36  # 72 units
    assert analyze(text).units == 72
    assert [len(p) for p in split(text)] == [33, 3]


def test_split_single_part_returns_text():
    assert split("Hello") == ["Hello"]
    assert split("Привет") == ["Привет"]


def test_split_gsm7_parts():
    text = "x" * 400
    parts = split(text)
    assert [len(p) for p in parts] == [153, 153, 94]
    assert "".join(parts) == text


@given(st.text(max_size=600))
def test_split_matches_analyze(text):
    seg = analyze(text)
    parts = split(text)
    assert len(parts) == seg.parts
    assert "".join(parts) == text
    for part in parts:
        if seg.encoding == "UCS-2":
            units = len(part.encode("utf-16-le", "surrogatepass")) // 2
        else:
            units = analyze(part).units
        assert units <= seg.per_part


@given(st.text(alphabet="abc€[]{}^~|\\ ", max_size=600))
def test_gsm7_parts_respect_153(text):
    seg = analyze(text)
    assert seg.encoding == "GSM-7"
    for part in split(text):
        assert analyze(part).units <= (160 if seg.parts == 1 else 153)
