"""Issue #12 item 1: no rule file may crash the compiler, `herald check`, a reload or a start.

Every input that once raised RecursionError/OverflowError/ValueError out of the compiler is
here as a reproduction: it must now be one located error (FILE:LINE:COL), and a daemon given
it must keep the rules it runs (SIGHUP, POST /reload) or refuse to start with exit 2.
"""

from __future__ import annotations

import re
import signal
import threading

import httpx
import pytest

from herald.grammar.compiler import compile_text
from tests.daemon_helpers import fake_bsg, free_port, herald, start_daemon, wait_http, write_project

SEND = 'send sms to customer.phone text "x"'
DEEP_NOT = f"on order.created if {'not ' * 500}order.paid == true {SEND}\n"
LOCATED = re.compile(r"^t\.rules:\d+:\d+: error: ")


def errors_of(text: str) -> list[str]:
    compiled = compile_text(text, "t.rules")
    return [d.headline() for d in compiled.diagnostics if d.is_error]


def only_error(text: str) -> str:
    compiled = compile_text(text, "t.rules")
    errors = [d.headline() for d in compiled.diagnostics if d.is_error]
    assert compiled.rules == () and len(errors) == 1, errors
    assert LOCATED.match(errors[0]), errors[0]
    return errors[0]


# ---- nesting ------------------------------------------------------------------------------------

def test_500_nested_nots_are_one_located_error_naming_the_limit():
    error = only_error(DEEP_NOT)
    assert "nests more than 32 levels deep" in error


@pytest.mark.parametrize("condition", [
    "(" * 200 + "order.x == 1" + " and order.y == 2)" * 200,          # and/or alternate through parentheses
    "(order.y == 2 or " * 200 + "order.x == 1" + ")" * 200,
    "not (" * 300 + "order.x == 1" + ")" * 300,
    "order.x in " + "[" * 400 + "]" * 400,                               # lists in lists
])
def test_deep_conditions_of_every_shape_are_located_errors(condition):
    assert "nests more than 32 levels deep" in only_error(f"on order.created if {condition} {SEND}")


def test_deep_state_trigger_and_once_per_keys_are_located_errors():
    assert "nests more than 32" in only_error(f"on {'not ' * 400}order.paid == true {SEND}")
    assert "nests more than 32" in only_error(f"on order.created once per {'[' * 400}{']' * 400} {SEND}")
    assert "nests more than 32" in only_error(f"on order.status changes to {'[' * 400}{']' * 400} {SEND}")


def test_nesting_up_to_the_limit_compiles_prints_and_evaluates():
    from herald.grammar.compiler import MAX_DEPTH
    from herald.grammar.model import Outcome

    # `not` × (MAX_DEPTH - 2) around a comparison of a path: exactly MAX_DEPTH levels
    text = f"on order.created if {'not ' * (MAX_DEPTH - 2)}order.paid == true {SEND}"
    (rule,) = compile_text(text, "t.rules").rules
    assert rule.canonical().startswith("on order.created if not not")
    assert rule.condition.test(_Scope({("order", "paid"): True})) == Outcome(True)
    assert "nests more than" in only_error(f"on order.created if not {text[len('on order.created if '):]}")


def test_a_long_and_chain_is_wide_not_deep_and_compiles():
    chain = " and ".join(f"order.f{i} == {i}" for i in range(3000))
    (rule,) = compile_text(f"on order.created if {chain} {SEND}", "t.rules").rules
    assert len(rule.condition.operands) == 3000 and rule.canonical().count(" and ") == 2999


class _Scope:
    def __init__(self, values: dict):
        self.values = values

    def get(self, path):
        return self.values.get(path)


# ---- literal sizes, durations, paths, regular expressions ------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (f"on order.created after 1000000000d {SEND}", "t.rules:1:24: error: `1000000000d` is too long: "
                                                   "a duration is at most 36500d (100 years)"),
    (f"on order.created after 99999999999999999999h {SEND}", "t.rules:1:24: error: `99999999999999999999h` is too long"),
    (f"on order.created {SEND} stale after 99999999999999999999h", "t.rules:1:66: error: `99999999999999999999h` is too long"),
    (f"on order.created once per customer.phone within 36501d {SEND}", "t.rules:1:49: error: `36501d` is too long"),
    (f"on order.created after {'0' * 5000}36501d {SEND}", None),
    (f"on every {'9' * 5000}m {SEND}", None),
    (f"on order.created send omni to customer.phone text \"x\" fallback after {'1d' * 40000}", None),
])
def test_durations_past_the_maximum_are_located_errors(text, expected):
    error = only_error(text)
    assert "is too long" in error and "36500d" in error
    if expected:
        assert error.startswith(expected)


def test_the_longest_duration_is_accepted_and_a_timer_can_be_set_with_it():
    from datetime import datetime, timedelta, timezone
    (rule,) = compile_text(f"on order.created after {'0' * 5000}1d {SEND}", "t.rules").rules
    assert rule.after == timedelta(days=1)                     # leading zeros cost no int conversion
    (rule,) = compile_text(f"on order.created after 36500d {SEND}", "t.rules").rules
    assert datetime(2026, 12, 3, tzinfo=timezone.utc) + rule.after < datetime.max.replace(tzinfo=timezone.utc)


def test_a_number_of_5000_digits_is_a_located_error():
    error = only_error(f"on order.created if order.x == {'9' * 5000} {SEND}")
    assert error.startswith("t.rules:1:32: error: a number has at most 30 digits")


def test_a_huge_string_literal_is_a_located_error():
    error = only_error(f'on order.created send sms to customer.phone text "{"x" * 20000}"')
    assert error.startswith("t.rules:1:50: error: a string is at most 10000 characters long")


def test_a_path_of_a_thousand_segments_is_a_located_error():
    pattern = ".".join(["order"] * 1000)
    error = only_error(f"on {pattern} {SEND}")
    assert error.startswith("t.rules:1:4: error: a field path has at most 16 parts")


@pytest.mark.parametrize("pattern, message", [
    ("(" * 3000 + ")" * 3000, "nests too deep"),
    ("a{4294967295}", "invalid regular expression"),
])
def test_regular_expressions_python_cannot_compile_are_located_errors(pattern, message):
    error = only_error(f'on order.created if order.x matches "{pattern}" {SEND}')
    assert message in error


def test_a_lone_surrogate_in_the_text_is_a_located_error():
    error = only_error(f'on order.created\nsend sms to customer.phone text "a\ud800b"')
    assert error.startswith("t.rules:2:35: error: ")


# ---- the same rule through every door: check, start, POST /reload, SIGHUP -------------------------------

def test_herald_check_prints_the_located_error_and_no_traceback(project_dir, capsys):
    from herald.engine.cli.main import main

    project_dir.setup(DEEP_NOT)
    assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"^rules/main\.rules:1:\d+: error: this condition nests more than 32 levels deep", err, re.M)


def test_start_with_a_deep_rule_is_one_located_line_and_exit_2(tmp_path):
    config = write_project(tmp_path, DEEP_NOT, port=free_port())
    proc = start_daemon(config)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert "Traceback" not in out and len(out.splitlines()) < 10
    assert re.search(r"rules/main\.rules:1:\d+: error: this condition nests more than 32", out)


async def test_post_reload_of_a_deep_rule_answers_422_and_keeps_the_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = f'rule "paid" on order.paid == true {SEND}\n'
    async with fake_bsg() as (fake, url):
        config = write_project(tmp_path, good, port=free_port(), bsg_url=url)
        async with herald(config) as (daemon, client):
            for bad in (DEEP_NOT, f"on order.created after 1000000000d {SEND}\n",
                        f"on order.created after 99999999999999999999h {SEND}\n"):
                (tmp_path / "rules" / "main.rules").write_text(bad)
                response = await client.post("/reload")
                assert response.status_code == 422
                body = response.json()
                assert body["reloaded"] is False and body["rules"] == 1
                assert re.match(r"rules/main\.rules:1:\d+: error: ", body["errors"][0]), body
                assert [r.name for r in daemon.project.rules] == ["paid"]
            assert (await client.get("/health")).status_code == 200


def _read_until(proc, needle: str, timeout: float = 30.0) -> str:
    """The daemon's output up to the first line holding `needle` (or its end)."""
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            if needle in line:
                return

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    reader.join(timeout)
    return "".join(lines)


def test_sighup_with_a_deep_rule_keeps_the_daemon_and_its_rules_and_logs_the_located_error(tmp_path):
    port = free_port()
    config = write_project(tmp_path, f'rule "paid" on order.paid == true {SEND}\n', port=port)
    proc = start_daemon(config)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        (tmp_path / "rules" / "main.rules").write_text(DEEP_NOT)
        proc.send_signal(signal.SIGHUP)
        out = _read_until(proc, "reload failed")
        assert "reload failed: kept the running rules (1)" in out, out
        assert re.search(r"reload: rules/main\.rules:1:\d+: error: this condition nests more than 32", out)
        assert "Traceback" not in out
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["rules"] == 1
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        proc.kill()


# ---- issue #12 item 6: a password inside a connector URL ------------------------------------------

PASSWORD = "pw-7f3a9c"
CONNECTOR = f"""connectors:
  - type: sql
    name: shop
    url: mysql+pymysql://herald:{PASSWORD}@127.0.0.1:{{port}}/shop
    interval: 60
    sources: [{{{{name: orders, table: b_sale_order, key: ID, cursor: ID, event: order.created, map: {{{{order.id: ID}}}}}}}}]
"""


def test_a_plain_text_password_in_the_bsg_url_is_warned_about_without_the_password(tmp_path):
    from herald.engine.config import load_config

    path = tmp_path / "herald.yaml"
    path.write_text(f"bsg:\n  url: https://proxy:{PASSWORD}@bsg.example/\n  api_key: !env K\n")
    config = load_config(path, env={"K": "key"})
    [warning] = config.warnings
    assert warning.headline() == (f"{path}:2:8: warning: bsg.url holds a password written in the "
                                  "config file in plain text")
    assert PASSWORD not in warning.format() and warning.source_line is None
    path.write_text("bsg:\n  url: !env BSG_URL\n  api_key: !env K\n")
    assert load_config(path, env={"K": "key", "BSG_URL": f"https://p:{PASSWORD}@bsg.example/"}).warnings == ()


def test_a_plain_text_password_in_a_connector_url_is_warned_about_without_the_password(tmp_path):
    from herald.engine.config import Secret, load_config

    path = tmp_path / "herald.yaml"
    path.write_text(CONNECTOR.format(port=3306))
    config = load_config(path, env={})
    [warning] = config.warnings
    assert warning.headline() == (f"{path}:4:10: warning: connectors[0].url holds a password written in the "
                                  "config file in plain text")
    assert PASSWORD not in warning.format() and warning.source_line is None
    assert isinstance(config.connectors[0].options["url"], Secret)
    # through !env, or without a password, nothing to warn about
    path.write_text(CONNECTOR.format(port=3306).replace(f"mysql+pymysql://herald:{PASSWORD}@127.0.0.1:3306/shop",
                                                        "!env SHOP_DB_URL"))
    assert load_config(path, env={"SHOP_DB_URL": f"mysql+pymysql://h:{PASSWORD}@db/shop"}).warnings == ()
    path.write_text("connectors:\n  - {type: sql, url: 'sqlite:///shop.db', note: 'http://a@b/c'}\n")
    assert load_config(path, env={}).warnings == ()


def test_the_daemon_warns_about_the_url_password_and_never_logs_it(tmp_path):
    port = free_port()
    closed = free_port()                 # nothing listens: the connector's polls fail and are logged
    config = write_project(tmp_path, f"on order.created {SEND}\n", port=port, extra=CONNECTOR.format(port=closed))
    proc = start_daemon(config)
    try:
        out = _read_until(proc, "herald ready")
        wait_http(f"http://127.0.0.1:{port}/health")
        health = httpx.get(f"http://127.0.0.1:{port}/health").text
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    out += rest
    assert "connectors[0].url holds a password written in the config file in plain text" in out, out
    assert PASSWORD not in out and PASSWORD not in health


# ---- config loading: every crash the fuzzer found, as a located error ------------------------------

def _config_errors(tmp_path, text: str, env: dict | None = None) -> list[str]:
    from herald.engine.config import load_config
    from herald.engine.errors import ConfigError

    path = tmp_path / "h.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env or {})
    return [d.headline().replace(f"{path}", "h.yaml") for d in err.value.diagnostics if d.is_error]


LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))


@pytest.mark.parametrize("text, expected", [
    ("sites: " + "[" * 3000 + "]" * 3000 + "\n", "h.yaml:1:40: error: the config nests more than 32 levels deep"),
    ("".join(f"a{i}: &a{i} [*a{i - 1}]\n" if i else "a0: &a0 [1]\n" for i in range(60)),
     "error: the config nests more than 32 levels deep (counting what its aliases hold)"),
    (LAUGHS, "h.yaml:4:5: error: the config holds more than 10000 values once its aliases are expanded"),
    ("a: &a [1, 2]\nb: {? *a : 1}\n" + LAUGHS + "c: {x: *a9, x: *a9}\n", "the config holds more than 10000 values"),
    ("bsg: {rate: " + "9" * 5000 + "}\n", "h.yaml:1:13: error: invalid YAML: cannot read this value: a number "
                                          "with too many digits"),
    ("bsg: {rate: !!float x}\n", "h.yaml:1:13: error: invalid YAML: cannot read this value"),
    ("bsg: {timeout: 2001-02-30}\n", "h.yaml:1:16: error: invalid YAML: cannot read this value: day is out of range"),
    ("? [1, [2]]\n: 3\n", "h.yaml:1:1: error: invalid YAML: cannot read a mapping: unhashable type"),
    ('sites: {s1: {name: "\\ud800"}}\n', "h.yaml:1:20: error: a string holds a lone surrogate"),
    ("bsg: {timeout: 99999999999999999999h}\n", "h.yaml:1:16: error: bsg.timeout: a duration is at most 36500d"),
    ("bsg: {timeout: 1e999}\n", "h.yaml:1:16: error: bsg.timeout: a duration is at most 36500d"),
    ("bsg: {rate: .nan}\n", "h.yaml:1:13: error: bsg.rate: expected a positive number of requests per second, got nan"),
    ("bsg: {rate: " + "9" * 400 + "}\n", "h.yaml:1:13: error: bsg.rate: expected a positive number of requests per "
                                         "second, got a number too large to use"),
    ("bsg: {rate: .inf}\n", "h.yaml:1:13: error: bsg.rate: expected a positive number of requests per second, got inf"),
])
def test_config_inputs_that_crashed_the_loader_are_located_errors(tmp_path, text, expected):
    errors = _config_errors(tmp_path, text)
    assert any(expected in e for e in errors), errors


def test_a_lone_surrogate_in_the_environment_is_a_located_error_without_the_value(tmp_path):
    errors = _config_errors(tmp_path, "sites: {s1: {name: !env NAME}}\n", {"NAME": "shop\udcff"})
    assert errors == ["h.yaml:1:20: error: sites.s1.name: the value of !env NAME is not valid UTF-8 text"]


def test_control_characters_are_located(tmp_path):
    from herald.engine.config import _load_text
    from herald.engine.errors import ConfigError
    from pathlib import Path

    with pytest.raises(ConfigError) as err:
        _load_text("sites:\n  s1: {name: a\x00b}\n", "h.yaml", Path(tmp_path / "h.yaml"), {})
    assert err.value.diagnostics[0].headline() == "h.yaml:2:15: error: invalid YAML: U+0000 is not allowed in a YAML file"
