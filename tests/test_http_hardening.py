"""Malformed input over HTTP (issue #12 item 3): each answer is a 4xx with a JSON body that
says where (a JSON pointer into the body, or the query/path parameter's name) and what to
do — never a 500 — and the daemon keeps serving. A real daemon and the fake BSG over HTTP."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import pytest

from tests.audience_helpers import fake_and_project, running

ORDER = {"type": "order.created", "id": "o1", "data": {"order": {"id": 18, "number": "A-18"}}}


B24_TOKEN = "b24-token-for-tests"


@asynccontextmanager
async def api(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, subscriptions="  lists: [news]") as (fake, config):
        config.write_text(config.read_text(encoding="utf-8") + f"bitrix24:\n  application_token: {B24_TOKEN}\n",
                          encoding="utf-8")
        async with running(config) as (daemon, client):
            yield daemon, client
            health = await client.get("/health")       # still serving after the bad request
            assert health.status_code == 200, health.text


def refused(r, status: int = 400) -> dict:
    """The answer's JSON body, after checking it is a 4xx (`status`) with an `error`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


async def post_text(client, path: str, text: str):
    return await client.post(path, content=text.encode(), headers={"content-type": "application/json"})


# ---- JSON bodies -------------------------------------------------------------------------

async def test_a_body_nested_ten_thousand_deep_is_a_400(tmp_path, monkeypatch):
    async with api(tmp_path, monkeypatch) as (daemon, client):
        body = refused(await post_text(client, "/events", "[" * 10_000 + "]" * 10_000))
        assert "deep" in body["error"] and "64" in body["error"]
        # just over the bound: the pointer says where the 65th level starts
        deep = '{"a":' * 65 + "1" + "}" * 65
        body = refused(await post_text(client, "/events", deep))
        assert body["pointer"] == "/a" * 64


async def test_a_5000_digit_number_is_a_400_pointing_at_it(tmp_path, monkeypatch):
    async with api(tmp_path, monkeypatch) as (daemon, client):
        text = json.dumps(ORDER).replace('"id": 18', '"id": ' + "9" * 5000)
        body = refused(await post_text(client, "/events", text))
        assert body["pointer"] == "/data/order/id" and "whole number" in body["error"]
        # also just over 64 bits, and a float beyond what a double holds
        text = json.dumps(ORDER).replace('"id": 18', '"id": 9223372036854775808')
        assert refused(await post_text(client, "/events", text))["pointer"] == "/data/order/id"
        text = json.dumps(ORDER).replace('"id": 18', '"id": 1e999')
        assert refused(await post_text(client, "/events", text))["pointer"] == "/data/order/id"
        assert (await client.post("/events", json=ORDER)).status_code == 202      # the bound is not too tight


async def test_lone_surrogates_in_an_event_id_and_a_list_name_are_400s(tmp_path, monkeypatch):
    async with api(tmp_path, monkeypatch) as (daemon, client):
        text = json.dumps(ORDER).replace('"o1"', '"\\ud800"')
        body = refused(await post_text(client, "/events", text))
        assert body["pointer"] == "/id" and "surrogate" in body["error"]
        text = '{"phone": "+79123456789", "list": "\\udc00news"}'
        assert refused(await post_text(client, "/subscriptions", text))["pointer"] == "/list"
        # in a key too, which the error names (escaped: the reply must be encodable)
        text = '{"type": "order.created", "data": {"\\udfff": 1}}'
        assert refused(await post_text(client, "/events", text))["pointer"] == "/data/\udfff"


async def test_a_site_of_the_wrong_type_is_a_400(tmp_path, monkeypatch):
    async with api(tmp_path, monkeypatch) as (daemon, client):
        r = await client.post("/subscriptions", json={"phone": "+79123456789", "list": "news", "site": []})
        assert refused(r)["pointer"] == "/site"
        r = await client.post("/campaigns", json={"phones": ["+79123456789"], "text": "Sale", "site": {},
                                                  "end": "2099-01-01T00:00:00Z"})
        assert refused(r)["pointer"] == "/site"
        r = await client.post("/messages", json={"to": "+79123456789", "text": "Hi", "site": ["s1"]})
        assert refused(r)["pointer"] == "/site"


# ---- paths and queries -------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/timeline/%00/18", "/timeline/%2E%2E/1", "/timeline/order.x/1",
                                  "/timeline/order/%00"])
async def test_a_timeline_of_a_bad_entity_type_or_id_is_a_400_naming_the_parameter(tmp_path, monkeypatch, path):
    async with api(tmp_path, monkeypatch) as (daemon, client):
        body = refused(await client.get(path))
        assert body["parameter"] == ("id" if path.endswith("%00") else "type")
        await client.post("/events", json=ORDER)
        assert (await client.get("/timeline/shipment/18")).status_code == 404
        assert (await client.get("/timeline/order/18")).status_code == 200
        assert (await client.get("/timeline/order/0018")).status_code == 404       # an id is text, not a number


@pytest.mark.parametrize("query, parameter", [("before=99999999999999999999999", "before"),
                                              ("limit=-1", "limit"), ("limit=1e3", "limit"),
                                              ("before=-5", "before"), ("before=--5", "before"),
                                              ("limit=%C2%B2", "limit")])
async def test_a_message_list_query_out_of_range_is_a_400_naming_the_parameter(tmp_path, monkeypatch, query,
                                                                                parameter):
    async with api(tmp_path, monkeypatch) as (daemon, client):
        body = refused(await client.get(f"/messages?{query}"))
        assert body["parameter"] == parameter and parameter in body["error"]


async def test_a_message_or_campaign_id_out_of_range_is_a_400(tmp_path, monkeypatch):
    async with api(tmp_path, monkeypatch) as (daemon, client):
        assert refused(await client.get("/messages/" + "9" * 30))["parameter"] == "id"
        assert refused(await client.get("/campaigns/" + "9" * 30))["parameter"] == "id"
        assert (await client.get("/messages/12")).status_code == 404


async def test_the_limits_examples_in_the_docs_answer_as_shown(tmp_path, monkeypatch):
    """docs/http-api.md "Limits": each `curl` line is followed by its exact answer."""
    import re
    import shlex
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "http-api.md").read_text(encoding="utf-8")
    section = doc.split("## Limits", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"^(curl .*)\n# (.*)$", section, re.M)
    assert len(examples) >= 3
    async with api(tmp_path, monkeypatch) as (daemon, client):
        for command, shown in examples:
            words = shlex.split(command)
            url = next(w for w in words if w.startswith("http://"))
            body = words[words.index("-d") + 1] if "-d" in words else None
            method = words[words.index("-X") + 1] if "-X" in words else "GET"
            r = await client.request(method, url.split("8780", 1)[1], content=body and body.encode())
            assert 400 <= r.status_code < 500 and r.json() == json.loads(shown), (command, r.text)


async def test_a_retry_of_more_ids_than_a_replay_takes_is_a_400(tmp_path, monkeypatch):
    # 300,000 ids fit in 1 MiB but not in one SQLite statement (at most 250,000 variables)
    async with api(tmp_path, monkeypatch) as (daemon, client):
        r = await client.post("/messages/retry", json={"ids": [1] * 300_000, "dry_run": True})
        body = refused(r)
        assert body["pointer"] == "/ids" and "10000" in body["error"]
        r = await client.post("/messages/retry", json={"ids": [1] * 10_000, "dry_run": True})
        assert r.status_code == 200 and r.json()["count"] == 0


@pytest.mark.parametrize("task_id, status", [("9" * 5000, 400), ("²", 202), ("12345678901234567890123", 202)])
async def test_a_bitrix24_post_with_an_odd_task_id_is_not_a_500(tmp_path, monkeypatch, task_id, status):
    from urllib.parse import urlencode
    form = urlencode({"event": "ONTASKADD", "data[FIELDS_AFTER][ID]": task_id, "ts": "1767603600",
                      "auth[application_token]": B24_TOKEN, "auth[domain]": "shop.bitrix24.ru"})
    async with api(tmp_path, monkeypatch) as (daemon, client):
        r = await client.post("/hooks/bitrix24", content=form.encode(),
                              headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == status, r.text
        if status == 400:
            assert r.json()["field"] == "data[FIELDS_AFTER][ID]"
        else:       # not a number Herald can hold: the id is kept as the text it was
            [event] = [e for e in daemon.store.entity_events("task", task_id, "s1")]
            assert event.data["task"]["id"] == task_id


async def test_a_failure_inside_a_handler_is_a_json_500_logged_once_without_the_path(tmp_path, monkeypatch,
                                                                                       caplog):
    # a row the store cannot read (as after disk corruption): the timeline's handler fails
    from tests.audience_helpers import wait_for

    async with api(tmp_path, monkeypatch) as (daemon, client):
        assert (await client.post("/events", json=ORDER)).status_code == 202
        conn = daemon.store._conn
        await wait_for(lambda: conn.execute("SELECT status FROM events WHERE id = 'o1'").fetchone()[0] == "done",
                       what="the event processed")
        conn.execute("UPDATE events SET previous = '{broken' WHERE id = 'o1'")
        conn.commit()
        caplog.clear()
        r = await client.get("/timeline/order/18?site=s1")
        assert r.status_code == 500
        assert r.json() == {"error": "internal error: Herald could not answer this request; its log has the details"}
        [record] = [rec for rec in caplog.records if rec.levelname == "ERROR"]
        assert record.exc_info is not None and "JSONDecodeError" in caplog.text
        assert record.getMessage() == "GET /timeline/{type}/{id} (get_timeline) failed"


@pytest.mark.parametrize("rate", ["9" * 400 + "/s", 1e-300, "0.000000000001/s", 1e308])
async def test_a_campaign_rate_beyond_what_a_feeder_can_pace_is_a_400(tmp_path, monkeypatch, rate):
    # 400 nines per second read as infinity (a status answer could not be JSON); 1e-300
    # per second puts the next message past the year 9999
    async with api(tmp_path, monkeypatch) as (daemon, client):
        r = await client.post("/campaigns", json={"phones": ["+79123456789"], "text": "Sale", "rate": rate,
                                                  "end": "2099-01-01T00:00:00Z"})
        assert refused(r)["pointer"] == "/rate"
        r = await client.post("/campaigns", json={"phones": ["+79123456789"], "text": "Sale", "rate": "1/h",
                                                  "end": "2099-01-01T00:00:00Z"})
        assert r.status_code == 201, r.text
        r = await client.patch(f"/campaigns/{r.json()['id']}", json={"rate": rate})
        assert refused(r)["pointer"] == "/rate"


async def test_a_campaign_csv_with_a_field_over_the_csv_limit_is_a_400(tmp_path, monkeypatch):
    # an unclosed quote swallows the rest of the file into one field (over 128 KiB)
    csv = "phone,name\n+79123456789,\"Ann\n" + "+79123456780,Bob\n" * 10_000
    async with api(tmp_path, monkeypatch) as (daemon, client):
        r = await client.post("/campaigns", json={"csv": csv, "text": "Sale", "end": "2099-01-01T00:00:00Z"})
        body = refused(r)
        assert body["pointer"] == "/csv" and "field larger than field limit" in body["error"]
