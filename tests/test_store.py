"""The store: journal, outbox claims, references, migrations — on a real SQLite file."""

import inspect
import re
from datetime import datetime, timedelta, timezone

import pytest

from herald.engine.events import Event
from herald.engine.store import MIGRATIONS, CampaignRow, MessageState, PollItem, Store
from herald.engine.store.interface import AGGREGATES, StoreBackend

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


def test_the_sqlite_store_implements_every_aggregate_interface(store):
    """Store is the facade callers use; interface.py is what a second backend implements:
    the same method names with the same signatures."""
    assert isinstance(store, StoreBackend)
    for aggregate in AGGREGATES:
        for name, declared in vars(aggregate).items():
            if callable(declared) and not name.startswith("_") and name != "transaction":
                assert inspect.signature(getattr(Store, name)) == inspect.signature(declared), name


CAMPAIGN = dict(origin="cli", site="s1", channel="sms", source="{}", start_at=0, end_at=1, rate=1.0,
                state="active")


def test_a_campaign_and_its_recipients_are_written_together_or_not_at_all(store):
    def recipients(fail_at=None):
        for i in range(1, 1001):
            if i == fail_at:
                raise ValueError("the source broke off")
            yield f"+7900{i:07d}", None, None

    with pytest.raises(ValueError):
        store.create_campaign({**CAMPAIGN, "name": "broken"}, recipients(fail_at=700), chunk=100)
    assert store.campaign("broken") is None
    assert store._execute("SELECT COUNT(*) FROM campaign_recipients").fetchone()[0] == 0

    cid = store.create_campaign({**CAMPAIGN, "name": "whole"}, recipients(), chunk=100)
    row = store.campaign(cid)
    assert isinstance(row, CampaignRow) and row.total == row["total"] == 1000
    assert row.get("name") == "whole" and row.get("nope") is None and dict(row)["state"] == "active"
    assert [r["seq"] for r in store.due_recipients(cid, 0, 3)] == [1, 2, 3]
    assert store.info()["tables"]["campaign_recipients"]["rows"] == 1000


def test_due_polls_are_typed_dicts_of_sent_messages(store):
    mid, ref = store.add_message(site="s1", channel="sms", to_phone="+79001234567", state=MessageState.QUEUED,
                                 send_at=T0)
    assert store.due_polls(T0) == []
    store.update_message(mid, state=MessageState.SENT, sent_at=T0)
    [item] = store.due_polls(T0 + timedelta(seconds=1))
    assert isinstance(item, dict) and item["id"] == mid and item["reference"] == ref
    assert set(item) == set(PollItem.__annotations__)
    assert store.message(mid)["state"] == "sent"
