"""`herald test`: rule tests kept in the repo, run on a virtual clock.

A test file (YAML, e.g. rules/tests/orders.yaml)::

    directory: {users: [...]}          # optional, for `user …`, `department …`
    tests:
      - name: a paid order tells the customer
        start: 2026-11-27T12:00:00+03:00   # optional; default Monday 2026-01-05 12:00 in the default site
        steps:
          - event: {type: order.updated, data: {...}, previous: {...}}
          - wait: 2h                        # the clock moves; `after` timers and schedules fire
        until: 1d                           # optional: keep the clock running after the last step
        expect:                             # the messages that go out, in sending order
          - {rule: paid, channel: sms, to: "+79001234567", text: "…", at: 2026-11-27T12:00:00+03:00}
        expect_dropped:                     # optional: skipped / failed / expired messages
          - {status: expired, reason_contains: stale}

An expected message lists only the fields it cares about: rule, channel, to, text,
text_contains, sms_text, sender, sms_sender, at, copy, encoding, parts, status, reason_contains.
`expect: []` asserts that nothing is sent.
"""

from __future__ import annotations

import difflib
import time as _time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from herald.engine.errors import EventError, TestDefinitionError, display_path
from herald.engine.rules.evaluate import Delayed, Evaluator, PlannedMessage
from herald.engine.events import parse_event, parse_time
from herald.engine.rules.loader import Project
from herald.engine.rules.simulate import load_state
from herald.grammar.compiler import parse_duration
from herald.grammar.model import ScheduleTrigger, show

DEFAULT_START = datetime(2026, 1, 5, 12, 0)      # a Monday noon: inside usual sending windows
MAX_SCHEDULE_FIRINGS = 10_000
COMPARED = ("rule", "channel", "to", "text", "sms_text", "sender", "sms_sender", "at", "copy",
            "encoding", "parts", "status")


@dataclass
class CaseResult:
    file: str
    name: str
    passed: bool
    detail: str = ""

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


def test_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def run_file(project: Project, path: Path) -> list[CaseResult]:
    name = display_path(path)
    try:
        doc = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (YAMLError, OSError) as exc:
        return [CaseResult(name, "<file>", False, f"cannot load the test file: {exc}")]
    if not isinstance(doc, Mapping) or not isinstance(doc.get("tests"), list):
        return [CaseResult(name, "<file>", False, "a test file needs a `tests:` list")]
    results = []
    for i, case in enumerate(doc["tests"]):
        case_name = str(case.get("name", f"test {i + 1}")) if isinstance(case, Mapping) else f"test {i + 1}"
        try:
            results.append(run_case(project, case, doc.get("directory"), name, case_name))
        except (TestDefinitionError, EventError) as exc:
            results.append(CaseResult(name, case_name, False, f"bad test: {exc}"))
    return results


def _when(value: Any, pointer: str, tz) -> datetime:
    """YAML reads unquoted timestamps itself (as naive UTC when they carry an offset)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=ZoneInfo("UTC"))
    return parse_time(str(value), pointer, tz)


def _duration(value: Any, where: str) -> timedelta:
    text = str(value).strip()
    delta = parse_duration(text) if text else None
    if not delta:
        raise TestDefinitionError(f"{where}: {value!r} is not a duration like 15m, 2h or 1d")
    return delta


def run_case(project: Project, case: Any, directory: Any, file: str, name: str) -> CaseResult:
    if not isinstance(case, Mapping):
        raise TestDefinitionError("each test is a mapping with name, steps and expect")
    config = project.config
    default_site = next(iter(config.sites))
    tz = ZoneInfo(config.sites[default_site].timezone)
    clock = _when(case["start"], "/start", tz) if "start" in case else DEFAULT_START.replace(tzinfo=tz)
    raw_state = dict(case.get("state") or {})
    raw_state.setdefault("directory", directory)
    state, dir_ = load_state(raw_state, default_site)
    evaluator = Evaluator(project, state, dir_)
    run = _Run(evaluator, project, clock)
    steps = case.get("steps") or []
    if "events" in case:                          # shorthand: a plain list of events
        steps = [{"event": e} for e in case["events"]]
    for n, step in enumerate(steps, 1):
        if not isinstance(step, Mapping):
            raise TestDefinitionError(f"step {n} must be a mapping (event: or wait:)")
        if "wait" in step:
            run.advance(run.clock + _duration(step["wait"], f"step {n} wait"))
        if "at" in step:
            run.advance(_when(step["at"], f"/steps/{n - 1}/at", tz))
        if "event" in step:
            obj = dict(step["event"])
            obj["time"] = _when(obj["time"], f"/steps/{n - 1}/event/time", tz).isoformat() if "time" in obj \
                else run.clock.isoformat()
            try:
                event = parse_event(obj, default_site=default_site, known_sites=config.sites)
            except EventError as exc:
                raise EventError(exc.message, f"/steps/{n - 1}/event{exc.pointer}") from exc
            run.advance(event.time)
            run.event(event)
    end = run.clock + _duration(case["until"], "until") if "until" in case else None
    run.finish(end)
    return _compare(file, name, case, run.messages)


@dataclass
class _Run:
    evaluator: Evaluator
    project: Project
    clock: datetime
    timers: list[Delayed] = field(default_factory=list)
    messages: list[PlannedMessage] = field(default_factory=list)

    def event(self, event) -> None:
        runs, delayed = self.evaluator.process(event, self.clock)
        self.timers += delayed
        for r in runs:
            self.messages += r.messages

    def advance(self, to: datetime) -> None:
        if to < self.clock:
            raise TestDefinitionError(f"time goes backwards: {to.isoformat()} is before {self.clock.isoformat()}")
        self._fire_schedules(self.clock, to)
        while True:
            due = sorted((t for t in self.timers if t.due <= to), key=lambda t: t.due)
            if not due:
                break
            item = due[0]
            self.timers.remove(item)
            self.clock = max(self.clock, item.due)
            self.messages += self.evaluator.run_delayed(item, item.due).messages
        self.clock = to

    def finish(self, end: datetime | None) -> None:
        if end is not None:
            self.advance(end)
        while self.timers:                        # `after` firings still pending run at their time
            self.advance(max(t.due for t in self.timers))

    def _fire_schedules(self, start: datetime, end: datetime) -> None:
        count = 0
        for rule in self.project.matcher.schedules:
            trigger: ScheduleTrigger = rule.trigger
            for site_id, site in self.project.config.sites.items():
                tz = ZoneInfo(site.timezone)
                at = trigger.next_fire(start.astimezone(tz))
                while at <= end and count < MAX_SCHEDULE_FIRINGS:
                    self.messages += self.evaluator.run_schedule(rule, site_id, at).messages
                    at = trigger.next_fire(at)
                    count += 1


def _actual(m: PlannedMessage) -> dict:
    return {"rule": m.rule_id, "channel": m.channel, "to": m.to, "text": m.text, "sms_text": m.sms_text,
            "sender": m.sender, "sms_sender": m.sms_sender, "at": m.send_at.isoformat(), "copy": m.copy,
            "encoding": m.encoding, "parts": m.parts, "status": m.status, "reason": m.reason}


def _matches(expected: Mapping, actual: dict) -> bool:
    for key, want in expected.items():
        if key == "text_contains":
            if str(want) not in (actual["text"] or "") and str(want) not in (actual["sms_text"] or ""):
                return False
        elif key == "reason_contains":
            if str(want).lower() not in actual["reason"].lower():
                return False
        elif key == "at":
            want_time = _when(want, "/at", ZoneInfo("UTC"))
            if datetime.fromisoformat(actual["at"]) != want_time:
                return False
        elif key in COMPARED:
            if str(actual[key]) != str(want) if not isinstance(want, bool) else actual[key] is not want:
                return False
        else:
            raise TestDefinitionError(f"unknown field {key!r} in an expected message; "
                                      f"use {', '.join(COMPARED)}, text_contains, reason_contains")
    return True


def _compare(file: str, name: str, case: Mapping, messages: list[PlannedMessage]) -> CaseResult:
    sent = sorted((m for m in messages if m.status in ("planned", "deferred")), key=lambda m: m.send_at)
    dropped = [m for m in messages if m.status not in ("planned", "deferred")]
    problems = []
    if "expect" not in case:
        raise TestDefinitionError("a test needs `expect:` (use `expect: []` for no message)")
    problems += _compare_list("sent", case.get("expect") or [], [_actual(m) for m in sent])
    if "expect_dropped" in case:
        problems += _compare_list("dropped", case.get("expect_dropped") or [], [_actual(m) for m in dropped])
    return CaseResult(file, name, not problems, "\n".join(problems))


def _compare_list(label: str, expected: list, actual: list[dict]) -> list[str]:
    ok = len(expected) == len(actual) and all(
        isinstance(e, Mapping) and _matches(e, a) for e, a in zip(expected, actual))
    if ok:
        return []
    want = _render(expected, None)
    got = _render(actual, expected)
    diff = difflib.unified_diff(want, got, fromfile=f"expected {label}", tofile=f"actual {label}", lineterm="")
    return [f"{label} messages differ ({len(expected)} expected, {len(actual)} actual):", *diff]


def _render(items: list, keys_from: list | None) -> list[str]:
    lines = []
    for i, item in enumerate(items):
        if keys_from is not None:
            shape = keys_from[i] if i < len(keys_from) and isinstance(keys_from[i], Mapping) else None
            keys = [k for k in (shape or {}) if k in item] if shape else \
                ["rule", "channel", "to", "text", "at", "status", "reason"]
            if shape and "text_contains" in shape:
                keys.append("text")
            if shape and "reason_contains" in shape:
                keys.append("reason")
            item = {k: item[k] for k in keys}
        lines.append("-")
        for key, value in (item.items() if isinstance(item, Mapping) else [("?", item)]):
            if key == "at" and not isinstance(value, str):
                value = _when(value, "/at", ZoneInfo("UTC")).isoformat()
            lines.append(f"  {key}: {show(value)}")
    return lines


def run_tests(project: Project, path: Path) -> tuple[list[CaseResult], float]:
    started = _time.perf_counter()
    results = []
    for file in test_files(path):
        results += run_file(project, file)
    return results, _time.perf_counter() - started


def format_results(results: list[CaseResult], seconds: float, verbose: bool = True) -> str:
    lines = []
    if verbose:
        lines += [f"{r.id} {'PASSED' if r.passed else 'FAILED'}" for r in results]
    failed = [r for r in results if not r.passed]
    if failed:
        lines += ["", "=" * 20 + " FAILURES " + "=" * 20]
        for r in failed:
            lines += [f"____ {r.id} ____", r.detail, ""]
    passed = len(results) - len(failed)
    lines.append(f"{passed} passed, {len(failed)} failed in {seconds:.2f}s")
    return "\n".join(lines)
