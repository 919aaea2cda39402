"""Campaigns end to end: the daemon's feeder and dispatcher against the fake BSG over
HTTP, with a settable clock for windows and end dates."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import trio

from tests.audience_helpers import ManualClock, fake_and_project, running, wait_for
from tests.daemon_helpers import looked

MSK = timezone(timedelta(hours=3))
START = datetime(2026, 3, 2, 8, 0, tzinfo=MSK)           # Monday 08:00 Moscow: before the window


def phones(n: int, base: int = 79100000000) -> list[str]:
    return [f"+{base + i}" for i in range(n)]


async def status(client, cid) -> dict:
    r = await client.get(f"/campaigns/{cid}")
    assert r.status_code == 200, r.text
    return r.json()


def at_fake(fake) -> Counter:
    return Counter(m["msisdn"] for m in fake.messages("sms"))


async def settled(daemon, cid: int) -> dict:
    """Wait until none of the campaign's messages is queued for the dispatcher or being
    sent: what BSG got of it is final then. A condition, not a guessed time — a loaded
    machine takes longer than any guess."""
    def in_flight() -> dict:
        m = daemon.store.campaign_counts(cid)["messages"]
        return {s: m[s] for s in ("queued", "sending") if m.get(s)}
    await wait_for(lambda: not in_flight(), what=lambda: f"in flight still: {in_flight()}")
    return daemon.store.campaign_counts(cid)


async def quiet_window(daemon) -> None:
    """Before a "nothing more happens" assertion: the feeder runs a whole round, then the
    dispatcher a whole pass (sending what that round fed), both begun after this call —
    whatever either would wrongly do has happened when it returns."""
    await looked(daemon.campaigns_wake, "the campaign feeder")
    await looked(daemon.dispatch_wake, "the dispatcher")


async def status_when(client, cid, predicate, what: str, timeout: float = 20.0) -> dict:
    """The campaign's status once `predicate(status)` holds (polled, bounded)."""
    with trio.move_on_after(timeout):
        while not predicate(body := await status(client, cid)):
            await trio.sleep(0.05)
        return body
    raise AssertionError(f"timed out waiting for {what}: {body}")


async def test_ten_thousand_recipients_window_restart_and_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    clock = ManualClock(START)
    numbers = phones(10_000)
    csv = "phone;name\n" + "".join(f"{p};Клиент {i}\n" for i, p in enumerate(numbers)) + \
        f"{numbers[5]};дубль\nnot a phone;x\n"
    async with fake_and_project(tmp_path, balance=1000, templates='bf: "#NAME#, скидки до 50%!"\n') as (fake, config):
        async with running(config, clock) as (daemon, client):
            await daemon.db(daemon.store.add_opt_out, numbers[7], "test", clock.now())
            r = await client.post("/campaigns", json={
                "name": "black-friday", "csv": csv, "template": "bf", "channel": "sms", "window": "10:00-20:00",
                "rate": "1000/s", "end": "2026-03-02T18:00:00"})
            assert r.status_code == 201, r.text
            created = r.json()
            cid = created["id"]
            assert created["total"] == 10_000 and created["state"] == "running"
            assert created["invalid"]["count"] == 1 and created["invalid"]["examples"][0].startswith("not a phone")
            # the feeder looks at everyone while the window is closed: skips the opted-out
            # number, defers the rest to 10:00 (so they go in list order when it opens)
            opening = START.replace(hour=10).timestamp()
            unseen = lambda: daemon.store._conn.execute(  # noqa: E731
                "SELECT COUNT(*) FROM campaign_recipients WHERE campaign_id = ? AND state = 'pending' "
                "AND not_before < ?", (cid, opening)).fetchone()[0]
            await wait_for(lambda: unseen() == 0, timeout=60, what=lambda: f"the feeder's look: {unseen()} unseen")
            await quiet_window(daemon)
            before = await status(client, cid)
            assert (before["queued"], before["skipped"], before["sent"]) == (9999, 1, 0) and fake.messages() == []

            clock.current = START.replace(hour=10)       # the window opens
            daemon.campaigns_wake.set()
            await wait_for(lambda: len(fake.messages()) >= 3000, timeout=90,
                           what=lambda: f"3000 sent before the restart: {len(fake.messages())}")
        first_run = len(fake.messages())

        async with running(config, clock) as (daemon, client):     # a new daemon on the same store
            await wait_for(lambda: len(fake.messages()) >= first_run + 2000, timeout=90,
                           what=lambda: f"2000 more sent after the restart: {len(fake.messages()) - first_run}")
            clock.current = datetime(2026, 3, 2, 18, 0, 1, tzinfo=MSK)   # the end: the rest is recalled
            daemon.campaigns_wake.set()
            done = await wait_for(lambda: daemon.store.campaign(cid)["state"] == "ended", what="the end")
            assert done
            # what the feeder queued before the end is recalled as the dispatcher claims it:
            # wait for that (a condition, bounded), not for a guessed time
            with trio.fail_after(60):
                while (final := await status(client, cid))["queued"]:
                    await trio.sleep(0.1)
            sent_to = at_fake(fake)
            assert max(sent_to.values()) == 1                                  # nobody twice
            assert "79100000007" not in sent_to                                # opted out: never
            assert final["queued"] == 0 and final["skipped"] == 1
            handed = final["sent"] + final["delivered"] + final["failed"]
            assert handed == len(sent_to) == sum(sent_to.values())
            assert final["expired"] == 10_000 - 1 - handed and final["expired"] > 0
            assert final["total"] == handed + final["expired"] + final["skipped"]
            expired = daemon.store.messages(state="expired", limit=5)
            assert expired == [] or {m["reason"] for m in expired} == {"campaign ended"}
            left = daemon.store._conn.execute("SELECT DISTINCT reason FROM campaign_recipients WHERE "
                                              "campaign_id = ? AND state = 'expired'", (cid,)).fetchall()
            assert [r[0] for r in left] == ["campaign ended"]
            one = next(m for m in fake.messages("sms") if m["msisdn"] == "79100000000")
            assert one["body"] == "Клиент 0, скидки до 50%!"
            assert final["cost"] == f"{handed * 0.02:.2f}".rstrip("0").rstrip(".")

            from herald.engine.cli.main import main
            capsys.readouterr()
            assert await trio.to_thread.run_sync(main, ["campaign", "status", "-c", str(config), "black-friday",
                                                        "--once"]) == 0
            line = capsys.readouterr().out
            assert line.startswith(f"#{cid} black-friday ended [") and f"expired {final['expired']}" in line


async def test_budget_stops_the_campaign_with_an_alert(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, sms_price="0.02") as (fake, config):
        async with running(config) as (daemon, client):
            end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
            r = await client.post("/campaigns", json={"phones": phones(300), "text": "Sale", "channel": "sms",
                                                      "rate": "500/s", "budget": "1.00", "end": end})
            cid = r.json()["id"]
            stopped = await wait_for(lambda: daemon.store.campaign(cid)["state"] == "stopped", what="the stop")
            assert stopped
            await settled(daemon, cid)
            final = await status(client, cid)
            assert len(fake.messages()) == 50 and final["cost"] == "1" and final["queued"] == 250
            assert final["reason"] == "budget reached: spent 1.00 EUR of 1.00"
            incidents = daemon.alerter.open_incidents()
            assert [i["key"] for i in incidents] == [f"campaign.stopped:{cid}"]
            assert "budget reached" in incidents[0]["subject"]


async def test_cancelling_a_stopped_campaign_closes_its_incident(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, balance=0) as (fake, config):
        async with running(config) as (daemon, client):
            end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
            r = await client.post("/campaigns", json={"phones": phones(5), "text": "Sale", "channel": "sms",
                                                      "rate": "100/s", "end": end, "name": "autumn"})
            cid = r.json()["id"]
            await wait_for(lambda: daemon.store.campaign(cid)["state"] == "stopped", what="the stop")
            assert [i["key"] for i in daemon.alerter.open_incidents()] == [f"campaign.stopped:{cid}"]
            r = await client.post("/campaigns/autumn/cancel")
            assert r.status_code == 200 and r.json()["state"] == "cancelled"
            assert daemon.alerter.open_incidents() == []


async def test_low_balance_stops_and_resume_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, balance=0) as (fake, config):
        async with running(config) as (daemon, client):
            end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
            r = await client.post("/campaigns", json={"phones": phones(20), "text": "Sale", "channel": "sms",
                                                      "rate": "100/s", "end": end, "name": "spring"})
            cid = r.json()["id"]
            await wait_for(lambda: daemon.store.campaign(cid)["state"] == "stopped", what="the stop")
            assert "low balance: 0" in (await status(client, cid))["reason"] and fake.messages() == []
            assert daemon.alerter.open_incidents()[0]["key"] == f"campaign.stopped:{cid}"

            fake.set_balance(100)
            r = await client.post("/campaigns/spring/resume")
            assert r.status_code == 200 and r.json()["state"] == "running"
            await wait_for(lambda: len(fake.messages()) == 20, what="all 20 after the top-up")
            assert daemon.alerter.open_incidents() == []


async def test_pause_resume_cancel_and_a_list_campaign(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path) as (fake, config):
        async with running(config) as (daemon, client):
            now = daemon.clock.now()
            for phone in phones(60):
                await daemon.db(daemon.store.put_confirmed_subscriber, "news", phone, "s1", now)
            end = (now + timedelta(hours=1)).isoformat()
            from herald.engine.cli.main import main

            def cli(*argv: str) -> str:
                capsys.readouterr()
                assert main([*argv[:2], "-c", str(config), *argv[2:]]) == 0, capsys.readouterr().err
                return capsys.readouterr().out

            out = await trio.to_thread.run_sync(lambda: cli("campaign", "create", "--list", "news", "--template",
                                                            "news", "--channel", "sms", "--rate", "20/s",
                                                            "--end", end, "--name", "weekly"))
            assert out.startswith("campaign 1 created: 60 recipient(s), running")
            # one leaves the list after the campaign was planned: not messaged
            r = await client.request("DELETE", "/subscriptions", json={"phone": phones(60)[25], "list": "news"})
            assert r.status_code == 200
            await wait_for(lambda: len(fake.messages()) >= 30, what="some sent")
            paused = await trio.to_thread.run_sync(lambda: cli("campaign", "pause", "weekly"))
            assert " paused [" in paused
            await settled(daemon, 1)                               # what was being sent at the pause went
            count = len(fake.messages())
            await quiet_window(daemon)
            assert len(fake.messages()) == count                   # nothing goes while paused
            await trio.to_thread.run_sync(lambda: cli("campaign", "resume", "weekly"))
            await wait_for(lambda: len(fake.messages()) >= count + 5, what="more after resume")
            cancelled = await trio.to_thread.run_sync(lambda: cli("campaign", "cancel", "1"))
            assert " cancelled [" in cancelled
            final = await status_when(client, 1, lambda s: not s["queued"], "nothing queued after the cancel")
            assert final["state"] == "cancelled" and final["queued"] == 0
            sent = at_fake(fake)
            assert max(sent.values()) == 1 and phones(60)[25].lstrip("+") not in sent
            assert final["cancelled"] + final["skipped"] + sum(final[k] for k in ("sent", "delivered", "failed")) == 60
            assert (final["skipped"], final["cancelled"] > 0) == (1, True), final
            again = await client.post("/campaigns/1/resume")
            assert again.status_code == 409
            listing = await trio.to_thread.run_sync(lambda: cli("campaign", "list"))
            assert listing.startswith("#1 weekly cancelled [")


async def test_yaml_campaigns_load_once_and_bad_requests_say_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path) as (fake, config):
        folder = tmp_path / "rules" / "campaigns"
        folder.mkdir()
        (folder / "spring.yaml").write_text(
            "# a campaign kept in git\nphones: ['+79101112233', '+79101112234']\ntext: Весна!\nchannel: sms\n"
            "rate: 10/s\nend: 2099-01-01T00:00:00\n", encoding="utf-8")
        (folder / "off.yaml").write_text("enabled: false\nlist: news\ntext: x\nend: 2099-01-01T00:00:00\n",
                                         encoding="utf-8")
        async with running(config) as (daemon, client):
            await wait_for(lambda: daemon.store.campaign("spring"), what="the YAML campaign")
            assert (await client.post("/reload")).status_code == 200
            await wait_for(lambda: len(fake.messages()) == 2, what="its two messages")
            await quiet_window(daemon)                         # the feeder reads the reloaded folder
            listing = (await client.get("/campaigns")).json()["campaigns"]
            assert [(c["name"], c["origin"], c["total"]) for c in listing] == [("spring", "yaml:spring.yaml", 2)]

            cases = [({"list": "news", "text": "x"}, "/end"),
                     ({"list": "news", "phones": ["+79101112233"], "text": "x", "end": "2099-01-01"}, "/phones"),
                     ({"list": "news", "template": "nope", "end": "2099-01-01"}, "/template"),
                     ({"list": "news", "text": "x", "end": "2099-01-01", "rate": "fast"}, "/rate"),
                     ({"list": "news", "text": "x", "end": "2099-01-01", "window": "9-21"}, "/window"),
                     ({"list": "news", "text": "x", "end": "2099-01-01", "budgett": 5}, "/budgett"),
                     ({"list": "newz", "text": "x", "end": "2099-01-01"}, "/list"),
                     ({"phones": ["+79101112233"], "text": "x", "end": "2000-01-01"}, "/end"),
                     ({"name": "spring", "phones": ["+79101112233"], "text": "x", "end": "2099-01-01"}, "/name")]
            for body, pointer in cases:
                r = await client.post("/campaigns", json=body)
                assert 400 <= r.status_code < 500 and r.json()["pointer"] == pointer, (body, r.text)
            assert (await client.get("/campaigns/99")).status_code == 404


async def _backlog(daemon, client, fake, n: int, **extra) -> int:
    """A running campaign of `n` whose messages all wait in the outbox (BSG answers 5xx)."""
    fake.set_fault("5xx")
    end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    r = await client.post("/campaigns", json={"phones": phones(n), "text": "Sale", "channel": "sms",
                                              "rate": "500/s", "end": end, **extra})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    await wait_for(lambda: daemon.store.campaign_counts(cid)["messages"].get("queued", 0) == n, what="the backlog")
    return cid


async def test_pausing_a_backlog_holds_it_and_the_daemon_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path) as (fake, config):
        async with running(config) as (daemon, client):
            cid = await _backlog(daemon, client, fake, 20)
            assert (await client.post(f"/campaigns/{cid}/pause")).status_code == 200
            await wait_for(lambda: daemon.store.campaign_counts(cid)["messages"] == {"held": 20}, what="held")
            await quiet_window(daemon)                         # the dispatcher looks at the outbox
            assert (await client.get("/health")).status_code in (200, 503)
        async with running(config) as (daemon, client):        # a restart with held messages
            await quiet_window(daemon)
            assert (await client.get("/health")).status_code in (200, 503)
            fake.clear_faults()
            assert (await client.post(f"/campaigns/{cid}/resume")).status_code == 200
            await wait_for(lambda: len(fake.messages()) == 20, what="all 20 after resume")
            assert max(at_fake(fake).values()) == 1


async def test_a_number_that_opts_out_while_its_message_is_held_never_gets_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, subscriptions="  lists: [news]\n  poll_incoming: off\n") as (fake, config):
        async with running(config) as (daemon, client):
            cid = await _backlog(daemon, client, fake, 10)
            assert (await client.post(f"/campaigns/{cid}/pause")).status_code == 200
            fake.clear_faults()
            stopper = phones(10)[3]
            r = await client.post("/sms/incoming", json={"id": "s1", "from": stopper, "text": "STOP"})
            assert r.status_code == 202
            await wait_for(lambda: [m for m in fake.messages() if m["msisdn"] == stopper.lstrip("+")],
                           what="the STOP confirmation")
            assert (await client.post(f"/campaigns/{cid}/resume")).status_code == 200
            await wait_for(lambda: len(fake.messages()) == 10, what="the nine others and the confirmation")
            await settled(daemon, cid)
            bodies = [m["body"] for m in fake.messages() if m["msisdn"] == stopper.lstrip("+")]
            assert "Sale" not in bodies and len(bodies) == 1
            final = await status(client, cid)
            assert (final["skipped"], final["queued"], final["total"]) == (1, 0, 10)
            assert final["sent"] + final["delivered"] == 9


async def test_resume_after_a_no_funds_stop_sends_what_bsg_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path) as (fake, config):
        async with running(config) as (daemon, client):
            fake.set_fault("error", code=8)                    # BSG: not enough funds
            end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
            r = await client.post("/campaigns", json={"phones": phones(10), "text": "Sale", "channel": "sms",
                                                      "rate": "4/s", "end": end})
            cid = r.json()["id"]
            await wait_for(lambda: daemon.store.campaign(cid)["state"] == "stopped", what="the no-funds stop")
            assert "error 8" in daemon.store.campaign(cid)["reason"]
            fake.clear_faults()                                # the account is topped up
            assert (await client.post(f"/campaigns/{cid}/resume")).status_code == 200
            await wait_for(lambda: len(fake.messages()) == 10, timeout=10, what="all 10 soon after resume")
            after = daemon.store.campaign(cid)
            assert after["state"] in ("active", "completed") and "funds" not in after["reason"]
            assert daemon.alerter.open_incidents() == []


async def test_a_small_budget_is_never_overspent_before_the_first_price(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, sms_price="0.02") as (fake, config):
        async with running(config) as (daemon, client):
            end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
            r = await client.post("/campaigns", json={"phones": phones(100), "text": "Sale", "channel": "sms",
                                                      "rate": "500/s", "budget": "0.10", "end": end})
            cid = r.json()["id"]
            await wait_for(lambda: daemon.store.campaign(cid)["state"] == "stopped", what="the budget stop")
            await settled(daemon, cid)
            final = await status(client, cid)
            assert len(fake.messages()) == 5 and final["cost"] == "0.1" and final["queued"] == 95


async def test_set_changes_budget_end_and_rate_and_a_budget_stop_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, sms_price="0.02") as (fake, config):
        async with running(config) as (daemon, client):
            end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
            r = await client.post("/campaigns", json={"phones": phones(30), "text": "Sale", "channel": "sms",
                                                      "rate": "500/s", "budget": "0.20", "end": end, "name": "bf"})
            cid = r.json()["id"]
            await wait_for(lambda: daemon.store.campaign(cid)["state"] == "stopped", what="the budget stop")
            assert len(fake.messages()) == 10
            for body, pointer in [({"budget": -1}, "/budget"), ({"rate": "fast"}, "/rate"),
                                  ({"end": "2000-01-01T00:00:00"}, "/end"), ({"ends": "2099-01-01"}, "/ends"),
                                  ({}, "")]:
                bad = await client.patch("/campaigns/bf", json=body)
                assert bad.status_code == 400 and bad.json()["pointer"] == pointer, (body, bad.text)
            assert (await client.patch("/campaigns/99", json={"rate": "1/s"})).status_code == 404
            later = (datetime.now(timezone.utc) + timedelta(hours=2)).replace(microsecond=0)
            patched = await client.patch("/campaigns/bf", json={"end": later.isoformat(), "rate": "600/m"})
            assert patched.status_code == 200, patched.text
            assert patched.json()["end"] == later.isoformat() and patched.json()["rate"] == 10
            assert patched.json()["state"] == "stopped"

            from herald.engine.cli.main import main
            capsys.readouterr()
            code = await trio.to_thread.run_sync(main, ["campaign", "set", "-c", str(config), "bf", "--budget", "1",
                                                        "--rate", "500/s"])
            assert code == 0, capsys.readouterr().err
            assert capsys.readouterr().out.startswith(f"#{cid} bf stopped [")
            assert (await client.post("/campaigns/bf/resume")).status_code == 200
            await wait_for(lambda: len(fake.messages()) == 30, what="the other 20 within the new budget")
            stale = daemon.store._conn.execute("SELECT DISTINCT stale_at FROM outbox WHERE campaign_id = ?",
                                               (cid,)).fetchall()
            assert later.timestamp() in {row[0] for row in stale}
            await client.post("/campaigns/bf/cancel")
            assert (await client.patch("/campaigns/bf", json={"rate": "1/s"})).status_code == 409


async def test_a_csv_over_http_max_body_is_taken_and_other_routes_keep_the_limit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path) as (fake, config):
        async with running(config) as (daemon, client):
            limit = daemon.config.http.max_body
            rows = "".join(f"{p},Покупатель номер {i:06d}\n" for i, p in enumerate(phones(40_000)))
            csv = "phone,name\n" + rows
            assert len(csv.encode()) > limit
            r = await client.post("/campaigns", json={"csv": csv, "text": "#NAME#", "channel": "sms",
                                                      "start": "2099-01-01T00:00:00", "end": "2099-01-02T00:00:00"})
            assert r.status_code == 201 and r.json()["total"] == 40_000, r.text[:300]
            big = await client.post("/events", json={"type": "x", "id": "1", "data": {"pad": csv}})
            assert big.status_code == 413 and "http.max_body" in big.json()["error"]


async def test_herald_check_and_the_daemon_say_where_a_campaign_file_is_wrong(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path) as (fake, config):
        folder = tmp_path / "rules" / "campaigns"
        folder.mkdir()
        (folder / "bad.yaml").write_text("phones: ['+79101112233']\ntext: Весна!\nrate: fast\n"
                                         "end: 2099-01-01T00:00:00\n", encoding="utf-8")
        (folder / "typo.yaml").write_text("phones: ['+79101112233']\ntext: x\nend: 2099-01-01T00:00:00\n"
                                          "  budgett: 5\n", encoding="utf-8")
        (folder / "old.yaml").write_text("enabled: false\nphones: ['+79101112233']\ntext: x\n"
                                         "end: 2001-01-01T00:00:00\n", encoding="utf-8")
        from herald.engine.cli.main import main
        capsys.readouterr()
        assert main(["check", "-c", str(config)]) == 1
        err = capsys.readouterr().err
        assert "rules/campaigns/bad.yaml:3:7: error: rate must be messages per time" in err, err
        assert "rules/campaigns/typo.yaml:4:" in err and "error: not valid YAML" in err, err
        assert "rules/campaigns/old.yaml:4:6: warning: the end" in err, err
        (folder / "typo.yaml").unlink()
        caplog.set_level("ERROR", logger="herald.campaigns")
        async with running(config) as (daemon, client):
            await wait_for(lambda: "bad.yaml:3:7" in caplog.text, what="the located runtime error")
            assert daemon.store.campaigns() == []


async def test_no_recipients_and_digit_names_are_refused_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path) as (fake, config):
        async with running(config) as (daemon, client):
            end = "2099-01-01T00:00:00"
            cases = [({"list": "news", "text": "x", "end": end}, "/list", "has no confirmed subscribers"),
                     ({"phones": ["12", "abc"], "text": "x", "end": end}, "/phones", "all 2 number(s) are invalid"),
                     ({"csv": "phone,name\n", "text": "x", "end": end}, "/csv", "nobody to send to"),
                     ({"name": "2024", "phones": ["+79101112233"], "text": "x", "end": end}, "/name", "only digits")]
            for body, pointer, words in cases:
                r = await client.post("/campaigns", json=body)
                assert r.status_code == 400 and r.json()["pointer"] == pointer and words in r.json()["error"], r.text
            assert (await client.get("/campaigns")).json()["campaigns"] == []
