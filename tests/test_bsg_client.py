"""engine/bsg/client.py against tiny ASGI apps that answer with BSG's documented shapes
(shared/spec/BSG-API.md), mounted through httpx.ASGITransport — and one real closed port."""

from __future__ import annotations

import inspect
import json
import logging
import socket
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any, Callable

import httpx
import pytest
import trio

from herald.engine.bsg.client import (
    AltRoute, Balance, BsgClient, BsgError, BsgUnavailable, Kind, SendResult, SmsItem, Status,
    ViberItem, classify, clients_from_config, parse_status, redact,
)
from herald.engine.config import BackupEndpoint, BsgConfig, Secret
from herald.engine.errors import HeraldError

KEY = "live_SuperSecretKey123"
URL = "http://bsg.test/rest"


# --------------------------------------------------------------------------- the fake

@dataclass
class Call:
    method: str
    path: str          # without the /rest prefix
    headers: dict[str, str]
    json: Any
    time: float


class App:
    """A plain ASGI callable. `handler(call)` returns (status, body[, headers]); a dict or
    list body is sent as JSON, a str verbatim. The handler may be async."""

    def __init__(self, handler: Callable[[Call], Any]):
        self.handler = handler
        self.calls: list[Call] = []

    async def __call__(self, scope, receive, send):
        assert scope["type"] == "http"
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        assert path.startswith("/rest/"), path
        call = Call(scope["method"], path[len("/rest"):],
                    {k.decode().lower(): v.decode() for k, v in scope["headers"]},
                    json.loads(raw) if raw else None, trio.current_time())
        self.calls.append(call)
        answer = self.handler(call)
        if inspect.isawaitable(answer):
            answer = await answer
        status, body, *extra = answer
        headers = [(k.encode(), v.encode()) for k, v in (extra[0] if extra else {}).items()]
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            headers.append((b"content-type", b"application/json"))
        else:
            data = body.encode()
            headers.append((b"content-type", b"text/html"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def client_for(app: App, **kw) -> BsgClient:
    kw.setdefault("rate", 1000.0)
    return BsgClient(URL, Secret(KEY), transport=httpx.ASGITransport(app=app), **kw)


def fixed(status: int, body: Any, headers: dict[str, str] | None = None) -> App:
    return App(lambda call: (status, body, headers or {}))


def echo_bulk(call: Call) -> tuple[int, dict]:
    """A bulk answer with one success per phone, ids from the reference."""
    phones = call.json.get("phones") or [{"reference": call.json.get("reference")}]
    return 200, {"task_id": "77", "result": [
        {"error": 0, "errorDescription": "No errors", "reference": p["reference"],
         "id": f"id-{p['reference']}", "price": "0.0200000", "currency": "EUR"} for p in phones],
        "total_price": "0.02", "currency": "EUR"}


def sms(n: int, body: str = "Hello", originator: str = "testsms", start: int = 0) -> list[SmsItem]:
    return [SmsItem(f"7900{start + i:07d}", body, originator, f"r{start + i}") for i in range(n)]


# --------------------------------------------------------------------------- classify

@pytest.mark.parametrize("code,http,kind", [
    (0, None, Kind.OK), (None, 200, Kind.OK), (0, 200, Kind.OK), (None, None, Kind.OK),
    (5, None, Kind.RETRY), (11, 200, Kind.RETRY), (None, 500, Kind.RETRY), (None, 503, Kind.RETRY),
    (None, 429, Kind.RETRY), (7, 503, Kind.RETRY),
    (23, None, Kind.DUPLICATE), (43, 200, Kind.DUPLICATE),
    (1, None, Kind.OPERATOR), (2, None, Kind.OPERATOR), (6, None, Kind.OPERATOR),
    (8, None, Kind.OPERATOR), (9, None, Kind.OPERATOR), (None, 401, Kind.OPERATOR),
    (3, None, Kind.FATAL), (4, None, Kind.FATAL), (7, None, Kind.FATAL), (10, None, Kind.FATAL),
    (12, None, Kind.FATAL), (21, None, Kind.FATAL), (22, None, Kind.FATAL), (24, None, Kind.FATAL),
    (28, None, Kind.FATAL), (31, None, Kind.FATAL), (32, None, Kind.FATAL), (33, None, Kind.FATAL),
    (41, None, Kind.FATAL), (44, None, Kind.FATAL), (49, None, Kind.FATAL), (51, None, Kind.FATAL),
    (999, None, Kind.FATAL), (-1, None, Kind.FATAL), (None, 404, Kind.FATAL), (None, 400, Kind.FATAL),
])
def test_classify(code, http, kind):
    assert classify(code, http) is kind


def test_kind_is_a_string():
    assert Kind.DUPLICATE == "duplicate" and str(Kind.RETRY) == "retry"


# --------------------------------------------------------------------------- one SMS

async def test_single_sms_nested_shape_and_request():
    app = fixed(200, {"result": {"error": 0, "errorDescription": "No errors", "reference": "r1",
                                 "id": "6030051", "price": 0.02, "currency": "EUR"}})
    async with client_for(app) as bsg:
        [r] = await bsg.send_sms([SmsItem("+79001234567", "Привет", "testsms", "r1")],
                                 validity_hours=24)
    assert r == SendResult("r1", Kind.OK, id="6030051", price=Decimal("0.02"), currency="EUR",
                           code=0, description="", http_status=200)
    assert r.ok
    [call] = app.calls
    assert call.method == "POST" and call.path == "/sms/create"
    assert call.headers["x-api-key"] == KEY
    assert call.json == {"destination": "phone", "msisdn": "79001234567", "originator": "testsms",
                         "body": "Привет", "reference": "r1", "validity": 24}


async def test_single_sms_flat_shape_with_numbers_as_strings():
    app = fixed(200, {"error": "0", "id": "6030052", "reference": "r1", "price": "0.0200000",
                      "currency": "EUR"})
    async with client_for(app) as bsg:
        [r] = await bsg.send_sms(sms(1, start=1))
    assert r.kind is Kind.OK and r.id == "6030052" and r.code == 0
    assert r.price == Decimal("0.0200000") and isinstance(r.price, Decimal)
    assert "validity" not in app.calls[0].json


async def test_single_sms_flat_error():
    app = fixed(200, {"error": 21, "errorDescription": "Invalid phone"})
    async with client_for(app) as bsg:
        [r] = await bsg.send_sms(sms(1))
    assert (r.kind, r.code, r.description, r.id) == (Kind.FATAL, 21, "Invalid phone", None)


async def test_single_sms_nested_duplicate():
    app = fixed(200, {"result": {"error": "23", "errorDescription": "Reference already used",
                                 "reference": "r0"}})
    async with client_for(app) as bsg:
        [r] = await bsg.send_sms(sms(1))
    assert r.kind is Kind.DUPLICATE and r.code == 23


# --------------------------------------------------------------------------- many SMS

async def test_phones_one_body_many_phones_matched_by_reference():
    def handler(call):
        refs = [p["reference"] for p in call.json["phones"]]
        return 200, {"task_id": "12345", "result": [
            {"error": 0, "errorDescription": "No errors", "reference": ref, "id": f"id{ref}",
             "price": 0.0234, "currency": "EUR"} for ref in reversed(refs)],   # any order
            "totalprice": 0.0702, "currency": "EUR"}
    app = App(handler)
    items = sms(3)
    async with client_for(app) as bsg:
        results = await bsg.send_sms(items, validity_hours=72)
    assert [r.reference for r in results] == ["r0", "r1", "r2"]
    assert [r.id for r in results] == ["idr0", "idr1", "idr2"]
    assert all(r.kind is Kind.OK and r.price == Decimal("0.0234") for r in results)
    [call] = app.calls
    assert call.json == {"destination": "phones", "originator": "testsms", "body": "Hello",
                         "validity": 72, "phones": [{"msisdn": it.msisdn, "reference": it.reference}
                                                    for it in items]}


async def test_individual_when_bodies_differ():
    app = App(echo_bulk)
    items = [SmsItem("79001111111", "A", "testsms", "a1"), SmsItem("79002222222", "B", "Shop", "b2")]
    async with client_for(app) as bsg:
        results = await bsg.send_sms(items)
    assert [r.id for r in results] == ["id-a1", "id-b2"]
    assert app.calls[0].json == {"destination": "individual", "phones": [
        {"msisdn": "79001111111", "body": "A", "originator": "testsms", "reference": "a1"},
        {"msisdn": "79002222222", "body": "B", "originator": "Shop", "reference": "b2"}]}


async def test_same_body_different_originator_is_individual():
    app = App(echo_bulk)
    items = [SmsItem("79001111111", "A", "testsms", "a1"), SmsItem("79002222222", "A", "Shop", "b2")]
    async with client_for(app) as bsg:
        await bsg.send_sms(items)
    assert app.calls[0].json["destination"] == "individual"


async def test_120_sms_make_3_requests_of_at_most_50():
    app = App(echo_bulk)
    items = sms(120)
    async with client_for(app) as bsg:
        results = await bsg.send_sms(items)
    assert [len(c.json["phones"]) for c in app.calls] == [50, 50, 20]
    assert all(c.json["destination"] == "phones" for c in app.calls)
    assert [r.reference for r in results] == [it.reference for it in items]
    assert all(r.kind is Kind.OK and r.id == f"id-{r.reference}" for r in results)


async def test_120_different_sms_make_3_individual_requests():
    app = App(echo_bulk)
    items = [SmsItem(f"7900{i:07d}", f"text {i}", "testsms", f"r{i}") for i in range(120)]
    async with client_for(app) as bsg:
        results = await bsg.send_sms(items)
    assert [(c.json["destination"], len(c.json["phones"])) for c in app.calls] == \
        [("individual", 50), ("individual", 50), ("individual", 20)]
    assert len(results) == 120


async def test_a_phone_never_twice_in_one_request():
    app = App(echo_bulk)
    items = [SmsItem("79001111111", "A", "testsms", "x1"), SmsItem("79001111111", "B", "testsms", "x2"),
             SmsItem("79002222222", "C", "testsms", "x3")]
    async with client_for(app) as bsg:
        results = await bsg.send_sms(items)
    assert len(app.calls) == 2
    for call in app.calls:
        phones = call.json.get("phones") or [call.json]
        assert len({p["msisdn"] for p in phones}) == len(phones)
    assert [r.id for r in results] == ["id-x1", "id-x2", "id-x3"]


async def test_empty_list_sends_nothing():
    app = App(echo_bulk)
    async with client_for(app) as bsg:
        assert await bsg.send_sms([]) == []
        assert await bsg.send_viber([]) == []
    assert app.calls == []


async def test_per_item_errors_classified(caplog):
    app = fixed(200, {"task_id": "9", "result": [
        {"error": 0, "errorDescription": "No errors", "reference": "r0", "id": "100", "price": "0.02",
         "currency": "EUR"},
        {"error": 21, "errorDescription": "Invalid phone", "reference": "r1"},
        {"error": "23", "errorDescription": "Reference already used", "reference": "r2"},
        {"error": 8, "errorDescription": "Not enough funds", "reference": "r3"},
        {"error": 5, "errorDescription": "Unknown error", "reference": "r4"},
        {"error": 77, "errorDescription": "Something new", "reference": "r5"},
    ], "total_price": "0.02", "currency": "EUR"})
    with caplog.at_level(logging.INFO, logger="herald.bsg"):
        async with client_for(app) as bsg:
            results = await bsg.send_sms(sms(6))
    assert [(r.reference, r.kind, r.code) for r in results] == [
        ("r0", Kind.OK, 0), ("r1", Kind.FATAL, 21), ("r2", Kind.DUPLICATE, 23),
        ("r3", Kind.OPERATOR, 8), ("r4", Kind.RETRY, 5), ("r5", Kind.FATAL, 77)]
    assert results[1].description == "Invalid phone"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Not enough funds (8)" in errors[0].getMessage()
    assert "top up the account" in errors[0].getMessage()


async def test_results_without_references_match_by_order():
    app = fixed(200, {"result": [{"error": 0, "id": "1"}, {"error": 21, "errorDescription": "bad"},
                                 {"error": 0, "id": "3"}], "totalprice": "0.04", "currency": "EUR"})
    async with client_for(app) as bsg:
        results = await bsg.send_sms(sms(3))
    assert [(r.reference, r.kind, r.id) for r in results] == [
        ("r0", Kind.OK, "1"), ("r1", Kind.FATAL, None), ("r2", Kind.OK, "3")]


async def test_an_item_bsg_left_out_is_retried():
    app = fixed(200, {"result": [{"error": 0, "reference": "r0", "id": "1"},
                                 {"error": 0, "reference": "zzz", "id": "9"}], "currency": "EUR"})
    async with client_for(app) as bsg:
        results = await bsg.send_sms(sms(2))
    assert [(r.kind, r.id) for r in results] == [(Kind.OK, "1"), (Kind.RETRY, None)]


@pytest.mark.parametrize("body,kind,code", [
    ({"error": 8, "errorDescription": "Not enough funds"}, Kind.OPERATOR, 8),
    ({"error": "1", "errorDescription": "Invalid API key"}, Kind.OPERATOR, 1),
    ({"error": "12", "errorDescription": "Batch too large"}, Kind.FATAL, 12),
    ({"error": 11, "errorDescription": "Too many messages"}, Kind.RETRY, 11),
    ({"result": {"error": 3, "errorDescription": "Not enough parameters"}}, Kind.FATAL, 3),
])
async def test_top_level_error_applies_to_every_item(body, kind, code, autojump_clock):
    app = fixed(200, body)
    async with client_for(app) as bsg:
        results = await bsg.send_sms(sms(3))
    assert [(r.kind, r.code) for r in results] == [(kind, code)] * 3
    assert all(r.http_status == 200 and r.description for r in results)


@pytest.mark.parametrize("status,body,kind", [
    (429, {"error": "too many duplicate requests"}, Kind.RETRY),
    (500, "<html>Internal Server Error</html>", Kind.RETRY),
    (502, "Bad gateway", Kind.RETRY),
    (503, {"error": 5, "errorDescription": "Unknown error"}, Kind.RETRY),
    (404, "<html>Not Found</html>", Kind.FATAL),
    (200, "<html>maintenance</html>", Kind.RETRY),      # maybe taken: retry → 23 → look-up
    (200, "", Kind.RETRY),
])
async def test_http_errors_become_item_kinds(status, body, kind, autojump_clock):
    app = fixed(status, body)
    async with client_for(app) as bsg:
        results = await bsg.send_sms(sms(2))
    assert [r.kind for r in results] == [kind, kind]
    assert all(r.http_status == status and not r.unavailable for r in results)


# --------------------------------------------------------------------------- Viber

async def test_viber_request_grouping_and_results():
    def handler(call):
        refs = [t["reference"] for m in call.json["messages"] for t in m["to"]]
        return 200, {"result": [{"error": 0, "errorDescription": "No errors", "reference": ref,
                                 "id": f"v{ref}", "price": "0.0150000", "currency": "EUR"}
                                for ref in refs], "total_price": "0.045", "currency": "EUR"}
    app = App(handler)
    items = [
        ViberItem("79001111111", "Заказ принят", "AdvInform", "v1"),
        ViberItem("79002222222", "Заказ принят", "AdvInform", "v2"),
        ViberItem("+79003333333", "Заказ принят", "AdvInform", "v3", alt_sms_originator="testsms",
                  alt_sms_text="Заказ принят (SMS)"),
        ViberItem("79004444444", "Скидка!", "AdvInform", "v4", is_promotional=True),
    ]
    async with client_for(app) as bsg:
        results = await bsg.send_viber(items, validity_seconds=3600)
    assert [(r.reference, r.kind, r.id, r.price) for r in results] == [
        (f"v{i}", Kind.OK, f"vv{i}", Decimal("0.0150000")) for i in range(1, 5)]
    [call] = app.calls
    assert call.path == "/viber/create"
    assert call.json == {"validity": 3600, "messages": [
        {"to": [{"msisdn": "79001111111", "reference": "v1"}, {"msisdn": "79002222222", "reference": "v2"}],
         "text": "Заказ принят", "alpha_name": "AdvInform", "is_promotional": False},
        {"to": [{"msisdn": "79003333333", "reference": "v3"}], "text": "Заказ принят",
         "alpha_name": "AdvInform", "is_promotional": False,
         "options": {"viber": {"alt_route": {"originator": "testsms", "text": "Заказ принят (SMS)"}}}},
        {"to": [{"msisdn": "79004444444", "reference": "v4"}], "text": "Скидка!",
         "alpha_name": "AdvInform", "is_promotional": True},
    ]}


async def test_viber_alt_text_defaults_to_viber_text():
    app = App(lambda call: (200, {"result": [{"error": 0, "reference": "v1", "id": "1"}]}))
    async with client_for(app) as bsg:
        await bsg.send_viber([ViberItem("79001111111", "Hi", "BSG", "v1", alt_sms_originator="testsms")])
    assert app.calls[0].json["messages"][0]["options"] == {
        "viber": {"alt_route": {"originator": "testsms", "text": "Hi"}}}


async def test_viber_per_item_errors():
    app = fixed(200, {"result": [
        {"error": 43, "errorDescription": "Reference already used", "reference": "v1"},
        {"error": 45, "errorDescription": "Viber sender not registered", "reference": "v2"},
        {"error": "0", "reference": "v3", "id": "555", "price": "0.01", "currency": "EUR"}],
        "total_price": "0.01", "currency": "EUR"})
    items = [ViberItem(f"7900111111{i}", "Hi", "BSG", f"v{i}") for i in (1, 2, 3)]
    async with client_for(app) as bsg:
        results = await bsg.send_viber(items)
    assert [(r.kind, r.code) for r in results] == [(Kind.DUPLICATE, 43), (Kind.FATAL, 45), (Kind.OK, 0)]


async def test_viber_120_recipients_batched():
    app = App(lambda call: (200, {"result": [
        {"error": 0, "reference": t["reference"], "id": t["reference"]}
        for m in call.json["messages"] for t in m["to"]]}))
    items = [ViberItem(f"7900{i:07d}", "Hi", "BSG", f"v{i}") for i in range(120)]
    async with client_for(app) as bsg:
        results = await bsg.send_viber(items)
    assert [sum(len(m["to"]) for m in c.json["messages"]) for c in app.calls] == [50, 50, 20]
    assert [r.id for r in results] == [f"v{i}" for i in range(120)]


async def test_bad_arguments():
    async with client_for(App(echo_bulk)) as bsg:
        with pytest.raises(ValueError):
            await bsg.send_sms(sms(1), validity_hours=0)
        with pytest.raises(ValueError):
            await bsg.send_viber([ViberItem("79001111111", "x", "BSG", "v")], validity_seconds=5)
        with pytest.raises(ValueError):
            await bsg.send_viber([ViberItem("79001111111", "x", "BSG", "v", alt_sms_text="y")])
    with pytest.raises(ValueError):
        BsgClient(URL, KEY, rate=0)


# --------------------------------------------------------------------------- status

SMS_STATUS = {"error": 0, "errorDescription": "No errors", "id": "6030051", "msisdn": "79001234567",
              "reference": "r1", "time_in": "2024-05-01 10:00:00", "time_sent": "2024-05-01 10:00:01",
              "time_dr": "2024-05-01 10:00:07", "status": "delivered", "price": "0.0200000",
              "currency": "EUR"}


async def test_sms_status():
    app = fixed(200, SMS_STATUS)
    async with client_for(app) as bsg:
        st = await bsg.sms_status("r1")
    assert app.calls[0].method == "GET" and app.calls[0].path == "/sms/reference/r1"
    assert st == Status(reference="r1", id="6030051", status="delivered", final=True, success=True,
                        price=Decimal("0.0200000"), currency="EUR", alt_route=(),
                        msisdn="79001234567", time_in="2024-05-01 10:00:00",
                        time_sent="2024-05-01 10:00:01", time_dr="2024-05-01 10:00:07")


@pytest.mark.parametrize("status,final,success", [
    ("delivered", True, True), ("read", True, True), ("expired", True, False),
    ("undeliverable", True, False), ("rejected", True, False), ("failed", True, False),
    ("deleted", True, False), ("not_viber_user", True, False), ("new", False, False),
    ("waiting", False, False), ("scheduled", False, False), ("sent", False, False),
    ("unknown", False, False), ("DELIVERED", True, True), ("something-else", False, False),
])
def test_status_finality(status, final, success):
    st = parse_status({**SMS_STATUS, "status": status})
    assert (st.final, st.success, st.pending) == (final, success, not final)


async def test_status_nested_result_and_numeric_id():
    app = fixed(200, {"result": {**SMS_STATUS, "id": 6030051, "error": "0", "status": "sent"}})
    async with client_for(app) as bsg:
        st = await bsg.sms_status("r1")
    assert st.id == "6030051" and st.status == "sent" and st.pending


@pytest.mark.parametrize("status,body", [
    (200, {"error": 20, "errorDescription": "SMS not found"}),
    (200, {"error": "20", "errorDescription": "SMS not found"}),
    (404, {"error": 20, "errorDescription": "SMS not found"}),
])
async def test_sms_status_not_found(status, body):
    async with client_for(fixed(status, body)) as bsg:
        assert await bsg.sms_status("nope") is None


async def test_viber_status_with_alt_route():
    app = fixed(200, {"error": 0, "errorDescription": "No errors", "id": "900", "msisdn": "79001234567",
                      "reference": "v1", "time_in": "2024-05-01 10:00:00", "time_sent": "2024-05-01 10:00:01",
                      "time_dr": "", "status": "not_viber_user", "price": "0", "currency": "EUR",
                      "alt_route": [{"channel": "sms", "id": "6030099", "status": "delivered",
                                     "price": "0.0200000"}]})
    async with client_for(app) as bsg:
        st = await bsg.viber_status("v1")
    assert app.calls[0].path == "/viber/reference/v1"
    assert (st.status, st.final, st.success, st.time_dr) == ("not_viber_user", True, False, None)
    assert st.alt_route == (AltRoute("sms", "6030099", "delivered", Decimal("0.0200000")),)
    assert st.alt_route[0].final and st.alt_route[0].success


async def test_viber_status_not_found():
    async with client_for(fixed(200, {"error": 40, "errorDescription": "Message not found"})) as bsg:
        assert await bsg.viber_status("v9") is None


async def test_status_reference_is_quoted():
    app = fixed(200, SMS_STATUS)
    async with client_for(app) as bsg:
        await bsg.sms_status("a/b")
    assert app.calls[0].path in ("/sms/reference/a%2Fb", "/sms/reference/a/b")  # ASGI unquotes


@pytest.mark.parametrize("status,body,kind,code", [
    (200, {"error": 1, "errorDescription": "Invalid API key"}, Kind.OPERATOR, 1),
    (200, {"error": 7, "errorDescription": "Invalid parameters"}, Kind.FATAL, 7),
    (503, "Service Unavailable", Kind.RETRY, 0),
    (429, {"error": "too many duplicate requests"}, Kind.RETRY, 0),
    (404, "<html>no such route</html>", Kind.FATAL, 0),
    (200, "not json", Kind.RETRY, 0),
    (200, {"error": "odd"}, Kind.RETRY, 0),
])
async def test_status_errors_raise(status, body, kind, code, autojump_clock):
    async with client_for(fixed(status, body)) as bsg:
        with pytest.raises(BsgError) as info:
            await bsg.sms_status("r1")
    assert (info.value.kind, info.value.code, info.value.http_status) == (kind, code, status)
    assert isinstance(info.value, HeraldError) and not isinstance(info.value, BsgUnavailable)


# --------------------------------------------------------------------------- balance

async def test_balance_negative():
    app = fixed(200, {"error": 0, "amount": "-4.0999333", "currency": "EUR", "limit": "7"})
    async with client_for(app) as bsg:
        b = await bsg.balance()
    assert b == Balance(Decimal("-4.0999333"), "EUR", Decimal("7"))
    assert app.calls[0].method == "GET" and app.calls[0].path == "/common/balance"


async def test_balance_numbers_and_no_limit():
    async with client_for(fixed(200, {"error": "0", "amount": 12.5, "currency": "EUR"})) as bsg:
        assert await bsg.balance() == Balance(Decimal("12.5"), "EUR", None)


async def test_balance_invalid_key_is_operator_and_loud(caplog):
    app = fixed(200, {"error": 1, "errorDescription": f"Invalid API key"})
    with caplog.at_level(logging.DEBUG, logger="herald.bsg"):
        async with client_for(app) as bsg:
            with pytest.raises(BsgError) as info:
                await bsg.balance()
    assert info.value.kind is Kind.OPERATOR and info.value.code == 1
    assert any(r.levelno == logging.ERROR and "(1)" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- unreachable

def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_connection_refused_is_unavailable():
    url = f"http://127.0.0.1:{closed_port()}/rest"
    async with BsgClient(url, KEY, timeout=5) as bsg:
        with pytest.raises(BsgUnavailable) as info:
            await bsg.balance()
        assert info.value.kind is Kind.RETRY
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        assert KEY not in str(info.value)

        with pytest.raises(BsgUnavailable) as info:
            await bsg.send_sms(sms(3))
        assert [(r.reference, r.kind, r.unavailable) for r in info.value.results] == [
            ("r0", Kind.RETRY, True), ("r1", Kind.RETRY, True), ("r2", Kind.RETRY, True)]
        with pytest.raises(BsgUnavailable):
            await bsg.viber_status("v1")


async def test_failure_midway_keeps_earlier_results():
    app = App(echo_bulk)

    class Flaky(httpx.AsyncBaseTransport):
        def __init__(self):
            self.inner = httpx.ASGITransport(app=app)
            self.n = 0

        async def handle_async_request(self, request):
            self.n += 1
            if self.n == 2:
                raise httpx.ConnectError("connection reset", request=request)
            return await self.inner.handle_async_request(request)

    async with BsgClient(URL, KEY, transport=Flaky(), rate=1000) as bsg:
        with pytest.raises(BsgUnavailable) as info:
            await bsg.send_sms(sms(120))
    results = info.value.results
    assert len(results) == 120 and len(app.calls) == 1     # no third request once unreachable
    assert all(r.kind is Kind.OK for r in results[:50])
    assert all(r.kind is Kind.RETRY and r.unavailable for r in results[50:])


async def test_timeout_is_unavailable(autojump_clock):
    async def slow(call):
        await trio.sleep(1000)
        return 200, {}
    async with client_for(App(slow), timeout=3) as bsg:
        start = trio.current_time()
        with pytest.raises(BsgUnavailable) as info:
            await bsg.balance()
    assert 3 <= trio.current_time() - start < 4
    assert "within 3 s" in str(info.value)


# --------------------------------------------------------------------------- rate

async def test_rate_caps_sequential_calls(autojump_clock):
    app = fixed(200, {"error": 0, "amount": "1", "currency": "EUR"})
    async with client_for(app, rate=10) as bsg:
        start = trio.current_time()
        for _ in range(5):
            await bsg.balance()
        assert trio.current_time() - start >= 0.4 - 1e-9


async def test_rate_shared_by_concurrent_callers(autojump_clock):
    app = fixed(200, {"error": 0, "amount": "1", "currency": "EUR"})
    async with client_for(app, rate=10) as bsg:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(bsg.balance)
        assert trio.current_time() - start >= 0.4 - 1e-9
    times = sorted(c.time for c in app.calls)
    assert all(b - a >= 0.1 - 1e-9 for a, b in zip(times, times[1:]))


async def test_rate_spaces_batch_requests(autojump_clock):
    app = App(echo_bulk)
    async with client_for(app, rate=2) as bsg:
        await bsg.send_sms(sms(120))
    times = [c.time for c in app.calls]
    assert times[1] - times[0] >= 0.5 - 1e-9 and times[2] - times[1] >= 0.5 - 1e-9


async def test_429_pauses_the_client(autojump_clock):
    answers = iter([(429, "slow down", {"Retry-After": "3"}),
                    (200, {"error": 0, "amount": "1", "currency": "EUR"})])
    app = App(lambda call: next(answers))
    async with client_for(app, rate=100) as bsg:
        with pytest.raises(BsgError) as info:
            await bsg.balance()
        assert info.value.kind is Kind.RETRY and info.value.retry_after == 3
        await bsg.balance()
    assert app.calls[1].time - app.calls[0].time >= 3


# --------------------------------------------------------------------------- the look-up budget

STATUS = {"error": 0, "reference": "r", "id": "1", "status": "delivered"}


async def test_lookups_have_their_own_budget_not_the_send_rate(autojump_clock):
    """At `rate: 0.5` 20 reads take 38 s; 20 budgeted look-ups (lookup_rate 100) take 0.2 s,
    and a send still gets its slot."""
    app = App(lambda call: (200, STATUS if "/reference/" in call.path else
                            {"error": 0, "amount": "1", "currency": "EUR"}))
    async with client_for(app, rate=0.5, lookup_rate=100) as bsg:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(partial(bsg.sms_status, f"r{i}", lookup=True))
        assert trio.current_time() - start < 0.5
        await bsg.balance()
        await bsg.balance()
        assert trio.current_time() - start >= 2 - 1e-9          # sends/reads: 1 per 2 s
    times = [c.time for c in app.calls if "/reference/" in c.path]
    assert all(b - a >= 0.01 - 1e-9 for a, b in zip(times, times[1:]))


async def test_lookup_concurrency_bounds_the_lookups_in_flight(autojump_clock):
    in_flight = peak = 0

    async def slow(call):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(1)
        in_flight -= 1
        return 200, STATUS

    async with client_for(App(slow), lookup_rate=1000, lookup_concurrency=3) as bsg:
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(partial(bsg.viber_status, f"r{i}", lookup=True))
    assert peak == 3


async def test_new_rates_apply_to_callers_already_waiting(autojump_clock):
    """The issue: raising `rate` by reload did not help — slots were handed out under the
    old rate. 10 reads at 0.5/s would take 18 s; after set_rates(50) they take < 1 s."""
    app = fixed(200, {"error": 0, "amount": "1", "currency": "EUR"})
    async with client_for(app, rate=0.5) as bsg:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(bsg.balance)
            await trio.sleep(1)                    # one went; nine wait for slots 2 s apart
            bsg.set_rates(50, lookup_rate=5, lookup_concurrency=2)
        assert trio.current_time() - start < 1.5
        assert (bsg.rate, bsg.lookup_rate, bsg.lookup_concurrency) == (50, 5, 2)
    times = sorted(c.time for c in app.calls)
    assert all(b - a >= 0.02 - 1e-9 for a, b in zip(times[1:], times[2:]))


async def test_429_pauses_lookups_too(autojump_clock):
    answers = iter([(429, "slow down", {"Retry-After": "3"}), (200, STATUS)])
    app = App(lambda call: next(answers))
    async with client_for(app, lookup_rate=100) as bsg:
        with pytest.raises(BsgError):
            await bsg.balance()
        await bsg.sms_status("r", lookup=True)
    assert app.calls[1].time - app.calls[0].time >= 3


async def test_budgets_are_checked():
    with pytest.raises(ValueError):
        BsgClient(URL, KEY, lookup_rate=0)
    with pytest.raises(ValueError):
        BsgClient(URL, KEY, lookup_concurrency=0)
    bsg = BsgClient(URL, KEY)
    try:
        with pytest.raises(ValueError):
            bsg.set_rates(float("nan"))
    finally:
        await bsg.aclose()


# --------------------------------------------------------------------------- the key

async def test_key_never_leaks(caplog):
    exchanges = []
    app = fixed(200, {"error": 1, "errorDescription": f"Invalid API key {KEY}"})
    with caplog.at_level(logging.DEBUG):
        async with client_for(app, on_exchange=lambda *a: exchanges.append(a)) as bsg:
            assert KEY not in repr(bsg) and KEY not in str(bsg)
            with pytest.raises(BsgError) as info:
                await bsg.balance()
            results = await bsg.send_sms(sms(2))
    assert app.calls[0].headers["x-api-key"] == KEY                # it does go to BSG
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert KEY not in info.value.description
    assert all(KEY not in r.description and KEY not in repr(r) for r in results)
    assert KEY not in caplog.text
    assert exchanges and KEY not in repr(exchanges)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(bsg)


async def test_key_as_plain_string_is_wrapped():
    app = fixed(200, {"error": 0, "amount": "1", "currency": "EUR"})
    bsg = BsgClient(URL, KEY, transport=httpx.ASGITransport(app=app))
    try:
        await bsg.balance()
        assert KEY not in repr(bsg) and KEY not in repr(vars(bsg) if hasattr(bsg, "__dict__") else "")
    finally:
        await bsg.aclose()
    assert app.calls[0].headers["x-api-key"] == KEY


async def test_on_exchange_trace():
    exchanges = []
    app = fixed(200, {"error": 0, "amount": "-1", "currency": "EUR"})
    async with client_for(app, on_exchange=lambda *a: exchanges.append(a)) as bsg:
        await bsg.balance()
        await bsg.send_sms(sms(1))
    (m1, p1, req1, st1, resp1, s1), (m2, p2, req2, st2, resp2, s2) = exchanges
    assert (m1, p1, req1, st1, resp1) == ("GET", "/common/balance", None, 200,
                                          {"error": 0, "amount": "-1", "currency": "EUR"})
    assert (m2, p2, st2) == ("POST", "/sms/create", 200) and req2["reference"] == "r0"
    assert s1 >= 0 and s2 >= 0


async def test_on_exchange_failure_does_not_break_sending():
    def broken(*a):
        raise RuntimeError("trace store down")
    async with client_for(fixed(200, {"error": 0, "amount": "1", "currency": "EUR"}),
                          on_exchange=broken) as bsg:
        assert (await bsg.balance()).amount == 1


async def test_on_exchange_on_network_error():
    exchanges = []
    async with BsgClient(f"http://127.0.0.1:{closed_port()}/rest", KEY,
                         on_exchange=lambda *a: exchanges.append(a)) as bsg:
        with pytest.raises(BsgUnavailable):
            await bsg.balance()
    [(method, path, req, status, resp, seconds)] = exchanges
    assert (method, path, req, status, resp) == ("GET", "/common/balance", None, None, None)


def test_redact():
    request = {"X-API-KEY": KEY, "headers": {"Authorization": "Bearer x", "api_key": KEY},
               "body": {"msisdn": "79001234567", "note": f"key={KEY}"},
               "list": [{"token": "t"}, Secret("s")], "price": Decimal("1")}
    safe = redact(request, secrets=[Secret(KEY)])
    assert KEY not in repr(safe)
    assert safe["X-API-KEY"] == "****" and safe["headers"] == {"Authorization": "****", "api_key": "****"}
    assert safe["body"] == {"msisdn": "79001234567", "note": "key=****"}
    assert safe["list"] == [{"token": "****"}, "****"]
    assert request["X-API-KEY"] == KEY                      # a copy: the original is untouched


def test_clients_from_config():
    cfg = BsgConfig(url="https://a.example/rest", api_key=Secret(KEY),
                    backup=(BackupEndpoint("https://b.example/rest"),
                            BackupEndpoint("https://c.example/rest", Secret("other"))), rate=5.0)
    clients = clients_from_config(cfg)
    assert [(c.name, c.url, c.rate) for c in clients] == [
        ("main", "https://a.example/rest", 5.0), ("backup1", "https://b.example/rest", 5.0),
        ("backup2", "https://c.example/rest", 5.0)]
    assert KEY not in repr(clients)
