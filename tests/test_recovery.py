"""Recovery at scale (issue #12, item 5): messages left `sending` by crashes are looked up
under a budget of their own (bsg.lookup_rate, bsg.lookup_concurrency) — not the send rate
cap — concurrently; found ones are never sent again, unknown ones are sent exactly once;
and a rate change on reload applies to the running dispatcher at once. All on trio's
MockClock, with the fake BSG in-process (see tests/virtual_daemon.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import trio

from herald.engine.store import Store
from tests.virtual_daemon import virtual_clock  # noqa: F401  (the fixture)
from tests.virtual_daemon import fakes, order, outcomes, post, states, until, virtual_daemon, write_config


def strand(config: Path, fake, count: int) -> tuple[list[int], list[int]]:
    """`count` messages a crash left `sending` at main; BSG has every other one.
    Returns (ids BSG has, ids it does not)."""
    store = Store(config.parent / "var" / "herald.db")
    known, unknown = [], []
    with store.transaction():
        for n in range(count):
            phone = f"+7900{n:07d}"
            message_id, reference = store.add_message(
                site="s1", channel="sms", to_phone=phone, state="queued", send_at=datetime.now(timezone.utc),
                text=f"m{n}", sms_text=f"m{n}", sender="testsms", sms_sender="testsms")
            store.update_message(message_id, state="sending", endpoint="main", attempts=1)
            if n % 2 == 0:
                fake.create_sms({"destination": "phone", "msisdn": phone.lstrip("+"), "originator": "testsms",
                                 "body": f"m{n}", "reference": reference})
                known.append(message_id)
            else:
                unknown.append(message_id)
    store.close()
    return known, unknown


async def test_many_sending_rows_are_looked_up_under_their_own_budget_and_never_sent_twice(
        tmp_path, virtual_clock):
    """The issue: 1,949 `sending` rows at `rate: 0.5` took ~2 hours, one look-up per send
    slot. 300 rows here would take 600 s that way; the look-up budget does it in seconds."""
    config = write_config(tmp_path, bsg="  rate: 0.5\n", backups=0)
    (main,) = fakes(1)
    known, unknown = strand(config, main, 300)
    async with virtual_daemon(config, [main], virtual_clock) as daemon:
        started = trio.current_time()
        await until(lambda: "sending" not in states(daemon), within=60, what=lambda: states(daemon))
        resolved = trio.current_time() - started
        await until(lambda: set(states(daemon)) <= {"sent", "delivered"}, within=300, what=lambda: states(daemon))

        # never twice: BSG holds each reference once; a found message was never sent again,
        # an unknown one was sent exactly once
        references = [m["reference"] for m in main.messages()]
        assert len(references) == len(set(references)) == 300
        for message_id in known:
            trail = outcomes(daemon, message_id)
            assert trail[0] == ("lookup", "found") and not [t for t in trail if t[0] == "send"], trail
        for message_id in unknown:
            trail = outcomes(daemon, message_id)
            assert trail[0] == ("lookup", "not found"), trail
            assert [t for t in trail if t[0] == "send"] == [("send", "ok")], trail
    assert resolved < 60, resolved


async def test_look_ups_run_concurrently(tmp_path, virtual_clock):
    """Each answer takes BSG 2 s: 100 look-ups one at a time would take 200 s."""
    config = write_config(tmp_path, bsg="  lookup_concurrency: 20\n", backups=0)
    (main,) = fakes(1)
    strand(config, main, 100)
    main.set_fault("slow", delay=2.0)
    async with virtual_daemon(config, [main], virtual_clock) as daemon:
        started = trio.current_time()
        await until(lambda: "sending" not in states(daemon), within=60, what=lambda: states(daemon))
        assert trio.current_time() - started < 30


async def test_the_look_up_rate_is_a_setting(tmp_path, virtual_clock):
    config = write_config(tmp_path, bsg="  lookup_rate: 5\n", backups=0)
    (main,) = fakes(1)
    strand(config, main, 51)
    async with virtual_daemon(config, [main], virtual_clock) as daemon:
        started = trio.current_time()
        await until(lambda: "sending" not in states(daemon), within=120, what=lambda: states(daemon))
        assert trio.current_time() - started >= 10 - 1e-6          # 51 look-ups, 5 a second
    lookups = {r["path"] for r in main.requests() if r["path"].startswith("/sms/reference/")}
    assert len(lookups) == 51                  # each looked up (a found one is then polled too)


async def test_a_rate_raised_by_reload_applies_to_the_running_dispatcher(tmp_path, virtual_clock):
    """`rate: 0.5`, 30 messages to one phone (BSG wants no phone twice in a request, so
    30 requests, 2 s apart); reloaded to `rate: 50`, the rest go within the new pacing —
    also those already waiting for a slot under the old one."""
    config = write_config(tmp_path, bsg="  rate: 0.5\n", backups=0)
    (main,) = fakes(1)
    async with virtual_daemon(config, [main], virtual_clock) as daemon:
        await post(daemon, *[order(n, "+79005550011") for n in range(30)])
        await until(lambda: len(main.messages()) >= 2, within=60, step=0.1)
        config.write_text(config.read_text().replace("rate: 0.5", "rate: 50"), encoding="utf-8")
        ok, errors = await daemon.reload()
        assert ok, errors
        reloaded, left = trio.current_time(), 30 - len(main.messages())
        assert left >= 10                      # the old pacing would need ≥ 2 s for each
        await until(lambda: len(main.messages()) == 30, within=60, step=0.1)
        assert trio.current_time() - reloaded < 5, (trio.current_time() - reloaded, left)
        assert daemon.dispatcher.client.rate == 50





def test_the_look_up_budget_settings_and_their_errors(tmp_path):
    import pytest
    from herald.engine.config import load_config
    from herald.engine.errors import ConfigError
    path = tmp_path / "herald.yaml"
    path.write_text("bsg: {}\n", encoding="utf-8")
    bsg = load_config(path, env={}).bsg
    assert (bsg.lookup_rate, bsg.lookup_concurrency) == (50, 16)
    path.write_text("bsg: {rate: 400}\n", encoding="utf-8")
    assert load_config(path, env={}).bsg.lookup_rate == 400          # never tighter than sends by default
    path.write_text("bsg:\n  lookup_rate: .nan\n  lookup_concurrency: 2.5\n  rate: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    text = info.value.format()
    assert "herald.yaml:2:16: error: bsg.lookup_rate" in text
    assert "herald.yaml:3:23: error: bsg.lookup_concurrency: expected a whole number" in text
    assert "herald.yaml:4:9: error: bsg.rate" in text
