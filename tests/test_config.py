"""The config file: defaults, !env / !secret, located errors, and secrets kept secret."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import pickle
import textwrap
from pathlib import Path

import pytest

from herald.engine.config import (
    BackupEndpoint, Config, Secret, Site, default_config, load_config, reveal,
)
from herald.engine.errors import ConfigError
from herald.engine.helpers.windows import SendWindow

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-VALUE-must-not-leak"


def write(folder: Path, text: str, name: str = "herald.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def errors_of(path: Path, env: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=env or {})
    return info.value


def all_text(err: ConfigError) -> str:
    """Everything an error could show: message, format, every diagnostic field."""
    parts = [str(err), err.format(), repr(err)]
    for d in err.diagnostics:
        parts += [d.message, d.hint or "", d.source_line or "", repr(d)]
    return "\n".join(parts)


# ---------------------------------------------------------------- the example and defaults

def test_example_herald_yaml_loads_without_environment(monkeypatch):
    for name in ("BSG_API_KEY", "HERALD_TOKEN", "SHOP_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config(REPO / "herald.yaml")
    assert cfg.warnings == ()
    assert cfg.path == REPO / "herald.yaml"
    assert cfg.base_dir == REPO
    assert cfg.store == REPO / "var" / "herald.db"
    assert cfg.rules == REPO / "rules"
    assert cfg.templates == REPO / "rules" / "templates"
    assert cfg.timezone == "Europe/Moscow"
    assert cfg.bsg.sandbox and cfg.bsg.api_key is None
    assert cfg.bsg.url == "https://api.bsg.world/rest" and cfg.bsg.rate == 20
    assert (cfg.senders.sms, cfg.senders.viber) == (("testsms",), ("AdvInform",))
    assert (cfg.http.host, cfg.http.port, cfg.http.listen) == ("127.0.0.1", 8780, "127.0.0.1:8780")
    assert cfg.http.tokens == () and cfg.http.local_only
    assert cfg.http.max_body == 1024 * 1024
    assert cfg.smtp is None and cfg.connectors == ()
    assert list(cfg.sites) == ["s1"]
    assert cfg.default_site == Site(
        id="s1", name="Modern Clothes", server_name="shop.example.com",
        email_from="shop@example.com", phone_from="+74950000000", timezone="Europe/Moscow",
        channel="omni", sms_sender="testsms", viber_sender="AdvInform",
        send_window=SendWindow(dt.time(9), dt.time(21)), admins=("+79001234567",),
        admin_email="admin@example.com", translit=False, omni="provider", language="ru")


def test_example_with_a_key_is_live():
    cfg = load_config(REPO / "herald.yaml", env={"BSG_API_KEY": "live_abc"})
    assert not cfg.bsg.sandbox and cfg.bsg.api_key.reveal() == "live_abc"


def _assert_defaults(cfg: Config, base: Path) -> None:
    assert cfg.base_dir == base
    assert cfg.store == base / "var/herald.db"
    assert cfg.rules == base / "rules"
    assert cfg.templates == base / "rules/templates.yaml"
    assert cfg.timezone == "Europe/Moscow"
    assert cfg.bsg.sandbox and cfg.bsg.backup == ()
    assert cfg.senders.sms == ("testsms",) and cfg.senders.viber == ("AdvInform",)
    site = cfg.default_site
    assert list(cfg.sites) == ["s1"] and site.id == "s1" and site.name == "s1"
    assert (site.channel, site.omni, site.language, site.timezone) == ("sms", "provider", "ru", "Europe/Moscow")
    assert (site.sms_sender, site.viber_sender, site.send_window, site.admins) == ("testsms", "AdvInform", None, ())
    assert site.translit is False
    assert cfg.http.listen == "127.0.0.1:8780" and cfg.http.tokens == ()
    assert cfg.smtp is None and cfg.connectors == () and cfg.warnings == ()


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "sites:\nbsg:\n"])
def test_empty_config_gets_defaults(tmp_path, text):
    path = tmp_path / "herald.yaml"
    path.write_text(text)
    cfg = load_config(path, env={})
    assert cfg.path == path
    _assert_defaults(cfg, tmp_path)


def test_default_config_without_a_file(tmp_path):
    cfg = default_config(tmp_path)
    assert cfg.path is None
    _assert_defaults(cfg, tmp_path)


def test_load_config_none_uses_herald_yaml_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.path is None
    _assert_defaults(cfg, tmp_path)
    write(tmp_path, "timezone: Asia/Yekaterinburg\n")
    cfg = load_config(None)
    assert cfg.path == tmp_path / "herald.yaml"
    assert cfg.timezone == cfg.default_site.timezone == "Asia/Yekaterinburg"


def test_missing_file_is_a_config_error(tmp_path):
    err = errors_of(tmp_path / "nope.yaml")
    assert err.diagnostics[0].headline() == f"{tmp_path / 'nope.yaml'}: error: config file not found"


def test_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "etc", """
        store: data/h.db
        rules: ../shared/rules
        templates: /abs/templates
    """)
    cfg = load_config("etc/herald.yaml", env={})
    assert cfg.base_dir == tmp_path / "etc" and cfg.path == path
    assert cfg.store == tmp_path / "etc/data/h.db"
    assert cfg.rules == tmp_path / "etc/../shared/rules"
    assert cfg.templates == Path("/abs/templates")


def test_sites_inherit_defaults_and_keep_their_order(tmp_path):
    path = write(tmp_path, """
        timezone: Asia/Novosibirsk
        senders: {sms: [ShopSMS, testsms], viber: [ShopViber]}
        sites:
          s2:
            name: Second
            channel: viber
            send_window: 22:00-06:00
          s1:
            timezone: Europe/Kaliningrad
            sms_sender: testsms
    """)
    cfg = load_config(path, env={})
    assert list(cfg.sites) == ["s2", "s1"]
    s2, s1 = cfg.sites["s2"], cfg.sites["s1"]
    assert cfg.default_site is s2
    assert (s2.timezone, s2.sms_sender, s2.viber_sender, s2.channel) == (
        "Asia/Novosibirsk", "ShopSMS", "ShopViber", "viber")
    assert s2.send_window.text == "22:00-06:00" and s2.send_window.wraps
    assert (s1.name, s1.timezone, s1.sms_sender) == ("s1", "Europe/Kaliningrad", "testsms")
    assert s1.tz.key == "Europe/Kaliningrad"
    assert s2.macros()["SITE_NAME"] == "Second"


def test_full_config(tmp_path):
    write(tmp_path, f"backup_key: {SECRET}\nsmtp_pass: hunter2-{SECRET}\n", "secrets.yaml")
    path = write(tmp_path, """
        bsg:
          url: https://api.bsg.world/rest
          api_key: !env BSG_API_KEY
          backup:
            - url: https://backup.example/rest
              api_key: !secret backup_key
            - url: https://other.example/rest
          rate: 5.5
        http:
          listen: "[::1]:9000"
          tokens: [!env HERALD_TOKEN, !secret backup_key]
          max_body: 2 MiB
        smtp:
          host: mail.example.com
          port: !env SMTP_PORT
          from: herald@example.com
          username: herald
          password: !secret smtp_pass
          starttls: true
        connectors:
          - type: sql
            url: !env SHOP_DB_URL
            preset: bitrix
            poll: 5
            tables: [b_sale_order, b_event]
          - type: imap
            host: mail.example.com
            password: !secret backup_key
    """)
    env = {"BSG_API_KEY": "live_key", "HERALD_TOKEN": "tok-1", "SMTP_PORT": "587",
           "SHOP_DB_URL": "mysql://u:pw@db/shop"}
    cfg = load_config(path, env=env)
    assert cfg.warnings == ()
    assert cfg.bsg.api_key == Secret("live_key") and not cfg.bsg.sandbox
    assert cfg.bsg.backup == (BackupEndpoint("https://backup.example/rest", Secret(SECRET)),
                              BackupEndpoint("https://other.example/rest", None))
    assert cfg.bsg.rate == 5.5
    assert (cfg.http.host, cfg.http.port, cfg.http.listen) == ("::1", 9000, "[::1]:9000")
    assert [t.reveal() for t in cfg.http.tokens] == ["tok-1", SECRET]
    assert cfg.http.max_body == 2 * 1024 * 1024 and not cfg.http.local_only
    smtp = cfg.smtp
    assert (smtp.host, smtp.port, smtp.from_addr, smtp.username, smtp.starttls) == (
        "mail.example.com", 587, "herald@example.com", "herald", True)
    assert smtp.password.reveal() == f"hunter2-{SECRET}"
    sql, imap = cfg.connectors
    assert sql.type == "sql"
    assert sql.options == {"url": Secret("mysql://u:pw@db/shop"), "preset": "bitrix", "poll": 5,
                           "tables": ["b_sale_order", "b_event"]}
    assert type(sql.options["poll"]) is int and type(sql.options["tables"]) is list
    assert reveal(sql.options["url"]) == "mysql://u:pw@db/shop" and reveal("x") == "x"
    assert str(sql.location) == f"{path}:21:5"
    assert str(sql.locations["preset"]) == f"{path}:23:13"
    assert imap.options["password"] == Secret(SECRET)
    for text in (repr(cfg), str(cfg)):
        assert SECRET not in text and "live_key" not in text and "tok-1" not in text
        assert "pw@db" not in text and "Secret('****')" in text


# ---------------------------------------------------------------- !env and !secret

def test_env_unset_or_empty_api_key_means_sandbox(tmp_path):
    path = write(tmp_path, "bsg:\n  api_key: !env BSG_API_KEY\n")
    assert load_config(path, env={}).bsg.sandbox
    assert load_config(path, env={"BSG_API_KEY": ""}).bsg.sandbox
    assert load_config(path, env={"BSG_API_KEY": "k"}).bsg.api_key.reveal() == "k"


def test_env_unset_elsewhere_is_a_located_error(tmp_path):
    path = write(tmp_path, """
        http:
          tokens: [!env HERALD_TOKEN]
        connectors:
          - type: sql
            url: !env SHOP_DB_URL
    """)
    err = errors_of(path)
    assert [d.headline() for d in err.diagnostics] == [
        f"{path}:2:12: error: http.tokens[0]: environment variable HERALD_TOKEN is not set",
        f"{path}:5:10: error: connectors[0].url: environment variable SHOP_DB_URL is not set",
    ]
    assert "tokens: []" in err.diagnostics[0].hint
    assert err.diagnostics[1].hint == "set it before starting Herald: export SHOP_DB_URL=..."


def test_env_values_are_converted_for_typed_keys(tmp_path):
    path = write(tmp_path, """
        timezone: !env TZ_NAME
        http: {listen: !env LISTEN, max_body: !env MAXB}
        sites: {s1: {translit: !env TRANSLIT}}
    """)
    cfg = load_config(path, env={"TZ_NAME": "Asia/Omsk", "LISTEN": "0.0.0.0:81",
                                 "MAXB": "512k", "TRANSLIT": "true"})
    assert cfg.timezone == "Asia/Omsk" and cfg.http.port == 81 and cfg.http.max_body == 512 * 1024
    assert cfg.default_site.translit is True
    assert "answers only requests from this machine" in cfg.warnings[0].message


def test_secret_from_secrets_yaml(tmp_path):
    write(tmp_path, f'main: "{SECRET}"\nnumber: 12345\n', "secrets.yaml")
    path = write(tmp_path, "bsg: {api_key: !secret main}\nsmtp: {host: h, password: !secret number}\n")
    cfg = load_config(path, env={})
    assert cfg.bsg.api_key.reveal() == SECRET
    assert cfg.smtp.password.reveal() == "12345"
    assert cfg.secrets_path == tmp_path / "secrets.yaml"


def test_secret_missing_key_and_missing_file(tmp_path):
    path = write(tmp_path, "bsg:\n  api_key: !secret mian\n")
    err = errors_of(path)
    secrets = tmp_path / "secrets.yaml"
    assert err.diagnostics[0].headline() == (
        f"{path}:2:12: error: bsg.api_key: cannot read secret \"mian\": {secrets} does not exist")
    write(tmp_path, f"main: {SECRET}\n", "secrets.yaml")
    err = errors_of(path)
    assert err.diagnostics[0].headline() == (
        f'{path}:2:12: error: bsg.api_key: secret "mian" is not in {secrets}')
    assert err.diagnostics[0].hint == 'did you mean "main"?'
    assert SECRET not in all_text(err)


def test_secret_file_with_bad_yaml_shows_no_values(tmp_path):
    write(tmp_path, f"main: {SECRET}\nmain: {SECRET}-2\n", "secrets.yaml")
    path = write(tmp_path, "bsg:\n  api_key: !secret main\n")
    err = errors_of(path)
    assert SECRET not in all_text(err)
    headlines = [d.headline() for d in err.diagnostics]
    assert f'{tmp_path / "secrets.yaml"}:2:1: error: invalid YAML: duplicate key "main"' in headlines


def test_plain_text_secret_is_a_warning_without_the_value(tmp_path):
    path = write(tmp_path, f"bsg:\n  api_key: {SECRET}\n")
    cfg = load_config(path, env={})
    assert cfg.bsg.api_key.reveal() == SECRET
    [w] = cfg.warnings
    assert w.headline() == f"{path}:2:12: warning: bsg.api_key is written in the config file in plain text"
    assert w.source_line is None and SECRET not in w.format()


# ---------------------------------------------------------------- secrets never leak

def test_secret_type():
    s = Secret(SECRET)
    assert repr(s) == str(s) == f"{s}" == f"{s!r}" == "Secret('****')"
    assert s.reveal() == SECRET and s == Secret(SECRET) and s != Secret("other")
    assert SECRET not in repr([s, {"k": s}, (s,)])
    with pytest.raises(TypeError):
        pickle.dumps(s)
    assert copy.deepcopy(s) is s


def test_asdict_keeps_secrets_wrapped(tmp_path):
    path = write(tmp_path, "bsg: {api_key: !env K}\n")
    data = dataclasses.asdict(load_config(path, env={"K": SECRET}))
    assert data["bsg"]["api_key"] == Secret(SECRET) and SECRET not in repr(data)


def test_invalid_config_holding_secrets_never_shows_them(tmp_path):
    write(tmp_path, f'token: "{SECRET}"\nwin: "{SECRET}"\n', "secrets.yaml")
    path = write(tmp_path, f"""
        timezone: !env TZ_NAME
        bsg:
          api_key: !secret token
          url: !env BSG_URL
          rate: !env RATE
        http:
          listen: !env LISTEN
          tokens: [!secret token, "{SECRET}-plain", 42]
        smtp:
          host: h
          port: !env PORT
          passwort: {SECRET}-typo
        sites:
          s1:
            channel: !env CHANNEL
            sms_sender: !secret token
            send_window: !secret win
            language: !env LANG_CODE
            admin_email: !env ADMIN
        connectors:
          - type: sql
            password: {SECRET}-conn
            dsn: !env BSG_URL
          - {{password: {SECRET}-notype}}
    """)
    env = {name: f"{SECRET}-{name}" for name in
           ("TZ_NAME", "BSG_URL", "RATE", "LISTEN", "PORT", "CHANNEL", "LANG_CODE", "ADMIN")}
    err = errors_of(path, env)
    text = all_text(err)
    assert SECRET not in text
    assert len([d for d in err.diagnostics if d.is_error]) == 13
    # The errors still say where and what.
    assert f"{path}:1:11: error: timezone: the value of !env TZ_NAME is not a known time zone" in text
    assert f"{path}:17:18: error: sites.s1.send_window: the value of !secret win is not a window" in text
    assert f'{path}:12:3: error: unknown key "passwort" in smtp' in text


# ---------------------------------------------------------------- located errors

BAD = [
    pytest.param("sites:\n  s1:\n    sms_sendr: testsms\n",
                 '3:5: error: unknown key "sms_sendr" in sites.s1', 'did you mean "sms_sender"?',
                 id="unknown-site-key"),
    pytest.param("timezon: Europe/Moscow\n",
                 '1:1: error: unknown key "timezon" in the config', 'did you mean "timezone"?',
                 id="unknown-top-key"),
    pytest.param("bsg:\n  apikey: !env K\n",
                 '2:3: error: unknown key "apikey" in bsg', 'did you mean "api_key"?', id="unknown-bsg-key"),
    pytest.param("http:\n  token: []\n",
                 '2:3: error: unknown key "token" in http', 'did you mean "tokens"?', id="unknown-http-key"),
    pytest.param("smtp:\n  host: h\n  form: a@b.c\n",
                 '3:3: error: unknown key "form" in smtp', 'did you mean "from"?', id="unknown-smtp-key"),
    pytest.param("timezone: Europe/Moskow\n",
                 '1:11: error: timezone: unknown time zone "Europe/Moskow"', 'did you mean "Europe/Moscow"?',
                 id="bad-timezone"),
    pytest.param("sites:\n  s1: {timezone: Mars/Olympus}\n",
                 '2:18: error: sites.s1.timezone: unknown time zone "Mars/Olympus"',
                 "use an IANA name such as Europe/Moscow or Asia/Yekaterinburg", id="bad-site-timezone"),
    pytest.param('sites:\n  s1:\n    send_window: "25:00-26:00"\n',
                 "3:18: error: sites.s1.send_window: hour 25 is out of range (00-23, or 24:00 as an end)",
                 "window must look like HH:MM-HH:MM, e.g. 09:00-21:00", id="bad-window-hour"),
    pytest.param("sites:\n  s1:\n    send_window: 9 to 5\n",
                 "3:18: error: sites.s1.send_window: window must look like HH:MM-HH:MM, e.g. 09:00-21:00",
                 None, id="bad-window-format"),
    pytest.param("sites:\n  s1:\n    send_window: 09:00-09:00\n",
                 "3:18: error: sites.s1.send_window: empty window: it starts and ends at 09:00; "
                 "use 00:00-24:00 for the whole day",
                 "window must look like HH:MM-HH:MM, e.g. 09:00-21:00", id="empty-window"),
    pytest.param("sites:\n  s1:\n    sms_sender: tstsms\n",
                 '3:17: error: sites.s1.sms_sender: "tstsms" is not in senders.sms',
                 'did you mean "testsms"? senders.sms allows: testsms', id="unknown-sms-sender"),
    pytest.param("senders: {viber: [AdvInform, BSG]}\nsites:\n  s1:\n    viber_sender: Shop\n",
                 '4:19: error: sites.s1.viber_sender: "Shop" is not in senders.viber',
                 "senders.viber allows: AdvInform, BSG", id="unknown-viber-sender"),
    pytest.param("sites:\n  s1:\n    admins: 79001234567\n",
                 "3:13: error: sites.s1.admins: expected a list of phone numbers, got a number",
                 'e.g. admins: ["+79001234567"]', id="admins-number"),
    pytest.param("sites:\n  s1:\n    admins: [+79001234567]\n",
                 "3:14: error: sites.s1.admins[0]: expected a phone number in quotes, got a number",
                 'write phone numbers in quotes, e.g. "+79001234567"', id="admin-unquoted"),
    pytest.param("sites:\n  s1:\n    channel: fax\n",
                 '3:14: error: sites.s1.channel: "fax" is not a channel (sms, viber or omni)',
                 "expected sms | viber | omni", id="bad-channel"),
    pytest.param("sites:\n  s1:\n    translit: yes\n",
                 "3:15: error: sites.s1.translit: expected true or false, got a string",
                 "write true or false (yes/no/on/off are strings in YAML 1.2)", id="yes-is-a-string"),
    pytest.param("sites:\n  s1:\n    omni: bsg\n",
                 '3:11: error: sites.s1.omni: "bsg" is not an omni mode (provider or engine)',
                 "expected provider | engine", id="bad-omni"),
    pytest.param("sites: [s1]\n",
                 "1:8: error: sites: expected a mapping of site id to its keys (s1: ...), got a list",
                 None, id="sites-list"),
    pytest.param("bsg: {rate: fast}\n",
                 "1:13: error: bsg.rate: expected a positive number of requests per second, got a string",
                 None, id="rate-string"),
    pytest.param("bsg:\n  url: ftp://x\n",
                 '2:8: error: bsg.url: "ftp://x" is not an http(s) URL', "e.g. https://api.bsg.world/rest",
                 id="bad-url"),
    pytest.param("http: {listen: 8780x}\n",
                 '1:16: error: http.listen: expected HOST:PORT such as 127.0.0.1:8780, got "8780x"',
                 None, id="bad-listen"),
    pytest.param("smtp: {port: 25}\n",
                 "1:1: error: smtp: host is required",
                 "e.g. host: 127.0.0.1 (or remove smtp: to send no e-mail alerts)", id="smtp-no-host"),
    pytest.param("connectors:\n  - preset: bitrix\n",
                 "2:5: error: connectors[0]: type is required", "e.g. type: sql", id="connector-no-type"),
    pytest.param("connectors: {type: sql}\n",
                 "1:13: error: connectors: expected a list of connectors (- type: ...), got a mapping",
                 None, id="connectors-mapping"),
    pytest.param("bsg:\n  api_key: !enviro BSG_API_KEY\n",
                 "2:12: error: bsg.api_key: unknown tag !enviro", 'did you mean "!env"?', id="unknown-tag"),
    pytest.param("bsg:\n  api_key: !env\n",
                 "2:12: error: bsg.api_key: !env needs a name after it, e.g. !env BSG_API_KEY", None,
                 id="env-without-name"),
    pytest.param("- store\n",
                 "1:1: error: the config must be a mapping of keys (store:, bsg:, sites:, ...), got a list",
                 None, id="not-a-mapping"),
    pytest.param("sites:\n  s1:\n    name: x\n   bad: y\n",
                 "4:4: error: invalid YAML: expected <block end>, but found '<block mapping start>'",
                 "the block mapping starts at line 2, column 3", id="yaml-indentation"),
    pytest.param("senders: {sms: [testsms}\n",
                 "1:24: error: invalid YAML: expected ',' or ']', but got '}'",
                 "the flow sequence starts at line 1, column 16", id="yaml-flow"),
    pytest.param("store: a\nstore: b\n",
                 '2:1: error: invalid YAML: duplicate key "store"', "a key may appear only once in a mapping", id="yaml-duplicate-key"),
    pytest.param("store: a\n\tx: 1\n",
                 "2:1: error: invalid YAML: found character '\\t' that cannot start any token",
                 None, id="yaml-tab"),
]


@pytest.mark.parametrize("text, headline, hint", BAD)
def test_bad_config(tmp_path, text, headline, hint):
    path = tmp_path / "herald.yaml"
    path.write_text(text, encoding="utf-8")
    err = errors_of(path)
    [d] = [d for d in err.diagnostics if d.is_error]
    assert d.headline() == f"{path}:{headline}"
    assert d.hint == hint
    assert str(err) == d.headline()


def test_yaml_syntax_error_keeps_the_cause(tmp_path):
    path = write(tmp_path, "a: [1, 2\nb: 3\n")
    err = errors_of(path)
    assert err.__cause__ is not None
    assert err.diagnostics[0].source_line == "b: 3"


def test_all_errors_are_reported_at_once(tmp_path):
    path = write(tmp_path, """
        timezone: Europe/Moskow
        bsg:
          rate: -1
        sites:
          s1:
            channel: fax
            send_window: 9-21
            admins: +79001234567
          s2:
            sms_sender: nobody
            colour: red
        http:
          listen: "0.0.0.0:99999"
    """)
    err = errors_of(path)
    assert [d.headline() for d in err.diagnostics] == [f"{path}:{h}" for h in [
        '1:11: error: timezone: unknown time zone "Europe/Moskow"',
        "3:9: error: bsg.rate: expected a positive number of requests per second, got -1",
        '6:14: error: sites.s1.channel: "fax" is not a channel (sms, viber or omni)',
        "7:18: error: sites.s1.send_window: window must look like HH:MM-HH:MM, e.g. 09:00-21:00",
        "8:13: error: sites.s1.admins: expected a list of phone numbers, got a number",
        '10:17: error: sites.s2.sms_sender: "nobody" is not in senders.sms',
        '11:5: error: unknown key "colour" in sites.s2',
        "13:11: error: http.listen: port 99999 is out of range (1-65535)",
    ]]
    assert str(err) == f'{path}:1:11: error: timezone: unknown time zone "Europe/Moskow" (and 7 more)'
    formatted = err.format()
    assert "    channel: fax\n" in formatted and "             ^" in formatted


def test_http_without_tokens_on_the_network_warns(tmp_path):
    path = write(tmp_path, "http:\n  listen: 0.0.0.0:8780\n")
    cfg = load_config(path, env={})
    [w] = cfg.warnings
    assert w.headline() == (f"{path}:2:11: warning: http.tokens is empty, so the API on "
                            "0.0.0.0:8780 answers only requests from this machine")
    assert cfg.http.local_only
    path = write(tmp_path, "http:\n  listen: 127.0.0.1:8780\n  tokens: []\n")
    assert load_config(path, env={}).warnings == ()
