"""Campaigns: one message to many recipients between a start and an end (docs/campaigns.md).

A campaign is created (CLI, `POST /campaigns`, or a YAML file under `rules/campaigns/`)
with its recipients resolved once — a subscription list, a CSV file, phone numbers, or a
directory department/group — and stored durably in `campaign_recipients`. The feeder, a
task of the daemon, moves them into the outbox at the campaign's pace; the dispatcher
sends whatever is due there in BSG batch calls of ≤ 50, as it does for every message.

    campaign_recipients ──feeder──► outbox (campaign_id) ──dispatcher──► BSG

- Exactly once: a recipient is marked fed in the transaction that writes its message,
  which gets its BSG reference then; a restart goes on with the recipients still pending.
- Each recipient's window (the campaign's `window`, else the site's `send_window`) is
  read in the site's time zone, or the recipient's own (`timezone` column of a CSV); a
  recipient outside it waits until it opens.
- Never more than a small backlog sits in the outbox, so pause, cancel and the end act
  on almost everything. At the end date, what was not handed to BSG — pending recipients
  and the campaign's queued messages — becomes `expired`, reason "campaign ended" (the
  messages also carry the end as their `stale after`, so none can go later).
- The opt-out list (STOP) and, for a list campaign, a later unsubscribe are checked when
  each recipient is fed: such a number is never messaged (`skipped`).
- Budget: until BSG has priced a message, one message goes at a time; then, before
  feeding, the cost so far (BSG's prices) plus the messages in flight at the highest
  price seen must leave room; when it does not, the campaign stops with an
  admin alert. A low balance (at most `bsg.balance_alert`, else zero) of the BSG account
  a campaign's site uses (the main one, or the site's own `api_key`) stops every running
  campaign of that account the same way; so does BSG refusing for lack of funds. `resume` continues.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo

import trio

from herald.engine.errors import Diagnostic, EventError, HeraldError, Location, did_you_mean, display_path
from herald.engine.events import Event, EventScope, parse_time
from herald.engine.helpers.phones import normalize_phone
from herald.engine.helpers.windows import WINDOW_FORMAT, parse_window
from herald.grammar.model import EventTrigger, Recipient, Rule, Send

log = logging.getLogger("herald.campaigns")

CHANNELS = ("sms", "viber", "omni")
SOURCES = ("list", "csv", "phones", "department", "group")
DEFAULT_RATE = 10.0              # messages per second
BACKLOG = 1000                   # at most this many of a campaign's messages wait in the outbox
CHUNK = 500                      # recipients fed per database call
BALANCE_EVERY = 30.0             # seconds between balance reads while a campaign runs
FUNDS_CODES = (8,)               # BSG: not enough funds
LIVE_STATES = ("active", "paused", "stopped", "completed")
KEYS = ("name", "site", "channel", "template", "text", "sender", "start", "end", "window", "rate", "budget",
        "enabled", *SOURCES)


class CampaignError(HeraldError):
    def __init__(self, status: int, message: str, pointer: str | None = None):
        super().__init__(message)
        self.status, self.message, self.pointer = status, message, pointer


@dataclass(frozen=True)
class Spec:
    """A validated campaign request."""

    site: str
    channel: str
    start: datetime
    end: datetime
    source: dict                   # {"list": "news"} | {"phones": [...]} | {"csv": TEXT} | {"department": ...}
    name: str | None = None
    template: str | None = None
    text: str | None = None
    sender: str | None = None
    window: str | None = None      # HH:MM-HH:MM; None: the site's send_window
    rate: float = DEFAULT_RATE
    budget: Decimal | None = None
    origin: str = "http"
    csv_rows: list = field(default_factory=list, compare=False, repr=False)


# ---- parsing -----------------------------------------------------------------------------

MIN_RATE, MAX_RATE = 1 / 86400, 100_000.0     # messages per second: one a day … what no account sends
RATE_FORMAT = "rate must be messages per time, e.g. 20/s, 600/m or 5000/h (from one a day to 100000/s)"


def parse_rate(value: Any) -> float | None:
    """`20/s`, `600/m`, `5000/h`, or a number (per second); None when it is not one
    or is outside MIN_RATE … MAX_RATE (a rate of 1e-300 would put the next message
    past what a datetime holds)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    else:
        m = re.fullmatch(r"\s*(\d{1,12}(?:\.\d{1,12})?)\s*/\s*(s|sec|m|min|h|hour)\s*", str(value))
        if not m:
            return None
        rate = float(m.group(1)) / {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}[m.group(2)]
    return rate if MIN_RATE <= rate <= MAX_RATE else None


def parse_spec(payload: Any, config, project, *, origin: str = "http", base_dir: Path | None = None,
               now: datetime | None = None) -> Spec:
    """Validate a campaign (`POST /campaigns` body, or a YAML file's mapping). Raises
    CampaignError with a JSON pointer."""
    if not isinstance(payload, Mapping):
        raise CampaignError(400, "a campaign is an object: {list | csv | phones | department | group, "
                                 "template | text, end, start?, window?, rate?, budget?, ...}", "")
    for key in payload:
        if key not in KEYS:
            hint = did_you_mean(str(key), KEYS) or "keys: " + ", ".join(KEYS)
            raise CampaignError(400, f"unknown key {key!r} ({hint})", f"/{key}")
    site_id = payload.get("site", next(iter(config.sites)))
    if not isinstance(site_id, str) or site_id not in config.sites:
        raise CampaignError(400, f"unknown site {site_id!r}", "/site")
    site = config.sites[site_id]
    channel = payload.get("channel", site.channel)
    if channel not in CHANNELS:
        raise CampaignError(400, f"channel must be one of {', '.join(CHANNELS)}", "/channel")
    template, text = payload.get("template"), payload.get("text")
    if (template is None) == (text is None):
        raise CampaignError(400, "give either template or text", "/template")
    if template is not None and project.templates.get(str(template)) is None:
        hint = did_you_mean(str(template), tuple(project.templates.templates))
        raise CampaignError(400, f"unknown template {template!r}" + (f" ({hint})" if hint else ""), "/template")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise CampaignError(400, "text must be a non-empty string", "/text")
    sender = payload.get("sender")
    if sender is not None and sender not in (*config.senders.sms, *config.senders.viber):
        raise CampaignError(400, f"sender {sender!r} is not among the configured senders", "/sender")
    tz = ZoneInfo(site.timezone)
    now = now or datetime.now(timezone.utc)
    start = _time(payload.get("start"), "/start", tz) if payload.get("start") is not None else now
    if payload.get("end") is None:
        raise CampaignError(400, "end is required: when unsent messages are recalled (ISO 8601)", "/end")
    end = _time(payload["end"], "/end", tz)
    if end <= start:
        raise CampaignError(400, "end must be after start", "/end")
    if end <= now:
        raise CampaignError(400, f"end ({end.isoformat()}) is in the past", "/end")
    window = payload.get("window")
    if window is not None:
        try:
            window = parse_window(str(window)).text
        except ValueError as exc:
            raise CampaignError(400, f"window: {exc}" if "HH:MM" in str(exc) else WINDOW_FORMAT, "/window") from exc
    rate = parse_rate(payload.get("rate", DEFAULT_RATE))
    if rate is None:
        raise CampaignError(400, RATE_FORMAT, "/rate")
    budget = _budget(payload.get("budget"))
    name = payload.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise CampaignError(400, "name must be a non-empty string", "/name")
    if name is not None and name.strip().isdigit():
        raise CampaignError(400, f"name {name!r} is only digits: it would read as a campaign id; "
                                 "add a letter (e.g. sale-{name})", "/name")
    source = _source(payload, config, base_dir)
    return Spec(site=site_id, channel=channel, start=start, end=end, source=source, name=name,
                template=template, text=text, sender=sender, window=window, rate=rate, budget=budget,
                origin=origin)


def _budget(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        budget = Decimal(str(value))
    except InvalidOperation:
        budget = None
    if budget is None or isinstance(value, bool) or not budget.is_finite() or budget <= 0:
        raise CampaignError(400, "budget must be a positive amount in the BSG account's currency", "/budget")
    return budget


def _time(value: Any, pointer: str, tz) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    try:
        return parse_time(value if isinstance(value, str) else str(value), pointer, default_tz=tz)
    except EventError as exc:
        raise CampaignError(400, exc.message, pointer) from exc


def _source(payload: Mapping, config, base_dir: Path | None) -> dict:
    given = [k for k in SOURCES if payload.get(k) is not None]
    if len(given) != 1:
        raise CampaignError(400, "give the recipients once: list, csv, phones, department or group",
                            f"/{given[1]}" if given else "/list")
    kind = given[0]
    value = payload[kind]
    if kind == "phones":
        if not isinstance(value, list) or not value:
            raise CampaignError(400, "phones must be a non-empty list of phone numbers", "/phones")
        return {"phones": [str(p) for p in value]}
    if not isinstance(value, str) or not value.strip():
        raise CampaignError(400, f"{kind} must be a non-empty string", f"/{kind}")
    if kind == "csv" and base_dir is not None and "\n" not in value:    # YAML: a file beside it
        path = base_dir / value
        try:
            value = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise CampaignError(400, f"cannot read {path}: {exc.strerror or exc}", "/csv") from exc
    if kind == "csv":
        read_csv(value)                                     # fails early, with the line
    return {kind: value}


def read_csv(text: str) -> list[tuple[str, dict, str | None]]:
    """(phone, other columns, time zone) per row of a CSV with a `phone` column; other
    columns become template macros (`name` → #NAME#), `timezone` the recipient's zone."""
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    try:
        return _csv_rows(reader)
    except csv.Error as exc:          # e.g. a field over the csv module's 128 KiB limit
        raise CampaignError(400, f"CSV line {reader.line_num}: {exc}; check its quotes", "/csv") from exc


def _csv_rows(reader: csv.DictReader) -> list[tuple[str, dict, str | None]]:
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "phone" not in columns:
        raise CampaignError(400, f"the CSV needs a `phone` column (header: {', '.join(columns) or 'none'})", "/csv")
    out = []
    for n, row in enumerate(reader, start=2):
        data = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k}
        tz = data.pop("timezone", "") or None
        if tz:
            try:
                ZoneInfo(tz)
            except Exception as exc:
                raise CampaignError(400, f"CSV line {n}: unknown time zone {tz!r}", "/csv") from exc
        out.append((data.pop("phone", ""), {k.upper(): v for k, v in data.items()}, tz))
    return out


# ---- creating (in the database thread) ---------------------------------------------------

def create(daemon, spec: Spec) -> dict:
    """Resolve the recipients and store the campaign; its status (with `invalid`: numbers
    that were left out). A name already used answers 409."""
    store = daemon.store
    if spec.name is not None and store.campaign(spec.name) is not None:
        raise CampaignError(409, f"a campaign named {spec.name!r} exists already", "/name")
    recipients, invalid = resolve(daemon, spec)
    if not recipients:
        kind = next(iter(spec.source))
        why = (f"all {len(invalid)} number(s) are invalid, e.g. {invalid[0]}" if invalid else
               f"the list {spec.source[kind]!r} has no confirmed subscribers (or they opted out)" if kind == "list"
               else f"{kind} {spec.source[kind]!r} has nobody with a phone number" if kind in ("department", "group")
               else "nobody to send to")
        raise CampaignError(400, f"no recipients: {why}; nothing was created", f"/{kind}")
    site = daemon.config.sites[spec.site]
    window = spec.window or (site.send_window.text if site.send_window else None)
    fields = {"name": spec.name, "origin": spec.origin, "site": spec.site, "channel": spec.channel,
              "template": spec.template, "text": spec.text, "sender": spec.sender,
              "source": json.dumps(describe_source(spec.source), ensure_ascii=False),
              "start_at": spec.start.timestamp(), "end_at": spec.end.timestamp(), "send_window": window,
              "rate": spec.rate, "budget": str(spec.budget) if spec.budget is not None else None,
              "state": "active", "reason": ""}
    campaign_id = store.create_campaign(fields, recipients)
    result = status(daemon, campaign_id)
    result["invalid"] = {"count": len(invalid), "examples": invalid[:5]}
    log.info("campaign %s (%s): %d recipient(s), %d invalid number(s) left out", campaign_id,
             spec.name or "unnamed", result["total"], len(invalid))
    return result


def describe_source(source: dict) -> dict:
    kind, value = next(iter(source.items()))
    if kind == "csv":
        return {"csv": f"{max(value.count(chr(10)), 1)} line(s)"}
    if kind == "phones":
        return {"phones": len(value)}
    return {kind: value}


def resolve(daemon, spec: Spec) -> tuple[Iterable[tuple[str, str | None, str | None]], list[str]]:
    """The recipients (E.164, macros JSON, zone), each number once, and the invalid ones."""
    from herald.engine.audience.directory import lookup
    from herald.engine.audience.subscriptions import SubscribedDirectory

    kind, value = next(iter(spec.source.items()))
    rows: list[tuple[str, dict | None, str | None]]
    if kind == "phones":
        rows = [(p, None, None) for p in value]
    elif kind == "csv":
        rows = read_csv(value)
    elif kind == "list":
        directory = SubscribedDirectory(daemon.directory, daemon.store)
        phones = directory.subscribers(value)
        if not phones and value not in daemon.config.subscriptions.lists and not phones.error:
            known = tuple(daemon.config.subscriptions.lists)
            hint = did_you_mean(value, known) or "configured lists: " + (", ".join(known) or "none")
            raise CampaignError(400, f'list "{value}" has no subscribers and is not configured ({hint})', "/list")
        rows = [(p, None, None) for p in phones]
    else:
        found = lookup(daemon.directory, kind, value)
        if found.error:
            raise CampaignError(400, f"{kind} {value!r}: {found.error}", f"/{kind}")
        rows = [(phone, None, None) for _, phone in found if phone]
    seen: set[str] = set()
    out, invalid = [], []
    for raw, data, tz in rows:
        phone = normalize_phone(raw)
        if not phone.ok:
            invalid.append(f"{raw}: {phone.error}")
            continue
        if phone.e164 in seen:
            continue
        seen.add(phone.e164)
        out.append((phone.e164, json.dumps(data, ensure_ascii=False) if data else None, tz))
    return out, invalid


# ---- status ------------------------------------------------------------------------------

def status(daemon, key: int | str) -> dict | None:
    store = daemon.store
    c = store.campaign(key)
    if c is None:
        return None
    counts = store.campaign_counts(c["id"])
    r, m = counts["recipients"], counts["messages"]
    now = daemon.clock.now().timestamp()
    state = c["state"]
    shown = {"active": "scheduled" if now < c["start_at"] else "running"}.get(state, state)
    queued = r.get("pending", 0) + sum(m.get(s, 0) for s in ("queued", "deferred", "held", "sending"))
    in_flight = queued + m.get("sent", 0)
    body = {
        "id": c["id"], "name": c["name"], "state": shown, "reason": c["reason"] or "", "site": c["site"],
        "channel": c["channel"], "template": c["template"], "text": c["text"], "sender": c["sender"],
        "source": json.loads(c["source"]), "origin": c["origin"],
        "start": _iso(c["start_at"]), "end": _iso(c["end_at"]), "window": c["send_window"],
        "rate": c["rate"], "budget": c["budget"], "total": c["total"],
        "queued": queued, "sent": m.get("sent", 0), "delivered": m.get("delivered", 0),
        "failed": m.get("failed", 0) + m.get("undelivered", 0),
        "expired": r.get("expired", 0) + m.get("expired", 0),
        "skipped": r.get("skipped", 0) + m.get("skipped", 0),
        "cancelled": r.get("cancelled", 0) + m.get("cancelled", 0),
        "cost": f"{counts['cost']:.4f}".rstrip("0").rstrip(".") if counts["cost"] else "0",
        "currency": counts["currency"],
        "done": state in ("ended", "cancelled") and in_flight - queued == 0
        or (state == "completed" and in_flight == 0),
    }
    return body


def list_status(daemon) -> list[dict]:
    return [status(daemon, c["id"]) for c in daemon.store.campaigns()]


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts is not None else None


# ---- pause / resume / cancel (in the database thread) ------------------------------------

def change_state(daemon, key: str, action: str) -> dict:
    store = daemon.store
    c = store.campaign(key)
    if c is None:
        raise CampaignError(404, f"no campaign {key}")
    cid, state = c["id"], c["state"]
    with store.transaction():
        if action == "pause":
            if not store.set_campaign_state(cid, "paused", "paused by an operator", ("active", "completed")):
                raise CampaignError(409, f"campaign {cid} is {state}: only a running or scheduled one can pause")
            store.hold_campaign(cid, None, "campaign paused")
        elif action == "resume":
            if not store.set_campaign_state(cid, "active", "", ("paused", "stopped")):
                raise CampaignError(409, f"campaign {cid} is {state}: only a paused or stopped one can resume")
            now = daemon.clock.now().timestamp()
            store.hold_campaign(cid, now, "")
            # an operator resumes after fixing the cause (a top-up): what BSG refused for it
            # goes now, unmarked, so the funds check does not stop the campaign again at once
            store.release_campaign_held(cid, FUNDS_CODES, now)
            if daemon.alerter is not None:
                daemon.alerter.resolve(f"campaign.stopped:{cid}", f"Campaign {c['name'] or cid} resumed",
                                       "An operator resumed the campaign.")
        elif action == "cancel":
            if not store.set_campaign_state(cid, "cancelled", "cancelled by an operator", LIVE_STATES):
                raise CampaignError(409, f"campaign {cid} is {state} already")
            store.recall_campaign(cid, "cancelled", "campaign cancelled")
            if daemon.alerter is not None and state == "stopped":
                # a cancelled campaign will not resume: its stop is no longer an open problem
                daemon.alerter.resolve(f"campaign.stopped:{cid}", f"Campaign {c['name'] or cid} cancelled",
                                       "An operator cancelled the stopped campaign.")
    feeder = getattr(daemon, "feeder", None)
    if feeder is not None:
        feeder.balance_at.clear()          # a resumed campaign reads the balance first
    return status(daemon, cid)


# ---- changing a campaign (`herald campaign set`, PATCH /campaigns/ID) --------------------

SETTABLE = ("budget", "end", "rate")


def update(daemon, key: str, payload: Any) -> dict:
    """Change the budget, end or rate of a campaign that is not over yet (in the database
    thread). A stopped campaign stays stopped: `resume` goes on with the new figures."""
    if not isinstance(payload, Mapping) or not payload:
        raise CampaignError(400, "give what to change: {budget?, end?, rate?}", "")
    for k in payload:
        if k not in SETTABLE:
            hint = did_you_mean(str(k), SETTABLE) or "only " + ", ".join(SETTABLE) + " can change"
            raise CampaignError(400, f"unknown key {k!r} ({hint})", f"/{k}")
    store = daemon.store
    c = store.campaign(key)
    if c is None:
        raise CampaignError(404, f"no campaign {key}")
    if c["state"] not in LIVE_STATES:
        raise CampaignError(409, f"campaign {c['id']} is {c['state']}: it cannot change any more")
    fields: dict[str, Any] = {}
    if "rate" in payload:
        rate = parse_rate(payload["rate"])
        if rate is None:
            raise CampaignError(400, RATE_FORMAT, "/rate")
        fields["rate"] = rate
    if "budget" in payload:
        budget = _budget(payload["budget"])
        fields["budget"] = str(budget) if budget is not None else None
    if "end" in payload:
        site = daemon.config.sites.get(c["site"])
        tz = ZoneInfo(site.timezone) if site is not None else timezone.utc
        if payload["end"] is None:
            raise CampaignError(400, "end is required: when unsent messages are recalled (ISO 8601)", "/end")
        end = _time(payload["end"], "/end", tz)
        if end.timestamp() <= c["start_at"]:
            raise CampaignError(400, "end must be after start", "/end")
        if end <= daemon.clock.now():
            raise CampaignError(400, f"end ({end.isoformat()}) is in the past", "/end")
        fields["end_at"] = end.timestamp()
    store.update_campaign(c["id"], fields)
    log.info("campaign %s changed: %s", c["id"], ", ".join(f"{k} {v}" for k, v in fields.items()))
    return status(daemon, c["id"])


# ---- the feeder --------------------------------------------------------------------------

class Feeder:
    """Moves due recipients of running campaigns into the outbox, at each campaign's rate."""

    def __init__(self, daemon):
        from herald.engine.runtime import Pulse
        self.daemon = daemon
        self.wake = Pulse()
        daemon.campaigns_wake = self.wake
        self.tokens: dict[int, tuple[float, float]] = {}   # campaign → (tokens, trio time)
        self.balance_at: dict[str | None, float] = {}      # account → trio time of its next balance read
        self.generation = None

    @property
    def store(self):
        return self.daemon.store

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self.generation != self.daemon.generation:
                self.generation = self.daemon.generation
                await load_declared(self.daemon)
            wait = await self.round()
            await self.wake.wait(wait)

    async def round(self) -> float:
        """Feed every running campaign once; how long to wait before the next round."""
        now = self.daemon.clock.now().timestamp()
        wait = 1.0          # ≤ 1 s: the clock may be virtual, and pause/resume come by HTTP
        for c in await self.daemon.db(self.store.live_campaigns):
            if now >= c["end_at"]:
                await self.daemon.db(self._end, c)
                continue
            if c["state"] != "active" or now < c["start_at"]:
                continue
            if not await self._funds_ok(c):
                continue
            wait = min(wait, await self._feed(c, now))
        return wait

    def _end(self, c: dict) -> None:
        people, messages = self.store.recall_campaign(c["id"], "expired", "campaign ended")
        reason = f"ended at {_iso(c['end_at'])}" + (f": {people + messages} unsent recalled" if people + messages
                                                      else "")
        if c["state"] == "completed" and not people + messages:
            self.store.set_campaign_state(c["id"], "ended", "ended: every message had gone")
        else:
            self.store.set_campaign_state(c["id"], "ended", reason)
        log.info("campaign %s: %s", c["id"], reason)

    async def _funds_ok(self, c: dict) -> bool:
        """Low balance or BSG refusing for lack of funds: stop every running campaign."""
        held = await self.daemon.db(self.store.campaign_held_operator, c["id"], FUNDS_CODES)
        if held:
            await self.daemon.db(self._stop, c, "BSG refuses to send: not enough funds (error 8)")
            return False
        from herald.engine.bsg.client import BsgError
        from herald.engine.audience.incoming import account_client

        account = self._account(c["site"])
        client = account_client(self.daemon, account)
        if client is None or trio.current_time() < self.balance_at.get(account, 0.0):
            return True
        self.balance_at[account] = trio.current_time() + BALANCE_EVERY
        try:
            balance = await client.balance()
        except BsgError as exc:
            log.info("campaigns: balance not read (%s); feeding on", exc)
            return True
        threshold = self.daemon.config.bsg.balance_alert or 0
        if balance.amount <= threshold:
            where = f" of site {account}'s BSG account" if account else ""
            reason = (f"low balance{where}: {balance.amount} {balance.currency} (at or under "
                      f"{threshold:g}{', bsg.balance_alert' if threshold else ''})")
            for other in await self.daemon.db(self.store.live_campaigns):   # every campaign of that account
                if other["state"] == "active" and self._account(other["site"]) == account:
                    await self.daemon.db(self._stop, other, reason)
            return False
        return True

    def _account(self, site: str) -> str | None:
        """The BSG account a site's messages go through: its own (api_key), else the main one (None)."""
        config = self.daemon.config.sites.get(site)
        return site if config is not None and config.api_key is not None else None

    def _stop(self, c: dict, reason: str) -> None:
        with self.store.transaction():
            if not self.store.set_campaign_state(c["id"], "stopped", reason, ("active",)):
                return
            if self.daemon.alerter is not None:
                name = c["name"] or f"#{c['id']}"
                self.daemon.alerter.open(
                    f"campaign.stopped:{c['id']}", f"Campaign {name} stopped: {reason}",
                    f"Herald stopped campaign {name} (id {c['id']}): {reason}.\n\nNothing more of it is sent; "
                    f"what was not sent waits. What to do: fix the cause, then `herald campaign resume {c['id']}` "
                    f"(or cancel it). Its end date still recalls what is unsent.", site=c["site"])
        log.warning("campaign %s stopped: %s", c["id"], reason)

    async def _feed(self, c: dict, now: float) -> float:
        cid, rate = c["id"], c["rate"]
        counts = await self.daemon.db(self.store.campaign_counts, cid)
        m = counts["messages"]
        backlog = sum(m.get(s, 0) for s in ("queued", "deferred", "held", "sending"))
        allowance = min(self._tokens(cid, rate), BACKLOG - backlog, CHUNK)
        budget = Decimal(c["budget"]) if c["budget"] else None
        if budget is not None:
            room = self._budget_room(budget, counts, backlog)
            if room is None:                      # no price seen yet: one message at a time until one is
                allowance = min(allowance, 1 - backlog)
            elif room <= 0:
                if backlog == 0:
                    await self.daemon.db(self._stop, c, f"budget reached: spent {counts['cost']:.2f} "
                                                        f"{counts['currency']} of {budget}".replace("  ", " "))
                return 0.5
            else:
                allowance = min(allowance, room)
        if allowance < 1:
            return max(0.02, min(1.0, 1.0 / rate))
        fed, left, next_due = await self.daemon.db(self._feed_batch, c, int(allowance), now)
        self._spend(cid, fed)
        if fed:
            self.daemon.dispatch_wake.set()
        if not left:
            await self.daemon.db(self._complete, cid)
            return 1.0
        if next_due is not None and next_due > now:
            return max(0.02, min(1.0, next_due - now))
        return 0.02 if fed else max(0.02, min(1.0, 1.0 / rate))

    @staticmethod
    def _budget_room(budget: Decimal, counts: dict, backlog: int) -> int | None:
        unit = counts["max_price"]
        if not unit:
            return None
        spent = Decimal(str(round(counts["cost"], 6)))
        unpriced = backlog                         # queued, not yet priced by BSG
        room = (budget - spent - unpriced * Decimal(str(unit))) / Decimal(str(unit))
        return math.floor(room)

    def _tokens(self, cid: int, rate: float) -> float:
        now = trio.current_time()
        tokens, at = self.tokens.get(cid, (min(rate, CHUNK), now))
        tokens = min(tokens + (now - at) * rate, max(rate, 1.0))
        self.tokens[cid] = (tokens, now)
        return tokens

    def _spend(self, cid: int, n: int) -> None:
        tokens, at = self.tokens[cid]
        self.tokens[cid] = (tokens - n, at)

    def _complete(self, cid: int) -> None:
        if self.store.next_recipient_due(cid) is None:
            self.store.set_campaign_state(cid, "completed", "every recipient has been handed to the outbox",
                                          ("active",))

    def _feed_batch(self, c: dict, limit: int, now_ts: float) -> tuple[int, bool, float | None]:
        """Up to `limit` due recipients into the outbox, each marked fed in the same
        transaction. (messages written, recipients left, when the next one is due)."""
        store, daemon = self.store, self.daemon
        rows = store.due_recipients(c["id"], now_ts, limit)
        if not rows:
            nxt = store.next_recipient_due(c["id"])
            return 0, nxt is not None, nxt
        plan = Planner(daemon, c)
        phones = [r["phone"] for r in rows]
        opted = store.opted_out(phones)
        source = json.loads(c["source"])
        gone = store.cancelled_subscribers(source["list"], phones) if "list" in source else set()
        now = datetime.fromtimestamp(now_ts, timezone.utc)
        fed, deferred = 0, []
        with store.transaction():
            # a pause, stop or cancel may have committed since this round read the campaign
            # (the round awaits the database between the two): it wins, nothing is fed
            current = store.campaign(c["id"])
            if current is None or current["state"] != "active":
                return 0, True, None
            for r in rows:
                if r["phone"] in opted:
                    store.mark_recipient(c["id"], r["seq"], "skipped", reason="on the opt-out list")
                    continue
                if r["phone"] in gone:
                    store.mark_recipient(c["id"], r["seq"], "skipped", reason=f"left the list {source['list']!r}")
                    continue
                opening = plan.opening(r["tz"], now)
                if opening is not None:
                    deferred.append((r["seq"], opening.timestamp()))
                    continue
                message_id = plan.enqueue(r["phone"], r["data"], now)
                store.set_message_campaign(message_id, c["id"])
                store.mark_recipient(c["id"], r["seq"], "fed", message_id)
                fed += 1
            if deferred:
                store.defer_recipients(c["id"], deferred)
        nxt = store.next_recipient_due(c["id"])
        return fed, nxt is not None, nxt


class Planner:
    """Renders and enqueues a campaign's message for one recipient, like a rule's send."""

    def __init__(self, daemon, c: dict):
        from herald.engine.rules.evaluate import Evaluator

        self.daemon, self.c = daemon, c
        self.evaluator = Evaluator(daemon.project, state=daemon.store, directory=daemon.directory)
        self.site = self.evaluator.site(c["site"])
        self.window = parse_window(c["send_window"]) if c["send_window"] else None
        self.zones: dict[str | None, ZoneInfo] = {}
        self.end = datetime.fromtimestamp(c["end_at"], timezone.utc)
        self.rule = Rule(f"campaign:{c['name'] or c['id']}", None, EventTrigger("campaign"), None, None, None, ())
        self.whole_day = parse_window("00:00-24:00")

    def opening(self, tz: str | None, now: datetime) -> datetime | None:
        """None when the recipient's window is open now, else when it opens."""
        if self.window is None:
            return None
        zone = self.zones.get(tz)
        if zone is None:
            zone = self.zones[tz] = ZoneInfo(tz or self.site.timezone)
        if self.window.contains(now.astimezone(zone).time()):
            return None
        return self.window.next_opening(now, zone)

    def enqueue(self, phone: str, data: str | None, now: datetime) -> int:
        c = self.c
        send = Send(c["channel"], (Recipient("phone", phone),), template=c["template"], text=c["text"],
                    sender=c["sender"], window=self.whole_day)
        macros = {"campaign": {"id": c["id"], "name": c["name"] or ""}, **(json.loads(data) if data else {})}
        event = Event("campaign", macros, c["site"], f"campaign:{c['id']}", now)
        [m] = self.evaluator.plan_send(self.rule, send, event, EventScope(event), self.site, now)
        m = dataclasses.replace(m, event_id="", stale_at=self.end, rule_id="")
        return self.daemon._enqueue(m, c["site"], None, kind="campaign")


# ---- campaigns declared in YAML (rules/campaigns/*.yaml) ---------------------------------

def declared_files(config) -> list[Path]:
    folder = Path(config.rules) / "campaigns"
    return sorted(p for p in folder.glob("*.y*ml") if p.is_file()) if folder.is_dir() else []


def _read_declared(path: Path) -> tuple[dict | None, Diagnostic | None]:
    """A campaign file's mapping (ruamel's, which knows each key's line and column)."""
    from ruamel.yaml import YAML, YAMLError

    where = display_path(path)
    try:
        data = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, Diagnostic(f"cannot read the campaign: {exc.strerror or exc}", Location(where))
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        loc = Location(where, mark.line + 1, mark.column + 1) if mark else Location(where)
        problem = getattr(exc, "problem", None) or str(exc)
        return None, Diagnostic(f"not valid YAML: {problem}", loc)
    if not isinstance(data, dict):
        return None, Diagnostic("a campaign file is a mapping: list | csv | phones | …, template | text, end, …",
                                Location(where, 1, 1))
    return data, None


def _locate(path: Path, data: Mapping, pointer: str | None) -> Location:
    """FILE:LINE:COL of a JSON pointer's key (its value, when the key is known)."""
    where = display_path(path)
    key = (pointer or "").lstrip("/").split("/")[0]
    lc = getattr(data, "lc", None)
    if not key or lc is None or key not in data:
        return Location(where, 1, 1)
    line, col = lc.value(key) if key in KEYS else lc.key(key)
    return Location(where, line + 1, col + 1)


def _declared_spec(path: Path, data: Mapping, config, project, now: datetime) -> Spec:
    payload = {str(k): v for k, v in data.items() if k != "enabled"}
    payload["name"] = payload.get("name") or path.stem
    return parse_spec(payload, config, project, origin=f"yaml:{path.name}", base_dir=path.parent, now=now)


def check_declared(config, project) -> list[Diagnostic]:
    """`herald check`: every rules/campaigns/*.yaml (enabled or not) validates as a
    campaign. An end already past is a warning: the campaign was, or will not be, sent."""
    problems: list[Diagnostic] = []
    for path in declared_files(config):
        data, problem = _read_declared(path)
        if problem is not None:
            problems.append(problem)
            continue
        try:
            spec = _declared_spec(path, data, config, project, datetime(2000, 1, 1, tzinfo=timezone.utc))
        except CampaignError as exc:
            problems.append(Diagnostic(exc.message, _locate(path, data, exc.pointer)))
            continue
        if spec.end <= datetime.now(timezone.utc):
            problems.append(Diagnostic(f"the end ({spec.end.isoformat()}) has passed: nothing of this campaign "
                                       "goes any more", _locate(path, data, "/end"), "warning"))
    return problems


async def load_declared(daemon) -> None:
    """Create the campaigns of rules/campaigns/*.yaml that do not exist yet (by name: the
    file's `name`, else its stem). A reload never creates a second one from a file."""
    for path in declared_files(daemon.config):
        data, problem = _read_declared(path)
        if problem is not None:
            log.error("%s", problem.headline())
            continue
        if data.get("enabled", True) is False:
            continue
        name = data.get("name") or path.stem
        if await daemon.db(daemon.store.campaign, name) is not None:
            continue
        try:
            spec = _declared_spec(path, data, daemon.config, daemon.project, daemon.clock.now())
            result = await daemon.db(create, daemon, spec)
        except CampaignError as exc:
            log.error("%s", Diagnostic(exc.message, _locate(path, data, exc.pointer)).headline())
            continue
        log.info("%s: campaign %s created (%d recipients)", path, result["id"], result["total"])
