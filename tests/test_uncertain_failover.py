"""An unknown outcome while the main endpoint stays down (issue #12, item 7).

Main answers HTTP 500 to sends, look-ups and probes. A message in flight at that moment
may be at main: by default it waits there `bsg.uncertain_failover_after` (10 min), then
goes to the next endpoint — its trace and an alert saying it may arrive twice. `never`
keeps it waiting; a site's own setting wins; a rule's `stale after` still ends it first.
On trio's MockClock with the fake BSG in-process (tests/virtual_daemon.py)."""

from __future__ import annotations

from datetime import datetime

import trio

from tests.virtual_daemon import virtual_clock  # noqa: F401  (the fixture)
from tests.virtual_daemon import fakes, order, outcomes, post, until, virtual_daemon, write_config

FAILOVER = "  failover: {window: 60s, failures: 2, probe: 30s}\n"
PHONE = "+79006660011"


def message(daemon) -> dict:
    found = daemon.store.messages(phone=PHONE)
    return found[0] if found else {}


def since(row: dict) -> float:
    return datetime.fromisoformat(row["uncertain_since"]).timestamp()


def now(daemon) -> float:
    return daemon.clock.now().timestamp()


async def sleep_until(daemon, when: float) -> None:
    await trio.sleep(max(when - now(daemon), 0))


async def uncertain_at_main(daemon, main, backup) -> dict:
    """Main fails with HTTP 500 from now on; one message goes out, its outcome unknown;
    main trips and new traffic flows through the backup. Returns the message."""
    main.set_fault("5xx", status=500)
    await post(daemon, order(1, PHONE))
    await until(lambda: message(daemon).get("uncertain_at") == "main", within=60, what=lambda: message(daemon))
    await until(lambda: not daemon.dispatcher.router.get("main").healthy, within=120, what="main tripped")
    await post(daemon, order(2, "+79006660012"))
    await until(lambda: "79006660012" in [m["msisdn"] for m in backup.messages()], within=120,
                what="new traffic through the backup")
    row = message(daemon)
    assert row["uncertain_at"] == "main" and row["uncertain_since"] is not None
    return row


def at_backup(backup, row) -> bool:
    return row["reference"] in [m["reference"] for m in backup.messages()]


async def incidents(daemon) -> dict[str, dict]:
    return {i["key"]: i for i in await daemon.db(daemon.alerter.open_incidents)}


async def test_by_default_an_unknown_outcome_goes_via_the_backup_after_10_minutes_and_may_arrive_twice(
        tmp_path, virtual_clock):
    config = write_config(tmp_path, bsg=FAILOVER)
    main, backup = fakes(2)
    async with virtual_daemon(config, [main, backup], virtual_clock) as daemon:
        row = await uncertain_at_main(daemon, main, backup)
        deadline = since(row) + 600

        await sleep_until(daemon, deadline - 5)
        waiting = message(daemon)
        assert waiting["state"] in ("queued", "sending") and waiting["uncertain_at"] == "main"
        assert "may arrive twice" in waiting["reason"]             # says what happens, and when
        assert not at_backup(backup, row)
        assert ("failover", "may arrive twice") not in outcomes(daemon, row["id"])

        await until(lambda: at_backup(backup, row), within=120, step=1, what=lambda: message(daemon))
        assert now(daemon) >= deadline
        trace = daemon.store.attempts_of(row["id"])
        (moved,) = [a for a in trace if a["what"] == "failover"]
        assert (moved["outcome"], moved["endpoint"]) == ("may arrive twice", "main")
        assert "may arrive twice" in moved["detail"] and "backup1" in moved["detail"]
        sends = [(a["endpoint"], a["outcome"]) for a in trace if a["what"] == "send"]
        assert sends[0] == ("main", "unknown") and sends[-1] == ("backup1", "ok")
        await until(lambda: message(daemon)["state"] in ("sent", "delivered"), within=60)
        assert message(daemon)["uncertain_at"] is None

        alert = (await incidents(daemon))["uncertain.failover:main"]
        assert "may arrive twice" in alert["subject"] and "backup1" in alert["subject"]
        assert [m["reference"] for m in backup.messages()].count(row["reference"]) == 1

        # main back: the next message it takes closes the incident (one recovery mail)
        main.clear_faults()
        await until(lambda: daemon.dispatcher.router.get("main").healthy, within=120, what="main probed well")
        await post(daemon, order(3, "+79006660013"))
        await until(lambda: "79006660013" in [m["msisdn"] for m in main.messages()], within=60)
        await until(lambda: True, within=1)
        assert "uncertain.failover:main" not in await incidents(daemon)


async def test_with_never_it_waits_for_main_however_long(tmp_path, virtual_clock):
    config = write_config(tmp_path, bsg=FAILOVER + "  uncertain_failover_after: never\n")
    main, backup = fakes(2)
    async with virtual_daemon(config, [main, backup], virtual_clock) as daemon:
        row = await uncertain_at_main(daemon, main, backup)
        await sleep_until(daemon, since(row) + 1200)         # twice the default
        waiting = message(daemon)
        assert waiting["state"] in ("queued", "sending") and waiting["uncertain_at"] == "main"
        assert "never" in waiting["reason"]
        assert not at_backup(backup, row)
        assert "failover" not in [what for what, _ in outcomes(daemon, row["id"])]

        main.clear_faults()                   # main answers the look-up: not there, so it goes there
        await until(lambda: message(daemon)["state"] in ("sent", "delivered"), within=120,
                    what=lambda: message(daemon))
        assert [m["reference"] for m in main.messages()] == [row["reference"]]
        assert not at_backup(backup, row)


async def test_a_site_setting_wins_over_bsg(tmp_path, virtual_clock):
    config = write_config(tmp_path, bsg=FAILOVER + "  uncertain_failover_after: never\n",
                          site="    uncertain_failover_after: 3m\n")
    main, backup = fakes(2)
    async with virtual_daemon(config, [main, backup], virtual_clock) as daemon:
        row = await uncertain_at_main(daemon, main, backup)
        deadline = since(row) + 180
        await sleep_until(daemon, deadline - 5)
        assert message(daemon)["uncertain_at"] == "main" and not at_backup(backup, row)
        await until(lambda: at_backup(backup, row), within=90, step=1, what=lambda: message(daemon))
        assert now(daemon) >= deadline
        assert ("failover", "may arrive twice") in outcomes(daemon, row["id"])


async def test_a_rules_stale_after_ends_it_before_any_failover(tmp_path, virtual_clock):
    rules = 'on order.created send sms to customer.phone text "Заказ #ORDER_ID#" stale after 5m\n'
    config = write_config(tmp_path, rules=rules, bsg=FAILOVER)
    main, backup = fakes(2)
    async with virtual_daemon(config, [main, backup], virtual_clock) as daemon:
        row = await uncertain_at_main(daemon, main, backup)
        await until(lambda: message(daemon)["state"] == "expired", within=400, step=1, what=lambda: message(daemon))
        assert "unknown" in message(daemon)["reason"]
        await sleep_until(daemon, since(row) + 900)       # past the 10 min
        assert message(daemon)["state"] == "expired" and not at_backup(backup, row)
        assert "failover" not in [what for what, _ in outcomes(daemon, row["id"])]


# ---------------------------------------------------------------- the setting

def load(tmp_path, text: str):
    from herald.engine.config import load_config
    path = tmp_path / "herald.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={})


def test_the_setting_defaults_to_10_minutes_never_is_inf_and_a_site_may_override(tmp_path):
    import math
    config = load(tmp_path, "bsg: {uncertain_failover_after: never}\n"
                            "sites: {s1: {uncertain_failover_after: 90s}, s2: {}}\n")
    assert config.bsg.uncertain_failover_after == math.inf
    assert config.sites["s1"].uncertain_failover_after == 90
    assert config.sites["s2"].uncertain_failover_after is None       # bsg's
    assert load(tmp_path, "bsg: {}\n").bsg.uncertain_failover_after == 600


def test_a_bad_value_is_a_located_error_that_says_never_is_allowed(tmp_path):
    import pytest
    from herald.engine.errors import ConfigError
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "bsg:\n  uncertain_failover_after: soon\nsites:\n  s1: {uncertain_failover_after: -5}\n")
    text = info.value.format()
    assert "herald.yaml:2:29" in text and "or never" in text
    assert "sites.s1.uncertain_failover_after" in text
