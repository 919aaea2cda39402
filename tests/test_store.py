"""The store: journal, outbox claims, references, migrations — on a real SQLite file."""

import re
from datetime import datetime, timedelta, timezone

import pytest

from herald.engine.events import Event
from herald.engine.store import MIGRATIONS, Store

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "var" / "herald.db")
    yield s
    s.close()


def ev(i, **data):
    return Event("order.updated", data or {"order": {"id": i}}, "s1", f"e{i}", T0)


def test_migrations_are_named_and_applied_once(tmp_path):
    path = tmp_path / "h.db"
    first = Store(path)
    assert first.migrate() == []                      # already applied by the constructor
    first.close()
    again = Store(path)
    names = [r[0] for r in again._execute("SELECT name FROM migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]
    assert again._execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_same_event_id_is_journaled_once(store):
    assert store.add_events([ev(1), ev(2)], "http") == [("e1", True), ("e2", True)]
    assert store.add_events([ev(1, order={"id": 1, "status": "X"})], "http") == [("e1", False)]
    assert [e.id for e in store.pending_events()] == ["e1", "e2"]
    assert store.event("e1").data == {"order": {"id": 1}}      # the first version is kept


def test_events_and_cursor_commit_together(store):
    store.add_events([ev(1)], "sql1", cursor=("sql1", "last_id", "41"))
    assert store.get_cursor("sql1", "last_id") == "41"


def test_a_failed_transaction_leaves_nothing(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_events([ev(1)], "http")
            store.put_state("order:1@s1", {"order": {"id": 1}})
            raise RuntimeError("crash in the middle")
    assert store.pending_events() == [] and store.get_state("order:1@s1") is None


def test_messages_get_unique_bsg_references_before_sending(store):
    refs = {store.add_message(site="s1", channel="sms", to_phone="+79001112233", state="queued",
                              send_at=T0, text="hi")[1] for _ in range(200)}
    assert len(refs) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9]{1,32}", r) for r in refs)


def test_claim_due_takes_only_due_messages_once(store):
    now = T0
    due, _ = store.add_message(site="s1", channel="sms", to_phone="+79001112233", state="queued", send_at=now)
    later, _ = store.add_message(site="s1", channel="sms", to_phone="+79001112233", state="deferred",
                                 send_at=now + timedelta(hours=1))
    assert [r.id for r in store.claim_due(now)] == [due]
    assert store.claim_due(now) == []                      # already `sending`
    row = store.in_state("sending")[0]
    assert (row.id, row.attempts) == (due, 1)
    assert [r.id for r in store.claim_due(now + timedelta(hours=1))] == [later]


def test_stats_and_message_json(store):
    mid, ref = store.add_message(site="s1", channel="omni", to_phone="+79001112233", state="queued", send_at=T0,
                                 text="hi", sms_text="hi", rule_id="r", event_id="e1")
    store.update_message(mid, state="failed", reason="BSG error 21: invalid phone", error_code=21)
    message = store.message(ref)
    assert (message["id"], message["state"], message["error_code"]) == (mid, "failed", 21)
    assert message["final_at"] is not None
    assert store.stats()["messages"] == {"failed": 1}
