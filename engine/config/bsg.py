"""`bsg:` — the provider account, its backup endpoints, failover and look-up budget."""

from __future__ import annotations

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from herald.engine.config.model import (
    DEFAULT_BSG_URL, DEFAULT_LOOKUP_CONCURRENCY, DEFAULT_LOOKUP_RATE, DEFAULT_RATE, DEFAULT_UNCERTAIN_FAILOVER,
    MAX_LOOKUP_CONCURRENCY, MAX_LOOKUP_RATE, BackupEndpoint, BsgConfig, Failover,
)
from herald.engine.config.reader import _Val, _what
from herald.engine.config.values import ValueReader

BSG_KEYS = ("url", "api_key", "backup", "rate", "callback_secret", "failover", "balance_alert",
            "balance_every", "timeout", "lookup_rate", "lookup_concurrency", "uncertain_failover_after")
FAILOVER_KEYS = ("window", "failures", "ratio", "probe", "slow_receipts")
BACKUP_KEYS = ("url", "api_key")


def read_bsg(r: ValueReader, node: _Val | None) -> BsgConfig:
    if node is None:
        return BsgConfig()
    r.check_keys(node, BSG_KEYS, "bsg")
    url = r.url(r.child(node, "url"), DEFAULT_BSG_URL)
    # An unset or empty !env for the main key is not an error: it means sandbox.
    api_key = r.secret(r.child(node, "api_key"), unset_ok=True)
    rate = r.rate(r.child(node, "rate"), DEFAULT_RATE, what="a positive number of requests per second")
    # An unset or empty !env means callbacks are off: Herald polls statuses instead.
    callback_secret = r.secret(r.child(node, "callback_secret"), unset_ok=True)
    backup: list[BackupEndpoint] = []
    b = r.child(node, "backup")
    if b is not None and b.raw is not None:
        if not isinstance(b.raw, CommentedSeq):
            r.error(f"{b.path}: expected a list of endpoints (- url: ...), got {_what(b.raw)}",
                    b.loc)
        else:
            for item in r.items(b):
                if not isinstance(item.raw, CommentedMap):
                    r.error(f"{item.path}: expected an endpoint (url:, api_key:), "
                            f"got {_what(item.raw)}", item.loc)
                    continue
                r.check_keys(item, BACKUP_KEYS, item.path)
                u = r.child(item, "url")
                if u is None:
                    r.error(f"{item.path}: url is required", item.loc)
                    continue
                backup.append(BackupEndpoint(r.url(u, DEFAULT_BSG_URL),
                                             r.secret(r.child(item, "api_key"))))
    balance_alert = r.number(r.child(node, "balance_alert"), None,
                             what="an amount in the account's currency")
    balance_every = r.duration(r.child(node, "balance_every"), 900.0)
    timeout = r.duration(r.child(node, "timeout"), 10.0)
    # by default never slower than sends: a budget of their own must not become a tighter one
    lookup_rate = r.rate(r.child(node, "lookup_rate"),
                         max(DEFAULT_LOOKUP_RATE, min(rate, MAX_LOOKUP_RATE)),
                         what="a positive number of look-ups per second", maximum=MAX_LOOKUP_RATE)
    lookup_concurrency = r.number(r.child(node, "lookup_concurrency"), DEFAULT_LOOKUP_CONCURRENCY,
                                  what="a whole number of look-ups in flight", integer=True,
                                  positive=True, maximum=MAX_LOOKUP_CONCURRENCY)
    return BsgConfig(url=url, api_key=api_key, backup=tuple(backup), rate=rate,
                     callback_secret=callback_secret, failover=read_failover(r, r.child(node, "failover")),
                     balance_alert=balance_alert, balance_every=balance_every, timeout=timeout,
                     lookup_rate=lookup_rate, lookup_concurrency=lookup_concurrency,
                     uncertain_failover_after=r.wait_or_never(r.child(node, "uncertain_failover_after"),
                                                              DEFAULT_UNCERTAIN_FAILOVER))


def read_failover(r: ValueReader, node: _Val | None) -> Failover:
    if node is None or node.raw is None:
        return Failover()
    if not isinstance(node.raw, CommentedMap):
        r.error(f"{node.path}: expected window:, failures:, ratio:, probe:, got {_what(node.raw)}", node.loc)
        return Failover()
    r.check_keys(node, FAILOVER_KEYS, "bsg.failover")
    c = lambda key: r.child(node, key)  # noqa: E731
    slow = c("slow_receipts")
    return Failover(
        window=r.duration(c("window"), 60.0),
        failures=r.number(c("failures"), 3, what="a whole number of failed requests", integer=True,
                          positive=True),
        ratio=r.number(c("ratio"), 0.5, what="a share between 0 and 1", positive=True, maximum=1),
        probe=r.duration(c("probe"), 30.0),
        slow_receipts=r.duration(slow, 0.0) or None if slow is not None else None,
    )
