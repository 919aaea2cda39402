"""Message templates: loading (located errors) and `#MACRO#` rendering (RULES.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from herald.engine.errors import Diagnostic, Location, did_you_mean, display_path

MACRO = re.compile(r"#([A-Za-z_][A-Za-z0-9_]*)#")
VARIANTS = ("text", "sms", "viber")


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    variants: Mapping[str, str]          # "text" (every channel), "sms", "viber"
    location: Location | None = field(default=None, compare=False)

    def for_channel(self, channel: str) -> str:
        """The text for `sms` or `viber`; omni's Viber leg asks for viber, its SMS leg for sms."""
        order = ("sms", "text", "viber") if channel == "sms" else ("viber", "text", "sms")
        for key in order:
            if key in self.variants:
                return self.variants[key]
        return ""

    def macros(self) -> set[str]:
        return {m for text in self.variants.values() for m in MACRO.findall(text)}


@dataclass(frozen=True, slots=True)
class TemplateSet:
    templates: Mapping[str, Template]
    diagnostics: tuple[Diagnostic, ...] = ()

    def get(self, name: str) -> Template | None:
        return self.templates.get(name)


def template_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                      and "tests" not in p.relative_to(path).parts)
    return [path] if path.exists() else []


def load_templates(path: Path) -> TemplateSet:
    """Every template in a YAML file or a folder of them; problems become diagnostics."""
    templates: dict[str, Template] = {}
    problems: list[Diagnostic] = []
    files = template_files(path)
    if not files:
        where = display_path(path)
        problems.append(Diagnostic(f"no templates found at {where}", Location(where), "warning",
                                   "create rules/templates.yaml or set `templates:` in the config"))
    for file in files:
        _load_file(file, display_path(file), templates, problems)
    return TemplateSet(templates, tuple(problems))


def _load_file(file: Path, name: str, templates: dict, problems: list) -> None:
    text = file.read_text(encoding="utf-8")
    lines = text.split("\n")
    try:
        doc = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problems.append(Diagnostic(f"YAML syntax: {exc.problem or exc.context}", Location(name, line, col), "error",
                                   None, lines[line - 1] if line <= len(lines) else None))
        return
    if doc is None:
        return
    if not isinstance(doc, Mapping):
        problems.append(Diagnostic("a templates file maps template names to texts", Location(name, 1, 1)))
        return

    def where(line0: int, col0: int) -> tuple[Location, str | None]:
        return Location(name, line0 + 1, col0 + 1), lines[line0] if line0 < len(lines) else None

    for key, value in doc.items():
        kline, kcol = doc.lc.key(key)
        loc, src = where(kline, kcol)
        key = str(key)
        if key in templates:
            first = templates[key].location
            problems.append(Diagnostic(f'template "{key}" is defined twice (first at {first})', loc, "error", None, src))
            continue
        if isinstance(value, str):
            templates[key] = Template(key, {"text": value}, loc)
        elif isinstance(value, Mapping):
            variants = {}
            for vkey, vtext in value.items():
                vloc, vsrc = where(*value.lc.key(vkey))
                if vkey not in VARIANTS:
                    problems.append(Diagnostic(f'unknown variant "{vkey}" in template "{key}"', vloc, "error",
                                               did_you_mean(str(vkey), VARIANTS) or "variants are text, sms and viber",
                                               vsrc))
                elif not isinstance(vtext, str):
                    problems.append(Diagnostic(f'the {vkey} text of template "{key}" must be a string', vloc,
                                               "error", None, vsrc))
                else:
                    variants[vkey] = vtext
            if not variants:
                problems.append(Diagnostic(f'template "{key}" has no text', loc, "error",
                                           "give a text, or sms: / viber: variants", src))
            templates[key] = Template(key, variants, loc)
        else:
            problems.append(Diagnostic(f'template "{key}" must be a text or sms: / viber: variants', loc, "error",
                                       None, src))


# ---- rendering -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    unknown: tuple[str, ...] = ()        # macros that resolved to nothing


class MacroSource:
    """Resolves macros for one event, in the order RULES.md promises. `timezone` is the
    site's: date-times in the event are shown in it (see `format_value`)."""

    __slots__ = ("data", "site", "timezone", "_flat")

    def __init__(self, data: Mapping[str, Any], site: Mapping[str, Any], timezone: str | None = None):
        self.data = data
        self.site = site
        self.timezone = timezone
        self._flat: dict[str, Any] | None = None

    def _flattened(self) -> dict[str, Any]:
        if self._flat is None:
            flat: dict[str, Any] = {}
            _flatten(self.data, (), flat)
            self._flat = flat
        return self._flat

    def resolve(self, name: str, phone_to: str | None) -> tuple[bool, Any]:
        value = self.data.get(name)
        if value is not None and not isinstance(value, Mapping):
            return True, value
        flat = self._flattened()
        if name in flat:
            return True, flat[name]
        site_macro = {"SITE_NAME": "name", "SERVER_NAME": "server_name", "DEFAULT_EMAIL_FROM": "email_from",
                      "DEFAULT_PHONE_FROM": "phone_from"}.get(name)
        if site_macro and self.site.get(site_macro) is not None:
            return True, self.site[site_macro]
        if name == "PHONE_TO" and phone_to:
            return True, phone_to
        return False, None


def _flatten(data: Any, prefix: tuple[str, ...], out: dict[str, Any]) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            _flatten(value, prefix + (str(key),), out)
    elif prefix:
        out.setdefault("_".join(prefix).upper(), data)


# An ISO 8601 date, or date-time to the minute or finer with an optional offset
# (`T` or a space between): what connectors and the HTTP API put in events.
ISO_DATE = re.compile(r"\d{4}-\d\d-\d\d")
ISO_DATETIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d(:?\d\d)?)?")


def format_date(text: str, timezone: str | None = None) -> str | None:
    """An ISO 8601 value the way a person reads it on the site: `dd.mm.yyyy HH:MM` in
    the site's time zone (a value without an offset is already local time, as Bitrix
    stores it), a date alone `dd.mm.yyyy`; None when `text` is no such value."""
    if ISO_DATE.fullmatch(text):
        try:
            return date.fromisoformat(text).strftime("%d.%m.%Y")
        except ValueError:
            return None
    if not ISO_DATETIME.fullmatch(text):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is not None and timezone:
        when = when.astimezone(ZoneInfo(timezone))
    return when.strftime("%d.%m.%Y %H:%M")


def format_value(value: Any, timezone: str | None = None) -> str:
    """A macro's text. ISO 8601 dates and date-times read as on the site (`format_date`);
    the event keeps the raw value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v, timezone) for v in value)
    if isinstance(value, str):
        shown = format_date(value, timezone)
        return value if shown is None else shown
    return str(value)


def render(text: str, source: MacroSource, phone_to: str | None = None) -> Rendered:
    unknown: list[str] = []

    def replace(match: re.Match) -> str:
        found, value = source.resolve(match.group(1), phone_to)
        if not found:
            unknown.append(match.group(1))
            return ""
        return format_value(value, source.timezone)

    out = MACRO.sub(replace, text)
    return Rendered(out.strip(), tuple(dict.fromkeys(unknown)))


def macros_in(texts: Iterable[str]) -> set[str]:
    return {m for t in texts for m in MACRO.findall(t)}
