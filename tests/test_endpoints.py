"""The circuit breaker of each BSG endpoint (engine/delivery/endpoints.py)."""

from herald.engine.bsg.client import BsgClient
from herald.engine.config import Failover
from herald.engine.delivery.endpoints import Endpoint, Router


def endpoint(name="main", **policy) -> Endpoint:
    return Endpoint(name, BsgClient(f"http://{name}.invalid", "k"), Failover(**policy))


def test_trips_on_enough_failures_that_are_a_large_enough_share():
    e = endpoint(failures=3, ratio=0.5, window=60)
    assert e.record(False, 0) is None and e.record(False, 1) is None
    for t in range(2, 10):
        assert e.record(True, t) is None           # 2 failures among many successes: healthy
    assert e.record(False, 10) is None             # 3 of 11: under the ratio
    e2 = endpoint(failures=3, ratio=0.5, window=60)
    e2.record(True, 0)
    e2.record(False, 1)
    e2.record(False, 2)
    assert e2.record(False, 3) == "down"           # 3 of 4
    assert not e2.healthy and "3 of its last 4" in e2.reason


def test_old_failures_leave_the_window():
    e = endpoint(failures=2, window=60)
    e.record(False, 0)
    assert e.record(False, 61) is None             # the first one is forgotten
    assert e.record(False, 62) == "down"


def test_probe_after_rest_success_closes_failure_rests_again():
    e = endpoint(failures=1, probe=30)
    assert e.record(False, 100) == "down"
    assert not e.probe_due(129) and e.probe_due(130)
    assert e.probe_result(False, 130, "still refused") is None
    assert e.probe_at == 160 and e.reason == "still refused"
    assert e.probe_result(True, 160) == "up"
    assert e.healthy and e.probe_at is None
    assert e.record(True, 161) is None


def test_slow_receipts_trip_only_when_configured():
    e = endpoint(slow_receipts=300)
    results = [e.record_receipt(400, t) for t in range(10)]
    assert results[-1] == "down" and "median" in e.reason
    off = endpoint()
    assert all(off.record_receipt(10_000, t) is None for t in range(30))


def test_router_picks_the_first_healthy_in_priority_order():
    main, b1, b2 = endpoint("main", failures=1), endpoint("backup1", failures=1), endpoint("backup2")
    router = Router([main, b1, b2])
    assert router.pick() is main
    main.record(False, 0)
    assert router.pick() is b1
    b1.record(False, 0)
    assert router.pick() is b2
    assert router.get("gone") is main and router.get("backup1") is b1
    assert router.next_probe() == 30


def test_slow_receipts_of_sends_from_before_the_recovery_do_not_trip_it_again():
    e = endpoint(slow_receipts=300, probe=30, failures=1)
    e.record(False, 1000)                                  # tripped at 1000
    assert e.record_receipt(900, 1010) is None             # reports while tripped: ignored
    assert e.probe_result(True, 1030) == "up"
    # reports of messages sent before 1030 (slow because of the outage) say nothing now
    assert all(e.record_receipt(500, 1040 + t) is None for t in range(20))
    assert e.healthy
    # slow reports of sends made after the recovery still count
    results = [e.record_receipt(400, 1500 + t) for t in range(10)]
    assert results[-1] == "down"
