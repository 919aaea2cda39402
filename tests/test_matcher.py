"""The matcher: which rules an event fires, with become-true and change semantics."""

from datetime import datetime, timezone

from hypothesis import given, settings, strategies as st

from herald.engine.events import Event, EventScope
from herald.engine.rules.matcher import Matcher, why_not
from herald.grammar.compiler import compile_text
from herald.grammar.model import EventTrigger, StateTrigger

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)


def rules(text: str):
    compiled = compile_text(text, "t.rules")
    assert compiled.diagnostics == ()
    return compiled.rules


def ev(type_: str, previous=None, **data) -> Event:
    return Event(type_, data, "s1", "e1", NOW, previous)


def names(fired) -> list[str]:
    return sorted(r.name for r in fired)


MIXED = rules('''
rule "created" on order.created send sms to a text "x"
rule "any-order" on order.* send sms to a text "x"
rule "all" on * send sms to a text "x"
rule "created-any" on *.created send sms to a text "x"
rule "F" on order.status == "F" send sms to a text "x"
rule "P" on order.status == "P" send sms to a text "x"
rule "F-big" on order.status == "F" and order.price > 1000 send sms to a text "x"
rule "done" on order.status in ["F", "DF"] send sms to a text "x"
rule "big" on order.price > 1000 send sms to a text "x"
rule "changes" on order.status changes send sms to a text "x"
rule "to-P" on order.status changes to "P" send sms to a text "x"
rule "N-to-P" on order.status changes from "N" to "P" send sms to a text "x"
rule "ship" on shipment.status == "DF" send sms to a text "x"
''')
M = Matcher(MIXED)


def test_event_type_triggers_exact_and_wildcards():
    assert names(M.match(ev("order.created", order={"id": 1}), None)) == ["all", "any-order", "created", "created-any"]
    assert names(M.match(ev("user.created", user={"id": 1}), None)) == ["all", "created-any"]
    assert names(M.match(ev("mail.SALE_NEW_ORDER", ORDER_ID="1"), None)) == ["all"]


def test_state_trigger_fires_when_condition_becomes_true():
    event = ev("order.updated", order={"id": 1, "status": "F", "price": "1500.00"})
    fired = names(M.match(event, {"order": {"id": 1, "status": "P", "price": "1500.00"}}))
    assert fired == ["F", "F-big", "all", "any-order", "changes", "done"]


def test_state_trigger_does_not_fire_while_it_stays_true():
    event = ev("order.updated", order={"id": 1, "status": "F", "price": "1500.00"})
    assert names(M.match(event, {"order": {"id": 1, "status": "F", "price": "1500.00"}})) == ["all", "any-order"]


def test_first_seen_entity_that_is_already_true_fires_once():
    event = ev("order.created", order={"id": 1, "status": "F", "price": "10"})
    assert "F" in names(M.match(event, None))
    assert "changes" not in names(M.match(event, None))      # no previous value: no change to see


def test_numeric_string_compares_as_number():
    event = ev("order.updated", order={"id": 1, "status": "N", "price": "1500.00"})
    assert "big" in names(M.match(event, {"order": {"price": "999.99"}}))
    assert "big" not in names(M.match(ev("order.updated", order={"price": "abc"}), None))


def test_changes_from_to():
    to_p = ev("order.updated", order={"id": 1, "status": "P"})
    assert {"changes", "to-P", "N-to-P", "P"} <= set(names(M.match(to_p, {"order": {"status": "N"}})))
    fired = names(M.match(to_p, {"order": {"status": "F"}}))
    assert "to-P" in fired and "N-to-P" not in fired


def test_state_rules_only_see_their_entity():
    event = ev("shipment.updated", shipment={"id": 5, "status": "DF"}, order={"id": 1, "status": "F"})
    assert names(M.match(event, {"shipment": {"status": "DT"}})) == ["all", "ship"]


def test_why_not_explains():
    rule = next(r for r in MIXED if r.name == "F-big")
    event = ev("order.updated", order={"id": 1, "status": "F", "price": "10"})
    assert why_not(rule, event, None) == "trigger is false: order.price > 1000: order.price is \"10\""
    rule = next(r for r in MIXED if r.name == "F")
    assert "already true" in why_not(rule, event, {"order": {"status": "F"}})


# ---- the index agrees with evaluating every rule -------------------------------------

VALUES = ["N", "P", "F", "DF", "1", "1.0", 1, 2, None, True, "1500.00"]
value = st.sampled_from(VALUES) | st.decimals(-5, 2000, places=2).map(str) | st.integers(-5, 2000)
literal = st.sampled_from(['"N"', '"P"', '"F"', '"DF"', "1", "2", "true", "null", '"1500.00"'])
field = st.sampled_from(["status", "price", "paid"])
condition = st.one_of(
    st.builds(lambda f, v: f"order.{f} == {v}", field, literal),
    st.builds(lambda f, a, b: f"order.{f} in [{a}, {b}]", field, literal, literal),
    st.builds(lambda f, op, v: f"order.{f} {op} {v}", field, st.sampled_from([">", ">=", "<", "<="]),
              st.sampled_from(["0", "1", "1000", "-2", "999.99"])),
    st.builds(lambda v, op, f: f"{v} {op} order.{f}", st.sampled_from(["0", "1", "1000"]),
              st.sampled_from([">", "<="]), field),
    st.builds(lambda f, op, v, g, w: f"order.{f} {op} {v} and order.{g} == {w}", field,
              st.sampled_from([">", "<"]), st.sampled_from(["0", "1000"]), field, literal),
    st.builds(lambda f, v, g, w: f"order.{f} == {v} and order.{g} != {w}", field, literal, field, literal),
    st.builds(lambda f, v, g, w: f"order.{f} == {v} or order.{g} == {w}", field, literal, field, literal),
)


def naive(rule_set, event, previous):
    fired = []
    for rule in rule_set:
        t = rule.trigger
        if isinstance(t, EventTrigger):
            if t.matches_type(event.type):
                fired.append(rule)
        elif isinstance(t, StateTrigger) and t.entity == event.entity_type:
            now = t.condition.test(EventScope(event)).value
            before = previous is not None and t.condition.test(EventScope(event, data=previous)).value
            if now and not before:
                fired.append(rule)
    return fired


@settings(max_examples=400, deadline=None)
@given(st.lists(condition, min_size=1, max_size=12),
       st.fixed_dictionaries({"status": value, "price": value, "paid": value}),
       st.one_of(st.none(), st.fixed_dictionaries({"status": value, "price": value, "paid": value})))
def test_index_agrees_with_naive_loop(conditions, new, old):
    text = "\n".join(f'rule "r{i}" on {c} send sms to a text "x"' for i, c in enumerate(conditions))
    rule_set = rules(text)
    event = ev("order.updated", order=dict(new, id=1))
    previous = {"order": dict(old, id=1)} if old is not None else None
    assert names(Matcher(rule_set).match(event, previous)) == names(naive(rule_set, event, previous))
