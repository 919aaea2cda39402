"""Typed rows the store hands out — the same for every backend.

Two shapes, chosen by who reads them:
- frozen dataclasses (`OutboxRow`, `CampaignRow`) for rows the engine holds and reads by
  attribute. `CampaignRow` is also a read-only `Mapping` (`c["state"]`, `c.get("name")`):
  the campaign feeder, the alerter and tests were written against dict rows and still
  read it that way.
- a `TypedDict` (`PollItem`, `RecipientRow`) where a caller needs a real `dict`: the
  dispatcher tells a poll item from an `OutboxRow` with `isinstance(row, dict)` and
  spreads it (`{**item}`), so the row stays a dict and only gains a declared shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypedDict



@dataclass(frozen=True)
class OutboxRow:
    """An outbox message as the dispatcher sends it (`claim_due`, `in_state`)."""
    id: int
    reference: str
    site: str
    channel: str
    to_phone: str
    sender: str | None
    text: str | None
    sms_sender: str | None
    sms_text: str | None
    state: str
    attempts: int
    stale_at: float | None
    send_at: float
    rule_id: str | None
    event_id: str | None
    # The omni fallback's columns; every decision about them is in engine/delivery/omni.py.
    omni: str | None = None          # engine | provider (omni messages)
    leg: str | None = None           # engine omni: the leg to send now (viber | sms)
    sms_reference: str | None = None
    fallback_after: float | None = None
    endpoint: str | None = None      # where the last attempt went
    uncertain_at: str | None = None  # an endpoint that may have taken it (outcome unknown)
    uncertain_since: float | None = None  # when its outcome there became unknown

    @property
    def msisdn(self) -> str:
        return self.to_phone.lstrip("+")

    @property
    def kind(self) -> str:
        """What goes out on this attempt: `sms` or `viber` (an omni's Viber leg, with
        BSG's alt_route when omni is `provider`)."""
        if self.channel == "sms" or (self.channel == "omni" and self.leg == "sms"):
            return "sms"
        return "viber"

    @property
    def leg_reference(self) -> str:
        """The BSG reference of this attempt (an engine omni's SMS leg has its own)."""
        return self.sms_reference if self.kind == "sms" and self.sms_reference else self.reference


OUTBOX_FIELDS = tuple(f.name for f in fields(OutboxRow))


class PollItem(TypedDict):
    """A sent message whose final status is due to be asked for (`Store.due_polls`)."""
    id: int
    reference: str
    site: str
    channel: str
    sent_at: float | None
    attempts: int
    omni: str | None
    leg: str | None
    sms_reference: str | None
    endpoint: str | None
    fallback_at: float | None
    stale_at: float | None


POLL_FIELDS = tuple(PollItem.__annotations__)


class RecipientRow(TypedDict):
    """A campaign recipient due to be fed into the outbox (`Store.due_recipients`)."""
    seq: int
    phone: str
    data: str | None    # JSON of the recipient's own macros
    tz: str | None


class _ReadAsMapping(Mapping[str, Any]):
    """A dataclass row that can also be read like the dict it replaced."""
    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class CampaignRow(_ReadAsMapping):
    """A campaign as stored (times in epoch seconds; `source` is JSON text)."""
    id: int
    name: str | None
    origin: str
    site: str
    channel: str
    template: str | None
    text: str | None
    sender: str | None
    source: str
    start_at: float
    end_at: float
    send_window: str | None
    rate: float
    budget: str | None
    state: str            # active paused stopped cancelled ended completed
    reason: str | None
    total: int
    recalled: int
    created_at: float
    updated_at: float
    done_at: float | None

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> "CampaignRow":
        """From a row with (at least) the campaign columns."""
        return cls(**{name: row[name] for name in CAMPAIGN_FIELDS})


CAMPAIGN_FIELDS = tuple(f.name for f in fields(CampaignRow))
