"""The fake BSG server: documented shapes, error codes, statuses, faults, admin API."""

from __future__ import annotations

import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import trio

from herald.engine.bsg.fake import FakeBSG, create_app, main, serve

KEY = "test_secret_key_123"
ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock) -> FakeBSG:
    return FakeBSG(clock=clock, delivery_delay=10)


def make_client(fake: FakeBSG, key: str | None = KEY) -> httpx.AsyncClient:
    headers = {"X-API-KEY": key} if key is not None else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(fake)),
                             base_url="http://fake", headers=headers)


@pytest.fixture
async def client(fake):
    async with make_client(fake) as c:
        yield c


def sms(msisdn="380501234567", reference="ref1", body="Hello", originator="testsms", **extra) -> dict:
    return {"destination": "phone", "msisdn": msisdn, "originator": originator, "body": body,
            "reference": reference, **extra}


def viber(to, text="Hi there", alpha_name="AdvInform", alt_route=None, **options) -> dict:
    viber_opts = dict(options)
    if alt_route is not None:
        viber_opts["alt_route"] = alt_route
    msg = {"to": to, "text": text, "alpha_name": alpha_name}
    if viber_opts:
        msg["options"] = {"viber": viber_opts}
    return {"messages": [msg]}


async def post(client, path, body) -> dict:
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def get(client, path, **params) -> dict:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


# -- single SMS and response styles ---------------------------------------------


async def test_single_sms_nested_by_default(client, fake):
    body = await post(client, "/sms/create", sms())
    assert body == {"result": {"error": 0, "errorDescription": "No errors", "reference": "ref1",
                               "id": "1", "price": 0.02, "currency": "EUR"}}
    assert fake.balance == Decimal("99.98")


async def test_put_also_creates(client):
    r = await client.put("/sms/create", json=sms())
    assert r.json()["result"]["error"] == 0


async def test_single_sms_flat_style(clock):
    async with make_client(FakeBSG(clock=clock, response_style="flat")) as c:
        body = await post(c, "/sms/create", sms())
    assert body == {"error": 0, "errorDescription": "No errors", "reference": "ref1", "id": "1",
                    "price": 0.02, "currency": "EUR"}


async def test_strings_style(clock):
    async with make_client(FakeBSG(clock=clock, response_style="strings")) as c:
        body = await post(c, "/sms/create", sms())
        assert body["result"]["error"] == "0"
        assert body["result"]["price"] == "0.0200000"
        status = await get(c, "/sms/1")
        assert status["error"] == "0" and status["price"] == "0.0200000"
        bad = await post(c, "/sms/create", sms(msisdn="+380501234567", reference="ref2"))
        assert bad["error"] == "21"


async def test_flat_strings_style_and_bulk_total_key(clock):
    async with make_client(FakeBSG(clock=clock, response_style="flat+strings")) as c:
        body = await post(c, "/sms/create", sms())
        assert body["error"] == "0" and body["price"] == "0.0200000" and "result" not in body
        bulk = await post(c, "/sms/create", {
            "destination": "phones", "originator": "testsms", "body": "Hi",
            "phones": [{"msisdn": "380501111111", "reference": "b1"}]})
        assert bulk["totalprice"] == "0.0200000" and "total_price" not in bulk


async def test_style_can_be_switched_over_admin_api(client):
    r = await client.post("/_fake/style", json={"response_style": "flat"})
    assert r.json() == {"response_style": "flat"}
    assert (await post(client, "/sms/create", sms()))["id"] == "1"
    assert (await client.post("/_fake/style", json={"response_style": "sideways"})).status_code == 400


def test_bad_response_style_is_refused():
    with pytest.raises(ValueError):
        FakeBSG(response_style="flat+nested")
    with pytest.raises(ValueError):
        FakeBSG(response_style="xml")


async def test_multipart_sms_costs_per_part(client, fake):
    body = await post(client, "/sms/create", sms(body="x" * 161))
    assert body["result"]["price"] == 0.04
    assert fake.balance == Decimal("99.96")


# -- error codes ------------------------------------------------------------------


async def test_error_1_missing_or_wrong_key(fake):
    async with make_client(fake, key=None) as c:
        assert await post(c, "/sms/create", sms()) == {"error": 1, "errorDescription": "Invalid API key"}
        assert (await get(c, "/common/balance"))["error"] == 1
    async with make_client(fake, key="") as c:
        assert (await post(c, "/sms/create", sms()))["error"] == 1
    strict = FakeBSG(api_keys={"live_good"})
    async with make_client(strict, key="live_bad") as c:
        assert (await post(c, "/sms/create", sms()))["error"] == 1
    async with make_client(strict, key="live_good") as c:
        assert (await post(c, "/sms/create", sms()))["result"]["error"] == 0
    assert strict.messages() and fake.messages() == []


@pytest.mark.parametrize("body", [
    {},
    {"destination": "phone", "originator": "testsms", "body": "x", "reference": "r"},
    {"destination": "phone", "msisdn": "380501234567", "body": "x", "reference": "r"},
    {"destination": "phone", "msisdn": "380501234567", "originator": "testsms", "reference": "r"},
    {"destination": "phones", "originator": "testsms", "body": "x"},
    {"destination": "phones", "originator": "testsms", "body": "x", "phones": []},
])
async def test_error_3_not_enough_params(client, body):
    assert (await post(client, "/sms/create", body))["error"] == 3


async def test_error_3_for_empty_body(client):
    r = await client.post("/sms/create")
    assert r.json()["error"] == 3


async def test_error_24_invalid_json(client):
    r = await client.post("/sms/create", content=b"{not json", headers={"content-type": "application/json"})
    assert r.json()["error"] == 24
    r = await client.post("/viber/create", content=b"[1, 2", headers={"content-type": "application/json"})
    assert r.json()["error"] == 44


async def test_error_7_unknown_destination(client):
    assert (await post(client, "/sms/create", {**sms(), "destination": "everyone"}))["error"] == 7


@pytest.mark.parametrize("msisdn", ["+380501234567", "1234567", "1234567890123456", "38050123456a", "", None])
async def test_error_21_invalid_phone(client, msisdn):
    body = await post(client, "/sms/create", sms(msisdn=msisdn))
    assert body["error"] == (3 if not msisdn else 21)


async def test_phone_limits_8_and_15_digits_are_fine(client):
    assert (await post(client, "/sms/create", sms(msisdn="12345678", reference="a")))["result"]["error"] == 0
    assert (await post(client, "/sms/create", sms(msisdn="123456789012345", reference="b")))["result"]["error"] == 0


async def test_error_22_23_27_reference(client, fake):
    assert (await post(client, "/sms/create", sms(reference=None)))["error"] == 22
    assert (await post(client, "/sms/create", sms(reference="")))["error"] == 22
    assert (await post(client, "/sms/create", sms(reference="a" * 33)))["error"] == 27
    assert (await post(client, "/sms/create", sms(reference="has-dash")))["error"] == 27
    assert (await post(client, "/sms/create", sms(reference="a" * 32)))["result"]["error"] == 0
    again = await post(client, "/sms/create", sms(reference="a" * 32))
    assert again == {"error": 23, "errorDescription": "Reference already used", "reference": "a" * 32}
    assert len(fake.messages()) == 1


@pytest.mark.parametrize("originator,code", [
    ("TwelveChars1", 25), ("bad!", 25), ("1234567890123456", 25), ("", 3), (None, 3),
    ("Shop", 0), ("123456789012345", 0), ("Shop Name", 0),
])
async def test_error_25_originator(client, originator, code):
    body = await post(client, "/sms/create", sms(originator=originator))
    assert body.get("error", body.get("result", {}).get("error")) == code


async def test_error_32_sender_not_allowed(clock):
    async with make_client(FakeBSG(clock=clock, sms_senders={"testsms"})) as c:
        assert (await post(c, "/sms/create", sms(originator="Other")))["error"] == 32
        assert (await post(c, "/sms/create", sms()))["result"]["error"] == 0


@pytest.mark.parametrize("text,code", [
    ("", 26), ("   ", 26), ("x" * 765, 0), ("x" * 766, 26), ("€" * 383, 26), ("€" * 382, 0),
    ("я" * 355, 0), ("я" * 356, 26),
])
async def test_error_26_text(client, text, code):
    body = await post(client, "/sms/create", sms(body=text))
    assert body.get("error", body.get("result", {}).get("error")) == code


async def test_error_28_validity(client):
    assert (await post(client, "/sms/create", sms(validity=73)))["error"] == 28
    assert (await post(client, "/sms/create", sms(validity=0)))["error"] == 28
    assert (await post(client, "/sms/create", sms(validity=72)))["result"]["error"] == 0


# -- bulk SMS ---------------------------------------------------------------------


async def test_phones_destination_with_task(client, fake, clock):
    body = await post(client, "/sms/create", {
        "destination": "phones", "originator": "testsms", "body": "Sale!",
        "phones": [
            {"msisdn": "380501111111", "reference": "p1"},
            {"msisdn": "+380502222222", "reference": "p2"},     # 21
            {"msisdn": "380501111111", "reference": "p3"},      # 31 repeated phone
            {"msisdn": "380503333333", "reference": "p1"},      # 23 repeated reference
            {"msisdn": "380504444444"},                         # 22
            {"msisdn": "380505555555", "reference": "p_6"},     # 27
            {"msisdn": "380506666603", "reference": "p7"},
        ]})
    assert body["task_id"] == "1"
    assert [item["error"] for item in body["result"]] == [0, 21, 31, 23, 22, 27, 0]
    assert body["result"][0] == {"error": 0, "errorDescription": "No errors", "reference": "p1",
                                 "id": "1", "price": 0.02, "currency": "EUR"}
    assert body["result"][1] == {"error": 21, "errorDescription": "Invalid phone number", "reference": "p2"}
    assert body["total_price"] == 0.04 and body["currency"] == "EUR"
    assert fake.balance == Decimal("99.96")

    clock.advance(10)
    task = await get(client, "/sms/task/1")
    assert task["error"] == 0 and task["task_id"] == "1" and task["body"] == "Sale!"
    assert [(s["reference"], s["status"]) for s in task["result"]] == [("p1", "delivered"), ("p7", "rejected")]
    assert task["total_price"] == 0.04
    assert (await get(client, "/sms/task/99"))["error"] == 30
    assert (await get(client, "/sms/task/abc"))["error"] == 29


async def test_phones_destination_shared_fields_fail_whole_request(client, fake):
    phones = [{"msisdn": "380501111111", "reference": "p1"}]
    base = {"destination": "phones", "phones": phones}
    assert (await post(client, "/sms/create", {**base, "originator": "bad!", "body": "x"}))["error"] == 25
    assert (await post(client, "/sms/create", {**base, "originator": "testsms", "body": ""}))["error"] == 26
    assert fake.messages() == []


async def test_individual_destination(client, fake):
    body = await post(client, "/sms/create", {"destination": "individual", "phones": [
        {"msisdn": "380501111111", "body": "One", "originator": "testsms", "reference": "i1"},
        {"msisdn": "380502222222", "body": "x" * 200, "originator": "Shop", "reference": "i2"},
        {"msisdn": "380503333333", "body": "", "originator": "Shop", "reference": "i3"},
        {"msisdn": "380504444444", "body": "Hi", "originator": "TooLongSender", "reference": "i4"},
        {"msisdn": "380501111111", "body": "Again", "originator": "Shop", "reference": "i5"},
        {"msisdn": "380506666666", "body": "Hi", "reference": "i6"},
    ]})
    assert "task_id" not in body
    assert [item["error"] for item in body["result"]] == [0, 0, 26, 25, 31, 3]
    assert body["result"][1]["price"] == 0.04
    assert body["total_price"] == 0.06
    rows = fake.messages("sms")
    assert [(r["reference"], r["originator"], r["body"][:3]) for r in rows] == [
        ("i1", "testsms", "One"), ("i2", "Shop", "xxx")]


async def test_error_12_batch_too_large(client, fake):
    phones = [{"msisdn": f"3805000000{i:02d}", "reference": f"r{i}"} for i in range(51)]
    body = await post(client, "/sms/create", {"destination": "phones", "originator": "testsms",
                                               "body": "x", "phones": phones})
    assert body["error"] == 12
    ok = await post(client, "/sms/create", {"destination": "phones", "originator": "testsms",
                                             "body": "x", "phones": phones[:50]})
    assert len(ok["result"]) == 50 and all(item["error"] == 0 for item in ok["result"])
    to = [{"msisdn": f"3805100000{i:02d}", "reference": f"v{i}"} for i in range(51)]
    assert (await post(client, "/viber/create", viber(to)))["error"] == 12


# -- Viber ----------------------------------------------------------------------


async def test_viber_create_and_status(client, fake, clock):
    body = await post(client, "/viber/create", viber([
        {"msisdn": "380501234567", "reference": "v1"},
        {"msisdn": "380501234504", "reference": "v2"},
    ]))
    assert body == {"result": [
        {"error": 0, "errorDescription": "No errors", "reference": "v1", "id": "1", "price": 0.015, "currency": "EUR"},
        {"error": 0, "errorDescription": "No errors", "reference": "v2", "id": "2", "price": 0.015, "currency": "EUR"},
    ], "total_price": 0.03, "currency": "EUR"}
    status = await get(client, "/viber/1")
    assert status["status"] == "new" and status["time_in"] and status["time_sent"] is None
    clock.advance(10)
    assert (await get(client, "/viber/1"))["status"] == "delivered"
    by_ref = await get(client, "/viber/reference/v2")
    assert by_ref["id"] == "2" and by_ref["status"] == "read" and "alt_route" not in by_ref
    assert (await get(client, "/viber/77"))["error"] == 40
    assert (await get(client, "/viber/reference/nope"))["error"] == 40
    assert (await get(client, "/sms/1"))["error"] == 20   # a Viber id is not an SMS


async def test_viber_item_errors(client, fake):
    body = await post(client, "/viber/create", viber([
        {"msisdn": "+380501234567", "reference": "v1"},   # 41
        {"msisdn": "380501234567", "reference": "v-2"},   # 47
        {"msisdn": "380501234567", "reference": "v3"},    # ok
        {"msisdn": "380501234567", "reference": "v4"},    # 51
        {"msisdn": "380501234568"},                       # 22
        {"msisdn": "380501234569", "reference": "v3"},    # 43
    ]))
    assert [item["error"] for item in body["result"]] == [41, 47, 0, 51, 22, 43]
    again = await post(client, "/viber/create", viber([{"msisdn": "380501234567", "reference": "v3"}]))
    assert again["result"][0]["error"] == 43
    assert len(fake.messages("viber")) == 1


@pytest.mark.parametrize("kwargs,code", [
    ({"alpha_name": "Unknown"}, 45),
    ({"alpha_name": "A" * 15}, 45),
    ({"text": ""}, 46),
    ({"text": "x" * 1001}, 46),
    ({"text": "x" * 1000}, 0),
    ({"img": "https://x/img.png"}, 49),
    ({"img": "https://x/img.png", "caption": "Buy", "action": "https://x"}, 0),
    ({"alt_route": {"originator": "bad!", "text": "x"}}, 49),
    ({"alt_route": {"originator": "testsms"}}, 49),
])
async def test_viber_message_errors(client, kwargs, code):
    body = await post(client, "/viber/create", viber([{"msisdn": "380501234567", "reference": "v1"}], **kwargs))
    assert body.get("error", body.get("result", [{}])[0].get("error")) == code


async def test_viber_request_errors(client):
    assert (await post(client, "/viber/create", {}))["error"] == 3
    assert (await post(client, "/viber/create", {"messages": [{"to": [], "text": "x", "alpha_name": "BSG"}]}))["error"] == 3
    assert (await post(client, "/viber/create", {**viber([{"msisdn": "380501234567", "reference": "a"}]),
                                                 "validity": 10}))["error"] == 48


async def test_viber_senders_are_configurable(clock):
    async with make_client(FakeBSG(clock=clock, viber_senders={"MyShop"})) as c:
        to = [{"msisdn": "380501234567", "reference": "a"}]
        assert (await post(c, "/viber/create", viber(to, alpha_name="AdvInform")))["error"] == 45
        assert (await post(c, "/viber/create", viber(to, alpha_name="MyShop")))["result"][0]["error"] == 0


async def test_viber_alt_route_fallback_sms(client, fake, clock):
    alt = {"originator": "testsms", "text": "Your order shipped"}
    body = await post(client, "/viber/create", viber(
        [{"msisdn": "380501234501", "reference": "v1"},      # not_viber_user → fallback
         {"msisdn": "380501234567", "reference": "v2"},      # delivered → no fallback
         {"msisdn": "380501234503", "reference": "v3"}],     # rejected → no fallback
        alt_route=alt))
    assert [item["error"] for item in body["result"]] == [0, 0, 0]

    clock.advance(9)
    before = await get(client, "/viber/1")
    assert before["status"] == "sent" and "alt_route" not in before
    assert len(fake.messages("sms")) == 0

    clock.advance(1)
    after = await get(client, "/viber/reference/v1")
    assert after["status"] == "not_viber_user"
    [route] = after["alt_route"]
    assert route["channel"] == "sms" and route["id"] == "4" and route["price"] == 0.02
    assert route["status"] == "new"                         # the SMS has its own lifecycle
    sms_rows = fake.messages("sms")
    assert [(r["id"], r["msisdn"], r["originator"], r["body"], r["fallback_for"]) for r in sms_rows] == [
        ("4", "380501234501", "testsms", "Your order shipped", "1")]
    assert fake.balance == Decimal("100") - 3 * Decimal("0.015") - Decimal("0.02")

    clock.advance(10)
    assert (await get(client, "/viber/1"))["alt_route"][0]["status"] == "delivered"   # …01 by SMS is delivered
    sms_status = await get(client, "/sms/4")
    assert sms_status["status"] == "delivered" and sms_status["msisdn"] == "380501234501"
    for vid in ("2", "3"):
        assert "alt_route" not in await get(client, f"/viber/{vid}")
    assert len(fake.messages("sms")) == 1


@pytest.mark.parametrize("tail,viber_final,sms_final", [
    ("00", "undeliverable", "undeliverable"), ("02", "expired", "expired")])
async def test_alt_route_after_other_failures(client, fake, clock, tail, viber_final, sms_final):
    alt = {"originator": "testsms", "text": "Fallback"}
    await post(client, "/viber/create", viber([{"msisdn": f"3805012345{tail}", "reference": "v1"}], alt_route=alt))
    clock.advance(20)
    status = await get(client, "/viber/1")
    assert status["status"] == viber_final
    assert status["alt_route"][0]["status"] == sms_final


# -- statuses -----------------------------------------------------------------------


@pytest.mark.parametrize("tail,sms_final,viber_final", [
    ("00", "undeliverable", "undeliverable"),
    ("01", "delivered", "not_viber_user"),
    ("02", "expired", "expired"),
    ("03", "rejected", "rejected"),
    ("04", "delivered", "read"),
    ("05", "sent", "sent"),
    ("67", "delivered", "delivered"),
])
async def test_statuses_move_to_final_by_last_two_digits(client, clock, tail, sms_final, viber_final):
    msisdn = f"3805012345{tail}"
    await post(client, "/sms/create", sms(msisdn=msisdn, reference="s1"))
    await post(client, "/viber/create", viber([{"msisdn": msisdn, "reference": "v1"}]))
    first = await get(client, "/sms/1")
    assert first["status"] == "new" and first["time_sent"] is None and first["time_dr"] is None
    clock.advance(5)
    assert (await get(client, "/sms/reference/s1"))["status"] == "sent"
    assert (await get(client, "/viber/2"))["status"] == "sent"
    clock.advance(5)
    final = await get(client, "/sms/1")
    assert final["status"] == sms_final
    assert (await get(client, "/viber/2"))["status"] == viber_final
    assert final["time_sent"] is not None
    assert (final["time_dr"] is None) == (sms_final == "sent")
    assert set(final) == {"error", "errorDescription", "id", "msisdn", "reference", "time_in",
                          "time_sent", "time_dr", "status", "price", "currency"}


async def test_zero_delay_is_final_at_once():
    async with make_client(FakeBSG(delivery_delay=0)) as c:
        await post(c, "/sms/create", sms(msisdn="380501234503"))
        assert (await get(c, "/sms/1"))["status"] == "rejected"


async def test_sms_not_found(client):
    assert (await get(client, "/sms/12345"))["error"] == 20
    assert (await get(client, "/sms/reference/nothing"))["error"] == 20


# -- money ------------------------------------------------------------------------------


async def test_balance_drops_then_error_8(clock):
    fake = FakeBSG(clock=clock, balance=Decimal("0.03"))
    async with make_client(fake) as c:
        assert (await get(c, "/common/balance")) == {"error": 0, "errorDescription": "No errors",
                                                    "amount": "0.0300000", "currency": "EUR", "limit": "0"}
        assert (await post(c, "/sms/create", sms(reference="a")))["result"]["error"] == 0
        assert (await post(c, "/sms/create", sms(reference="b")))["result"]["error"] == 0  # goes negative once
        assert (await get(c, "/common/balance"))["amount"] == "-0.0100000"
        assert (await post(c, "/sms/create", sms(reference="c")))["error"] == 8
        assert (await post(c, "/viber/create", viber([{"msisdn": "380501234567", "reference": "v"}])))["error"] == 8
        assert (await post(c, "/sms/create", {"destination": "phones", "originator": "testsms", "body": "x",
                                               "phones": [{"msisdn": "380501111111", "reference": "d"}]}))["error"] == 8
        r = await c.post("/_fake/balance", json={"amount": "10"})
        assert r.json() == {"amount": "10.0000000", "currency": "EUR"}
        assert (await post(c, "/sms/create", sms(reference="c")))["result"]["error"] == 0
    assert len(fake.messages()) == 3


async def test_balance_runs_out_inside_a_batch(clock):
    fake = FakeBSG(clock=clock, balance=Decimal("0.02"))
    async with make_client(fake) as c:
        body = await post(c, "/viber/create", viber([{"msisdn": f"38050123456{i}", "reference": f"v{i}"}
                                                     for i in range(3)]))
    assert [item["error"] for item in body["result"]] == [0, 0, 8]
    assert fake.balance == Decimal("-0.010")


async def test_price_endpoints_send_nothing(client, fake):
    q = await post(client, "/sms/price", sms(body="x" * 200, reference=None))
    assert q == {"error": 0, "errorDescription": "No errors", "totalprice": 0.04, "currency": "EUR"}
    bulk = await post(client, "/sms/price", {"destination": "phones", "originator": "testsms", "body": "x",
                                              "phones": [{"msisdn": "380501111111"}, {"msisdn": "380502222222"}]})
    assert bulk["totalprice"] == 0.04
    vq = await post(client, "/viber/price", viber([{"msisdn": "380501234567"}, {"msisdn": "380501234568"}]))
    assert vq["totalprice"] == 0.03
    assert (await post(client, "/sms/price", sms(msisdn="123")))["error"] == 21
    assert fake.messages() == [] and fake.balance == Decimal("100")


# -- 2-way incoming -------------------------------------------------------------------


async def test_2way_incoming(client):
    for msisdn, body, sender, when in [
        ("380501111111", "STOP", "testsms", "2024-05-01 10:00:00"),
        ("380502222222", "Yes", "Shop", "2024-05-01 12:30:00"),
        ("380503333333", "Late", "testsms", "2024-05-02 09:00:00"),
    ]:
        r = await client.post("/_fake/incoming", json={"msisdn": msisdn, "body": body, "sender": sender, "time": when})
        assert r.status_code == 200 and r.json()["body"] == body
    day = await get(client, "/sms/2wayIncoming", start_date="2024-05-01 00:00:00", end_date="2024-05-01 23:59:59")
    assert day["error"] == 0
    assert [(m["msisdn"], m["body"], m["time"]) for m in day["result"]] == [
        ("380501111111", "STOP", "2024-05-01 10:00:00"), ("380502222222", "Yes", "2024-05-01 12:30:00")]
    only = await get(client, "/sms/2wayIncoming", start_date="2024-05-01 00:00:00",
                     end_date="2024-05-03 00:00:00", sender="testsms")
    assert [m["body"] for m in only["result"]] == ["STOP", "Late"]
    assert (await get(client, "/sms/2wayIncoming", start_date="2024-05-01 00:00:00"))["error"] == 3
    assert (await get(client, "/sms/2wayIncoming", start_date="May 1", end_date="May 2"))["error"] == 7
    bad = await client.post("/_fake/incoming", json={"msisdn": "+1", "body": "x"})
    assert bad.status_code == 400


async def test_2way_incoming_defaults_to_now(client):
    r = await client.post("/_fake/incoming", json={"msisdn": "380501111111", "body": "Hi"})
    stamp = r.json()["time"]
    got = await get(client, "/sms/2wayIncoming", start_date=stamp, end_date=stamp)
    assert [m["body"] for m in got["result"]] == ["Hi"]


# -- faults (in-process) -------------------------------------------------------------------


async def test_fault_5xx_with_count(client, fake):
    r = await client.post("/_fake/faults", json={"mode": "5xx", "count": 2})
    assert r.json()["fault"]["count"] == 2
    assert (await client.post("/sms/create", json=sms())).status_code == 503
    assert (await client.get("/_fake/faults")).json()["fault"]["count"] == 1   # admin calls are not faulted
    assert (await client.get("/common/balance")).status_code == 503
    assert (await client.get("/common/balance")).status_code == 200
    assert (await client.get("/_fake/faults")).json() == {"fault": None}
    assert fake.messages() == []                       # nothing was accepted during the outage
    await client.post("/_fake/faults", json={"mode": "5xx", "status": 500})
    assert (await client.get("/common/balance")).status_code == 500
    assert (await client.delete("/_fake/faults")).json() == {"fault": None}
    assert (await client.get("/common/balance")).status_code == 200
    log = (await client.get("/_fake/requests")).json()
    assert [row["fault"] for row in log["requests"]] == ["5xx", "5xx", None, "5xx", None]
    assert all(KEY not in str(row) for row in log["requests"])


async def test_fault_429(client):
    await client.post("/_fake/faults", json={"mode": "429", "count": 1})
    r = await client.post("/sms/create", json=sms())
    assert r.status_code == 429 and "too many duplicate requests" in r.text
    assert (await client.post("/sms/create", json=sms())).json()["result"]["error"] == 0


async def test_fault_error_code(client, fake):
    await client.post("/_fake/faults", json={"mode": "error", "code": 11, "count": 1})
    r = await client.post("/sms/create", json=sms())
    assert r.status_code == 200
    assert r.json() == {"error": 11, "errorDescription": "Too many messages at once"}
    await client.post("/_fake/faults", json={"mode": "error", "count": 1})
    assert (await client.get("/common/balance")).json()["error"] == 5      # default code
    assert fake.messages() == []


async def test_fault_slow(client, autojump_clock):
    await client.post("/_fake/faults", json={"mode": "slow", "delay": 30, "count": 1})
    start = trio.current_time()
    r = await client.post("/sms/create", json=sms())
    assert r.json()["result"]["error"] == 0
    assert trio.current_time() - start >= 30
    start = trio.current_time()
    await client.get("/common/balance")
    assert trio.current_time() - start < 1


async def test_fault_down_in_process_raises_transport_error(client, fake):
    await client.post("/_fake/faults", json={"mode": "down", "count": 1})
    with pytest.raises(httpx.TransportError):
        await client.post("/sms/create", json=sms())
    assert fake.messages() == []
    assert (await client.post("/sms/create", json=sms())).json()["result"]["error"] == 0


@pytest.mark.parametrize("payload", [
    {"mode": "flood"}, {}, {"mode": "5xx", "status": 404}, {"mode": "down", "count": 0},
    {"mode": "slow", "delay": -1}, {"mode": "error", "code": "x"},
])
async def test_bad_fault_requests_are_400(client, payload):
    assert (await client.post("/_fake/faults", json=payload)).status_code == 400
    assert (await client.get("/_fake/faults")).json() == {"fault": None}


async def test_unknown_route_is_404(client):
    assert (await client.get("/sms/nothing/here")).status_code == 404
    assert (await client.post("/email/create", json={})).status_code == 404
    assert (await client.get("/")).status_code == 404


# -- admin ------------------------------------------------------------------------------


async def test_fake_messages_listing_and_reset(client, fake, clock):
    await post(client, "/sms/create", sms(reference="s1"))
    await post(client, "/viber/create", viber([{"msisdn": "380501234501", "reference": "v1"}],
                                              alt_route={"originator": "testsms", "text": "Fallback"}))
    listing = (await client.get("/_fake/messages")).json()
    assert listing["count"] == 2
    s, v = listing["messages"]
    assert s == {"id": "1", "channel": "sms", "reference": "s1", "msisdn": "380501234567",
                 "originator": "testsms", "body": "Hello", "parts": 1, "task_id": None,
                 "fallback_for": None, "status": "new", "price": "0.02", "time": s["time"]}
    assert v["channel"] == "viber" and v["alpha_name"] == "AdvInform" and v["text"] == "Hi there"
    assert v["alt_route"] == {"originator": "testsms", "text": "Fallback"} and v["alt_route_sms_id"] is None
    clock.advance(10)
    assert (await client.get("/_fake/messages")).json()["count"] == 3
    only_viber = (await client.get("/_fake/messages", params={"channel": "viber"})).json()
    assert [m["id"] for m in only_viber["messages"]] == ["2"]
    assert KEY not in str(listing) and KEY not in repr(fake)

    await client.post("/_fake/faults", json={"mode": "5xx"})
    assert (await client.post("/_fake/reset")).json() == {"ok": True}
    assert (await client.get("/_fake/messages")).json() == {"count": 0, "messages": []}
    assert fake.balance == Decimal("100") and fake.fault is None
    # references are free again after a reset
    assert (await post(client, "/sms/create", sms(reference="s1")))["result"]["id"] == "1"


def test_app_keeps_the_fake_on_state():
    fake = FakeBSG()
    assert create_app(fake).state.fake is fake
    assert isinstance(create_app().state.fake, FakeBSG)


# -- real HTTP ----------------------------------------------------------------------------


async def test_serve_over_real_http_and_down_fault():
    fake = FakeBSG(delivery_delay=0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, fake)
        assert port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"X-API-KEY": KEY}) as c:
            body = (await c.post("/sms/create", json=sms())).json()
            assert body["result"]["id"] == "1"
            assert (await c.get("/sms/1")).json()["status"] == "delivered"
            assert (await c.get("/no/such/route")).status_code == 404

            await c.post("/_fake/faults", json={"mode": "down", "count": 2})
            for _ in range(2):
                with pytest.raises(httpx.TransportError):
                    await c.post("/sms/create", json=sms(reference="ref2"))
            assert len(fake.messages()) == 1
            assert (await c.post("/sms/create", json=sms(reference="ref2"))).json()["result"]["id"] == "2"

            await c.post("/_fake/faults", json={"mode": "5xx", "count": 1})
            assert (await c.get("/common/balance")).status_code == 503
            # cancel while the client still holds a keep-alive connection
            nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_slow_request_is_still_processed_after_the_client_gives_up():
    fake = FakeBSG()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, fake)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"X-API-KEY": KEY}) as c:
            await c.post("/_fake/faults", json={"mode": "slow", "delay": 0.3, "count": 1})
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/sms/create", json=sms(), timeout=0.05)
            with trio.fail_after(5):
                while not fake.messages():
                    await trio.sleep(0.02)
            # the retry learns the message was accepted after all
            assert (await c.post("/sms/create", json=sms())).json()["error"] == 23
        nursery.cancel_scope.cancel()


async def test_two_servers_get_different_ports():
    async with trio.open_nursery() as nursery:
        a = await nursery.start(serve, FakeBSG())
        b = await nursery.start(serve, None)
        assert a != b
        async with httpx.AsyncClient() as c:
            for port in (a, b):
                r = await c.get(f"http://127.0.0.1:{port}/common/balance", headers={"X-API-KEY": KEY})
                assert r.json()["amount"] == "100.0000000"
        nursery.cancel_scope.cancel()


def test_main_prints_the_address_and_never_the_key():
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from herald.engine.bsg.fake import main; sys.exit(main(sys.argv[1:]))",
         "--port", "0", "--api-key", KEY, "--delivery-delay", "0", "--balance", "5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(20, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line.startswith("fake BSG listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        r = httpx.get(f"{url}/common/balance", headers={"X-API-KEY": KEY})
        assert r.json()["amount"] == "5.0000000"
        assert httpx.get(f"{url}/common/balance", headers={"X-API-KEY": "other"}).json()["error"] == 1
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert KEY not in line + out + err


def test_main_reports_a_busy_port(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["--port", str(busy.getsockname()[1])]) == 1
    assert "cannot listen" in capsys.readouterr().err
