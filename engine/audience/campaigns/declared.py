"""Campaigns declared in YAML files (rules/campaigns/*.yaml): checked by `herald check`,
created at start."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from ruamel.yaml import YAML, YAMLError

from herald.engine.config import Config
from herald.engine.errors import CampaignError, Diagnostic, Location, display_path
from herald.engine.rules.loader import Project
from herald.engine.services import Services
from herald.engine.audience.campaigns.spec import KEYS, Spec, parse_spec
from herald.engine.audience.campaigns.manage import create

log = logging.getLogger("herald.campaigns")

# ---- campaigns declared in YAML (rules/campaigns/*.yaml) ---------------------------------

def declared_files(config: Config) -> list[Path]:
    folder = Path(config.rules) / "campaigns"
    return sorted(p for p in folder.glob("*.y*ml") if p.is_file()) if folder.is_dir() else []


def _read_declared(path: Path) -> tuple[dict | None, Diagnostic | None]:
    """A campaign file's mapping (ruamel's, which knows each key's line and column)."""
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


def _declared_spec(path: Path, data: Mapping, config: Config, project: Project, now: datetime) -> Spec:
    payload = {str(k): v for k, v in data.items() if k != "enabled"}
    payload["name"] = payload.get("name") or path.stem
    return parse_spec(payload, config, project, origin=f"yaml:{path.name}", base_dir=path.parent, now=now)


def check_declared(config: Config, project: Project) -> list[Diagnostic]:
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


async def load_declared(services: Services) -> None:
    """Create the campaigns of rules/campaigns/*.yaml that do not exist yet (by name: the
    file's `name`, else its stem). A reload never creates a second one from a file."""
    for path in declared_files(services.config):
        data, problem = _read_declared(path)
        if problem is not None:
            log.error("%s", problem.headline())
            continue
        if data.get("enabled", True) is False:
            continue
        name = data.get("name") or path.stem
        if await services.db(services.store.campaign, name) is not None:
            continue
        try:
            spec = _declared_spec(path, data, services.config, services.project, services.clock.now())
            result = await services.db(create, services, spec)
        except CampaignError as exc:
            log.error("%s", Diagnostic(exc.message, _locate(path, data, exc.pointer)).headline())
            continue
        log.info("%s: campaign %s created (%d recipients)", path, result["id"], result["total"])
