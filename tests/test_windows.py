"""Sending windows: parsing, membership, and the next opening across midnight and DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from herald.engine.helpers.windows import WINDOW_FORMAT, SendWindow, parse_window

UTC = dt.timezone.utc
MSK = ZoneInfo("Europe/Moscow")
BER = ZoneInfo("Europe/Berlin")
NYC = ZoneInfo("America/New_York")
T = dt.time


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, start, end, normal", [
    ("09:00-21:00", T(9), T(21), "09:00-21:00"),
    ("9:00-21:00", T(9), T(21), "09:00-21:00"),
    ("09:00 - 21:00", T(9), T(21), "09:00-21:00"),
    ("  08:30-17:45 ", T(8, 30), T(17, 45), "08:30-17:45"),
    ("22:00-06:00", T(22), T(6), "22:00-06:00"),
    ("18:00-24:00", T(18), T(0), "18:00-24:00"),
    ("18:00-00:00", T(18), T(0), "18:00-24:00"),
    ("00:00-24:00", T(0), T(0), "00:00-24:00"),
])
def test_parse_window(text, start, end, normal):
    w = parse_window(text)
    assert (w.start, w.end) == (start, end)
    assert w.text == normal == str(w)
    assert parse_window(w.text) == w


@pytest.mark.parametrize("text, message", [
    ("9-21", WINDOW_FORMAT),
    ("09:00", WINDOW_FORMAT),
    ("09.00-21.00", WINDOW_FORMAT),
    ("", WINDOW_FORMAT),
    ("25:00-26:00", "hour 25 is out of range (00-23, or 24:00 as an end)"),
    ("09:00-21:60", "minute 60 is out of range (00-59)"),
    ("24:00-06:00", "a window cannot start at 24:00; use 00:00"),
    ("10:00-24:30", "24:30 is not a time; 24:00 (the end of the day) is the latest end"),
    ("09:00-09:00", "empty window: it starts and ends at 09:00; use 00:00-24:00 for the whole day"),
    ("00:00-00:00", "empty window: it starts and ends at 00:00; use 00:00-24:00 for the whole day"),
])
def test_parse_window_errors(text, message):
    with pytest.raises(ValueError) as info:
        parse_window(text)
    assert str(info.value) == message


def test_window_format_message():
    assert WINDOW_FORMAT == "window must look like HH:MM-HH:MM, e.g. 09:00-21:00"


def test_direct_construction_rejects_empty_window():
    with pytest.raises(ValueError):
        SendWindow(T(9), T(9))
    assert SendWindow(T(0), T(0)).whole_day


# ---------------------------------------------------------------- contains

@pytest.mark.parametrize("window, inside, outside", [
    ("09:00-21:00", [T(9), T(12), T(20, 59, 59)], [T(8, 59), T(21), T(23), T(0)]),
    ("22:00-06:00", [T(22), T(23, 59), T(0), T(5, 59)], [T(6), T(12), T(21, 59)]),
    ("18:00-24:00", [T(18), T(23, 59, 59, 999999)], [T(0), T(17, 59)]),
    ("00:00-24:00", [T(0), T(12), T(23, 59)], []),
    ("00:00-06:00", [T(0), T(5)], [T(6), T(23)]),
])
def test_contains(window, inside, outside):
    w = parse_window(window)
    assert all(w.contains(t) for t in inside)
    assert not any(w.contains(t) for t in outside)
    assert w.contains(T(12, tzinfo=UTC)) == w.contains(T(12))  # tzinfo is ignored


# ---------------------------------------------------------------- next_opening

def test_inside_returns_when_itself():
    w = parse_window("09:00-21:00")
    when = dt.datetime(2026, 5, 1, 10, 0, tzinfo=MSK)
    assert w.next_opening(when, MSK) is when
    in_utc = dt.datetime(2026, 5, 1, 7, 0, tzinfo=UTC)     # 10:00 in Moscow
    assert w.next_opening(in_utc, MSK) is in_utc


def test_naive_datetime_is_refused():
    with pytest.raises(ValueError):
        parse_window("09:00-21:00").next_opening(dt.datetime(2026, 5, 1, 8), MSK)


@pytest.mark.parametrize("window, when, expected", [
    ("09:00-21:00", (2026, 5, 1, 7, 0), (2026, 5, 1, 9, 0)),      # before: same day
    ("09:00-21:00", (2026, 5, 1, 21, 0), (2026, 5, 2, 9, 0)),     # at the end: next day
    ("09:00-21:00", (2026, 12, 31, 23, 0), (2027, 1, 1, 9, 0)),   # over the year end
    ("22:00-06:00", (2026, 5, 1, 12, 0), (2026, 5, 1, 22, 0)),    # wrapping window
    ("22:00-06:00", (2026, 5, 1, 6, 0), (2026, 5, 1, 22, 0)),
    ("00:00-06:00", (2026, 5, 1, 6, 0), (2026, 5, 2, 0, 0)),      # opens at midnight
    ("18:00-24:00", (2026, 5, 1, 0, 0), (2026, 5, 1, 18, 0)),
])
def test_next_opening_moscow(window, when, expected):
    got = parse_window(window).next_opening(dt.datetime(*when, tzinfo=MSK), MSK)
    assert got == dt.datetime(*expected, tzinfo=MSK)
    assert got.tzinfo is MSK


def test_next_opening_when_given_in_another_zone():
    # 19:00 UTC is 22:00 in Moscow: closed until 09:00 Moscow = 06:00 UTC next day.
    got = parse_window("09:00-21:00").next_opening(dt.datetime(2026, 1, 1, 19, 0, tzinfo=UTC), MSK)
    assert got == dt.datetime(2026, 1, 2, 6, 0, tzinfo=UTC)
    assert (got.tzinfo, got.hour) == (MSK, 9)


def test_next_opening_over_spring_forward_berlin():
    # 2026-03-29: 02:00 CET becomes 03:00 CEST. The 09:00 opening is 07:00 UTC, not 08:00.
    w = parse_window("09:00-21:00")
    got = w.next_opening(dt.datetime(2026, 3, 28, 22, 0, tzinfo=BER), BER)
    assert got.astimezone(UTC) == dt.datetime(2026, 3, 29, 7, 0, tzinfo=UTC)
    assert (got.hour, got.minute, got.utcoffset()) == (9, 0, dt.timedelta(hours=2))


def test_opening_inside_the_spring_gap_opens_when_clocks_jump():
    # 02:30 does not exist on 2026-03-29 in Berlin; the clock jumps from 02:00 CET to
    # 03:00 CEST, which is inside 02:30-05:00: the window opens at the jump (01:00 UTC).
    w = parse_window("02:30-05:00")
    got = w.next_opening(dt.datetime(2026, 3, 29, 0, 30, tzinfo=BER), BER)
    assert got.astimezone(UTC) == dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert (got.hour, got.minute) == (3, 0)
    # New York, 2026-03-08: 02:00 EST → 03:00 EDT.
    got = w.next_opening(dt.datetime(2026, 3, 8, 1, 0, tzinfo=NYC), NYC)
    assert got.astimezone(UTC) == dt.datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_whole_window_inside_the_gap_waits_a_day():
    w = parse_window("02:10-02:50")
    got = w.next_opening(dt.datetime(2026, 3, 29, 0, 0, tzinfo=BER), BER)
    assert got == dt.datetime(2026, 3, 30, 2, 10, tzinfo=BER)


def test_fall_back_reopens_when_the_wall_clock_repeats():
    # New York, 2026-11-01: 02:00 EDT becomes 01:00 EST, so 01:30 happens twice.
    w = parse_window("01:30-01:45")
    first = w.next_opening(dt.datetime(2026, 11, 1, 1, 0, tzinfo=NYC), NYC)
    assert first.astimezone(UTC) == dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)   # 01:30 EDT
    second = w.next_opening(dt.datetime(2026, 11, 1, 5, 50, tzinfo=UTC), NYC)     # 01:50 EDT
    assert second.astimezone(UTC) == dt.datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    assert second.fold == 1 and (second.hour, second.minute) == (1, 30)


def test_fall_back_jump_into_the_window():
    # Window 01:00-01:20: at 06:00 UTC the clock goes from 01:59:59 EDT back to 01:00 EST.
    w = parse_window("01:00-01:20")
    got = w.next_opening(dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC), NYC)   # 01:30 EDT
    assert got.astimezone(UTC) == dt.datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def test_wrapping_window_across_dst_berlin():
    w = parse_window("22:00-06:00")
    # Night of the spring change: open from 22:00 CET, closed from 06:00 CEST.
    assert w.next_opening(dt.datetime(2026, 3, 28, 23, 30, tzinfo=BER), BER).hour == 23
    got = w.next_opening(dt.datetime(2026, 3, 29, 6, 0, tzinfo=BER), BER)
    assert got.astimezone(UTC) == dt.datetime(2026, 3, 29, 20, 0, tzinfo=UTC)
    # Autumn: 2026-10-25 03:00 CEST → 02:00 CET.
    got = w.next_opening(dt.datetime(2026, 10, 25, 12, 0, tzinfo=BER), BER)
    assert got.astimezone(UTC) == dt.datetime(2026, 10, 25, 21, 0, tzinfo=UTC)


ZONES = [MSK, BER, NYC, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("America/Santiago")]
quarter = st.integers(0, 95).map(lambda q: dt.time(q // 4, q % 4 * 15))


@st.composite
def windows(draw):
    start = draw(st.integers(0, 95))
    end = (start + draw(st.integers(1, 95))) % 96
    return SendWindow(dt.time(start // 4, start % 4 * 15), dt.time(end // 4, end % 4 * 15))


# Instants (UTC) of DST changes in the zones above, to test around them.
CHANGES = [dt.datetime(*t, tzinfo=UTC) for t in [
    (2026, 3, 29, 1, 0), (2026, 10, 25, 1, 0),       # Berlin
    (2026, 3, 8, 7, 0), (2026, 11, 1, 6, 0),         # New York
    (2026, 4, 4, 15, 0), (2026, 10, 3, 15, 30),      # Lord Howe (30-minute change)
    (2026, 4, 5, 3, 0), (2026, 9, 6, 4, 0),          # Santiago (change at midnight)
]]
anytime = st.datetimes(dt.datetime(2024, 1, 1), dt.datetime(2028, 12, 31), timezones=st.just(UTC))
near_change = st.builds(lambda base, minutes, extra: base + dt.timedelta(minutes=minutes, seconds=extra),
                        st.sampled_from(CHANGES), st.integers(-36 * 60, 12 * 60),
                        st.sampled_from([0, 0, 0, 1, 59.5]))


@settings(max_examples=400, deadline=None)
@given(w=windows(), zone=st.sampled_from(ZONES), when=st.one_of(anytime, near_change))
def test_next_opening_is_the_first_open_instant(w, zone, when):
    got = w.next_opening(when, zone)
    assert got.tzinfo is not None
    assert w.contains(got.astimezone(zone).time())
    if got is when:
        return
    assert got.tzinfo is zone
    # a window that falls into a DST gap (Santiago changes at midnight) opens a day later
    assert when < got <= when + dt.timedelta(hours=50)
    # Nothing between `when` and the result is open (sampled each minute, plus the
    # instant just before the result).
    # subtract in UTC: arithmetic on a zoned datetime is wall-clock arithmetic
    assert not w.contains((got.astimezone(UTC) - dt.timedelta(microseconds=1)).astimezone(zone).time())
    t = when
    while t < got:
        assert not w.contains(t.astimezone(zone).time()), (t, got)
        t += dt.timedelta(minutes=1)
