"""Fuzz config loading (issue #12 (c)): mutated YAML gives a Config or located errors
(`ConfigError`, every diagnostic with FILE:LINE:COL), never another exception.

Seeds are the shipped herald.yaml, tests/conftest.py's BASE_CONFIG and a config using every
section; mutations change values, types, keys, nesting and indentation, and add anchors,
aliases, merge keys, a billion-laughs alias bomb, deep nesting, huge numbers, YAML tags and
(lone) surrogates, both escaped in the YAML and raw in the file's bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from herald.engine.config import Config, load_config
from herald.engine.errors import ConfigError
from tests.conftest import BASE_CONFIG
from tests.fuzz import fuzz

ROOT = Path(__file__).resolve().parent.parent

FULL = """
store: var/herald.db
timezone: Europe/Moscow
defaults: &site
  timezone: Asia/Yekaterinburg
  channel: omni
bsg:
  url: https://api.bsg.world/rest
  api_key: !env BSG_API_KEY
  rate: 20
  timeout: 10s
  callback_secret: !secret callback
  backup:
    - url: https://backup.example/rest
      api_key: !secret backup_key
  failover: {window: 60s, failures: 3, ratio: 0.5, probe: 30s, slow_receipts: 10m}
  balance_alert: 100
  balance_every: 15m
senders:
  sms: [testsms, Shop]
  viber: [AdvInform]
sites:
  s1:
    <<: *site
    name: Modern Clothes
    send_window: "09:00-21:00"
    admins: ["+79001234567"]
    omni_deadline: 10m
    api_key: plain-site-key
  s2: *site
http:
  listen: 0.0.0.0:8780
  tokens: [!env HERALD_TOKEN, plain-token]
  max_body: 1 MiB
smtp: {host: 127.0.0.1, port: 25, from: herald@example.com, username: u, password: !secret smtp_pass, starttls: true}
directory: {bitrix: "mysql+pymysql://user:pw@127.0.0.1/sitemanager", ttl: 300, groups: {ops: 1}}
bitrix24: {application_token: !env B24_TOKEN, site: s1, rest_url: "https://portal.bitrix24.ru/rest/1/abc/"}
subscriptions: {lists: {news: Новости}, countries: [7], per_ip: 5/h, per_phone: 3/h}
connectors:
  - type: sql
    name: shop
    url: mysql+pymysql://herald:secret@127.0.0.1/shop
    interval: 5
    sources: [{name: orders, table: b_sale_order, key: ID, cursor: ID, event: order.created, map: {order.id: ID}}]
  - {type: imap, host: mail.example.com, user: u, password: !env IMAP_PASSWORD, site: s1}
"""

SEEDS = [(ROOT / "herald.yaml").read_text(encoding="utf-8"), BASE_CONFIG, FULL]
ENV = {"BSG_API_KEY": "k" * 20, "HERALD_TOKEN": "t0ken", "B24_TOKEN": "b24", "IMAP_PASSWORD": "pw",
       "WEIRD": "bad\udcff", "NUMBER": "42", "EMPTY": ""}
SECRETS = 'callback: "cb-secret"\nbackup_key: "bk"\nsmtp_pass: 12345\nlist: [1, 2]\n'

LAUGHS = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
VALUES = st.one_of(
    st.sampled_from([
        "", "~", "null", "true", "no", "on", "0", "-1", "1e999", ".nan", ".inf", "-.inf", "0x1F", "0o17", "1_000",
        "12:30:00", "2001-02-30", "2026-12-03T10:00:00Z", "99999999999999999999h", "0s", "10m", "1 MiB", "5/h",
        '"\\ud800"', '"a\\x00b"', '"\\U0010FFFF"', "!env BSG_API_KEY", "!env UNSET", "!env WEIRD", "!env NUMBER",
        "!env EMPTY", "!env", "!secret callback", "!secret missing", "!secret smtp_pass", "!secret list", "!secrte x",
        "!!float x", "!!int x", "!!binary AAAA", "!!set {a, b}", "!!omap [a: 1]", "!!timestamp 2001-02-30",
        "!!python/object:os.system x", "!!str 1", "[]", "{}", "[a, b]", "{a: 1}", "[[1], {b: [2]}]", "*site", "*nope",
        "&x 1", "mysql://u:p@h/db", "http://[::1", "'single'", "|\n  block\n", ">-\n  folded\n", "? [1, [2]]",
    ]),
    st.integers().map(str),
    st.integers(1, 5000).map(lambda n: "9" * n),
    st.floats().map(repr),
    st.integers(1, 80).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 80).map(lambda n: "{a: " * n + "1" + "}" * n),
    st.text(st.one_of(st.characters(), SURROGATE), max_size=10).map(lambda t: '"' + t.replace("\\", "\\\\").replace(
        '"', '\\"') + '"'),
    st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=10),
)
KEYS = st.one_of(
    st.sampled_from(["store", "rules", "bsg", "sites", "s1", "s3", "url", "api_key", "rate", "timeout", "backup",
                     "tokens", "listen", "max_body", "connectors", "type", "password", "name", "admins",
                     "send_window", "timezone", "<<", "? [a]", "1", "true", "null", "directory", "smtp", "failover",
                     "subscriptions", "lists", "per_ip", "bitrix24", "&k key", "*site"]),
    st.text(st.characters(codec="utf-8", exclude_characters=":\n\r#"), min_size=1, max_size=8),
)


@st.composite
def mutated(draw) -> tuple[str, bool]:
    """A seed config with a few line- and value-level mutations; and whether to write it raw
    (lone surrogates as bytes: the file is then not UTF-8)."""
    lines = draw(st.sampled_from(SEEDS)).split("\n")
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["value", "value", "key", "insert", "delete", "duplicate", "indent", "dedent",
                                   "char", "laughs", "anchor", "alias"]))
        at = draw(st.integers(0, max(len(lines) - 1, 0)))
        line = lines[at] if lines else ""
        if op == "value" and ":" in line:
            head = line.split(":", 1)[0]
            lines[at] = f"{head}: {draw(VALUES)}"
        elif op == "key" and ":" in line:
            indent = line[: len(line) - len(line.lstrip())]
            lines[at] = f"{indent}{draw(KEYS)}:{line.split(':', 1)[1]}"
        elif op == "insert":
            indent = line[: len(line) - len(line.lstrip())] if draw(st.booleans()) else ""
            lines.insert(at, f"{indent}{draw(KEYS)}: {draw(VALUES)}")
        elif op == "delete" and lines:
            del lines[at:at + draw(st.integers(1, 3))]
        elif op == "duplicate" and lines:
            lines[at:at] = lines[at:at + draw(st.integers(1, 4))]
        elif op == "indent":
            lines[at] = " " * draw(st.integers(1, 4)) + line
        elif op == "dedent":
            lines[at] = line.lstrip()
        elif op == "char":
            i = draw(st.integers(0, len(line)))
            lines[at] = line[:i] + draw(st.one_of(st.characters(), SURROGATE, st.sampled_from(":-[]{}&*!|>'\"#%@`\t"))) \
                + line[i + 1:]
        elif op == "laughs":
            lines[0:0] = LAUGHS.split("\n")
            lines.append(f"sites: {{s1: {{admins: *l{draw(st.integers(0, 8))}}}}}")
        elif op == "anchor" and ":" in line and not line.rstrip().endswith(":"):
            head, tail = line.split(":", 1)
            lines[at] = f"{head}: &a{draw(st.integers(0, 2))} {tail.strip()}"
        elif op == "alias" and ":" in line:
            lines[at] = f"{line.split(':', 1)[0]}: *a{draw(st.integers(0, 2))}"
    return "\n".join(lines), draw(st.booleans())


slowest: list[tuple[float, str]] = [(0.0, "")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-config")
    (root / "secrets.yaml").write_text(SECRETS, encoding="utf-8")
    _loads_or_locates(root, FULL, False)        # warm up: the first load imports sqlalchemy, phonenumbers …
    yield root
    kept = root / "slowest.yaml"
    kept.write_text(slowest[0][1], encoding="utf-8", errors="surrogatepass")
    print(f"\nslowest config input: {slowest[0][0] * 1000:.0f} ms ({len(slowest[0][1])} characters, kept in {kept})")


def loads_or_locates(folder: Path, text: str, raw: bool) -> None:
    started = time.perf_counter()
    try:
        _loads_or_locates(folder, text, raw)
    finally:
        elapsed = time.perf_counter() - started
        if elapsed > slowest[0][0]:
            slowest[0] = (elapsed, text)


def _loads_or_locates(folder: Path, text: str, raw: bool) -> None:
    path = folder / "herald.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass" if raw else "replace"))
    try:
        config = load_config(path, env=ENV)
    except ConfigError as exc:
        assert any(d.is_error for d in exc.diagnostics)
        for d in exc.diagnostics:
            assert d.location is not None and d.location.file, d.headline()
            if d.location.file == str(path):
                assert d.location.line >= 1 and d.location.col >= 1, d.headline()
            d.format()
        return
    assert isinstance(config, Config)
    for d in config.warnings:
        assert d.location is not None, d.headline()
        d.format()


@fuzz()
@given(case=mutated())
def test_mutated_configs_load_or_give_located_errors(folder, case):
    loads_or_locates(folder, *case)


@fuzz()
@given(text=st.text(st.one_of(st.characters(), SURROGATE, st.sampled_from(":-[]{}&*!|>'\"#\n  ")), max_size=200))
def test_any_text_loads_or_gives_located_errors(folder, text):
    loads_or_locates(folder, text, True)
