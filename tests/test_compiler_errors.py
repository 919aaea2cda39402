"""Bad rule files: the exact message, its FILE:LINE:COL, and what to do."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from herald.grammar.compiler import compile_text

EXPECTED_AFTER_PATH = ("expected `after`, `and`, `changes`, `contains`, `if`, `in`, `is`, `matches`, `not`, "
                       "`once`, `or`, `send`, `subscribe`, `unsubscribe` or a comparison (==, !=, <, <=, >, >=)")

BAD = [
    ('on order.status = "F" send sms to customer.phone text "x"',
     f"t.rules:1:17: error: unexpected `=`; {EXPECTED_AFTER_PATH}", "compare with `==`"),
    ('on order.created sned sms to customer.phone text "x"',
     f"t.rules:1:18: error: unexpected `sned`; {EXPECTED_AFTER_PATH}", 'did you mean "send"?'),
    ('on order.created send smss to customer.phone text "x"',
     "t.rules:1:23: error: unexpected `smss`; expected `omni`, `sms`, `to` or `viber`", 'did you mean "sms"?'),
    ('on order.created send sms to customer.phone using shipped',
     "t.rules:1:51: error: unexpected `shipped`; expected a string in double quotes",
     'put it in double quotes: "shipped"'),
    ('on order.created send sms to customer.phone text "x',
     "t.rules:1:50: error: unexpected `\"`; expected a string in double quotes",
     "a string must close on the same line with a double quote"),
    ('on order.created send sms to customer.phone',
     "t.rules:1:44: error: unexpected the end of the file; expected `,`, `text` or `using`", None),
    ('on order.created send sms to customer.phone text "x" between 25:00-10:00',
     "t.rules:1:62: error: invalid window '25:00-10:00': hour 25 is out of range (00-23, or 24:00 as an end)", None),
    ('on order.created if order.x matches "(" send sms to customer.phone text "x"',
     "t.rules:1:37: error: invalid regular expression: missing ), unterminated subpattern", None),
    ("on order.created send sms to customer.phone text 'y'",
     "t.rules:1:50: error: unexpected `'`; expected a string in double quotes", 'strings use double quotes: "like this"'),
    ('on every 7m send sms to admins text "x"',
     "t.rules:1:10: error: `every 7m` does not divide a day evenly",
     'use `every day at HH:MM` or `cron "…"` for longer or irregular periods'),
    ('on cron "0 99 * * *" send sms to admins text "x"',
     't.rules:1:9: error: "0 99 * * *" is not a valid cron expression',
     'five fields: minute hour day-of-month month day-of-week, e.g. "0 10 * * 1-5"'),
    ('on order.created iff order.x == 1 send sms to admins text "x"',
     f"t.rules:1:18: error: unexpected `iff`; {EXPECTED_AFTER_PATH}", 'did you mean "if"?'),
    ('on order.created send sms to admins text "x" from "a" from "b"',
     "t.rules:1:60: error: `from` is given twice", None),
    ('on order.created if a == 1 if b == 2 send sms to admins text "x"',
     "t.rules:1:31: error: a rule has at most one `if`", "join the conditions with `and`"),
    ('on order.* == 1 send sms to admins text "x"',
     "t.rules:1:4: error: `*` matches event types only, not fields in a condition", None),
    ('on event.type send sms to admins text "x"',
     "t.rules:1:4: error: `event.type` is not an event type",
     'write an event type like order.created, or a condition like order.status == "F"'),
    ('on every 15m after 1h send sms to admins text "x"',
     "t.rules:1:1: error: `after` cannot delay a schedule trigger", "schedule the rule for the later time instead"),
    ('on every day at 25:00 send sms to admins text "x"',
     "t.rules:1:17: error: 25:00 is not a time of day", "use 00:00 to 23:59"),
    ('send sms to admins text "x"',
     "t.rules:1:1: error: unexpected `send`; expected `on`, `rule` or the end of the file", None),
    ('rule shipped on order.created send sms to admins text "x"',
     "t.rules:1:6: error: unexpected `shipped`; expected a string in double quotes", 'put it in double quotes: "shipped"'),
    ('on order.created send sms to admins text "x" stale after 2 hours',
     "t.rules:1:58: error: unexpected `2`; expected a duration (like 15m, 2h or 1d)", None),
    ('on order.created send sms to event.id text "x"',
     "t.rules:1:30: error: `event.id` cannot hold a phone number", None),
    ('\n  on 1 == 1 send sms to admins text "x"',
     "t.rules:2:3: error: a state condition must read an entity's field", 'e.g. on order.status == "F"'),
]


@pytest.mark.parametrize("text, headline, hint", BAD, ids=[b[1].split("error: ")[1][:40] for b in BAD])
def test_bad_rule_reports_exact_error(text, headline, hint):
    result = compile_text(text, "t.rules")
    assert result.rules == ()
    assert [d.headline() for d in result.diagnostics] == [headline]
    assert result.diagnostics[0].hint == hint


def test_error_display_has_source_line_and_caret():
    result = compile_text('on order.created\n  send smss to customer.phone text "x"', "shop.rules")
    assert result.diagnostics[0].format().split("\n") == [
        "shop.rules:2:8: error: unexpected `smss`; expected `omni`, `sms`, `to` or `viber`",
        '      send smss to customer.phone text "x"',
        "           ^",
        '  did you mean "sms"?',
    ]


def test_every_broken_rule_reported_once_and_good_rules_still_compile():
    text = "\n".join([
        'rule "a" on order.created send sms to customer.phone text "ok"',
        'rule "b" on order.status = "F" send sms to customer.phone text "x"',
        'rule "c" on order.updated send sms to customer.phone text "ok"',
        'rule "d" on order.created send sms to customer.phone using nope',
        '# a comment with on and rule in it',
        'rule "e" on order.deleted send sms to customer.phone text "on rule"',
    ])
    result = compile_text(text, "t.rules")
    assert [r.name for r in result.rules] == ["a", "c", "e"]
    assert [(d.location.line, d.location.col) for d in result.diagnostics] == [(2, 26), (4, 60)]


def test_keywords_are_whole_words_and_paths_may_start_with_keywords():
    result = compile_text('on order.created send sms to user.phone, userphone text "x"', "t.rules")
    assert result.diagnostics == ()
    kinds = [r.kind for r in result.rules[0].actions[0].recipients]
    assert kinds == ["path", "path"]


ALPHABET = st.sampled_from(list('onrule ifsendtosmsviberomniusingtext"#=<>!()[],.*:0123456789-_\n\tabcxyzАБВ\\\''))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(ALPHABET, max_size=120) | st.text(max_size=80))
def test_arbitrary_text_never_crashes_only_located_errors(text):
    result = compile_text(text, "fuzz.rules")
    for d in result.diagnostics:
        assert d.location is not None and d.location.file == "fuzz.rules"
        assert d.location.line >= 1 and d.location.col >= 1, d.format()
        assert not d.message.startswith("internal error"), d.format()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([
    'on order.created send sms to customer.phone text "x"',
    'on order.status == "F" send omni to customer.phone using "t" between 09:00-21:00',
    'on order.status = "F" send sms to x text "y"',
    'on every 15m send sms to admins text "t"',
    'on order.created send',
    '# comment on rule',
    'rule "n" on sms.received unsubscribe sms.from from "news"',
]), max_size=8))
def test_mixed_good_and_bad_rules_keep_every_good_rule(chunks):
    text = "\n".join(chunks)
    result = compile_text(text, "mix.rules")
    good = sum(1 for c in chunks if c.startswith(("on order.created send sms", "on order.status ==", "on every", "rule")))
    bad = sum(1 for c in chunks if c in ('on order.status = "F" send sms to x text "y"', 'on order.created send'))
    assert len(result.rules) == good
    assert len(result.diagnostics) == bad


def test_copy_admins_twice_is_an_error_not_a_crash():
    result = compile_text('on order.created send sms to admins text "x" copy admins copy admins', "t.rules")
    assert [d.headline() for d in result.diagnostics] == ["t.rules:1:18: error: `copy admins` is given twice"]


def test_state_trigger_cannot_read_site_or_previous():
    result = compile_text('on order.status == "F" and site.name == "x" send sms to admins text "x"', "t.rules")
    assert [d.headline() for d in result.diagnostics] == [
        "t.rules:1:4: error: a state trigger reads the entity's own fields, not site.name"]


def test_backslashes_other_than_escapes_stay_in_strings():
    rule = compile_text(r'on sms.received if sms.text matches "^\s*stop\"$" send sms to admins text "a\nb\\c"',
                        "t.rules").rules[0]
    assert rule.condition.pattern == '^\\s*stop"$'
    assert rule.actions[0].text == "a\nb\\c"
