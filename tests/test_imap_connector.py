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

from herald.connectors.imap import ImapConnector
from herald.engine.config import load_config
from herald.engine.daemon import Daemon
from herald.engine.errors import ConfigError
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


def idle_pipeline(daemon: Daemon) -> bool:
    """Every journaled event processed and no message queued or being sent."""
    store = daemon.store
    return not (store.pending_events(1) or store.in_state("queued", 1) or store.in_state("sending", 1))


async def settled(daemon: Daemon) -> None:
    """Wait until what the journal holds has all reached the fake BSG (a condition, not a
    guessed sleep): a check that nothing more is sent is then final for that journal."""
    await until(lambda: idle_pipeline(daemon), timeout=30)


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
            await settled(daemon)
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
            await settled(daemon)
            assert texts(fake) == ["waiting", "second"]
            assert [e["id"] for e in await journal(daemon)] == [
                "imap:mailbox:" + h for h in (_digest("a@shop"), _digest("b@shop"))]
    assert dovecot.folder("INBOX") == []


def _digest(message_id: str) -> str:
    from herald.connectors.mail import mail_digest
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
            await settled(daemon)
            counts = Counter(texts(fake))
            assert len(counts) == total and max(counts.values()) == 1
            assert len(await journal(daemon)) == total
    assert all(b"\\Seen" in f for f in dovecot.flags())


# ====================================================================== restarts

def test_herald_killed_mid_stream_loses_and_repeats_no_mail(dovecot, tmp_path):
    """SIGKILL `herald run` three times while 300 mails arrive: each is one SMS."""
    total, bsg_port, api_port = 300, free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "herald.engine.cli.main", "fake-bsg", "--port", str(bsg_port),
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
                               extra=imap_block(dovecot, silence=5, timeout=1))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="one"))
            await until(lambda: texts(fake) == ["one"])
            # a quiet IDLE, longer than silence: still healthy (silence leaves a loaded CI
            # machine room to restart Dovecot within it)
            await trio.sleep(5.5)
            await trio.to_thread.run_sync(dovecot.restart)              # the IDLE connection breaks
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="two"))
            await until(lambda: "two" in texts(fake))
            await trio.to_thread.run_sync(dovecot.stop)                 # away for longer than silence
            await until(lambda: not daemon.connectors["mailbox"].alive)
            health = (await client.get("/health")).json()["connectors"]["mailbox"]
            assert not health["alive"] and "127.0.0.1" in health["detail"]
            assert dovecot.password not in health["detail"]
            await until(lambda: "down: mailbox" in texts(fake), timeout=30)
            await trio.to_thread.run_sync(dovecot.start)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="three"))
            await until(lambda: "three" in texts(fake) and "up: mailbox" in texts(fake))
            await settled(daemon)
            mails = [t for t in texts(fake) if not t.startswith(("down:", "up:"))]
            assert mails == ["one", "two", "three"]
            # the restart was over within silence: the stop is the only outage
            outages = Counter(t for t in texts(fake) if t not in mails)
            assert outages == {"down: mailbox": 1, "up: mailbox": 1}
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
            await until(lambda: b"\\Seen" in dovecot.flags()[-1])
            await settled(daemon)
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
            await settled(daemon)
            rejected = [e["data"] for e in await journal(daemon) if e["type"] == "mail.rejected"]
            assert [d["MAIL_REASON"] for d in rejected] == [
                "oversize", "no match", "unknown charset", "unparseable", "bad event name"]
            # an oversize mail's record has what its headers say (mail_rejected_admin uses them)
            assert rejected[0]["MAIL_SUBJECT"] == "big" and rejected[0]["MAIL_FROM"] == "shop@example.com"
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


def _load_block(tmp_path, text: str):
    (tmp_path / "herald.yaml").write_text(text, encoding="utf-8")
    return load_config(tmp_path / "herald.yaml").connectors[0]


def test_the_documented_configs_load_and_their_rules_compile(tmp_path, monkeypatch):
    from herald.grammar.compiler import compile_text
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
    # the Bitrix example's event: what its extractors really give on the mail it describes
    connector = ImapConnector(_load_block(tmp_path, configs[0].text))
    documented = json.loads(next(b for b in blocks if b.lang == "json").text)
    raw = bitrix_mail("SALE_NEW_ORDER", subject="Modern Clothes: Новый заказ N1024",
                      text="Уважаемый Иван Петров,\n\nВаш заказ номер 1024 от 19.05.2024 принят.\n\n"
                           "Стоимость заказа: 4 590 руб.\n\nВы можете следить за выполнением своего заказа.")
    data = connector.mapping.event(raw, id_prefix="imap:bitrix-mail:")["data"]
    assert {k: data.get(k) for k in ("ORDER_ID", "PRICE")} == \
        {k: documented["data"][k] for k in ("ORDER_ID", "PRICE")}
    rules = [b for b in blocks if b.lang == "rules"]
    assert len(rules) == 4
    for block in rules:
        compiled = compile_text(block.text, block.where)
        assert compiled.rules and not [d for d in compiled.diagnostics if d.severity == "error"], block.where


# ====================================================================== review findings (issue 5)

def two_sites(tmp_path, config_path):
    """A second site s2 in a written project's herald.yaml."""
    text = config_path.read_text(encoding="utf-8")
    return text.replace("sites:\n", "sites:\n  s2:\n    name: Outlet\n    admins: [\"+79001112299\"]\n", 1)


def test_a_mistyped_site_or_a_bad_flag_is_reported_by_herald_check(tmp_path):
    from herald.engine.errors import LoadError
    from herald.engine.rules.loader import load_project
    options = 'host: 127.0.0.1, security: none, user: u, password: p'
    for extra, expected in (("site: s9", ['site: unknown site "s9"', "sites: s1"]),
                            ("site: S1", ['site: unknown site "S1"', 'did you mean "s1"?']),
                            ('flag: "Herald Done"', ['flag: "Herald Done" is neither an IMAP system flag']),
                            ('flag: "\\\\Sen"', ['flag: "\\Sen" is not an IMAP system flag', '"\\Seen"'])):
        config = write_project(tmp_path, TO_ADMIN, port=free_port(),
                               extra=f"connectors:\n  - {{type: imap, name: mailbox, {options}, {extra}}}\n")
        with pytest.raises(LoadError) as caught:
            load_project(load_config(config))
        text = "\n".join(d.format() if hasattr(d, "format") else str(d) for d in caught.value.diagnostics)
        assert "herald.yaml:" in text and all(e in text for e in expected), text
    for flag in ("$Herald", "\\\\Flagged", "\\\\deleted"):
        config = write_project(tmp_path, TO_ADMIN, port=free_port(),
                               extra=f'connectors:\n  - {{type: imap, name: mailbox, {options}, flag: "{flag}"}}\n')
        load_project(load_config(config))


def test_start_from_env_is_read_like_the_other_options(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAP_START", "beginning")
    connector = ImapConnector(entry(tmp_path, "    host: h\n    user: u\n    password: p\n"
                                              "    start: !env IMAP_START\n"))
    assert connector.start == "beginning"


async def test_mail_already_marked_read_by_someone_else_is_processed(dovecot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, TO_ADMIN, port=free_port(), bsg_url=bsg_url,
                               extra=imap_block(dovecot, idle=False, interval=0.2))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)

            def add_seen():
                c = dovecot.client()
                c.append("INBOX", bitrix_mail("SALE_NEW_ORDER", subject="read by a human"), flags=[b"\\Seen"])
                c.append("INBOX", bitrix_mail("SALE_NEW_ORDER", subject="unread"))
                c.logout()
            await trio.to_thread.run_sync(add_seen)
            await until(lambda: len(texts(fake)) == 2)
            assert sorted(texts(fake)) == ["read by a human", "unread"]


async def test_a_changed_uidvalidity_never_resends_mail_left_alone_at_the_first_start(
        dovecot, tmp_path, monkeypatch):
    """start: end leaves three old mails alone; after the server rebuilt the folder
    (new UIDVALIDITY, flags lost) only mail that arrived since is sent."""
    monkeypatch.chdir(tmp_path)
    from datetime import datetime, timedelta, timezone

    def append_old():
        c = dovecot.client()
        for i in range(3):        # delivered yesterday, as mail waiting in a real mailbox was
            c.append("INBOX", bitrix_mail("SALE_NEW_ORDER", subject=f"old {i}"),
                     msg_time=datetime.now(timezone.utc) - timedelta(days=1, minutes=i))
        c.logout()
    await trio.to_thread.run_sync(append_old)
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, TO_ADMIN, port=free_port(), bsg_url=bsg_url, extra=imap_block(dovecot))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="new"))
            await until(lambda: texts(fake) == ["new"])

            def rebuild():
                c = dovecot.client()
                c.select_folder("INBOX")
                c.remove_flags(c.search(["ALL"]), [b"\\Seen"])
                c.logout()
                dovecot.set_uidvalidity(4242)
            await trio.to_thread.run_sync(rebuild)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="after"))
            await until(lambda: "after" in texts(fake))
            await settled(daemon)
            assert texts(fake) == ["new", "after"]


async def test_a_blip_after_a_quiet_idle_is_no_outage(dovecot, tmp_path, monkeypatch):
    """IDLE waiting quietly for longer than `silence` is healthy: a restart of the server
    that is over within `silence` journals no connector.down."""
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, TO_ADMIN, port=free_port(), bsg_url=bsg_url,
                               extra=imap_block(dovecot, silence=5, timeout=5))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            await trio.sleep(6)                                   # quiet, longer than silence
            await trio.to_thread.run_sync(dovecot.restart)       # about a second (room on a loaded machine)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="after the blip"))
            await until(lambda: "after the blip" in texts(fake))
            # an outage would be journaled (connector.down) before the round that brought
            # this mail succeeded; once that success marked the connector alive again the
            # watchdog has nothing left to report — no need to sit out `silence` once more
            await until(lambda: daemon.connectors["mailbox"].alive)
            await settled(daemon)
            assert [e["type"] for e in await journal(daemon)] == ["mail.SALE_NEW_ORDER"]


async def test_a_frozen_server_during_idle_is_noticed_and_reported(dovecot, tmp_path, monkeypatch):
    """SIGSTOP on Dovecot: no FIN, no RST — only the IDLE renewal finds it."""
    import os
    import signal
    monkeypatch.chdir(tmp_path)
    rules = TO_ADMIN + ('on connector.down send sms to "+79005550000" text "down: #CONNECTOR_NAME#"\n'
                        'on connector.up send sms to "+79005550000" text "up: #CONNECTOR_NAME#"\n')
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, rules, port=free_port(), bsg_url=bsg_url,
                               extra=imap_block(dovecot, silence=1, timeout=1))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            await trio.sleep(0.5)
            group = dovecot.process.pid
            os.killpg(group, signal.SIGSTOP)
            try:
                await until(lambda: "down: mailbox" in texts(fake), timeout=15)
                assert not daemon.connectors["mailbox"].alive
            finally:
                os.killpg(group, signal.SIGCONT)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="thawed"))
            await until(lambda: "thawed" in texts(fake) and "up: mailbox" in texts(fake), timeout=15)


async def test_a_failed_acknowledgement_blocks_nothing_and_the_next_session_completes_it(
        dovecot, tmp_path, monkeypatch):
    """The journal has the event but the mail cannot be moved (its folder was deleted
    under Herald: NO [TRYCREATE]) — the state a crash between commit and acknowledge
    leaves. New mail still goes out; the next session moves the leftovers, sending
    nothing twice."""
    monkeypatch.chdir(tmp_path)
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, TO_ADMIN, port=free_port(), bsg_url=bsg_url,
                               extra=imap_block(dovecot, move_to="Done"))
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)

            def delete_done():
                c = dovecot.client()
                c.delete_folder("Done")
                c.logout()
            await trio.to_thread.run_sync(delete_done)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="one"))
            await until(lambda: texts(fake) == ["one"])
            await until(lambda: "could not acknowledge" in daemon.connectors["mailbox"].detail)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="two"))
            await until(lambda: texts(fake) == ["one", "two"])
            assert len(dovecot.folder("INBOX")) == 2 and dovecot.folder("Done") == []
        async with herald(config) as (daemon, client):                  # the next session
            await until(lambda: len(dovecot.folder("Done")) == 2)
            await settled(daemon)
            assert texts(fake) == ["one", "two"]
            assert len(await journal(daemon)) == 2
            assert "could not acknowledge" not in daemon.connectors["mailbox"].detail
    assert dovecot.folder("INBOX") == []


async def test_an_event_refused_by_herald_is_quarantined_and_never_blocks_the_mailbox(
        dovecot, tmp_path, monkeypatch):
    """A reload removed the connector's site (connectors keep their options until a
    restart): Herald refuses its events — good mail and the rejection records of bad
    mail alike. Each such mail is journaled as mail.rejected (refused) without the site
    and quarantined; the mailbox goes on."""
    monkeypatch.chdir(tmp_path)
    rules = TO_ADMIN + 'on mail.rejected send sms to "+79005550000" text "rejected: #MAIL_REASON#"\n'
    async with fake_bsg() as (fake, bsg_url):
        config = write_project(tmp_path, rules, port=free_port(), bsg_url=bsg_url,
                               extra=imap_block(dovecot, site="s2"))
        with_s2 = two_sites(tmp_path, config)
        config.write_text(with_s2, encoding="utf-8")
        async with herald(config) as (daemon, client):
            await until(lambda: daemon.connectors["mailbox"].alive)
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="on s2"))
            await until(lambda: texts(fake) == ["on s2"])
            config.write_text(with_s2.replace("  s2:\n    name: Outlet\n    admins: [\"+79001112299\"]\n", "")
                              .replace('site: "s2"', 'site: "s1"'), encoding="utf-8")
            assert (await daemon.reload())[0]
            await append(dovecot, bitrix_mail("SALE_NEW_ORDER", subject="refused"),
                         b"From: a@example.com\r\nSubject: no name\r\n\r\nhi\r\n",
                         bitrix_mail("SALE_NEW_ORDER", subject="also refused"))
            await until(lambda: len(texts(fake)) == 4)
            rejected = [e for e in await journal(daemon) if e["type"] == "mail.rejected"]
            assert [e["data"]["MAIL_REASON"] for e in rejected] == ["refused", "no match", "refused"]
            assert "unknown site" in rejected[0]["data"]["MAIL_ERROR"]
            assert rejected[0]["data"]["MAIL_SUBJECT"] == "refused"
            assert daemon.connectors["mailbox"].alive
    assert len(dovecot.folder("Quarantine")) == 3 and dovecot.folder("INBOX") != []

