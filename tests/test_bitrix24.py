"""Bitrix24 outbound webhooks: the form decoding (engine/bitrix24.py) and
`POST /hooks/bitrix24` end to end, from the post to the SMS at the fake BSG."""

from __future__ import annotations

import logging
import sqlite3
from urllib.parse import urlencode

import pytest
import trio

from engine.bitrix24 import HookError, check_token, decode, parse_form, to_event
from engine.config import load_config
from engine.errors import ConfigError
from tests.daemon_helpers import fake_bsg, free_port, herald, write_project

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
