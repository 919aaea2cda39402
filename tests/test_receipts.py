"""BSG delivery reports (POST /bsg/callback/{secret}): receipts first, polling as the fallback."""

from contextlib import asynccontextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import trio

from herald.engine.bsg.client import Kind, SendResult
from herald.engine.config import load_config
from herald.engine.daemon import Daemon
from herald.engine.delivery.policy import RECEIPT_FALLBACK_POLL
from herald.engine.bsg.fake import FakeBSG, serve
from tests.daemon_helpers import free_port, write_project
from tests.test_daemon import CARD, EVENT, _messages, wait_for

SECRET = "cb-s3cret-7f2a9"
CALLBACK = f"/bsg/callback/{SECRET}"


@asynccontextmanager
async def running(tmp_path: Path, monkeypatch, *, callbacks: bool = True, fake_callbacks: bool = True,
                  extra: str = ""):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HERALD_TEST_CALLBACK_SECRET", SECRET)
    api_port = free_port()
    callback_url = f"http://127.0.0.1:{api_port}{CALLBACK}" if fake_callbacks else None
    fake = FakeBSG(delivery_delay=0.2, callback_url=callback_url)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, fake, "127.0.0.1", 0)
        path = write_project(tmp_path, CARD, port=api_port, bsg_url=f"http://127.0.0.1:{port}", extra=extra)
        if callbacks:
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace("  rate: 1000\n", "  rate: 1000\n  callback_secret: !env "
                                         "HERALD_TEST_CALLBACK_SECRET\n"), encoding="utf-8")
        daemon = Daemon(load_config(path))
        assert daemon.config.bsg.callbacks is callbacks
        url = await nursery.start(daemon.run)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield daemon, client, fake
        nursery.cancel_scope.cancel()


def _events(daemon, kind: str) -> int:
    return daemon.store._execute("SELECT COUNT(*) FROM events WHERE type = ?", (kind,)).fetchone()[0]


def _status_polls(fake: FakeBSG) -> list[dict]:
    return [r for r in fake.requests() if r["method"] == "GET" and "/reference/" in r["path"]]


async def test_sent_message_is_delivered_by_the_receipt_without_a_status_poll(tmp_path, monkeypatch):
    async with running(tmp_path, monkeypatch) as (daemon, client, fake):
        assert (await client.post("/events", json=EVENT)).status_code == 202
        (delivered,) = await wait_for(lambda: _messages(client, "delivered"))
        assert delivered["bsg_status"] == "delivered" and delivered["price"] is not None
        await wait_for(lambda: _async(_events(daemon, "message.delivered") == 1))
        assert _status_polls(fake) == []
        # the fallback poll of a receipt-driven daemon is far away (not 5 s)
        assert RECEIPT_FALLBACK_POLL >= 300

        # BSG repeats the report: nothing changes, no second event
        (sent,) = fake.messages()
        receipt = fake.render(fake._status_json(fake._messages[sent["id"]]))
        before = (await client.get(f"/messages/{delivered['id']}")).json()["message"]
        response = await client.post(CALLBACK, json=[receipt, receipt])
        assert (response.status_code, response.json()) == (200, {"applied": 2, "pending": 0, "unknown": 0})
        after = (await client.get(f"/messages/{delivered['id']}")).json()["message"]
        assert after == before
        await trio.sleep(0.2)
        assert _events(daemon, "message.delivered") == 1


async def test_a_failed_sms_is_failed_by_its_receipt(tmp_path, monkeypatch):
    async with running(tmp_path, monkeypatch) as (daemon, client, fake):
        response = await client.post("/messages", json={"to": "+79001234503", "text": "Test", "channel": "sms",
                                                         "now": True})
        assert response.status_code == 202
        (failed,) = await wait_for(lambda: _messages(client, "failed"))
        assert failed["bsg_status"] == "rejected" and failed["reason"] == "BSG status: rejected"
        await wait_for(lambda: _async(_events(daemon, "message.failed") == 1))
        assert _status_polls(fake) == []


async def test_a_receipt_before_the_send_is_recorded_is_applied_once_it_is(tmp_path, monkeypatch):
    async with running(tmp_path, monkeypatch, fake_callbacks=False) as (daemon, client, fake):
        def create(phone: str):
            return daemon.store.add_message(site="s1", channel="sms", to_phone=phone, state="sending",
                                            send_at=datetime.now(timezone.utc), text="Hi", sender="testsms")
        first, ref = await daemon.db(create, "+79001234567")
        second, _ = await daemon.db(create, "+79001234568")

        # the report races the send's commit: the message is still `sending`
        early = [{"reference": ref, "id": "900", "status": "sent"},
                 {"reference": ref, "id": "900", "status": "delivered", "price": "0.0200000", "currency": "EUR"}]
        response = await client.post(CALLBACK, json=early)
        assert (response.status_code, response.json()) == (200, {"applied": 0, "pending": 2, "unknown": 0})
        # an id-only report whose id no message has yet is kept too
        response = await client.post(CALLBACK, json={"id": "901", "status": "delivered"})
        assert response.json() == {"applied": 0, "pending": 0, "unknown": 1}
        assert daemon.store.message(first)["state"] == "sending"

        rows = await daemon.db(daemon.store.in_state, "sending")
        results = [SendResult(rows[0].reference, Kind.OK, id="900", price=Decimal("0.02"), currency="EUR"),
                   SendResult(rows[1].reference, Kind.OK, id="901", price=Decimal("0.02"), currency="EUR")]
        assert await daemon.db(daemon.dispatcher.sender.apply_results, rows, results, "main") is True
        for message_id in (first, second):
            message = daemon.store.message(message_id)
            assert (message["state"], message["bsg_status"]) == ("delivered", "delivered")
        await wait_for(lambda: _async(_events(daemon, "message.delivered") == 2))

        # the same report once more: counted, changes nothing
        response = await client.post(CALLBACK, json=early[1])
        assert response.json() == {"applied": 1, "pending": 0, "unknown": 0}
        await trio.sleep(0.2)
        assert _events(daemon, "message.delivered") == 2
        left = daemon.store._execute("SELECT COUNT(*) FROM receipts WHERE applied_at IS NULL").fetchone()[0]
        assert left == 0


async def test_a_pending_receipt_only_updates_the_bsg_status(tmp_path, monkeypatch):
    async with running(tmp_path, monkeypatch, fake_callbacks=False) as (daemon, client, fake):
        def create():
            return daemon.store.add_message(site="s1", channel="sms", to_phone="+79001234567", state="sent",
                                            send_at=datetime.now(timezone.utc), text="Hi", sender="testsms")
        message_id, ref = await daemon.db(create)
        before = daemon.store.message(message_id)
        response = await client.post(CALLBACK, json={"reference": ref, "status": "sent"})
        assert response.json() == {"applied": 1, "pending": 0, "unknown": 0}
        after = daemon.store.message(message_id)
        assert (after["state"], after["bsg_status"]) == ("sent", "sent")
        assert {k: v for k, v in after.items() if k not in ("bsg_status", "updated_at")} == \
            {k: v for k, v in before.items() if k not in ("bsg_status", "updated_at")}
        response = await client.post(CALLBACK, json={"reference": "hrnosuchreference", "status": "delivered"})
        assert response.json() == {"applied": 0, "pending": 0, "unknown": 1}


async def test_wrong_secret_is_404_and_bad_bodies_are_400_with_a_pointer(tmp_path, monkeypatch):
    async with running(tmp_path, monkeypatch, fake_callbacks=False, extra="  max_body: 2k\n") as (daemon, client, fake):
        wrong = await client.post("/bsg/callback/guess", json={"reference": "x", "status": "delivered"})
        assert wrong.status_code == 404
        other = await client.post("/bsg/nothing", json={})           # indistinguishable from any unknown path
        assert wrong.json() == {"error": "no such endpoint: POST /bsg/callback/guess"}
        assert other.status_code == 404 and other.json() == {"error": "no such endpoint: POST /bsg/nothing"}
        assert (await client.get(CALLBACK)).status_code == 404
        cases = [
            (b"{not json", ""),
            (b"42", ""),
            (b"[1]", "/0"),
            (b'{"status": "delivered"}', "/reference"),
            (b'[{"reference": "hr1", "status": "delivered"}, {"reference": "hr2"}]', "/1/status"),
            (b'{"reference": ["hr1"], "status": "delivered"}', "/reference"),
            (b'{"reference": "hr1", "status": "delivered", "alt_route": "sms"}', "/alt_route"),
        ]
        for body, pointer in cases:
            response = await client.post(CALLBACK, content=body)
            assert response.status_code == 400, body
            assert response.json()["pointer"] == pointer and response.json()["error"], body
        big = {"reference": "hr1", "status": "delivered", "pad": "x" * 3000}
        assert (await client.post(CALLBACK, json=big)).status_code == 413
        assert daemon.store._execute("SELECT COUNT(*) FROM receipts").fetchone()[0] == 0


async def test_with_callbacks_off_the_endpoint_is_absent_and_polling_delivers(tmp_path, monkeypatch):
    async with running(tmp_path, monkeypatch, callbacks=False, fake_callbacks=False) as (daemon, client, fake):
        response = await client.post(CALLBACK, json={"reference": "hr1", "status": "delivered"})
        assert response.status_code == 404
        assert (await client.post("/events", json=EVENT)).status_code == 202
        await wait_for(lambda: _messages(client, "delivered"))
        assert _status_polls(fake)


def test_fake_posts_each_final_status_once_after_its_fallback_sms():
    now = [0.0]
    fake = FakeBSG(delivery_delay=1.0, clock=lambda: now[0], callback_url="http://127.0.0.1:9/cb")
    body = {"messages": [{"to": [{"msisdn": "79001234501", "reference": "viber1"},
                                 {"msisdn": "79001234567", "reference": "viber2"}],
                          "text": "Hi", "alpha_name": "AdvInform",
                          "options": {"viber": {"alt_route": {"originator": "testsms", "text": "Hi"}}}}]}
    fake.create_viber(body)
    fake.create_sms({"destination": "phone", "msisdn": "79001234505", "originator": "testsms", "body": "x",
                     "reference": "never"})                      # never final: never reported
    assert fake.due_callbacks() == []
    now[0] = 1.0
    (plain,) = fake.due_callbacks()
    assert (plain["reference"], plain["status"]) == ("viber2", "delivered")
    assert fake.due_callbacks() == []
    now[0] = 1.5
    assert fake.due_callbacks() == []                            # its fallback SMS is still on its way
    now[0] = 2.0
    (fallback,) = fake.due_callbacks()
    assert (fallback["reference"], fallback["status"]) == ("viber1", "not_viber_user")
    assert fallback["alt_route"][0]["status"] == "delivered"
    now[0] = 100.0
    assert fake.due_callbacks() == []


def test_no_callback_url_queues_nothing():
    fake = FakeBSG(delivery_delay=0)
    fake.create_sms({"destination": "phone", "msisdn": "79001234567", "originator": "testsms", "body": "x",
                     "reference": "r1"})
    assert fake.due_callbacks() == [] and fake._callbacks == []


async def _async(value):
    return value


def test_config_callback_secret(tmp_path):
    from herald.engine.errors import ConfigError
    from tests.test_config import all_text, errors_of, write

    secret = "cb-VALUE-must-not-leak"
    path = write(tmp_path, "bsg:\n  callback_secret: !env BSG_CALLBACK_SECRET\n")
    on = load_config(str(path), env={"BSG_CALLBACK_SECRET": secret}).bsg
    assert on.callbacks and on.callback_secret.reveal() == secret and secret not in repr(on)
    for env in ({}, {"BSG_CALLBACK_SECRET": ""}):             # unset or empty: callbacks off, no error
        off = load_config(str(path), env=env).bsg
        assert not off.callbacks and off.callback_secret is None
    assert not load_config(str(write(tmp_path, "bsg:\n  rate: 5\n")), env={}).bsg.callbacks
    err = errors_of(write(tmp_path, "bsg:\n  callback_secret: [a, b]\n"))
    assert isinstance(err, ConfigError) and "bsg.callback_secret" in all_text(err)
    assert err.diagnostics[0].location is not None and err.diagnostics[0].location.line == 2
    err = errors_of(write(tmp_path, "bsg:\n  callbak_secret: x\n"))
    assert "callback_secret" in all_text(err)                 # a misspelt key gets a hint
