"""From an event to planned messages: the rule-run logic shared by the daemon,
`herald simulate` and `herald test`.

The evaluator is synchronous and deterministic: time comes in as an argument, and
state (last entity states, `once per` memory) lives behind small protocols, in
memory here and in SQLite in the daemon. Every rule run leaves a readable trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Protocol
from zoneinfo import ZoneInfo

from herald.engine.config import Site
from herald.engine.directory import Directory, StaticDirectory, lookup, lookup_user, members_trace, phone_of, user_trace
from herald.engine.events import Event, EventScope, merge_previous
from herald.engine.rules.loader import Project
from herald.engine.rules.matcher import why_not
from herald.engine.helpers.phones import normalize_phone
from herald.engine.helpers.segments import analyze
from herald.engine.rules.templates import MacroSource, render
from herald.engine.helpers.translit import to_latin
from herald.grammar.model import (
    ChangeTrigger, EventTrigger, Rule, Send, StateTrigger, Subscribe,
    format_duration, index_key,
)


# ---- state behind protocols ------------------------------------------------------------

class StateStore(Protocol):
    """The entities' state rules see (store table `entities`): per entity, the merge of every
    event about it from any source, updated as each event is evaluated, read by state and
    change triggers. Kept apart from the SQL connector's row snapshots (table `snapshots`),
    which hold what one source mapped from one row so it can diff rows into events — written
    with the cursor before any rule runs, also for rows that give no event; see the comment
    at DELETE in connectors/sql/core.py."""

    def get_state(self, entity_key: str) -> Mapping | None: ...
    def put_state(self, entity_key: str, data: Mapping) -> None: ...
    def last_firing(self, rule_id: str, key: tuple) -> datetime | None: ...
    def record_firing(self, rule_id: str, key: tuple, when: datetime) -> None: ...


@dataclass
class MemoryState:
    entities: dict[str, Mapping] = field(default_factory=dict)
    firings: dict[tuple[str, tuple], datetime] = field(default_factory=dict)

    def get_state(self, entity_key: str) -> Mapping | None:
        return self.entities.get(entity_key)

    def put_state(self, entity_key: str, data: Mapping) -> None:
        self.entities[entity_key] = data

    def last_firing(self, rule_id: str, key: tuple) -> datetime | None:
        return self.firings.get((rule_id, key))

    def record_firing(self, rule_id: str, key: tuple, when: datetime) -> None:
        self.firings[(rule_id, key)] = when


# ---- results -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedMessage:
    rule_id: str
    channel: str                    # sms | viber | omni
    to: str                         # E.164 where it could be normalised, else as found
    recipient: str                  # how the rule named it ("customer.phone", "admins" …)
    sender: str
    text: str                       # Viber text for viber/omni, SMS text for sms
    sms_text: str | None            # the SMS (or omni fallback) text
    sms_sender: str | None
    encoding: str | None            # of the SMS text: GSM-7 | UCS-2
    parts: int
    send_at: datetime
    status: str = "planned"         # planned | deferred | skipped | failed | expired
    reason: str = ""
    copy: bool = False
    template: str | None = None
    event_id: str = ""
    stale_at: datetime | None = None    # not handed to BSG by then: expired
    fallback_after: float | None = None # omni (engine): seconds Viber may take (None: the site's); see delivery/omni.py

    def as_json(self) -> dict:
        return {
            "rule": self.rule_id, "channel": self.channel, "to": self.to, "recipient": self.recipient,
            "sender": self.sender, "text": self.text, "sms_text": self.sms_text,
            "sms_sender": self.sms_sender, "encoding": self.encoding, "parts": self.parts,
            "send_at": self.send_at.isoformat(), "status": self.status, "reason": self.reason,
            "copy": self.copy, "template": self.template, "event": self.event_id,
        }


@dataclass(frozen=True)
class RuleRun:
    """One rule considered for one event: fired or not, why, and what it planned."""

    rule: Rule
    fired: bool
    reason: str = ""
    messages: tuple[PlannedMessage, ...] = ()
    subscriptions: tuple[tuple[str, str, str], ...] = ()   # (subscribe|unsubscribe, phone, list)
    delayed_until: datetime | None = None
    trace: tuple[str, ...] = ()

    def as_json(self) -> dict:
        return {"rule": self.rule.id, "fired": self.fired, "reason": self.reason,
                "delayed_until": self.delayed_until.isoformat() if self.delayed_until else None,
                "messages": [m.as_json() for m in self.messages],
                "subscriptions": [list(s) for s in self.subscriptions], "trace": list(self.trace)}


@dataclass(frozen=True)
class Delayed:
    """A firing waiting for its `after` to pass (durable in the daemon)."""

    rule_id: str
    event: Event
    due: datetime
    previous: Mapping | None = None     # the entity's state before the event, for `previous.*`


# ---- the evaluator -----------------------------------------------------------------------

class Evaluator:
    def __init__(self, project: Project, state: StateStore | None = None,
                 directory: Directory | None = None):
        self.project = project
        self.state = state or MemoryState()
        self.directory = directory or StaticDirectory()
        self._rules = {r.id: r for r in project.rules}

    # -- events --
    def previous_of(self, event: Event) -> Mapping | None:
        if event.previous is not None:
            return merge_previous(event.data, event.previous)
        key = event.entity_key
        return self.state.get_state(key) if key else None

    def process(self, event: Event, now: datetime | None = None, *, explain: bool = False,
                previous: Mapping | None = None) -> tuple[list[RuleRun], list[Delayed]]:
        """Match, run the fired rules, record the entity's new state.

        Returns the runs (fired rules; with `explain`, also the rules on this event
        type that did not fire, and why) and the delayed firings to schedule.
        """
        now = now or event.time
        if previous is None:
            previous = self.previous_of(event)
        fired = self.project.matcher.match(event, previous)
        runs: list[RuleRun] = []
        delayed: list[Delayed] = []
        for rule in fired:
            if rule.after is not None:
                due = now + rule.after
                delayed.append(Delayed(rule.id, event, due, previous))
                runs.append(RuleRun(rule, True, f"waits {format_duration(rule.after)} (until {due.isoformat()})",
                                    delayed_until=due, trace=(f"trigger fired: {rule.trigger}",
                                                              f"after {format_duration(rule.after)}: waiting")))
            else:
                runs.append(self.run(rule, event, now, event.data, previous=previous))
        if explain:
            fired_ids = {r.id for r in fired}
            for rule in self.related_rules(event):
                if rule.id not in fired_ids:
                    runs.append(RuleRun(rule, False, why_not(rule, event, previous)))
        self._record_state(event)
        return runs, delayed

    def _record_state(self, event: Event) -> None:
        key = event.entity_key
        if key is None:
            return
        old = self.state.get_state(key)
        self.state.put_state(key, merge_previous(old, event.data) if old else dict(event.data))

    def related_rules(self, event: Event) -> list[Rule]:
        """Rules whose trigger concerns this event's type (for explanations only)."""
        entity = event.entity_type
        out = []
        for rule in self.project.rules:
            trigger = rule.trigger
            if isinstance(trigger, EventTrigger) and trigger.matches_type(event.type):
                out.append(rule)
            elif isinstance(trigger, (StateTrigger, ChangeTrigger)) and trigger.entity == entity:
                out.append(rule)
        return out

    def run_delayed(self, item: Delayed, now: datetime) -> RuleRun:
        """An `after` firing is due: `if` reads the entity's latest known state."""
        rule = self._rules.get(item.rule_id)
        if rule is None:
            return RuleRun(Rule(item.rule_id, None, EventTrigger("*"), None, None, None, ()), False,
                           "the rule no longer exists (rules were reloaded)")
        key = item.event.entity_key
        latest = self.state.get_state(key) if key else None
        return self.run(rule, item.event, now, latest or item.event.data, previous=item.previous, delayed=True)

    def run_schedule(self, rule: Rule, site_id: str, now: datetime) -> RuleRun:
        event = Event("schedule", {"schedule": {"time": now.isoformat(), "rule": rule.id}}, site_id,
                      f"schedule:{rule.id}:{site_id}:{now.isoformat()}", now)
        return self.run(rule, event, now, event.data)

    # -- one rule --
    def run(self, rule: Rule, event: Event, now: datetime, data: Mapping, *, previous: Mapping | None = None,
            delayed: bool = False) -> RuleRun:
        """Run one fired rule: `if`, `once per`, then its actions. `previous` feeds `previous.*`."""
        site = self.site(event.site)
        scope = EventScope(event, data=data, previous=previous, site=_site_fields(site))
        trace = [f"trigger fired: {rule.trigger}"]
        if delayed:
            trace.append(f"after {format_duration(rule.after)}: evaluated against the latest state")
        if rule.condition is not None:
            outcome = rule.condition.test(scope)
            if not outcome.value:
                trace.append(f"if {rule.condition}: false ({outcome.why})")
                return RuleRun(rule, False, f"if is false: {outcome.why}", trace=tuple(trace))
            trace.append(f"if {rule.condition}: true")
        if rule.once is not None:
            key = tuple(index_key(k.evaluate(scope)) for k in rule.once.keys)
            last = self.state.last_firing(rule.id, key)
            if last is not None and (rule.once.within is None or now - last < rule.once.within):
                why = f"{rule.once}: already fired at {last.isoformat()}"
                trace.append(why)
                return RuleRun(rule, False, f"deduplicated ({why})", trace=tuple(trace))
            self.state.record_firing(rule.id, key, now)
        messages: list[PlannedMessage] = []
        subscriptions: list[tuple[str, str, str]] = []
        for action in rule.actions:
            if isinstance(action, Send):
                planned = self.plan_send(rule, action, event, scope, site, now, trace)
                messages += planned
                trace += [f"{action}: {m.status} → {m.to}" + (f" ({m.reason})" if m.reason else "") for m in planned]
            elif isinstance(action, Subscribe):
                raw = scope.get(action.path)
                phone = normalize_phone(raw)
                verb = "subscribe" if action.subscribe else "unsubscribe"
                subscriptions.append((verb, phone.e164 or str(raw), action.list_name))
                trace.append(f"{action}: {phone.e164 or phone.error}")
        return RuleRun(rule, True, "fired", tuple(messages), tuple(subscriptions), trace=tuple(trace))

    def site(self, site_id: str) -> Site:
        sites = self.project.config.sites
        return sites.get(site_id) or next(iter(sites.values()))

    # -- messages --
    def plan_send(self, rule: Rule, send: Send, event: Event, scope: EventScope, site: Site,
                  now: datetime, trace: list[str] | None = None) -> list[PlannedMessage]:
        channel = send.channel or site.channel
        recipients = self.recipients(send, scope, site, trace)
        macros = MacroSource(scope.data, _site_macros(site), site.timezone)
        tz = ZoneInfo(site.timezone)
        window = send.window or site.send_window
        send_at = window.next_opening(now.astimezone(tz), tz) if window else now.astimezone(tz)
        out: list[PlannedMessage] = []
        seen: set[str] = set()
        for label, raw, is_copy in recipients:
            phone = normalize_phone(raw) if raw else None
            to = phone.e164 if phone and phone.ok else (str(raw) if raw else "")
            if to in seen and to:
                continue
            seen.add(to)
            stale_at = event.time + send.stale_after if send.stale_after is not None else None
            base = dict(rule_id=rule.id, channel=channel, to=to, recipient=label, copy=is_copy,
                        template=send.template, event_id=event.id, send_at=send_at, stale_at=stale_at,
                        fallback_after=send.fallback_after.total_seconds() if send.fallback_after else None)
            if phone is None or not phone.ok:
                reason = phone.error if phone else f"{label} gives no phone number"
                out.append(self._message(base, send, site, "", "", status="failed", reason=reason))
                continue
            texts = self._texts(send, channel, macros, to, site)
            viber_text, sms_text, unknown = texts
            main_text = sms_text if channel == "sms" else viber_text
            status, reason = "planned", ""
            if not main_text:
                status, reason = "skipped", "the text rendered empty"
            elif send.stale_after is not None and send_at - event.time > send.stale_after:
                status = "expired"
                reason = (f"the window opens at {send_at.isoformat()}, past stale after "
                          f"{format_duration(send.stale_after)}")
            elif send_at > now:
                status, reason = "deferred", f"outside the sending window {window.text}; waits until it opens"
            if unknown and status in ("planned", "deferred"):
                reason = (reason + "; " if reason else "") + "unknown macros rendered empty: " + \
                    ", ".join(f"#{m}#" for m in unknown)
            out.append(self._message(base, send, site, main_text, sms_text, status=status, reason=reason))
        return out

    def _message(self, base: dict, send: Send, site: Site, text: str, sms_text: str, *,
                 status: str, reason: str) -> PlannedMessage:
        channel = base["channel"]
        sms_side = channel in ("sms", "omni")
        sender, sms_sender = self._senders(send.sender, channel, site)
        segments = analyze(sms_text) if sms_side and sms_text else None
        return PlannedMessage(
            sender=sender, text=text, sms_text=sms_text if sms_side else None, sms_sender=sms_sender,
            encoding=segments.encoding if segments else None, parts=segments.parts if segments else 0,
            status=status, reason=reason, **base)

    def _senders(self, named: str | None, channel: str, site: Site) -> tuple[str, str | None]:
        """(main sender, SMS sender). For omni, `from` replaces the sender of the leg
        whose configured list names it (Viber alpha names and SMS originators differ)."""
        senders = self.project.config.senders
        if channel == "sms":
            return named or site.sms_sender, named or site.sms_sender
        if channel == "viber":
            return named or site.viber_sender, None
        viber = named if named and named in senders.viber else site.viber_sender
        sms = named if named and named in senders.sms and named not in senders.viber else site.sms_sender
        return viber, sms

    def _texts(self, send: Send, channel: str, macros: MacroSource, phone_to: str,
               site: Site) -> tuple[str, str, tuple[str, ...]]:
        if send.template is not None:
            template = self.project.templates.get(send.template)
            viber_src = template.for_channel("viber") if template else ""
            sms_src = template.for_channel("sms") if template else ""
        else:
            viber_src = sms_src = send.text or ""
        viber = render(viber_src, macros, phone_to) if channel != "sms" else None
        sms = render(sms_src, macros, phone_to) if channel != "viber" else None
        unknown = tuple(dict.fromkeys((viber.unknown if viber else ()) + (sms.unknown if sms else ())))
        sms_text = sms.text if sms else ""
        if sms_text and site.translit:
            sms_text = to_latin(sms_text)
        return (viber.text if viber else ""), sms_text, unknown

    def recipients(self, send: Send, scope: EventScope, site: Site,
                   trace: list[str] | None = None) -> list[tuple[str, Any, bool]]:
        """(label, raw phone, is_copy) for every recipient the action names. Each
        directory lookup adds a line to `trace` when one is given."""
        note = trace.append if trace is not None else (lambda line: None)
        out: list[tuple[str, Any, bool]] = []
        for r in send.recipients:
            if r.kind == "path":
                value = scope.get(r.value)
                label = ".".join(r.value)
                if isinstance(value, Mapping):
                    value = phone_of(value)
                values = value if isinstance(value, (list, tuple)) else [value]
                # a list of people (task.members): each one's phone, as for one object
                values = [phone_of(v) if isinstance(v, Mapping) else v for v in values]
                out += [(label, v, False) for v in values]
            elif r.kind == "phone":
                out.append((r.value, r.value, False))
            elif r.kind == "user":
                key = scope.get(r.value)
                phone, why = lookup_user(self.directory, key)
                note(user_trace(key if key not in (None, "") else ".".join(r.value), phone, why))
                out.append((f"user {key}", phone, False) if phone else (f"user {key} ({why})", None, False))
            elif r.kind == "admins":
                out += [("admins", a, False) for a in site.admins] or [("admins (the site has none)", None, False)]
            elif r.kind in ("department", "group"):
                members = lookup(self.directory, r.kind, r.value)
                note(members_trace(r.kind, r.value, members))
                out += [(f"{r.kind} {r.value}: {label}", phone, False) for label, phone in members] or \
                    [(f"{r.kind} {r.value} ({members.error or 'no members'})", None, False)]
            elif r.kind == "subscribers":
                phones = lookup(self.directory, "subscribers", r.value)
                note(members_trace("subscribers", r.value, phones))
                out += [(f"subscribers {r.value}", p, False) for p in phones] or \
                    ([(f"subscribers {r.value} ({phones.error})", None, False)] if phones.error else [])
        if send.copy_admins:
            out += [("copy admins", a, True) for a in site.admins]
        return out


def _site_fields(site: Site) -> dict:
    return {"id": site.id, "name": site.name, "server_name": site.server_name, "email_from": site.email_from,
            "phone_from": site.phone_from, "timezone": site.timezone, "channel": site.channel,
            "language": site.language}


def _site_macros(site: Site) -> dict:
    return {"name": site.name, "server_name": site.server_name, "email_from": site.email_from,
            "phone_from": site.phone_from}
