"""The spool-folder connector: option checks, exactly-once, and a real daemon end to end."""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from herald import connectors
from herald.connectors.spool import CURSOR_KEY, SpoolConnector
from herald.engine.config import ConnectorConfig, load_config
from herald.engine.daemon import Daemon
from herald.engine.errors import ConfigError
from tests.daemon_helpers import ROOT, fake_bsg, free_port, herald, start_daemon, write_project

CARD = 'on order.status == "shipped" send omni to customer.phone using "shipped" between 00:00-24:00\n'


def order_event(order_id: int, **extra) -> dict:
    return {"type": "order.updated", "site": "s1",
            "data": {"order": {"id": order_id, "status": "shipped"},
                     "customer": {"phone": "+7 900 123-45-67"}},
            "previous": {"order": {"status": "P"}}, **extra}


def spool_config(tmp_path: Path, block: str) -> ConnectorConfig:
    """The first connector of a herald.yaml holding `block`, as the daemon gets it."""
    path = tmp_path / "herald.yaml"
    path.write_text("connectors:\n" + block, encoding="utf-8")
    return load_config(path).connectors[0]


def problems(tmp_path: Path, block: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        SpoolConnector(spool_config(tmp_path, block))
    return [d.format() for d in caught.value.diagnostics]


# ---------------------------------------------------------------------- options

def test_options_are_read_and_the_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    c = SpoolConnector(spool_config(tmp_path, "  - type: spool\n    path: in/box\n"
                                              "    interval: 0.5\n    name: orders\n"))
    assert (c.path, c.interval, c.name) == (tmp_path / "in" / "box", 0.5, "orders")
    c = SpoolConnector(spool_config(tmp_path, f"  - type: spool\n    path: {tmp_path / 'abs'}\n"))
    assert (c.path, c.interval, c.name) == (tmp_path / "abs", 1.0, None)


def test_a_config_without_a_file_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = SpoolConnector(ConnectorConfig("spool", {"path": "drop", "interval": 2}))
    assert (c.path, c.interval) == (tmp_path / "drop", 2.0)


def test_unknown_option_gets_did_you_mean_at_its_line(tmp_path):
    (p,) = problems(tmp_path, "  - type: spool\n    path: spool\n    intervall: 2\n")
    assert p.startswith(f"{tmp_path / 'herald.yaml'}:4:16: error: spool connector: unknown option \"intervall\"")
    assert 'did you mean "interval"?' in p


def test_missing_path_is_located_at_the_entry(tmp_path):
    (p,) = problems(tmp_path, "  - type: spool\n    interval: 1\n")
    assert re.match(rf"{re.escape(str(tmp_path / 'herald.yaml'))}:2:\d+: error: spool connector: path is required", p)
    assert "e.g. path: spool" in p


@pytest.mark.parametrize("line, expected", [
    ("path: 42", 'path: expected a folder path, got the number 42'),
    ('path: ""', "path: expected a folder path, got an empty string"),
    ("path: [a, b]", "path: expected a folder path, got a list"),
])
def test_path_must_be_a_string(tmp_path, line, expected):
    (p,) = problems(tmp_path, f"  - type: spool\n    {line}\n")
    assert f":3:11: error: spool connector: {expected}" in p


@pytest.mark.parametrize("value, expected", [
    ("fast", 'interval: expected a number of seconds, got "fast"'),
    ("true", "interval: expected a number of seconds, got true/false"),
    ("0", "interval: 0 is out of range"),
    ("-1", "interval: -1 is out of range"),
])
def test_interval_must_be_a_positive_number(tmp_path, value, expected):
    (p,) = problems(tmp_path, f"  - type: spool\n    path: spool\n    interval: {value}\n")
    assert f":4:15: error: spool connector: {expected}" in p


def test_all_problems_are_reported_at_once_and_secrets_are_not_echoed(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOOL_INTERVAL", "soon")
    found = problems(tmp_path, "  - type: spool\n    pth: spool\n    interval: !env SPOOL_INTERVAL\n"
                               "    name: 7\n")
    assert len(found) == 4, found
    text = "\n".join(found)
    assert 'did you mean "path"?' in text and "path is required" in text
    assert "name: expected a non-empty string, got the number 7" in text
    assert "interval: expected a number of seconds" in text and "soon" not in text


def test_an_interval_from_the_environment_is_a_number(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOOL_INTERVAL", "0.25")
    c = SpoolConnector(spool_config(tmp_path, "  - type: spool\n    path: x\n    interval: !env SPOOL_INTERVAL\n"))
    assert c.interval == 0.25


# ---------------------------------------------------------------------- registry

def test_find_gives_the_spool_connector():
    assert connectors.find("spool") is SpoolConnector
    assert SpoolConnector.type == "spool"
    assert "spool" in connectors.available() and "base" not in connectors.available()
    assert connectors.find("no_such_type") is None


# ---------------------------------------------------------------------- against a fake context

class FakeContext:
    """Journals like the reactor's Context: validates, ignores known ids, moves the cursor."""

    def __init__(self, daemon_like_cursors: dict | None = None):
        self.name = "spool1"
        self.journal: dict[str, dict] = {}
        self.cursors: dict[str, str] = daemon_like_cursors if daemon_like_cursors is not None else {}
        self.emits: list[list[str]] = []
        self.status: tuple[bool, str] = (False, "starting")

    async def emit(self, events, *, cursor=None):
        from herald.engine.events import parse_event
        parsed = [parse_event(e, default_site="s1", known_sites={"s1": None}, pointer=f"/{i}")
                  for i, e in enumerate(events)]
        for event in parsed:
            self.journal.setdefault(event.id, event.as_json())
        if cursor:
            self.cursors[cursor[0]] = cursor[1]
        self.emits.append([e.id for e in parsed])
        return [e.id for e in parsed]

    async def get_cursor(self, key):
        return self.cursors.get(key)

    async def set_cursor(self, key, value):
        self.cursors[key] = value

    def alive(self, detail=""):
        self.status = (True, detail or "ok")

    def down(self, detail):
        self.status = (False, detail)


def drop(folder: Path, name: str, payload, *, age: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    if age:
        os.utime(tmp, (time.time() - age, time.time() - age))
    os.replace(tmp, folder / name)            # how writers should drop files: write, then rename
    return folder / name


def connector_for(folder: Path) -> SpoolConnector:
    return SpoolConnector(ConnectorConfig("spool", {"path": str(folder), "interval": 0.05}))


async def test_files_go_in_name_order_and_events_without_id_get_stable_ids(tmp_path):
    folder = tmp_path / "spool"
    drop(folder, "b.json", [order_event(2), order_event(3)])
    drop(folder, "a.json", order_event(1))
    (folder / "ignored.txt").write_text("not mine")
    (folder / "sub.json").mkdir()
    ctx, c = FakeContext(), connector_for(folder)
    await c.resume(ctx)
    await c.scan(ctx)
    assert [len(ids) for ids in ctx.emits] == [1, 2]
    first, (second, third) = ctx.emits[0][0], ctx.emits[1]
    assert first.startswith("spool:a.json:0:") and second.startswith("spool:b.json:0:")
    assert third.startswith("spool:b.json:1:")
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["a.json", "b.json"]
    assert sorted(p.name for p in folder.iterdir()) == ["done", "ignored.txt", "sub.json"]
    assert json.loads(ctx.cursors[CURSOR_KEY])["file"] == "b.json"
    assert ctx.status[0] is True
    # the same file content under the same name later: the same ids, so the journal keeps one
    drop(folder, "a.json", order_event(1))
    await c.scan(ctx)
    assert ctx.emits[-1] == [first] and len(ctx.journal) == 3
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["a.1.json", "a.json", "b.json"]
    # given ids are kept
    drop(folder, "c.json", order_event(4, id="evt-4"))
    await c.scan(ctx)
    assert ctx.emits[-1] == ["evt-4"]


async def test_a_crash_between_journaling_and_moving_does_not_repeat_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "spool"
    drop(folder, "a.json", order_event(1))
    drop(folder, "b.json", order_event(2))
    ctx, c = FakeContext(), connector_for(folder)
    await c.resume(ctx)
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    await c.scan(ctx)                         # a.json journaled, its move fails
    assert len(ctx.emits) == 1 and ctx.status == (False, "a.json: Permission denied")
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["a.json", "b.json"]  # order kept
    monkeypatch.setattr(os, "replace", real_replace)
    restarted = connector_for(folder)         # a restart: the cursor comes from the store
    await restarted.resume(FakeContext(ctx.cursors))
    await restarted.scan(ctx)
    assert len(ctx.emits) == 2 and ctx.emits[1][0].startswith("spool:b.json:")   # a.json only moved
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["a.json", "b.json"]
    assert len(ctx.journal) == 2 and ctx.status[0] is True


async def test_a_bad_file_goes_to_bad_with_its_pointer_and_later_files_go_on(tmp_path):
    folder = tmp_path / "spool"
    drop(folder, "1.json", {"type": "order.updated", "data": []})
    drop(folder, "2.json", [order_event(1), {"type": "order.updated", "data": {}, "color": 1}])
    drop(folder, "3.json", "{not json", age=60)
    drop(folder, "4.json", [])
    drop(folder, "5.json", order_event(5))
    ctx, c = FakeContext(), connector_for(folder)
    await c.resume(ctx)
    await c.scan(ctx)
    bad = folder / "bad"
    assert sorted(p.name for p in bad.iterdir()) == [
        "1.json", "1.json.error.txt", "2.json", "2.json.error.txt", "3.json", "3.json.error.txt"]
    assert "pointer: /data\nerror: data is required and must be an object" in (bad / "1.json.error.txt").read_text()
    assert "pointer: /1/color\nerror: unknown key 'color'" in (bad / "2.json.error.txt").read_text()
    assert ("pointer: (the whole file)\nerror: invalid JSON at line 1, column 2"
            in (bad / "3.json.error.txt").read_text())
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["4.json", "5.json"]   # [] is no events
    assert len(ctx.journal) == 1 and "5.json" in json.loads(ctx.cursors[CURSOR_KEY])["file"]
    assert ctx.status == (True, f"watching {folder}: 2 file(s) done, 3 bad since start")


async def test_a_half_written_file_waits_and_so_do_the_files_after_it(tmp_path):
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / "1.json").write_text('{"type": "order.upd')          # fresh: still being written
    drop(folder, "2.json", order_event(2))
    ctx, c = FakeContext(), connector_for(folder)
    await c.resume(ctx)
    await c.scan(ctx)
    assert ctx.emits == [] and not (folder / "bad").exists()
    (folder / "1.json").write_text(json.dumps(order_event(1)))
    await c.scan(ctx)
    assert [ids[0].split(":")[1] for ids in ctx.emits] == ["1.json", "2.json"]


async def test_a_missing_folder_is_down_until_it_appears(tmp_path):
    folder = tmp_path / "later"
    ctx, c = FakeContext(), connector_for(folder)
    await c.resume(ctx)
    await c.scan(ctx)
    assert ctx.status == (False, f"folder {folder} does not exist")
    folder.write_text("a file")
    await c.scan(ctx)
    assert ctx.status == (False, f"{folder} is not a folder")
    folder.unlink()
    drop(folder, "a.json", order_event(1))
    await c.scan(ctx)
    assert ctx.status[0] is True and len(ctx.journal) == 1


async def test_run_reports_started_and_stops_when_cancelled(tmp_path):
    folder = tmp_path / "spool"
    ctx, c = FakeContext(), connector_for(folder)
    async with trio.open_nursery() as nursery:
        await nursery.start(c.run, ctx)
        drop(folder, "a.json", order_event(1))
        with trio.fail_after(5):
            while not ctx.journal:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert ctx.status[0] is True


async def test_an_unexpected_error_marks_the_connector_down_and_it_keeps_going(tmp_path):
    folder = tmp_path / "spool"
    drop(folder, "a.json", order_event(1))
    ctx, c = FakeContext(), connector_for(folder)
    calls = []
    real_emit = ctx.emit

    async def flaky_emit(events, *, cursor=None):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return await real_emit(events, cursor=cursor)

    ctx.emit = flaky_emit
    async with trio.open_nursery() as nursery:
        await nursery.start(c.run, ctx)
        with trio.fail_after(5):
            while not ctx.journal:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(calls) == 2 and (folder / "done" / "a.json").exists()


# ---------------------------------------------------------------------- a real daemon

SPOOL = "connectors:\n  - type: spool\n    name: inbox\n    path: spool\n    interval: 0.05\n"


@asynccontextmanager
async def running(tmp_path: Path, extra: str = SPOOL):
    async with fake_bsg() as (fake, url):
        config_path = write_project(tmp_path, CARD, port=free_port(), bsg_url=url, extra=extra)
        async with herald(config_path) as (daemon, client):
            yield daemon, client, fake


async def eventually(predicate, timeout: float = 10.0):
    with trio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(0.05)


async def connector_health(client) -> dict:
    return (await client.get("/health")).json()["connectors"]["inbox"]


async def test_a_dropped_file_reaches_the_bsg_once_and_a_bad_one_goes_to_bad(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spool = tmp_path / "spool"
    async with running(tmp_path) as (daemon, client, fake):
        # the folder does not exist yet: the connector is down, and says why
        health = await eventually(lambda: _false_alive(client))
        assert health["type"] == "spool" and health["detail"] == f"folder {spool} does not exist"
        drop(spool, "0001-shipped.json", order_event(42, id="evt-42"))
        await eventually(lambda: _now(len(fake.messages()) == 1))
        (sent,) = fake.messages()
        assert sent["msisdn"] == "79001234567" and sent["text"] == "Заказ 42 отгружен"
        await eventually(lambda: _now((spool / "done" / "0001-shipped.json").exists()))
        health = await connector_health(client)
        assert health["alive"] is True and health["detail"].startswith(f"watching {spool}")

        # a bad file: to bad/ with its pointer; nothing is sent
        drop(spool, "0002-broken.json", {"type": "order.updated", "site": "s9", "data": {}})
        error_file = spool / "bad" / "0002-broken.json.error.txt"
        await eventually(lambda: _now(error_file.exists() and (spool / "bad" / "0002-broken.json").exists()))
        assert "pointer: /site\nerror: unknown site 's9'; configured sites: s1" in error_file.read_text()

        # the same event id again, in another file: journaled once, sent once
        drop(spool, "0003-again.json", order_event(42, id="evt-42"))
        await eventually(lambda: _now((spool / "done" / "0003-again.json").exists()))
        await trio.sleep(0.5)
        assert len(fake.messages()) == 1
        assert (await client.get("/health")).json()["pending_events"] == 0
        assert json.loads(await daemon.db(daemon.store.get_cursor, "inbox", CURSOR_KEY))["file"] == "0003-again.json"

        # a file of two events without ids: both journaled under the file's ids, both sent
        drop(spool, "0004-two.json", [order_event(7), order_event(8)])
        await eventually(lambda: _now(len(fake.messages()) == 3))
        event = await daemon.db(daemon.store.event, _spool_id("0004-two.json", 1, spool / "done"))
        assert event is not None and event.data["order"]["id"] == 8
        assert sorted(p.name for p in spool.iterdir()) == ["bad", "done"]
        assert (await connector_health(client))["alive"] is True


def _spool_id(name: str, index: int, folder: Path) -> str:
    import hashlib
    return f"spool:{name}:{index}:{hashlib.sha1((folder / name).read_bytes()).hexdigest()[:12]}"


async def _now(value):
    return value


async def _false_alive(client):
    health = await connector_health(client)
    return health if health["alive"] is False and health["detail"] != "starting" else None


async def test_an_unknown_connector_type_stops_the_daemon_naming_the_types(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config_path = write_project(tmp_path, CARD, port=free_port(),
                                extra="connectors:\n  - type: spoll\n    path: spool\n")
    with pytest.raises(BaseException) as caught:
        await Daemon(load_config(config_path)).run()
    error = _first(caught.value, "RulesError")      # checked with the rules, before anything starts
    assert error is not None, caught.value
    (problem,) = [d for d in error.diagnostics if d.is_error]
    assert re.search(r"herald\.yaml:\d+:\d+: error: unknown connector type 'spoll'", problem.headline())
    assert problem.hint == 'did you mean "spool"?'


async def test_bad_spool_options_stop_the_daemon_with_located_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config_path = write_project(tmp_path, CARD, port=free_port(),
                                extra="connectors:\n  - type: spool\n    folder: spool\n")
    with pytest.raises(BaseException) as caught:
        await Daemon(load_config(config_path)).run()
    error = _first(caught.value, "RulesError")
    assert error is not None, caught.value
    text = error.format()
    assert 'unknown option "folder"' in text and "path is required" in text and "herald.yaml:" in text


def test_herald_run_exits_2_and_suggests_the_right_type(tmp_path):
    config_path = write_project(tmp_path, CARD, port=free_port(),
                                extra="connectors:\n  - type: spoll\n    path: spool\n")
    process = start_daemon(config_path)
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 2, output
    assert "unknown connector type 'spoll'" in output and 'did you mean "spool"?' in output


def _first(exc: BaseException, kind: str):
    if type(exc).__name__ == kind:
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _first(inner, kind)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------- the docs' example

def test_the_user_docs_example_config_is_valid(tmp_path):
    doc = (ROOT / "docs" / "connectors" / "spool.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "herald.yaml").write_text(block, encoding="utf-8")
    entries = load_config(tmp_path / "herald.yaml").connectors
    assert [e.type for e in entries] == ["spool"]
    connector = SpoolConnector(entries[0])
    assert connector.path == tmp_path / "spool" / "orders" and connector.interval == 1.0
