"""Stored rows as the JSON the HTTP API and the CLI show (ISO times, decoded JSON columns)."""

from __future__ import annotations

import json
import sqlite3

from herald.engine.store.sqlite.common import _iso, from_epoch


def message_json(row: dict) -> dict:
    return {
        "id": row["id"], "reference": row["reference"], "kind": row["kind"], "state": row["state"],
        "reason": row["reason"] or "", "error_code": row["error_code"], "attempts": row["attempts"],
        "site": row["site"], "channel": row["channel"], "to": row["to_phone"], "recipient": row["recipient"],
        "copy": bool(row["copy"]), "sender": row["sender"], "text": row["text"], "sms_sender": row["sms_sender"],
        "sms_text": row["sms_text"], "encoding": row["encoding"], "parts": row["parts"], "template": row["template"],
        "rule": row["rule_id"], "event": row["event_id"], "firing_id": row["firing_id"],
        "bsg_id": row["bsg_id"], "bsg_status": row["bsg_status"], "sms_bsg_id": row["sms_bsg_id"],
        "price": row["price"], "currency": row["currency"],
        "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"]),
        "send_at": _iso(row["send_at"]), "stale_at": _iso(row["stale_at"]), "sent_at": _iso(row["sent_at"]),
        "final_at": _iso(row["final_at"]),
        "omni": row.get("omni"), "leg": row.get("leg"), "sms_reference": row.get("sms_reference"),
        "viber_bsg_id": row.get("viber_bsg_id"), "viber_status": row.get("viber_status"),
        "double_delivery": bool(row.get("double_delivery")), "endpoint": row.get("endpoint"),
        "uncertain_at": row.get("uncertain_at"), "uncertain_since": _iso(row.get("uncertain_since")),
        "replay_of": row.get("replay_of"),
        "replayed_by": row.get("replayed_by"), "fallback_at": _iso(row.get("fallback_at")),
    }


def firing_json(row: dict) -> dict:
    return {"id": row["id"], "event": row["event_id"], "rule": row["rule_id"], "rule_version": row["rule_version"],
            "fired": bool(row["fired"]), "reason": row["reason"], "at": _iso(row["at"]),
            "trace": json.loads(row["trace"])}


def exchange_json(row: dict) -> dict:
    return {"at": _iso(row["at"]), "endpoint": row["endpoint"], "method": row["method"], "path": row["path"],
            "request": json.loads(row["request"]) if row["request"] else None, "status": row["status"],
            "response": json.loads(row["response"]) if row["response"] else None, "seconds": row["seconds"]}


def alert_mail(row: sqlite3.Row) -> dict:
    mail = dict(row)
    mail["recipients"] = json.loads(mail["recipients"])
    for column in ("created_at", "next_attempt_at", "sent_at"):
        mail[column] = from_epoch(mail[column])
    return mail
