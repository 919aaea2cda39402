"""BSG endpoints in priority order, each with a circuit breaker (docs/delivery.md).

An endpoint is *closed* (healthy: traffic goes there), *open* (tripped: no traffic) or
*half-open* (a probe is due). It trips when, within `bsg.failover.window`, at least
`failures` of its requests failed (no answer, timeout, HTTP 5xx) and they were at least
`ratio` of its requests — or when the median time from send to final delivery report
exceeds `slow_receipts`. After `probe` seconds a probe (a balance read, which sends
nothing) decides: success closes it and traffic returns; failure keeps it open for
another `probe` seconds.

Times are the daemon clock's epoch seconds, so tests on a virtual clock can move through
an hour-long outage in a moment.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from herald.engine.bsg.client import BsgClient
from herald.engine.config import Failover

CLOSED, OPEN = "closed", "open"
RECEIPT_SAMPLES = 20       # receipt latencies kept per endpoint for `slow_receipts`


@dataclass
class Endpoint:
    name: str                          # main, backup1, backup2 …
    client: BsgClient
    policy: Failover
    state: str = CLOSED
    since: float | None = None         # when the state last changed
    reason: str = ""                   # why it tripped
    probe_at: float | None = None      # open: when the next probe is due
    outcomes: deque = field(default_factory=deque)              # (time, ok)
    latencies: deque = field(default_factory=lambda: deque(maxlen=RECEIPT_SAMPLES))

    @property
    def healthy(self) -> bool:
        return self.state == CLOSED

    def record(self, ok: bool, now: float, detail: str = "") -> str | None:
        """Count one request's outcome. Returns "down" when this trips the endpoint."""
        self.outcomes.append((now, ok))
        self._forget(now)
        if ok or self.state != CLOSED:
            return None
        failed = sum(1 for _, good in self.outcomes if not good)
        if failed >= self.policy.failures and failed / len(self.outcomes) >= self.policy.ratio:
            return self.trip(now, f"{failed} of its last {len(self.outcomes)} requests failed "
                                  f"within {self.policy.window:g} s" + (f" (last: {detail})" if detail else ""))
        return None

    def record_receipt(self, seconds: float, now: float) -> str | None:
        """A final delivery report came `seconds` after the send. Returns "down" when the
        endpoint's reports have become too slow (bsg.failover.slow_receipts)."""
        if self.state != CLOSED or (self.since is not None and now - seconds < self.since):
            return None        # tripped, or sent before it came back: says nothing about it now
        self.latencies.append(seconds)
        limit = self.policy.slow_receipts
        if limit is None or self.state != CLOSED or len(self.latencies) < RECEIPT_SAMPLES // 2:
            return None
        median = statistics.median(self.latencies)
        if median > limit:
            self.latencies.clear()
            return self.trip(now, f"delivery reports take {median:.0f} s (median), over {limit:g} s")
        return None

    def trip(self, now: float, reason: str) -> str:
        self.state, self.since, self.reason = OPEN, now, reason
        self.probe_at = now + self.policy.probe
        self.outcomes.clear()
        return "down"

    def carried_over(self, since: float, now: float, reason: str) -> None:
        """It was down when Herald last stopped (its incident is still open in the store):
        no traffic until a probe, due at once, finds it healthy — then `probe_result`
        says "up" and the incident is resolved like any other recovery."""
        self.state, self.since, self.reason, self.probe_at = OPEN, since, reason, now
        self.outcomes.clear()

    def probe_result(self, ok: bool, now: float, detail: str = "") -> str | None:
        """The probe's outcome. Returns "up" when the endpoint is healthy again."""
        if self.state == CLOSED:
            return None
        if ok:
            self.state, self.since, self.reason, self.probe_at = CLOSED, now, "", None
            self.outcomes.clear()
            self.latencies.clear()
            return "up"
        self.probe_at = now + self.policy.probe
        if detail:
            self.reason = detail
        return None

    def probe_due(self, now: float) -> bool:
        return self.state == OPEN and self.probe_at is not None and now >= self.probe_at

    def _forget(self, now: float) -> None:
        while self.outcomes and self.outcomes[0][0] < now - self.policy.window:
            self.outcomes.popleft()

    def as_json(self) -> dict:
        return {"name": self.name, "url": self.client.url, "state": self.state, "since": self.since,
                "reason": self.reason, "probe_at": self.probe_at}


class Router:
    """Which endpoint takes new traffic: the first healthy one, in priority order."""

    def __init__(self, endpoints: Sequence[Endpoint]):
        self.endpoints = list(endpoints)
        self.by_name = {e.name: e for e in self.endpoints}

    def pick(self) -> Endpoint | None:
        return next((e for e in self.endpoints if e.healthy), None)

    def get(self, name: str | None) -> Endpoint:
        """The endpoint of that name; the main one for None or a name no longer configured."""
        return self.by_name.get(name or "", self.endpoints[0])

    def next_probe(self) -> float | None:
        times = [e.probe_at for e in self.endpoints if e.state == OPEN and e.probe_at is not None]
        return min(times) if times else None
