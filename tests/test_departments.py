"""Employees and departments end to end: `herald send --department/--group`, `POST /messages`
with a department or group, and rules sending to them — resolved through a people file,
each recipient's own result recorded, against the fake BSG over real HTTP."""

from __future__ import annotations

from pathlib import Path

import trio

from herald.engine.cli.main import main as cli_main
from tests.daemon_helpers import fake_bsg, free_port, herald, write_project

PEOPLE = """\
users:
  - {id: 7, login: anna, name: Anna, PERSONAL_MOBILE: "+79005550001", department: Sales Moscow, groups: [ops]}
  - {id: 8, login: boris, name: Boris, WORK_PHONE: "+79005550002", department: Sales}
  - {id: 9, login: vera, name: Vera, department: Sales, groups: [ops]}
  - {id: 10, login: gleb, name: Gleb, PERSONAL_PHONE: "+79005550004", department: Warehouse, groups: [ops]}
departments:
  Sales: null
  Sales Moscow: Sales
  Warehouse: null
"""

RULES = 'rule "big order" on order.created if order.price > 1000 send sms to department "Sales" ' \
        'text "Крупный заказ #ORDER_ID#"\n'


def project(tmp_path: Path, bsg_url: str, rules: str = RULES) -> Path:
    (tmp_path / "people.yaml").write_text(PEOPLE, encoding="utf-8")
    return write_project(tmp_path, rules, port=free_port(), bsg_url=bsg_url,
                         extra="directory:\n  file: people.yaml\n")


async def until(predicate, timeout: float = 10.0):
    with trio.fail_after(timeout):
        while not (value := predicate()):
            await trio.sleep(0.05)
        return value


def sent_to(fake) -> dict[str, str]:
    return {m["msisdn"]: m["body"] for m in fake.messages()}


async def test_post_messages_to_a_department_sends_to_each_member_and_records_the_one_without_a_phone(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, url), herald(project(tmp_path, url)) as (daemon, client):
        response = await client.post("/messages", json={"department": "Sales", "text": "Планёрка в 10:00",
                                                        "channel": "sms", "now": True})
        assert response.status_code == 202
        results = response.json()["messages"]
        # Sales takes in Sales Moscow: Anna, Boris and Vera (who has no phone)
        by_state = {(r["to"], r["state"]) for r in results}
        assert by_state == {("+79005550001", "queued"), ("+79005550002", "queued"), ("", "failed")}
        (failed,) = [r for r in results if r["state"] == "failed"]
        assert "vera" in failed["recipient"] and "no phone" in failed["reason"]
        # `queued` holds what will go, `failed` what will not
        assert sorted(response.json()["queued"]) == sorted(r["id"] for r in results if r["state"] == "queued")
        assert response.json()["failed"] == [failed["id"]]
        await until(lambda: len(fake.messages()) == 2)
        assert sent_to(fake) == {"79005550001": "Планёрка в 10:00", "79005550002": "Планёрка в 10:00"}
        # every recipient's result stays in the history, the failed one with its reason
        history = (await client.get("/messages")).json()["messages"]
        assert {(m["to"], m["state"] in ("sent", "delivered", "sending", "queued"), m["reason"] != "")
                for m in history} == {("+79005550001", True, False), ("+79005550002", True, False),
                                      ("", False, True)}


async def test_post_messages_to_a_group_and_to_an_unknown_department(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, url), herald(project(tmp_path, url)) as (daemon, client):
        response = await client.post("/messages", json={"group": ["ops"], "text": "Склад закрыт", "channel": "sms",
                                                        "now": True})
        assert response.status_code == 202
        assert sorted((r["to"], r["state"]) for r in response.json()["messages"]) == [
            ("", "failed"), ("+79005550001", "queued"), ("+79005550004", "queued")]
        await until(lambda: len(fake.messages()) == 2)
        # nobody can be found: a 400 pointing at the name, with the directory's closest name
        unknown = await client.post("/messages", json={"department": "Salez", "text": "x", "channel": "sms"})
        assert (unknown.status_code, unknown.json()["pointer"]) == (400, "/department")
        assert "Salez" in unknown.json()["error"] and unknown.json()["hint"] == 'did you mean "Sales"?'
        unknown = await client.post("/messages", json={"group": ["ops", "opz"], "department": "Nobody",
                                                        "text": "x", "channel": "sms"})
        assert unknown.status_code == 202           # ops can be found: opz and Nobody are failed messages
        body = unknown.json()
        assert len(body["failed"]) == 3 and len(body["queued"]) == 2   # opz, Nobody, Vera (no phone)
        assert {r["id"] for r in body["messages"] if "opz" in r["recipient"]} <= set(body["failed"])
        await until(lambda: len(fake.messages()) == 4)
        unknown = await client.post("/messages", json={"group": ["ops", "opz"], "text": "x", "channel": "sms"})
        assert unknown.status_code == 202
        unknown = await client.post("/messages", json={"department": ["Sales", "Salez"], "text": "x",
                                                        "channel": "sms", "now": True})
        assert unknown.status_code == 202 and unknown.json()["queued"]
        await until(lambda: len(fake.messages()) == 8)
        gone = await client.post("/messages", json={"department": ["Nobody", "Salez"], "text": "x"})
        assert (gone.status_code, gone.json()["pointer"]) == (400, "/department/0")
        bad = await client.post("/messages", json={"department": ["Sales", 5], "text": "x"})
        assert (bad.status_code, bad.json()["pointer"]) == (400, "/department/1")
        none = await client.post("/messages", json={"text": "x"})
        assert (none.status_code, none.json()["pointer"]) == (400, "/to")
        await trio.sleep(0.3)
        assert len(fake.messages()) == 8


async def test_departments_without_a_directory_are_a_400_saying_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, url):
        config = write_project(tmp_path, "", port=free_port(), bsg_url=url)
        async with herald(config) as (daemon, client):
            response = await client.post("/messages", json={"department": "Sales", "text": "x", "channel": "sms"})
            assert (response.status_code, response.json()["pointer"]) == (400, "/department")
            assert "no `directory:` is configured" in response.json()["error"]
            # with a phone beside it, the phone goes and the department's message says why it failed
            response = await client.post("/messages", json={"department": "Sales", "to": "+79005550009",
                                                            "text": "x", "channel": "sms", "now": True})
            body = response.json()
            assert response.status_code == 202 and len(body["queued"]) == 1 and len(body["failed"]) == 1
            (failed,) = [m for m in body["messages"] if m["id"] in body["failed"]]
            assert "no `directory:` is configured" in failed["recipient"] + failed["reason"]


async def test_herald_send_department_prints_each_recipients_result(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = project(tmp_path, "")  # rewritten below with the fake's URL
    async with fake_bsg() as (fake, url):
        config = project(tmp_path, url)
        async with herald(config) as (daemon, client):
            code = await trio.to_thread.run_sync(cli_main, [
                "send", "-c", str(config), "--department", "Sales Moscow", "--group", "ops",
                "--text", "Инвентаризация", "--channel", "sms", "--now"])
            out = capsys.readouterr().out
            assert code == 0
            # Anna is in both: one message; Vera (ops) has no phone; Gleb (ops) gets his
            assert "queued: 2 of 3" in out
            assert "+79005550001" in out and "+79005550004" in out and "failed" in out
            await until(lambda: len(fake.messages()) == 2)
            assert set(sent_to(fake)) == {"79005550001", "79005550004"}
            code = await trio.to_thread.run_sync(cli_main, [
                "send", "-c", str(config), "--department", "Nobody", "--text", "x"])
            captured = capsys.readouterr()
            assert code == 1 and "error (400) at /department" in captured.err and "Nobody" in captured.err


async def test_a_rule_sending_to_a_department_records_each_member(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, url), herald(project(tmp_path, url)) as (daemon, client):
        event = {"type": "order.created", "id": "o-1", "data": {"order": {"id": 5, "price": 5000}}}
        assert (await client.post("/events", json=event)).status_code == 202
        await until(lambda: len(fake.messages()) == 2)
        assert set(sent_to(fake).values()) == {"Крупный заказ 5"}
        history = (await client.get("/messages", params={"event": "o-1"})).json()["messages"]
        assert len(history) == 3 and [m["state"] for m in history].count("failed") == 1
