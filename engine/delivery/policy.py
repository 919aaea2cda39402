"""The delivery's numbers: attempts, batches, the poll schedule, back-off.

One module, so a test (or a benchmark) that changes one of them changes it for every
delivery worker at once (`monkeypatch.setattr(policy, "backoff", ...)`): the workers read
them as `policy.NAME` at the moment of use.
"""

from __future__ import annotations

import random
from datetime import timedelta

MAX_ATTEMPTS = 8                 # answered retryable errors (5, 11, 429) before a message fails
BATCH = 500                      # claimed per round; sent as concurrent requests of ≤ 50
REQUEST_SIZE = 50
POLL_CONCURRENCY = 4             # polls yield to sends: latency of new messages comes first
POLL_SHARE = 0.5                 # status polls use at most this share of bsg.rate
POLL_SCHEDULE = (5, 15, 60, 300, 900, 3600)          # seconds after sending, then hourly
# Polling ends when the message can no longer change: its validity (BSG's defaults,
# which Herald does not override: SMS 72 h, Viber 24 h) plus an hour for the last report.
GIVE_UP_POLLING = timedelta(hours=73)
GIVE_UP_POLLING_VIBER = timedelta(hours=25)
# With delivery reports on (bsg.callback_secret), BSG's callback is the main path to a
# final status and polling only the fallback for reports that got lost: the first poll
# waits this long (most messages are final by then, so it costs no request), and the
# schedule continues from there (15 min, then hourly) until GIVE_UP_POLLING.
RECEIPT_FALLBACK_POLL = 600
OPERATOR_ALERT_CODES = (1, 2, 6, 8, 9)               # the admin must act: one alert e-mail each
OPERATOR_RETRY = 300.0           # seconds: a message refused for an operator error waits this long
MIN_WAIT = 0.001                 # seconds: the send loop's shortest pause when nothing could be claimed
BALANCE_RETRY = 5.0              # seconds: a balance read due while no endpoint is healthy waits this long
RECOVERY_WRITE = 200             # recovery outcomes written per transaction (a crash only repeats look-ups)
RECOVERY_WRITE_EVERY = 0.5       # seconds: a smaller batch is written after this long


def backoff(attempts: int, base: float = 5.0, cap: float = 600.0) -> float:
    """Exponential with ±25% jitter, so many messages failing together don't retry together."""
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    return delay * random.uniform(0.75, 1.25)


def poll_rate(bsg_rate: float) -> float:
    """Status polls per second: POLL_SHARE of the BSG rate, so they never starve sends that
    share the client's rate cap (one poll is one request; a send carries 50)."""
    return max(bsg_rate * POLL_SHARE, 0.1)
