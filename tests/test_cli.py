"""The `herald` command as a user runs it: exit codes and what it prints."""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import BASE_CONFIG


def herald(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "herald.engine.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


GOOD = 'rule "new" on order.created send omni to customer.phone using "new_order"\n'
EVENT = {"type": "order.created", "site": "s1", "id": "evt-1", "time": "2026-11-27T22:30:00+03:00",
         "data": {"order": {"id": 42, "number": "A-42", "price": "990.00"},
                  "customer": {"phone": "8 900 111-22-33"}}}


def test_check_clean_project(project_dir):
    project_dir.setup(GOOD)
    code, out, err = herald("check", cwd=project_dir.root)
    assert (code, out.strip(), err) == (0, "ok: 1 rule(s), 3 template(s), 0 warning(s)", "")


def test_check_prints_every_error_located_with_caret_and_exits_1(project_dir):
    project_dir.setup(GOOD + 'rule "b" on order.status = "F" send sms to customer.phone text "x"\n'
                             'rule "c" on order.created send sms to customer.phone using "new_ordr"\n')
    code, out, err = herald("check", cwd=project_dir.root)
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("rules/main.rules:2:26: error: unexpected `=`")
    assert lines[1:3] == ['    rule "b" on order.status = "F" send sms to customer.phone text "x"',
                          "                             ^"]
    assert 'rules/main.rules:3:60: error: unknown template "new_ordr"' in err
    assert 'did you mean "new_order"?' in err
    assert lines[-1] == "2 error(s), 0 warning(s)"


def test_check_strict_fails_on_warnings(project_dir):
    project_dir.setup('rule "w" on order.created send sms to customer.phone text "#ORDER_NUMBR#"\n')
    assert herald("check", cwd=project_dir.root)[0] == 0
    code, _, err = herald("check", "--strict", cwd=project_dir.root)
    assert code == 1 and "warning: #ORDER_NUMBR#" in err


def test_check_config_error_exit_1_and_secrets_never_printed(project_dir):
    project_dir.setup(GOOD, config=BASE_CONFIG + "bsg:\n  api_key: !secret bsg_key\n  rate: fast\n")
    project_dir.write("secrets.yaml", "bsg_key: live_TOPSECRET123\n")
    code, out, err = herald("check", cwd=project_dir.root)
    assert code == 1
    assert "herald.yaml:" in err and "rate" in err
    assert "TOPSECRET" not in out + err


def test_simulate_json_shows_deferred_message(project_dir, tmp_path):
    project_dir.setup(GOOD)
    (tmp_path / "event.json").write_text(json.dumps(EVENT))
    code, out, err = herald("simulate", "event.json", "--json", cwd=project_dir.root)
    assert code == 0, err
    result = json.loads(out)
    (run,) = result["rules"]
    (m,) = run["messages"]
    assert (m["channel"], m["to"], m["status"], m["send_at"]) == (
        "omni", "+79001112233", "deferred", "2026-11-28T09:00:00+03:00")
    assert m["sms_text"] == "Заказ A-42 принят" and m["encoding"] == "UCS-2" and m["parts"] == 1


def test_simulate_at_and_human_output(project_dir, tmp_path):
    project_dir.setup(GOOD + 'rule "paid" on order.paid == true send sms to customer.phone text "paid"\n')
    (tmp_path / "event.json").write_text(json.dumps(EVENT))
    code, out, _ = herald("simulate", "event.json", "--at", "2026-11-28T12:00:00+03:00", cwd=project_dir.root)
    assert code == 0
    assert "goes: now" in out
    assert 'rule "paid" (rules/main.rules:2:1): did not fire: trigger is false: order.paid == true: ' \
           "order.paid is null" in out


def test_simulate_bad_event_points_at_the_field(project_dir, tmp_path):
    project_dir.setup(GOOD)
    (tmp_path / "event.json").write_text(json.dumps({"type": "order.created", "data": [], "site": "s1"}))
    code, _, err = herald("simulate", "event.json", cwd=project_dir.root)
    assert code == 1 and "/data" in err and "data is required and must be an object" in err


def test_test_command_passes_and_fails_with_diff(project_dir):
    project_dir.setup(GOOD)
    project_dir.write("rules/tests/orders.yaml", """
    tests:
      - name: night order waits for the window
        start: 2026-11-27T23:00:00+03:00
        steps:
          - event: {type: order.created, data: {order: {id: 1, number: A-1, price: "10"}, customer: {phone: "89001112233"}}}
        expect:
          - {rule: new, channel: omni, to: "+79001112233", at: "2026-11-28T09:00:00+03:00"}
      - name: wrong text
        steps:
          - event: {type: order.created, data: {order: {id: 1, number: A-1, price: "10"}, customer: {phone: "89001112233"}}}
        expect:
          - {rule: new, text: "something else"}
    """)
    code, out, _ = herald("test", cwd=project_dir.root)
    assert code == 1
    assert "rules/tests/orders.yaml::night order waits for the window PASSED" in out
    assert '-  text: "something else"' in out and '+  text: "Ваш заказ №A-1 принят. Стоимость: 10"' in out
    assert out.strip().splitlines()[-1].startswith("1 passed, 1 failed in ")


@pytest.mark.parametrize("command", ["check", "test"])
def test_shipped_project_commands_succeed(command):
    """The repository's own herald.yaml, rules and examples: what `make run` and pre-commit use."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent
    args = [command, "--strict"] if command == "check" else [command]
    code, out, err = herald(*args, cwd=root)
    assert code == 0, out + err


def _store_with_an_order(root, events: int = 1):
    """A store as the daemon leaves it: order 42's events and one message."""
    from datetime import datetime, timedelta, timezone

    from herald.engine.events import Event
    from herald.engine.store import Store
    store = Store(root / "var" / "herald.db")
    start = datetime(2026, 11, 27, 19, 0, tzinfo=timezone.utc)
    store.add_events([Event("order.updated", {"order": {"id": 42, "number": "A-42", "status": "N"}}, "s1",
                            f"e-{i}", start + timedelta(seconds=i)) for i in range(events)], "http")
    store.add_message(site="s1", channel="sms", to_phone="+79001112233", state="sent", send_at=start,
                      event_id="e-0", rule_id="new", text="Заказ A-42 принят")
    store.close()


SECRET_CONFIG = BASE_CONFIG + """
bsg:
  api_key: !secret bsg_key
bitrix24:
  application_token: !env B24_TOKEN_FOR_TEST
  site: s1
"""


def test_store_reading_commands_need_no_daemon_secrets(project_dir):
    """history, timeline and trace read the store: unset !env / !secret values are no error there."""
    project_dir.setup(GOOD, config=SECRET_CONFIG)
    _store_with_an_order(project_dir.root)
    code, out, err = herald("history", cwd=project_dir.root)
    assert (code, err) == (0, "") and "Заказ A-42 принят" in out
    code, out, err = herald("timeline", "order:42", cwd=project_dir.root)
    assert (code, err) == (0, "") and "order.updated (e-0)" in out
    code, out, err = herald("trace", "1", cwd=project_dir.root)
    assert (code, err) == (0, "") and "message 1" in out
    code, out, err = herald("store", cwd=project_dir.root)
    assert (code, err) == (0, "") and "migrations, the last 00" in out
    assert re.search(r"^events\s+1$", out, re.M) and re.search(r"^outbox\s+1$", out, re.M)
    code, out, err = herald("store", "--json", cwd=project_dir.root)
    assert json.loads(out)["tables"]["outbox"]["rows"] == 1
    # the daemon's own commands still insist on them
    code, _, err = herald("check", cwd=project_dir.root)
    assert code == 1 and "B24_TOKEN_FOR_TEST is not set" in err


def test_a_timeline_piped_into_head_stops_quietly(project_dir):
    """`herald timeline … | head`: no BrokenPipeError traceback when the reader goes away."""
    project_dir.setup(GOOD)
    _store_with_an_order(project_dir.root, events=3000)      # far more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "herald.engine.cli.main", "timeline", "order:42"], cwd=project_dir.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()                                     # what `head -1` does after its line
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert first.startswith(b"order 42 (site s1): 3001 entries")
    assert "Traceback" not in err and "BrokenPipe" not in err and err == ""
