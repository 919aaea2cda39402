"""The Viber→SMS fallback as a pure transition: each row is a stored message's omni
settings and leg, a BSG status (or none, at a time past or before the deadline) → the next
step (engine/delivery/omni.py). The daemon-level behaviour is in test_daemon.py,
test_delivery.py and test_receipts.py."""

from __future__ import annotations

import pytest

from herald.engine.bsg.wire import AltRoute, parse_status
from herald.engine.delivery import omni
from herald.engine.delivery.omni import Step
from herald.engine.store import MessageState, OutboxRow

NOW = 1_000_000.0
DEADLINE = NOW - 1          # the Viber leg's fallback_at has passed
LATER = NOW + 600           # … or not yet


def status(name: str, *alt: str):
    """A BSG status (None for "none": BSG knew nothing yet), with alt_route statuses."""
    if name == "none":
        return None
    return parse_status({"reference": "r1", "id": "7", "status": name,
                         "alt_route": [{"channel": "sms", "id": f"8{i}", "status": a} for i, a in enumerate(alt)]})


def message(omni_mode: str | None, leg: str | None, state: str = MessageState.SENT, *, fallback_at=None,
            receipt_leg: str | None = None, uncertain_at: str | None = None) -> dict:
    return {"id": 1, "channel": "omni" if omni_mode else "viber", "omni": omni_mode, "leg": leg, "state": state,
            "fallback_at": fallback_at, "receipt_leg": receipt_leg, "uncertain_at": uncertain_at}


TRANSITIONS = [
    # (message, status, expected step, why)
    # not Herald's omni: nothing to decide here
    (message(None, None), "undeliverable", Step.CONTINUE, ""),
    (message("provider", None), "not_viber_user", Step.CONTINUE, ""),
    (message("provider", None, fallback_at=DEADLINE), "none", Step.CONTINUE, ""),
    # engine omni on its Viber leg
    (message("engine", "viber", fallback_at=LATER), "not_viber_user", Step.FALL_BACK, "Viber: not_viber_user"),
    (message("engine", "viber", fallback_at=LATER), "expired", Step.FALL_BACK, "Viber: expired"),
    (message("engine", "viber", fallback_at=LATER), "undeliverable", Step.FALL_BACK, "Viber: undeliverable"),
    (message("engine", "viber", fallback_at=LATER), "delivered", Step.CONTINUE, ""),
    (message("engine", "viber", fallback_at=LATER), "read", Step.CONTINUE, ""),
    (message("engine", "viber", fallback_at=LATER), "sent", Step.CONTINUE, ""),
    (message("engine", "viber", fallback_at=LATER), "none", Step.CONTINUE, ""),
    (message("engine", "viber", fallback_at=DEADLINE), "sent", Step.FALL_BACK,
     "no final Viber status by the deadline"),
    (message("engine", "viber", fallback_at=DEADLINE), "none", Step.FALL_BACK,
     "no final Viber status by the deadline"),
    (message("engine", "viber", fallback_at=NOW), "none", Step.FALL_BACK, "no final Viber status by the deadline"),
    (message("engine", "viber", fallback_at=DEADLINE), "delivered", Step.CONTINUE, ""),   # made it, if late
    (message("engine", "viber", fallback_at=DEADLINE), "failed", Step.FALL_BACK, "Viber: failed"),
    (message("engine", "viber"), "none", Step.CONTINUE, ""),                  # no deadline stored
    # engine omni on its SMS leg: its own statuses are any SMS's
    (message("engine", "sms", receipt_leg="sms"), "undeliverable", Step.CONTINUE, ""),
    (message("engine", "sms"), "delivered", Step.CONTINUE, ""),
    # a report on the Viber leg after the fallback
    (message("engine", "sms", MessageState.SENT, receipt_leg="viber"), "undeliverable", Step.RECORD,
     "late Viber report after the SMS fallback: recorded only"),
    (message("engine", "sms", MessageState.SENT, receipt_leg="viber"), "sent", Step.RECORD,
     "late Viber report after the SMS fallback: recorded only"),
    (message("engine", "sms", MessageState.FAILED, receipt_leg="viber"), "delivered", Step.DELIVERED_LATE,
     "Viber delivered late, after the SMS fallback failed"),
    (message("engine", "sms", MessageState.QUEUED, receipt_leg="viber"), "read", Step.CANCEL_SMS,
     "Viber delivered before the SMS fallback went out; no SMS sent"),
    (message("engine", "sms", MessageState.DEFERRED, receipt_leg="viber"), "delivered", Step.CANCEL_SMS,
     "Viber delivered before the SMS fallback went out; no SMS sent"),
    # queued again after an unknown outcome: the SMS may be at BSG already
    (message("engine", "sms", MessageState.QUEUED, receipt_leg="viber", uncertain_at="main"), "delivered",
     Step.DOUBLE, "late Viber report: Viber delivered after the SMS fallback went out (double delivery)"),
    (message("engine", "sms", MessageState.SENT, receipt_leg="viber"), "delivered", Step.DOUBLE,
     "late Viber report: Viber delivered after the SMS fallback went out (double delivery)"),
    (message("engine", "sms", MessageState.DELIVERED, receipt_leg="viber"), "delivered", Step.DOUBLE,
     "late Viber report: Viber delivered after the SMS fallback went out (double delivery)"),
    (message("engine", "sms", MessageState.SENDING, receipt_leg="viber"), "delivered", Step.DOUBLE,
     "late Viber report: Viber delivered after the SMS fallback went out (double delivery)"),
]


@pytest.mark.parametrize("item, bsg_status, step, why", TRANSITIONS,
                         ids=[f"{m['omni']}-{m['leg']}-{m['state']}-{m['receipt_leg']}-{s}"
                              for m, s, *_ in TRANSITIONS])
def test_transition(item, bsg_status, step, why):
    assert omni.transition(item, status(bsg_status), NOW) == omni.Next(step, why)


def test_every_late_viber_step_says_what_it_writes():
    late = {Step.RECORD, Step.DELIVERED_LATE, Step.CANCEL_SMS, Step.DOUBLE}
    assert set(omni.LATE_VIBER) == late
    assert {s for s in late if omni.LATE_VIBER[s][0].get("state") == MessageState.DELIVERED} == \
        {Step.DELIVERED_LATE, Step.CANCEL_SMS}


SETTLED = [
    # (status, alt_route statuses, settled, delivered)
    ("delivered", (), True, True),
    ("read", (), True, True),
    ("sent", (), False, False),
    ("undeliverable", (), True, False),
    ("not_viber_user", ("sent",), False, False),          # the provider's SMS is on its way
    ("not_viber_user", ("delivered",), True, True),
    ("not_viber_user", ("undeliverable",), True, False),
    ("expired", ("read",), True, True),
]


@pytest.mark.parametrize("name, alt, settled, delivered", SETTLED)
def test_provider_omni_is_final_with_its_alt_route(name, alt, settled, delivered):
    s = status(name, *alt)
    assert (omni.settled(s), omni.delivered(s)) == (settled, delivered)


def _row(**kw) -> OutboxRow:
    fields = dict(id=1, reference="r1", site="s1", channel="omni", to_phone="+79001112233", sender="Shop",
                  text="hi", sms_sender="SHOP", sms_text="hi sms", state="sending", attempts=1, stale_at=None,
                  send_at=0.0, rule_id=None, event_id=None)
    return OutboxRow(**{**fields, **kw})


@pytest.mark.parametrize("row, alt_route, deadline", [
    (_row(omni="provider"), True, None),
    (_row(omni="engine", leg="viber", fallback_after=90.0), False, NOW + 90),
    (_row(omni="engine", leg="viber"), False, NOW + omni.DEFAULT_DEADLINE),
    (_row(omni="engine", leg="sms", sms_reference="r1s"), False, None),
    (_row(channel="viber"), False, None),
    (_row(channel="sms"), False, None),
])
def test_how_a_leg_goes_out(row, alt_route, deadline):
    assert omni.provider_alt_route(row) is alt_route
    assert omni.fallback_at(row, NOW) == deadline


def test_falling_back_queues_the_sms_leg_and_remembers_viber():
    stored = {"state": "sent", "leg": "viber", "bsg_status": "sent", "bsg_id": "7"}
    assert omni.can_fall_back(stored)
    assert not omni.can_fall_back({**stored, "leg": "sms"}) and not omni.can_fall_back({**stored, "state": "queued"})
    assert not omni.can_fall_back(None)
    fields = omni.fallback_fields(stored, status("not_viber_user"), NOW, "Viber: not_viber_user")
    assert (fields["state"], fields["leg"], fields["next_attempt_at"], fields["attempts"]) == ("queued", "sms", NOW, 0)
    assert (fields["viber_status"], fields["viber_bsg_id"], fields["bsg_id"]) == ("not_viber_user", "7", None)
    assert omni.fallback_fields(stored, None, NOW, "deadline")["viber_status"] == "sent"


def test_the_viber_leg_is_polled_by_its_deadline():
    item = message("engine", "viber", fallback_at=NOW + 30)
    assert omni.next_poll(item, NOW + 300, NOW) == NOW + 30
    assert omni.next_poll(message("engine", "viber", fallback_at=NOW - 5), NOW + 300, NOW) == NOW + 1
    assert omni.next_poll(message("engine", "sms", fallback_at=NOW + 30), NOW + 300, NOW) == NOW + 300


def test_the_sms_leg_id_of_a_final_status():
    assert omni.sms_leg_id(message("provider", None), status("not_viber_user", "delivered")) == {"sms_bsg_id": "80"}
    assert omni.sms_leg_id({**message("engine", "sms")}, status("delivered")) == {"sms_bsg_id": "7"}
    assert omni.sms_leg_id(message("engine", "viber"), status("delivered")) == {}
    assert isinstance(status("x", "sent").alt_route[0], AltRoute)


def test_omni_options_are_fixed_when_written():
    class Site:
        omni, omni_deadline = "engine", 600.0
    sites = {"s1": Site()}
    assert omni.omni_options(sites, "sms", "s1", None) == {}
    assert omni.omni_options(sites, "omni", "s1", None) == {"omni": "engine", "fallback_after": 600.0}
    assert omni.omni_options(sites, "omni", "elsewhere", 30.0) == {"omni": "engine", "fallback_after": 30.0}
