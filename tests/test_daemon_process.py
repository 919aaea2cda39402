"""`herald run` as ops run it: a process that starts, stops on SIGTERM, fails fast on bad
config, and survives SIGKILL at any moment without losing or repeating a message."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import httpx

from tests.daemon_helpers import ROOT, free_port, start_daemon, wait_http, write_project


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 10.0) -> tuple[int, str]:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_make_run_config_starts_in_sandbox_and_stops_on_sigterm(tmp_path):
    port = free_port()
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")   # herald.yaml's directory file
    text = (ROOT / "herald.yaml").read_text().replace("127.0.0.1:8780", f"127.0.0.1:{port}")
    (tmp_path / "herald.yaml").write_text(text)
    proc = start_daemon(tmp_path / "herald.yaml")
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert health["sandbox"] is True and health["rules"] >= 20
        event = json.loads((ROOT / "examples" / "order-created.json").read_text())
        assert httpx.post(f"http://127.0.0.1:{port}/events", json=event).status_code == 202
        started = time.monotonic()
        code, out = stop(proc)
    finally:
        proc.kill()
    assert code == 0 and time.monotonic() - started < 5
    assert "sandbox mode" in out.splitlines()[0]


def test_bad_config_exits_2_with_a_located_line(tmp_path):
    config = write_project(tmp_path, 'on order.created send sms to customer.phone text "x"\n', port=free_port(),
                           site_extra="    send_window: 25:00-10:00\n")
    proc = start_daemon(config)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert f"{config}:" in out and "send_window" in out


def test_bad_rules_exit_2(tmp_path):
    config = write_project(tmp_path, 'on order.created sned sms to customer.phone text "x"\n', port=free_port())
    proc = start_daemon(config)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2 and "rules/main.rules:1:18: error: unexpected `sned`" in out


def test_taken_port_exits_2_with_one_clear_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_project(tmp_path, 'on order.created send sms to customer.phone text "x"\n', port=port)
        proc = start_daemon(config)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out


def _post_until_accepted(url: str, event: dict, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, json=event, timeout=2).status_code == 202:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"event {event['id']} never accepted")


def _drain_and_stop(proc: subprocess.Popen, api_port: int, seconds: float) -> None:
    """Wait until nothing is pending, queued or deferred, then SIGTERM: a clean exit."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = httpx.get(f"http://127.0.0.1:{api_port}/health").json()
        if health["pending_events"] == 0 and health["queue_depth"] == 0 and health["deferred"] == 0:
            break
        time.sleep(0.2)
    code, _ = stop(proc)
    assert code == 0


def test_sigkill_at_random_moments_never_loses_or_repeats_a_message(tmp_path):
    """20 rounds of SIGKILL while 1,000 messages flow: each reaches the fake BSG exactly once."""
    rounds, total = 20, 1000
    rng = random.Random(20261127)
    bsg_port, api_port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "herald.engine.cli.main",
                             "fake-bsg", "--port", str(bsg_port), "--delivery-delay", "0.2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{bsg_port}/_fake/messages")
        config = write_project(tmp_path, 'on order.created send sms to customer.phone text "Заказ #ORDER_ID#"\n',
                               port=api_port, bsg_url=f"http://127.0.0.1:{bsg_port}")
        events = [{"type": "order.created", "id": f"evt-{i}",
                   "data": {"order": {"id": i}, "customer": {"phone": f"+7900{i:07d}"}}} for i in range(total)]
        per_round = total // rounds
        url = f"http://127.0.0.1:{api_port}/events"
        for r in range(rounds):
            proc = start_daemon(config)
            try:
                wait_http(f"http://127.0.0.1:{api_port}/health")
                batch = events[r * per_round:(r + 1) * per_round]
                kill_after = rng.uniform(0.05, 0.6)
                started = time.monotonic()
                for event in batch:
                    _post_until_accepted(url, event, time.monotonic() + 30)
                    if time.monotonic() - started > kill_after:
                        break
                proc.kill()                                   # SIGKILL: no chance to clean up
                proc.wait(timeout=10)
            finally:
                proc.kill()
        # a last, clean run: post everything (known ids are ignored) and let the queue drain
        proc = start_daemon(config)
        try:
            wait_http(f"http://127.0.0.1:{api_port}/health")
            for event in events:                          # whatever a round did not post
                _post_until_accepted(url, event, time.monotonic() + 30)
            _drain_and_stop(proc, api_port, 60)
        finally:
            proc.kill()
        sent = httpx.get(f"http://127.0.0.1:{bsg_port}/_fake/messages").json()["messages"]
        by_phone = Counter(m["msisdn"] for m in sent)
        by_reference = Counter(m["reference"] for m in sent)
        assert len(by_phone) == total, f"{total - len(by_phone)} message(s) lost"
        assert max(by_phone.values()) == 1, [p for p, n in by_phone.items() if n > 1][:5]
        assert max(by_reference.values()) == 1
    finally:
        fake.kill()


def test_json_logs_and_no_secret_in_logs_traces_or_history(tmp_path):
    bsg_port, api_port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "herald.engine.cli.main", "fake-bsg", "--port", str(bsg_port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    secret_key, token = "live_S3CR3TKEY0123456789", "tok-S3CR3T-0987654321"
    try:
        wait_http(f"http://127.0.0.1:{bsg_port}/_fake/messages")
        config = write_project(tmp_path, 'on order.created send sms to customer.phone text "hi"\n', port=api_port,
                               extra=f"  tokens: [!env HERALD_TOKEN]\n")
        text = config.read_text() + f"bsg:\n  url: http://127.0.0.1:{bsg_port}\n  api_key: !env BSG_API_KEY\n"
        config.write_text(text)
        env = {"BSG_API_KEY": secret_key, "HERALD_TOKEN": token}
        proc = subprocess.Popen([sys.executable, "-m", "herald.engine.cli.main", "run", "-c", str(config), "--log-format", "json"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        try:
            wait_http(f"http://127.0.0.1:{api_port}/health")
            auth = {"Authorization": f"Bearer {token}"}
            event = {"type": "order.created", "data": {"order": {"id": 1}, "customer": {"phone": "+79001112233"}}}
            assert httpx.post(f"http://127.0.0.1:{api_port}/events", json=event, headers=auth).status_code == 202
            deadline = time.monotonic() + 10
            while not httpx.get(f"http://127.0.0.1:{bsg_port}/_fake/messages").json()["messages"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            trace = httpx.get(f"http://127.0.0.1:{api_port}/messages/1", headers=auth).text
            bad_reload = httpx.post(f"http://127.0.0.1:{api_port}/reload", headers={"Authorization": "Bearer x"})
            assert bad_reload.status_code == 401
            code, out = stop(proc)
        finally:
            proc.kill()
        assert code == 0
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert {"time", "level", "logger", "message"} <= set(records[0])
        history = subprocess.run([sys.executable, "-m", "herald.engine.cli.main", "trace", "1", "-c", str(config)], cwd=tmp_path,
                                 capture_output=True, text=True, env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
        assert "POST /sms/create" in history.stdout
        store_files = [p.read_bytes().decode("latin-1") for p in (tmp_path / "var").iterdir()]   # db and its WAL
        for blob in (out, trace, history.stdout + history.stderr, *store_files):
            assert secret_key not in blob and token not in blob
    finally:
        fake.kill()


def test_sigkill_during_failover_never_sends_a_message_through_both_endpoints(tmp_path):
    """Herald killed at random moments while the main endpoint keeps failing in the ways
    that leave an outcome unknown — answers too slow (the fake takes the message, Herald
    times out) and dropped connections — with a backup beside it: in the end every phone
    got its message exactly once, at one endpoint or the other."""
    rounds, total = 9, 360
    rng = random.Random(20261128)
    main_port, backup_port, api_port = free_port(), free_port(), free_port()
    fakes = [subprocess.Popen([sys.executable, "-m", "herald.engine.cli.main", "fake-bsg", "--port", str(port),
                               "--delivery-delay", "0.2", "--api-key", "test_key"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for port in (main_port, backup_port)]
    main, backup = (f"http://127.0.0.1:{p}" for p in (main_port, backup_port))
    try:
        for url in (main, backup):
            wait_http(f"{url}/_fake/messages")
        config = write_project(
            tmp_path, 'on order.created send sms to customer.phone text "Заказ #ORDER_ID#"\n', port=api_port,
            bsg_url=main, extra="")
        text = config.read_text(encoding="utf-8").replace(
            "  rate: 1000\n", f"  rate: 1000\n  timeout: 1s\n  failover: {{window: 30s, failures: 2, probe: 1s}}\n"
                              f"  backup:\n    - url: {backup}\n")
        config.write_text(text, encoding="utf-8")
        events = [{"type": "order.created", "id": f"evt-{i}",
                   "data": {"order": {"id": i}, "customer": {"phone": f"+7901{i + 1000:07d}"}}} for i in range(total)]
        per_round = total // rounds
        url = f"http://127.0.0.1:{api_port}/events"
        faults = [{"mode": "slow", "delay": 1.5}, {"mode": "down"}, None]
        for r in range(rounds):
            fault = faults[r % len(faults)]
            if fault:
                httpx.post(f"{main}/_fake/faults", json=fault).raise_for_status()
            else:
                httpx.delete(f"{main}/_fake/faults").raise_for_status()
            proc = start_daemon(config)
            try:
                wait_http(f"http://127.0.0.1:{api_port}/health")
                for event in events[r * per_round:(r + 1) * per_round]:
                    _post_until_accepted(url, event, time.monotonic() + 30)
                time.sleep(rng.uniform(0.3, 2.0))             # messages in flight, endpoints failing over
                proc.kill()                                   # SIGKILL: no chance to clean up
                proc.wait(timeout=10)
            finally:
                proc.kill()
        httpx.delete(f"{main}/_fake/faults").raise_for_status()
        proc = start_daemon(config)
        try:
            wait_http(f"http://127.0.0.1:{api_port}/health")
            _drain_and_stop(proc, api_port, 90)
        finally:
            proc.kill()
        sent = [m for url in (main, backup) for m in httpx.get(f"{url}/_fake/messages").json()["messages"]]
        at_backup = httpx.get(f"{backup}/_fake/messages").json()["count"]
        by_phone = Counter(m["msisdn"] for m in sent)
        by_reference = Counter(m["reference"] for m in sent)
        assert len(by_phone) == total, f"{total - len(by_phone)} message(s) lost"
        assert max(by_phone.values()) == 1, [p for p, n in by_phone.items() if n > 1][:5]
        assert max(by_reference.values()) == 1
        assert 0 < at_backup < total                          # the failover really happened, both ways
    finally:
        for fake in fakes:
            fake.kill()
