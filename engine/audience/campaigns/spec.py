"""A campaign request checked into a `Spec`: fields, rate, budget, times, the recipients' source, CSV."""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo


from herald.engine.config import Config
from herald.engine.errors import CampaignError, EventError, did_you_mean
from herald.engine.events import parse_time
from herald.engine.helpers.windows import WINDOW_FORMAT, parse_window
from herald.engine.rules.loader import Project

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


def parse_spec(payload: Any, config: Config, project: Project, *, origin: str = "http", base_dir: Path | None = None,
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
