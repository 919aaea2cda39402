"""The IMAP connector against a real Dovecot (tests/dovecot.py): mail appended while
Herald runs becomes SMS at the fake BSG — once, across restarts of Herald and of
Dovecot, a changed UIDVALIDITY and a burst — and bad mail goes to quarantine."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
import trio

from connectors.imap import ImapConnector
from engine.config import load_config
from engine.daemon import Daemon
from engine.errors import ConfigError
from tests.daemon_helpers import ROOT, fake_bsg, free_port, herald, start_daemon, wait_http, write_project
from tests.dovecot import bitrix_mail, dovecot  # noqa: F401 (fixture)

TO_ADMIN = 'on mail.SALE_NEW_ORDER send sms to "+79001112233" text "#MAIL_SUBJECT#"\n'


def imap_block(server, **extra) -> str:
    options = {"host": "127.0.0.1", "port": server.port, "security": "none", "user": server.user,
               "password": server.password, **extra}
    return "connectors:\n  - type: imap\n    name: mailbox\n" + "".join(
        f"    {k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in options.items())


async def until(predicate, timeout: float = 10.0):
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await trio.sleep(0.02)


async def journal(daemon: Daemon, source: str = "mailbox") -> list[dict]:
    def read():
        rows = daemon.store._conn.execute(
            "SELECT id, type, data FROM events WHERE source = ? ORDER BY seq", (source,)).fetchall()
        return [{"id": r[0], "type": r[1], "data": json.loads(r[2])} for r in rows]
    return await daemon.db(read)


def texts(fake) -> list[str]:
    return [m.get("body") or m.get("text") for m in fake.messages()]


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(ImapConnector, "BACKOFF_MIN", 0.05)
    monkeypatch.setattr(ImapConnector, "BACKOFF_MAX", 0.3)


async def append(server, *mails: bytes, folder: str = "INBOX") -> None:
    await trio.to_thread.run_sync(lambda: server.append(*mails, folder=folder))


# ====================================================================== arriving mail

async def test_an_appended_mail_is_pushed_by_idle_to_the_user_of_its_recipient(dovecot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "people.yaml").write_text(
        'users:\n  - {id: 17, email: ivan@example.com, PERSONAL_MOBILE: "8 912 345-67-89"}\n')
    rule = 'on mail.SALE_NEW_ORDER send sms to user MAIL_TO text "Спасибо! #MAIL_SUBJECT#: #MAIL_TEXT#"\n'
    await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="before the start"))      # start: end
    async with fake_bsg() as (fake, bsg_url):
        # interval 3600: only IDLE can bring the mail in within the test's time
        config = write_project(tmp_path, rule, port=free_port(), bsg_url=bsg_url,
                               extra=imap_block(dovecot, interval=3600) + "directory:\n  file: people.yaml\n")
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            sent = time.monotonic()
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="Новый заказ N7",
                                              text="Ваш заказ номер 7 принят.\n\n-- \nМагазин Modern Clothes"))
            await until(lambda: fake.messages())
            print(f"IDLE: appended → at the fake BSG in {time.monotonic() - sent:.3f}s")
            await trio.sleep(0.3)
            assert [(m["msisdn"], m["body"]) for m in fake.messages()] == [
                ("79123456789", "Спасибо! Новый заказ N7: Ваш заказ номер 7 принят.")]
            health = (await client.get("/health")).json()["connectors"]["mailbox"]
            assert health["alive"] and "IDLE" in health["detail"] and "1 event(s)" in health["detail"]
    flags = await trio.to_thread.run_sync(dovecot.flags)
    assert [b"\\Seen" in f for f in flags] == [False, True]          # the old mail untouched, ours flagged


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_polling_over_tls_moves_processed_mail_and_a_second_copy_is_not_sent_again(
        security, dovecot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = dovecot.tls_port if security == "tls" else dovecot.port
    block = imap_block(dovecot, security=security, port=port, ca_file=str(dovecot.cert), idle=False,
                       interval=0.1, move_to="Done", start="beginning")
    await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="waiting", message_id="<a@shop>"))
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, TO_ADMIN, port=free_port(), bsg_url=bsg_url, extra=block)
        async with herald(config) as (daemon, client):
            await until(lambda: texts(fake) == ["waiting"])           # start: beginning takes it
            health = (await client.get("/health")).json()["connectors"]["mailbox"]
            assert "polling every 0.1s" in health["detail"]
            # the same mail again (a BCC and a forward of one mail): one event, no second SMS
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="waiting", message_id="<a@shop>"),
                         bitrix_mail("SALE_NEW_ORDER", subject="second", message_id="<b@shop>"))
            await until(lambda: len(texts(fake)) == 2)
            await until(lambda: len(dovecot.folder("Done")) == 3)
            await trio.sleep(0.3)
            assert texts(fake) == ["waiting", "second"]
            assert [e["id"] for e in await journal(daemon)] == [
                "imap:mailbox:" + h for h in (_digest("a@shop"), _digest("b@shop"))]
    assert dovecot.folder("INBOX") == []


def _digest(message_id: str) -> str:
    from connectors.mail import mail_digest
    return mail_digest(b"", message_id)


async def test_a_burst_of_1000_mails_is_processed_exactly_once(dovecot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    total = 1000
    mails = [bitrix_mail("SALE_NEW_ORDER", subject=f"order {i}", message_id=f"<burst-{i}@shop>")
             for i in range(total)]
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, TO_ADMIN, port=free_port(), bsg_url=bsg_url, extra=imap_block(dovecot))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            await append(dovecot, *mails)
            await until(lambda: len(fake.messages()) >= total, timeout=60)
            await trio.sleep(0.5)
            counts = Counter(texts(fake))
            assert len(counts) == total and max(counts.values()) == 1
            assert len(await journal(daemon)) == total
    assert all(b"\\Seen" in f for f in dovecot.flags())


# ====================================================================== restarts

def test_herald_killed_mid_stream_loses_and_repeats_no_mail(dovecot, tmp_path):
    """SIGKILL `herald run` three times while 300 mails arrive: each is one SMS."""
    total, bsg_port, api_port = 300, free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "engine.cli", "fake-bsg", "--port", str(bsg_port),
                             "--delivery-delay", "0.1"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    bsg = f"http://127.0.0.1:{bsg_port}"
    try:
        wait_http(f"{bsg}/_fake/messages")
        config = write_project(tmp_path, TO_ADMIN, port=api_port, bsg_url=bsg,
                               extra=imap_block(dovecot, batch=20, start="beginning"))
        mails = [bitrix_mail("SALE_NEW_ORDER", subject=f"order {i}", message_id=f"<kill-{i}@shop>")
                 for i in range(total)]
        dovecot.append(*mails[:100])
        for r, delay in enumerate((0.3, 0.6, 0.2)):
            proc = start_daemon(config)
            try:
                wait_http(f"http://127.0.0.1:{api_port}/health")
                dovecot.append(*mails[100 + 50 * r:150 + 50 * r])
                time.sleep(delay)
                proc.kill()                                   # SIGKILL: no chance to clean up
                proc.wait(timeout=10)
            finally:
                proc.kill()
        dovecot.append(*mails[250:])
        proc = start_daemon(config)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                sent = httpx.get(f"{bsg}/_fake/messages").json()["messages"]
                if len(sent) >= total:
                    break
                time.sleep(0.2)
            time.sleep(0.5)
        finally:
            proc.kill()
            proc.wait(timeout=10)
        sent = httpx.get(f"{bsg}/_fake/messages").json()["messages"]
        counts = Counter(m["body"] for m in sent)
        assert len(counts) == total, f"{total - len(counts)} mail(s) lost"
        assert max(counts.values()) == 1, [t for t, n in counts.items() if n > 1][:5]
        assert all(b"\\Seen" in f for f in dovecot.flags())
    finally:
        fake.kill()


async def test_dovecot_restarted_and_stopped_for_a_while(dovecot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = TO_ADMIN + ('on connector.down send sms to "+79005550000" text "down: #CONNECTOR_NAME#"\n'
                        'on connector.up send sms to "+79005550000" text "up: #CONNECTOR_NAME#"\n')
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, rules, port=free_port(), bsg_url=bsg_url,
                               extra=imap_block(dovecot, silence=0.5, timeout=2))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="one"))
            await until(lambda: texts(fake) == ["one"])
            await trio.to_thread.run_sync(dovecot.restart)              # the IDLE connection breaks
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="two"))
            await until(lambda: "two" in texts(fake))
            await trio.to_thread.run_sync(dovecot.stop)                 # away for longer than silence
            await until(lambda: not daemon.connectors["mailbox"].alive)
            health = (await client.get("/health")).json()["connectors"]["mailbox"]
            assert not health["alive"] and "127.0.0.1" in health["detail"]
            assert dovecot.password not in health["detail"]
            await until(lambda: "down: mailbox" in texts(fake))
            await trio.to_thread.run_sync(dovecot.start)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="three"))
            await until(lambda: "three" in texts(fake) and "up: mailbox" in texts(fake))
            await trio.sleep(0.3)
            mails = [t for t in texts(fake) if not t.startswith(("down:", "up:"))]
            assert mails == ["one", "two", "three"]
            # one down and one up per outage (the restart may have been one too: silence is 0.5 s)
            outages = Counter(t for t in texts(fake) if t not in mails)
            assert outages["down: mailbox"] == outages["up: mailbox"] in (1, 2)
            assert daemon.connectors["mailbox"].alive


async def test_a_changed_uidvalidity_reads_the_folder_again_without_sending_twice(dovecot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, TO_ADMIN, port=free_port(), bsg_url=bsg_url, extra=imap_block(dovecot))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="one"),
                         bitrix_mail("SALE_NEW_ORDER", subject="two"))
            await until(lambda: len(texts(fake)) == 2)

            def rebuild():                       # the server rebuilt the folder: flags lost, new UIDVALIDITY
                c = dovecot.client()
                c.select_folder("INBOX")
                c.remove_flags(c.search(["ALL"]), [b"\\Seen"])
                c.logout()
                dovecot.set_uidvalidity(4242)
            await trio.to_thread.run_sync(rebuild)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="three"))
            await until(lambda: len(texts(fake)) == 3)
            await until(lambda: all(b"\\Seen" in f for f in dovecot.flags()))
            await trio.sleep(0.3)
            assert texts(fake) == ["one", "two", "three"]
            cursor = await daemon.db(daemon.store.get_cursor, "mailbox", "position")
            assert json.loads(cursor)["uidvalidity"] == 4242


# ====================================================================== bad mail

async def test_bad_mail_is_quarantined_with_its_reason_and_the_mailbox_goes_on(dovecot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = TO_ADMIN + 'on mail.rejected send sms to "+79005550000" text "rejected: #MAIL_REASON#"\n'
    big = bitrix_mail("SALE_NEW_ORDER", subject="big", text="x" * 30_000)
    no_name = b"From: someone@example.com\r\nSubject: hello\r\nMessage-ID: <n@x>\r\n\r\nJust a letter.\r\n"
    bogus = (b"From: shop@example.com\r\nSubject: charset\r\nX-EVENT_NAME: SALE_NEW_ORDER\r\n"
             b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n\xc0\xc1\r\n")
    garbage = b"\x00\x01\x02 this is not a mail at all"
    bad_name = b"From: shop@example.com\r\nSubject: x\r\nX-EVENT_NAME: SALE NEW-ORDER\r\n\r\nbody\r\n"
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, rules, port=free_port(), bsg_url=bsg_url,
                               extra=imap_block(dovecot, max_size="20 KiB"))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            await append(dovecot, big, no_name, bogus, garbage, bad_name,
                         bitrix_mail("SALE_NEW_ORDER", subject="good"))
            await until(lambda: len(texts(fake)) == 6)
            await trio.sleep(0.3)
            rejected = [e["data"] for e in await journal(daemon) if e["type"] == "mail.rejected"]
            assert [d["MAIL_REASON"] for d in rejected] == [
                "oversize", "no match", "unknown charset", "unparseable", "bad event name"]
            assert rejected[1]["MAIL_SUBJECT"] == "hello" and "no X-EVENT_NAME header" in rejected[1]["MAIL_ERROR"]
            assert "x-no-such-charset" in rejected[2]["MAIL_ERROR"]
            assert all(d["MAIL_QUARANTINE"] == "Quarantine" for d in rejected)
            assert "good" in texts(fake)
            assert "1 event(s)" in daemon.connectors["mailbox"].detail
            assert "5 rejected" in daemon.connectors["mailbox"].detail
    assert len(dovecot.folder("Quarantine")) == 5
    assert len(dovecot.folder("INBOX")) == 1


# ====================================================================== options

def entry(tmp_path, block: str):
    (tmp_path / "herald.yaml").write_text("connectors:\n  - type: imap\n" + block, encoding="utf-8")
    return load_config(tmp_path / "herald.yaml").connectors[0]


def test_options_are_checked_and_located_all_at_once(tmp_path):
    block = ("    host: mail.example.com\n    security: none\n    user: u\n    password: p\n"
             "    intervall: 5\n    flag: \\Seen\n    move_to: Done\n"
             "    extract:\n      - {subject: \"N(\\\\d+)\"}\n      - {text: \"(?P<A>\"}\n"
             "    match:\n      - {event: X, sender: a}\n")
    with pytest.raises(ConfigError) as caught:
        ImapConnector(entry(tmp_path, block))
    text = caught.value.format()
    assert 'herald.yaml:7:5: error: imap connector: unknown option "intervall"' in text
    assert 'did you mean "interval"?' in text
    assert ":4:15: error: imap connector: security: none would send the password in clear text" in text
    assert "flag and move_to: give one" in text
    assert "extract[0].subject: the regex has no named group" in text and ":11:19:" in text
    assert "extract[1].text: not a valid regular expression" in text
    assert 'match[0]: unknown key "sender"' in text and "match[0]: give at least one of from, to" in text


def test_the_password_is_required_and_never_echoed(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAP_PASSWORD", "")
    with pytest.raises(ConfigError) as caught:
        ImapConnector(entry(tmp_path, "    host: h\n    user: u\n    password: !env IMAP_PASSWORD\n"
                                      "    port: 99999\n"))
    text = caught.value.format()
    assert "password: expected text, got a value from !env/!secret" in text and "port:" in text
    connector = ImapConnector(entry(tmp_path, "    host: h\n    user: u\n    password: Very-Secret-1\n"))
    assert connector.port == 993 and connector.security == "tls" and connector.flag == "\\Seen"
    assert "Very-Secret-1" not in connector._describe(RuntimeError("LOGIN Very-Secret-1 failed"))


def test_the_documented_configs_load_and_their_rules_compile(tmp_path, monkeypatch):
    from grammar.compiler import compile_text
    from tests.test_docs import fenced_blocks
    monkeypatch.setenv("IMAP_PASSWORD", "x-secret")
    monkeypatch.setenv("SHOP_MAIL_PASSWORD", "x-secret")
    blocks = fenced_blocks(ROOT / "docs" / "connectors" / "imap.md")
    configs = [b for b in blocks if b.lang == "yaml"]
    assert len(configs) == 2
    for block in configs:
        (tmp_path / "herald.yaml").write_text(block.text, encoding="utf-8")
        connector = ImapConnector(load_config(tmp_path / "herald.yaml").connectors[0])
        assert connector.mapping.extractors, block.where
    rules = [b for b in blocks if b.lang == "rules"]
    assert len(rules) == 4
    for block in rules:
        compiled = compile_text(block.text, block.where)
        assert compiled.rules and not [d for d in compiled.diagnostics if d.severity == "error"], block.where
