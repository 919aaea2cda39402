"""A fetched mail and the small helpers both sides of the IMAP connector use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imapclient import IMAPClient


@dataclass
class _Fetched:
    uid: int
    raw: bytes
    size: int
    date: int | None = None         # INTERNALDATE, Unix seconds


def _seconds(value: Any) -> int | None:
    """An INTERNALDATE (an aware datetime: normalise_times is off) as Unix seconds."""
    return int(value.timestamp()) if isinstance(value, datetime) else None


def _close(conn: IMAPClient) -> None:
    try:
        conn.shutdown()
    except Exception:                 # already closed or broken: nothing to release
        pass
