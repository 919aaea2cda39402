"""Bitrix24 outbound webhooks: the form decoding (engine/api/bitrix24.py) and
`POST /hooks/bitrix24` end to end, from the post to the SMS at the fake BSG."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path
from urllib.parse import urlencode

import pytest
import trio

from herald.engine.api.bitrix24 import HookError, build_task, check_token, decode, parse_form, to_event
from herald.engine.config import load_config
from herald.engine.errors import ConfigError
from tests.daemon_helpers import ROOT, fake_bsg, free_port, herald, write_project
from tests.fakebitrix24 import FakePortal, fake_bitrix24

TOKEN = "b24-app-token-3f9c1a"
FORM = "application/x-www-form-urlencoded"


def post(event: str = "ONTASKADD", *, id_field: str = "FIELDS_AFTER", task_id: str = "42",
         ts: str = "1767603600", token: str | None = TOKEN, **extra) -> bytes:
    """A post as Bitrix24 sends it (the order and the OAuth fields of a real one)."""
    fields = {"event": event, "event_handler_id": "7", "data[FIELDS_BEFORE]": "undefined",
              f"data[{id_field}][ID]": task_id, "data[IS_ACCESSIBLE_BEFORE]": "N",
              "data[IS_ACCESSIBLE_AFTER]": "undefined", "ts": ts,
              "auth[access_token]": "oauth-access-SECRET", "auth[expires_in]": "3600", "auth[scope]": "task",
              "auth[domain]": "shop.bitrix24.ru", "auth[server_endpoint]": "https://oauth.bitrix.info/rest/",
              "auth[status]": "L", "auth[client_endpoint]": "https://shop.bitrix24.ru/rest/",
              "auth[member_id]": "a223c6b3710f85df22e9377d6c4f7553", **extra}
    if token is not None:
        fields["auth[application_token]"] = token
    return urlencode(fields).encode()


# ---- decoding ----------------------------------------------------------------------------

def test_a_task_post_becomes_task_created_with_the_id_and_no_secrets():
    event = decode(post(), FORM, token=TOKEN)
    assert event == {
        "type": "task.created",
        "id": "bitrix24:shop.bitrix24.ru:ONTASKADD:42:1767603600",
        "time": "2026-01-05T09:00:00+00:00",
        "data": {"task": {"id": 42},
                 "bitrix24": {"event": "ONTASKADD", "domain": "shop.bitrix24.ru", "fields": {"ID": "42"},
                              "member_id": "a223c6b3710f85df22e9377d6c4f7553", "handler_id": "7"}},
    }
    assert "SECRET" not in repr(event) and TOKEN not in repr(event)


@pytest.mark.parametrize("name, field, event_type, entity", [
    ("ONTASKUPDATE", "FIELDS_AFTER", "task.updated", "task"),
    ("ONTASKDELETE", "FIELDS_BEFORE", "task.deleted", "task"),     # a deleted task has no FIELDS_AFTER
    ("ONCRMDEALADD", "FIELDS", "deal.created", "deal"),
    ("ONCRMDEALUPDATE", "FIELDS", "deal.updated", "deal"),
    ("onCrmDealDelete", "FIELDS", "deal.deleted", "deal"),          # any case
])
def test_each_supported_event_maps_to_its_canonical_type(name, field, event_type, entity):
    event = decode(post(name, id_field=field, task_id="9"), FORM, token=TOKEN, site="s2")
    assert (event["type"], event["data"][entity], event["site"]) == (event_type, {"id": 9}, "s2")


def test_the_event_id_is_the_same_for_the_same_post_and_differs_by_time_and_event():
    one = decode(post(), FORM, token=TOKEN)["id"]
    assert decode(post(), FORM, token=TOKEN)["id"] == one
    assert decode(post(ts="1767603601"), FORM, token=TOKEN)["id"] != one
    assert decode(post("ONTASKUPDATE"), FORM, token=TOKEN)["id"] != one


def test_nested_names_follow_php():
    form = parse_form(b"a[b][c]=1&a[b][d]=2&l[]=x&l[]=y&a[b][c]=3", None)
    assert form == {"a": {"b": {"c": "3", "d": "2"}}, "l": {"0": "x", "1": "y"}}


@pytest.mark.parametrize("body, content_type, message, field", [
    (b"", FORM, "no form fields", None),
    (b'{"event": "ONTASKADD"}', "application/json", "expected a application/x-www-form-urlencoded", None),
    (b"event=%FF%FE", FORM, "not UTF-8", None),
    (b"a]b=1", FORM, "malformed field name", "a]b"),
])
def test_unreadable_posts_are_400(body, content_type, message, field):
    with pytest.raises(HookError) as err:
        decode(body, content_type, token=TOKEN)
    assert err.value.status == 400 and message in err.value.message and err.value.field == field


def test_missing_token_is_401_and_a_wrong_one_403_without_echoing_it():
    with pytest.raises(HookError) as err:
        check_token(parse_form(post(token=None)), TOKEN)
    assert (err.value.status, err.value.field) == (401, "auth[application_token]")
    with pytest.raises(HookError) as err:
        check_token(parse_form(post(token="guess-123")), TOKEN)
    assert err.value.status == 403 and "guess-123" not in err.value.message and TOKEN not in err.value.message


def test_the_token_is_checked_before_the_content():
    with pytest.raises(HookError) as err:
        decode(post("ONCRMLEADADD", token="wrong"), FORM, token=TOKEN)
    assert err.value.status == 403


@pytest.mark.parametrize("form, message, field", [
    ({"ts": "1"}, "no event name", "event"),
    ({"event": "ONCRMLEADADD", "ts": "1"}, "unsupported Bitrix24 event 'ONCRMLEADADD'", "event"),
    ({"event": "ONTASKADD", "ts": "1"}, "no id of the ONTASKADD entity", "data[FIELDS_AFTER][ID]"),
    ({"event": "ONCRMDEALADD", "data": {"FIELDS": {"ID": ""}}, "ts": "1"}, "no id", "data[FIELDS][ID]"),
    ({"event": "ONTASKADD", "data": {"FIELDS_AFTER": {"ID": "4"}}}, "ts must be", "ts"),
    ({"event": "ONTASKADD", "data": {"FIELDS_AFTER": {"ID": "4"}}, "ts": "yesterday"}, "ts must be", "ts"),
    ({"event": "ONTASKADD", "data": {"FIELDS_AFTER": {"ID": "4"}}, "ts": "9" * 30}, "not a possible", "ts"),
])
def test_signed_but_bad_posts_are_400_naming_the_field(form, message, field):
    with pytest.raises(HookError) as err:
        to_event(form)
    assert err.value.status == 400 and message in err.value.message and err.value.field == field


# ---- config ------------------------------------------------------------------------------

CONFIG = """
sites:
  s1: {name: Shop, timezone: Europe/Moscow}
  s2: {name: Other, timezone: Asia/Yekaterinburg}
"""


def test_config_reads_the_token_as_a_secret_and_the_site(tmp_path, monkeypatch):
    monkeypatch.setenv("B24_TOKEN", TOKEN)
    path = tmp_path / "herald.yaml"
    path.write_text(CONFIG + "bitrix24:\n  application_token: !env B24_TOKEN\n  site: s2\n", encoding="utf-8")
    config = load_config(path)
    assert config.bitrix24.application_token.reveal() == TOKEN and config.bitrix24.site == "s2"
    assert TOKEN not in repr(config.bitrix24)
    path.write_text(CONFIG, encoding="utf-8")
    assert load_config(path).bitrix24 is None


@pytest.mark.parametrize("section, message, hint", [
    ("bitrix24:\n  application_tokn: !env B24_TOKEN\n", 'unknown key "application_tokn" in bitrix24',
     'did you mean "application_token"?'),
    ("bitrix24:\n  site: s1\n", "bitrix24: application_token is required", "!env B24_TOKEN"),
    ("bitrix24:\n  application_token: !env B24_TOKEN\n  site: s3\n", 'bitrix24.site: unknown site "s3"',
     "configured sites: s1, s2"),
    ("bitrix24:\n  application_token: !env B24_UNSET_VAR\n", "environment variable B24_UNSET_VAR is not set", "herald.yaml:6:22"),
])
def test_config_errors_are_located(tmp_path, monkeypatch, section, message, hint):
    monkeypatch.setenv("B24_TOKEN", TOKEN)
    path = tmp_path / "herald.yaml"
    path.write_text(CONFIG + section, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = err.value.format()
    assert message in text and hint in text and "herald.yaml:" in text and TOKEN not in text


# ---- end to end --------------------------------------------------------------------------

RULES = 'rule "b24 task" on task.created send sms to "+79001234567" text "Новая задача №#TASK_ID# в Битрикс24"\n'


def events_journaled(root) -> int:
    with sqlite3.connect(root / "var" / "herald.db") as db:
        return db.execute("SELECT COUNT(*) FROM events WHERE type LIKE 'task.%'").fetchone()[0]


async def wait_for(predicate, timeout: float = 10.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def test_a_task_post_sends_the_rules_sms(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("B24_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    extra = "bitrix24:\n  application_token: !env B24_TOKEN\n"
    async with fake_bsg() as (fake, url):
        config = write_project(tmp_path, RULES, port=free_port(), bsg_url=url, extra=extra)
        async with herald(config) as (daemon, client):
            first = await client.post("/hooks/bitrix24", content=post(), headers={"Content-Type": FORM})
            event_id = "bitrix24:shop.bitrix24.ru:ONTASKADD:42:1767603600"
            assert (first.status_code, first.json()) == (202, {"accepted": [event_id], "duplicates": []})
            await wait_for(lambda: len(fake.messages()) == 1)
            again = await client.post("/hooks/bitrix24", content=post(), headers={"Content-Type": FORM})
            assert (again.status_code, again.json()) == (202, {"accepted": [event_id], "duplicates": [event_id]})
            await trio.sleep(0.5)
            assert events_journaled(tmp_path) == 1
    [sent] = fake.messages()
    assert (sent["msisdn"], sent["body"]) == ("79001234567", "Новая задача №42 в Битрикс24")
    assert TOKEN not in caplog.text and "oauth-access-SECRET" not in caplog.text


async def test_bad_and_unsigned_posts_are_refused_logged_and_not_journaled(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("B24_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    extra = "bitrix24:\n  application_token: !env B24_TOKEN\n"
    headers = {"Content-Type": FORM}
    async with fake_bsg() as (fake, url):
        config = write_project(tmp_path, RULES, port=free_port(), bsg_url=url, extra=extra)
        async with herald(config) as (daemon, client):
            cases = [
                (post(token=None), 401, "auth[application_token]"),
                (post(token="wrong-token-value"), 403, "auth[application_token]"),
                (post("ONCRMLEADADD"), 400, "event"),
                (post(task_id=""), 400, "data[FIELDS_AFTER][ID]"),
                (post(ts="soon"), 400, "ts"),
                (b"not=a&[form", 400, "[form"),
            ]
            for body, status, field in cases:
                response = await client.post("/hooks/bitrix24", content=body, headers=headers)
                assert response.status_code == status, body
                assert response.json()["error"] and response.json()["field"] == field
            as_json = await client.post("/hooks/bitrix24", json={"event": "ONTASKADD"})
            assert as_json.status_code == 400 and "x-www-form-urlencoded" in as_json.json()["error"]
            await trio.sleep(0.3)
            assert events_journaled(tmp_path) == 0
    assert fake.messages() == []
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 7 and "(401)" in refused[0] and "(403)" in refused[1]
    assert TOKEN not in caplog.text and "wrong-token-value" not in caplog.text
    assert "oauth-access-SECRET" not in caplog.text


async def test_without_a_bitrix24_section_the_hook_is_404_saying_how_to_enable_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, url):
        config = write_project(tmp_path, RULES, port=free_port(), bsg_url=url)
        async with herald(config) as (daemon, client):
            response = await client.post("/hooks/bitrix24", content=post(), headers={"Content-Type": FORM})
            assert response.status_code == 404
            assert "bitrix24:" in response.json()["error"] and "application_token" in response.json()["error"]
            assert events_journaled(tmp_path) == 0


# ---- REST enrichment (bitrix24.rest_url) -------------------------------------------------

REST_TOKEN = "rest-tok-9d2e7f41c0"
TASK_NEW = "Новая задача №42: «Подготовить отчёт». Ответственный: Анна Петрова. Постановщик: Иван Сидоров"


def portal(**options) -> FakePortal:
    """Task 42: responsible Anna (7), creator Ivan (1), accomplice Oleg (8), auditors
    Maria (9) and Anna again — so Anna must get one message, not two."""
    return FakePortal(
        token=REST_TOKEN,
        tasks={42: {"id": "42", "title": "Подготовить отчёт", "status": "2", "priority": "1", "deadline": None,
                    "responsibleId": "7", "createdBy": "1", "accomplices": ["8"], "auditors": ["9", "7"]}},
        users={
            7: {"ID": "7", "NAME": "Анна", "LAST_NAME": "Петрова", "PERSONAL_PHONE": "+7 495 000-00-00",
                "PERSONAL_MOBILE": "8 (900) 111-22-33", "WORK_PHONE": "+7 495 123-45-67"},
            1: {"ID": "1", "NAME": "Иван", "LAST_NAME": "Сидоров", "PERSONAL_MOBILE": "+79005556677"},
            8: {"ID": "8", "NAME": "Олег", "LAST_NAME": "", "PERSONAL_MOBILE": "нет", "WORK_PHONE": "+7 900 222-33-44"},
            9: {"ID": "9", "NAME": "Мария", "LAST_NAME": "Ким", "PERSONAL_PHONE": "89003334455"},
        }, **options)


def test_the_task_is_built_from_tasks_task_get_and_user_get():
    fake = portal()
    task = build_task(42, fake.tasks[42], {int(u["ID"]): u for u in fake.users.values()})
    assert task == {
        "id": 42, "title": "Подготовить отчёт", "status": 2, "priority": 1, "deadline": None,
        "responsible": {"id": 7, "name": "Анна Петрова", "phone": "+79001112233"},     # mobile before work phone
        "creator": {"id": 1, "name": "Иван Сидоров", "phone": "+79005556677"},
        "members": [{"id": 7, "name": "Анна Петрова", "phone": "+79001112233"},
                    {"id": 8, "name": "Олег", "phone": "+79002223344"},              # "нет" is no number
                    {"id": 9, "name": "Мария Ким", "phone": "+79003334455"}],
    }
    later = build_task(42, {**fake.tasks[42], "deadline": "2026-01-10T18:00:00+03:00", "accomplices": []}, {})
    assert later["deadline"] == "2026-01-10T18:00:00+03:00"
    assert later["responsible"] == {"id": 7} and [m["id"] for m in later["members"]] == [7, 9]


def shipped_project(root: Path, bsg_url: str, rest_url: str | None) -> Path:
    """The shipped rules and templates (rules/portal.rules), sends at any hour, and the hook."""
    shutil.copytree(ROOT / "rules", root / "rules", ignore=shutil.ignore_patterns("tests"))
    rest = "  rest_url: !env B24_REST_URL\n" if rest_url else ""
    path = root / "herald.yaml"
    path.write_text(f"""\
store: var/herald.db
rules: rules/
templates: rules/templates/
bsg: {{url: "{bsg_url}", api_key: test_key, rate: 1000}}
sites:
  s1:
    name: Shop
    timezone: Europe/Moscow
    channel: sms
    send_window: "00:00-24:00"
    admins: ["+79001234567"]
http: {{listen: "127.0.0.1:{free_port()}"}}
bitrix24:
  application_token: !env B24_TOKEN
{rest}""", encoding="utf-8")
    return path


def journaled_task(root, event_type: str = "task.created") -> dict:
    with sqlite3.connect(root / "var" / "herald.db") as db:
        [(data,)] = db.execute("SELECT data FROM events WHERE type = ?", (event_type,)).fetchall()
    return json.loads(data)["task"]


def by_number(fake) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in fake.messages():
        out.setdefault(m["msisdn"], []).append(m["body"])
    return out


async def test_a_task_post_with_rest_reaches_the_responsible_and_the_members_once_each(tmp_path, monkeypatch,
                                                                                       caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("B24_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    b24 = portal()
    async with fake_bsg() as (fake, url), fake_bitrix24(b24) as rest_url:
        monkeypatch.setenv("B24_REST_URL", rest_url)
        async with herald(shipped_project(tmp_path, url, rest_url)) as (daemon, client):
            answer = await client.post("/hooks/bitrix24", content=post(), headers={"Content-Type": FORM})
            assert answer.status_code == 202 and answer.json()["enriched"] is True
            await wait_for(lambda: len(fake.messages()) >= 3)
            await trio.sleep(0.5)                      # nothing more comes
            health = (await client.get("/health")).text
    assert by_number(fake) == {"79001112233": [TASK_NEW], "79002223344": [TASK_NEW], "79003334455": [TASK_NEW]}
    assert b24.methods() == ["tasks.task.get", "user.get"]
    assert b24.calls[0][1] == {"taskId": 42, "select": ["ID", "TITLE", "STATUS", "PRIORITY", "DEADLINE",
                                                        "RESPONSIBLE_ID", "CREATED_BY", "ACCOMPLICES", "AUDITORS"]}
    assert sorted(b24.calls[1][1]["FILTER"]["ID"]) == [1, 7, 8, 9]
    assert journaled_task(tmp_path)["title"] == "Подготовить отчёт"
    assert REST_TOKEN not in caplog.text and REST_TOKEN not in health and TOKEN not in caplog.text
    assert "tasks.task.get" in caplog.text          # httpx's request line is there, with the token hidden


async def test_a_deleted_task_reaches_the_same_people_from_the_last_known_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("B24_TOKEN", TOKEN)
    b24 = portal()
    async with fake_bsg() as (fake, url), fake_bitrix24(b24) as rest_url:
        monkeypatch.setenv("B24_REST_URL", rest_url)
        async with herald(shipped_project(tmp_path, url, rest_url)) as (daemon, client):
            await client.post("/hooks/bitrix24", content=post(), headers={"Content-Type": FORM})
            await wait_for(lambda: len(fake.messages()) >= 3)
            gone = await client.post("/hooks/bitrix24", headers={"Content-Type": FORM},
                                     content=post("ONTASKDELETE", id_field="FIELDS_BEFORE", ts="1767603900"))
            assert gone.json() == {"accepted": ["bitrix24:shop.bitrix24.ru:ONTASKDELETE:42:1767603900"],
                                   "duplicates": [], "enriched": True, "from": "last known state"}
            await wait_for(lambda: len(fake.messages()) >= 6)
    deleted = "Задача №42 «Подготовить отчёт» удалена. Shop"
    assert {n: bodies[1:] for n, bodies in by_number(fake).items()} == {
        "79001112233": [deleted], "79002223344": [deleted], "79003334455": [deleted]}
    assert b24.methods() == ["tasks.task.get", "user.get"]     # nothing asked about the deleted task


@pytest.mark.parametrize("trouble, why", [
    ("down", "tasks.task.get: HTTP 503 INTERNAL_SERVER_ERROR"),
    ("wrong token", "tasks.task.get: HTTP 401 invalid_token"),
    ("no task", "tasks.task.get: HTTP 400 ERROR_CORE"),
    ("unreachable", "tasks.task.get: ConnectError"),
])
async def test_when_rest_fails_the_id_only_event_is_still_journaled(tmp_path, monkeypatch, caplog, trouble, why):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("B24_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    b24 = portal(down=trouble == "down")
    async with fake_bsg() as (fake, url), fake_bitrix24(b24) as rest_url:
        if trouble == "wrong token":
            b24.token = "another-token-123"
        elif trouble == "unreachable":
            rest_url = f"http://127.0.0.1:{free_port()}/rest/1/{REST_TOKEN}/"
        monkeypatch.setenv("B24_REST_URL", rest_url)
        async with herald(shipped_project(tmp_path, url, rest_url)) as (daemon, client):
            body = post(task_id="41" if trouble == "no task" else "42")
            answer = await client.post("/hooks/bitrix24", content=body, headers={"Content-Type": FORM})
            assert answer.status_code == 202 and answer.json()["accepted"]
            assert answer.json()["enriched"] is False and answer.json()["why"].startswith(why)
            await trio.sleep(0.5)
            assert (await client.get("/health")).status_code == 200
            health = (await client.get("/health")).text
    assert journaled_task(tmp_path) == {"id": 41 if trouble == "no task" else 42}
    assert fake.messages() == []                        # the shipped rules stay silent, nothing fails
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "id only" in r.getMessage()]
    assert len(warned) == 1 and why in warned[0]
    assert REST_TOKEN not in caplog.text and REST_TOKEN not in health and REST_TOKEN not in answer.text


def test_config_reads_the_rest_url_as_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("B24_TOKEN", TOKEN)
    monkeypatch.setenv("B24_REST_URL", f"https://shop.bitrix24.ru/rest/1/{REST_TOKEN}")
    path = tmp_path / "herald.yaml"
    path.write_text(CONFIG + "bitrix24:\n  application_token: !env B24_TOKEN\n  rest_url: !env B24_REST_URL\n",
                    encoding="utf-8")
    config = load_config(path)
    assert config.bitrix24.rest_url.reveal() == f"https://shop.bitrix24.ru/rest/1/{REST_TOKEN}/"
    assert REST_TOKEN not in repr(config.bitrix24)
    from herald.engine.daemon import _secrets_of
    assert REST_TOKEN in _secrets_of(config) and TOKEN in _secrets_of(config)


@pytest.mark.parametrize("value", [f"shop.bitrix24.ru/rest/1/{REST_TOKEN}/", f"ftp://shop/rest/1/{REST_TOKEN}/",
                                   f"https://shop.bitrix24.ru/rest/1/{REST_TOKEN}/?x=1"])
def test_config_a_rest_url_that_is_not_a_url_is_located_without_showing_it(tmp_path, monkeypatch, value):
    monkeypatch.setenv("B24_TOKEN", TOKEN)
    monkeypatch.setenv("B24_REST_URL", value)
    path = tmp_path / "herald.yaml"
    path.write_text(CONFIG + "bitrix24:\n  application_token: !env B24_TOKEN\n  rest_url: !env B24_REST_URL\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = err.value.format()
    assert "bitrix24.rest_url: expected the URL of a Bitrix24 incoming webhook" in text
    assert "herald.yaml:7:13" in text and REST_TOKEN not in text
