"""`herald simulate`: a dry run of one event through the rules, explained."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from herald.engine.directory import StaticDirectory
from herald.engine.errors import EventError, HeraldError
from herald.engine.rules.evaluate import Evaluator, MemoryState, RuleRun
from herald.engine.events import Event, parse_event
from herald.engine.rules.loader import Project


@dataclass(frozen=True)
class Simulation:
    event: Event
    now: datetime
    runs: tuple[RuleRun, ...]

    def as_json(self) -> dict:
        return {"event": self.event.as_json(), "at": self.now.isoformat(),
                "rules": [run.as_json() for run in self.runs]}


def read_json(path: str | Path, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise HeraldError(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HeraldError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc


def load_state(raw: Mapping | None, default_site: str) -> tuple[MemoryState, StaticDirectory]:
    """STATE.json: {"entities": {"order:42@s1": {...data...}}, "directory": {...}}."""
    state = MemoryState()
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise EventError("the state file must be a JSON object", "")
    entities = raw.get("entities") or {}
    if not isinstance(entities, Mapping):
        raise EventError("entities must map entity keys (order:42@s1) to their last data", "/entities")
    for key, data in entities.items():
        if not isinstance(data, Mapping):
            raise EventError("an entity's state is an object shaped like an event's data", f"/entities/{key}")
        full_key = key if "@" in key else f"{key}@{default_site}"
        state.put_state(full_key, data)
    return state, StaticDirectory.from_mapping(raw.get("directory"))


def simulate(project: Project, event_obj: Any, *, at: datetime | None = None,
             state_obj: Mapping | None = None) -> Simulation:
    config = project.config
    default_site = next(iter(config.sites))
    event = parse_event(event_obj, default_site=default_site, known_sites=config.sites, now=at)
    state, directory = load_state(state_obj, default_site)
    evaluator = Evaluator(project, state, directory)
    now = at or event.time
    runs, _ = evaluator.process(event, now, explain=True)
    return Simulation(event, now, tuple(runs))


def format_simulation(sim: Simulation) -> str:
    e = sim.event
    lines = [f"event {e.type} {e.id} (site {e.site}) at {sim.now.isoformat()}", ""]
    fired = [r for r in sim.runs if r.fired]
    if not sim.runs:
        lines.append("no rule concerns this event type")
    for run in sim.runs:
        where = f" ({run.rule.location})" if run.rule.location else ""
        if not run.fired:
            lines.append(f"  - {run.rule.label}{where}: did not fire: {run.reason}")
            continue
        lines.append(f"  * {run.rule.label}{where}: {run.reason}")
        for step in run.trace:
            lines.append(f"      {step}")
        for m in run.messages:
            lines.append(_format_message(m))
        for verb, phone, list_name in run.subscriptions:
            lines.append(f"      {verb} {phone} {'to' if verb == 'subscribe' else 'from'} {list_name!r}")
    lines.append("")
    count = sum(len(r.messages) for r in fired)
    lines.append(f"{len(fired)} rule(s) fired, {count} message(s)")
    return "\n".join(lines)


def _format_message(m) -> str:
    head = f"      -> {m.channel} to {m.to or '?'} ({m.recipient}){' [copy]' if m.copy else ''}"
    lines = [head]
    if m.status in ("failed", "skipped", "expired"):
        lines.append(f"         {m.status}: {m.reason}")
        return "\n".join(lines)
    if m.channel in ("viber", "omni"):
        lines.append(f"         viber from {m.sender}: {m.text}")
    if m.channel in ("sms", "omni"):
        label = "sms" if m.channel == "sms" else "sms fallback"
        lines.append(f"         {label} from {m.sms_sender}: {m.sms_text}")
        lines.append(f"         {m.encoding}, {m.parts} part(s)")
    when = "now" if m.status == "planned" else f"deferred to {m.send_at.isoformat()}"
    lines.append(f"         goes: {when}" + (f" — {m.reason}" if m.reason else ""))
    return "\n".join(lines)
