"""Load a whole project — config, templates, rule files — and check it statically.

Nothing is half-loaded: `load_project` either returns a complete `Project` or
raises one `RulesError`/`ConfigError` listing every problem, so a failed reload
keeps the rules that were running.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from herald.engine.config import Config, load_config
from herald.engine.errors import Diagnostic, Location, RulesError, did_you_mean, display_path
from herald.engine.rules.matcher import Matcher
from herald.engine.helpers.phones import normalize_phone
from herald.engine.rules.templates import TemplateSet, load_templates, macros_in
from herald.engine.rules import vocabulary
from herald.grammar.compiler import CompiledFile, compile_text
from herald.grammar.model import (
    ChangeTrigger, Compare, EventTrigger, In, Literal, PathRef, Rule, ScheduleTrigger, Send,
    StateTrigger,
)


@dataclass(frozen=True)
class Project:
    config: Config
    templates: TemplateSet
    rules: tuple[Rule, ...]
    matcher: Matcher
    diagnostics: tuple[Diagnostic, ...]      # warnings only (errors raise)
    files: tuple[str, ...] = ()

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if not d.is_error]

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


# Compiled files by content, so a reload recompiles only what changed.
_cache: dict[tuple[str, str], CompiledFile] = {}


def rule_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.rules") if p.is_file())


def compile_rules(paths: Iterable[Path]) -> tuple[list[Rule], list[Diagnostic], list[str]]:
    rules, problems, names = [], [], []
    for path in paths:
        name = display_path(path)
        names.append(name)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            line = path.read_bytes()[: exc.start].count(b"\n") + 1
            problems.append(Diagnostic("the file is not UTF-8", Location(name, line, 1), "error",
                                       "save rule files as UTF-8"))
            continue
        key = (name, hashlib.sha1(text.encode()).hexdigest())
        compiled = _cache.get(key)
        if compiled is None:
            compiled = _cache[key] = compile_text(text, name)
        rules.extend(compiled.rules)
        problems.extend(compiled.diagnostics)
    return rules, problems, names


def load_project(config: Config | str | Path | None = None, *, rules_path: Path | None = None,
                 strict: bool = False) -> Project:
    """Config + templates + rules, checked. Raises ConfigError / RulesError with every problem."""
    if not isinstance(config, Config):
        config = load_config(config)
    templates = load_templates(config.templates)
    paths = rule_files(rules_path or config.rules)
    rules, problems, names = compile_rules(paths)
    if not paths:
        where = display_path(rules_path or config.rules)
        problems.append(Diagnostic(f"no .rules files under {where}", Location(where), "warning"))
    problems += list(templates.diagnostics)
    problems += check_rules(rules, config, templates)
    problems += check_connectors(config)
    problems += list(config.warnings)
    errors = [d for d in problems if d.is_error] or ([d for d in problems] if strict else [])
    if errors:
        raise RulesError(problems)
    return Project(config, templates, tuple(rules), Matcher(rules), tuple(problems), tuple(names))


# ---- static checks ----------------------------------------------------------------------

def check_connectors(config: Config) -> list[Diagnostic]:
    """Each `connectors:` entry names a known type and its options validate."""
    from herald import connectors
    from herald.engine.errors import ConfigError

    problems: list[Diagnostic] = []
    names: dict[str, Location | None] = {}
    for i, entry in enumerate(config.connectors):
        cls = connectors.find(entry.type)
        if cls is None:
            known = connectors.available()
            problems.append(Diagnostic(f"unknown connector type {entry.type!r}", entry.location, "error",
                                       did_you_mean(entry.type, known) or f"available: {', '.join(known) or 'none'}"))
            continue
        name = str(entry.options.get("name") or f"{entry.type}{i + 1}")
        if name in names:
            problems.append(Diagnostic(f"two connectors are named {name!r} (first at {names[name]})", entry.location,
                                       "error", "give each a unique `name:`; names keep their cursors apart"))
        names[name] = entry.location
        try:
            connector = cls(entry)
        except ConfigError as exc:
            problems.extend(exc.diagnostics)
            continue
        check_sites = getattr(connector, "check_sites", None)     # options naming a site (imap's `site`)
        if check_sites is not None:
            problems.extend(check_sites(config.sites))
    return problems


def trigger_types(rule: Rule) -> tuple[str, ...] | None:
    """The canonical event types a rule can fire on; None when open-ended (mail.*, custom)."""
    trigger = rule.trigger
    if isinstance(trigger, ScheduleTrigger):
        return ("schedule",)
    if isinstance(trigger, EventTrigger):
        if not vocabulary.is_known_pattern(trigger.pattern) or trigger.pattern.split(".")[0] in ("*", "mail") \
                or trigger.pattern.startswith("*"):
            return None
        return vocabulary.event_types_for(trigger.pattern) or None
    types = vocabulary.event_types_for(trigger.entity)
    return types or None


def check_rules(rules: list[Rule], config: Config, templates: TemplateSet) -> list[Diagnostic]:
    problems: list[Diagnostic] = []
    seen: dict[str, Rule] = {}
    for rule in rules:
        first = seen.get(rule.id)
        if first is not None:
            if rule.name:
                problems.append(Diagnostic(f'duplicate rule name "{rule.name}" (first at {first.location})',
                                           rule.location, "error", "rule names must be unique across all files"))
            else:
                problems.append(Diagnostic(f"the same rule is written twice (first at {first.location})",
                                           rule.location, "warning", "it would fire twice; remove one"))
            continue
        seen[rule.id] = rule
        problems += _check_rule(rule, config, templates)
    return problems


def _check_rule(rule: Rule, config: Config, templates: TemplateSet) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    types = trigger_types(rule)
    trigger = rule.trigger
    if isinstance(trigger, EventTrigger) and not vocabulary.is_known_pattern(trigger.pattern):
        out.append(Diagnostic(f"no canonical event has type {trigger.pattern}", rule.location, "warning",
                              did_you_mean(trigger.pattern, vocabulary.EVENT_TYPES) or "see docs/events.md"))
    exprs = []
    if isinstance(trigger, StateTrigger):
        exprs.append(trigger.condition)
    if isinstance(trigger, ChangeTrigger):
        exprs.append(PathRef(trigger.path, rule.location))
    if rule.condition is not None:
        exprs.append(rule.condition)
    if rule.once is not None:
        exprs.extend(rule.once.keys)
    for expr in exprs:
        out += _check_expr(expr, types, config, rule)
    for action in rule.actions:
        if isinstance(action, Send):
            out += _check_send(action, types, config, templates, rule)
    return out


def _walk(expr):
    yield expr
    for name in ("left", "right", "item", "container", "subject", "needle", "operand"):
        child = getattr(expr, name, None)
        if child is not None:
            yield from _walk(child)
    for child in getattr(expr, "operands", ()):
        yield from _walk(child)


def _check_expr(expr, types, config: Config, rule: Rule) -> list[Diagnostic]:
    out = []
    for node in _walk(expr):
        if isinstance(node, PathRef) and types and node.path[0] not in ("site",):
            if not any(vocabulary.carries(t, node.path) for t in types):
                out.append(Diagnostic(f"no {_types_text(types)} event carries {node.dotted}", node.location,
                                      "warning", _path_hint(node.path, types)))
        site_literals = _site_literals(node)
        for value, location in site_literals:
            if value not in config.sites:
                out.append(Diagnostic(f'unknown site "{value}"', location or rule.location, "error",
                                      did_you_mean(value, config.sites) or f"sites: {', '.join(config.sites)}"))
    return out


_SITE_PATHS = (("event", "site"), ("site", "id"))     # both name the event's site


def _site_literals(node) -> list[tuple[str, Location | None]]:
    if isinstance(node, Compare) and node.op in ("==", "!="):
        for a, b in ((node.left, node.right), (node.right, node.left)):
            if isinstance(a, PathRef) and a.path in _SITE_PATHS and isinstance(b, Literal) \
                    and isinstance(b.value, str):
                return [(b.value, a.location)]
    if isinstance(node, In) and isinstance(node.item, PathRef) and node.item.path in _SITE_PATHS \
            and isinstance(node.container, Literal) and isinstance(node.container.value, tuple):
        return [(v, node.item.location) for v in node.container.value if isinstance(v, str)]
    return []


def _types_text(types: tuple[str, ...]) -> str:
    if len(types) == 1:
        return types[0]
    families = sorted({t.split(".")[0] for t in types})
    return "/".join(f"{f}.*" for f in families)


def _path_hint(path: tuple[str, ...], types: tuple[str, ...]) -> str | None:
    candidates = {".".join(p) for t in types for p in vocabulary.fields_of(t)}
    return did_you_mean(".".join(path), candidates)


def _check_directory_name(recipient, config: Config) -> list[Diagnostic]:
    """`to department "X"` / `to group "X"`: a warning when no directory is configured,
    or the people file has no X (a Bitrix directory is only asked at run time)."""
    what = f'{recipient.kind} "{recipient.value}"'
    directory = config.directory
    if directory is None:
        return [Diagnostic(f"{what} will find no one: no `directory:` is configured", recipient.location,
                           "warning", "add directory: {file: people.yaml} or directory: {bitrix: !env SHOP_DB_URL} "
                                      "(see docs/directory.md)")]
    people = directory.people
    if people is None or not hasattr(people, "names"):
        return []
    names = people.names(recipient.kind) or []
    if recipient.value in names:
        return []
    where = display_path(directory.file) if directory.file else "the directory"
    return [Diagnostic(f"{what} is not in {where}: it will find no one", recipient.location, "warning",
                       did_you_mean(recipient.value, names)
                       or (f"{recipient.kind}s there: {', '.join(names)}" if names else None))]


def _check_send(send: Send, types, config: Config, templates: TemplateSet, rule: Rule) -> list[Diagnostic]:
    out = []
    texts: list[str] = []
    if send.template is not None:
        template = templates.get(send.template)
        if template is None:
            out.append(Diagnostic(f'unknown template "{send.template}"', send.template_location, "error",
                                  did_you_mean(send.template, templates.templates) or
                                  f"define it in {display_path(config.templates)}"))
        else:
            texts += list(template.variants.values())
    else:
        texts.append(send.text or "")
    if send.sender is not None:
        channels = [send.channel] if send.channel else sorted({s.channel for s in config.sites.values()})
        allowed = set()
        for channel in channels:
            if channel in ("sms", "omni"):
                allowed |= set(config.senders.sms)
            if channel in ("viber", "omni"):
                allowed |= set(config.senders.viber)
        if send.sender not in allowed:
            out.append(Diagnostic(f'sender "{send.sender}" is not among the configured senders for '
                                  f'{"/".join(channels)}', send.sender_location, "error",
                                  did_you_mean(send.sender, allowed) or f"senders: {', '.join(sorted(allowed))}"))
    if send.fallback_after is not None:
        channels = {send.channel} if send.channel else {s.channel for s in config.sites.values()}
        engine_omni = any(s.omni == "engine" for s in config.sites.values())
        if "omni" not in channels:
            out.append(Diagnostic(f"`fallback after` applies to omni messages only; this one is "
                                  f"{'/'.join(sorted(channels))}", send.location, "error",
                                  "write `send omni …`, or remove `fallback after`"))
        elif not engine_omni:
            out.append(Diagnostic("`fallback after` has no effect: no site has `omni: engine` (with "
                                  "`omni: provider` BSG decides when the SMS goes)", send.location, "warning",
                                  "set `omni: engine` on the site, or remove `fallback after`"))
    for recipient in send.recipients:
        if recipient.kind == "phone":
            phone = normalize_phone(recipient.value)
            if not phone.ok:
                out.append(Diagnostic(phone.error, recipient.location, "error"))
        elif recipient.kind in ("department", "group"):
            out += _check_directory_name(recipient, config)
        elif recipient.kind == "path" and types:
            if not any(vocabulary.carries(t, recipient.value) for t in types):
                out.append(Diagnostic(f"no {_types_text(types)} event carries {'.'.join(recipient.value)}",
                                      recipient.location, "warning", _path_hint(recipient.value, types)))
    if types:
        known = set().union(*(vocabulary.macros_of(t) for t in types))
        for macro in sorted(macros_in(texts) - known):
            where = send.template_location
            what = f'template "{send.template}"' if send.template is not None else "the text"
            out.append(Diagnostic(f"#{macro}# in {what} is carried by no {_types_text(types)} event; "
                                  f"it would render empty", where, "warning",
                                  did_you_mean(macro, known)))
    return out
