"""The entry points: `load_config` (a file), `default_config` (no file), and `build`, which
runs each section's reader over the document and assembles the Config."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from herald.engine.config.bitrix24 import read_bitrix24
from herald.engine.config.bsg import read_bsg
from herald.engine.config.connectors import read_connectors
from herald.engine.config.directory import read_directory
from herald.engine.config.document import MAX_CONFIG_DEPTH, _Oversized, _problem, _reader_problem, _yaml
from herald.engine.config.http import read_http
from herald.engine.config.model import CONFIG_FILE, DEFAULT_TIMEZONE, Config
from herald.engine.config.reader import _Val, _what
from herald.engine.config.sites import read_senders, read_sites
from herald.engine.config.smtp import read_smtp
from herald.engine.config.subscriptions import read_subscriptions
from herald.engine.config.values import ValueReader
from herald.engine.errors import ConfigError, Diagnostic, Location

TOP_KEYS = ("store", "rules", "templates", "timezone", "bsg", "senders", "sites",
            "http", "smtp", "connectors", "directory", "bitrix24", "subscriptions")


def build(r: ValueReader, data: Any, path: Path | None) -> Config:
    """The Config of a parsed document (None: an empty one); raises ConfigError when any
    section reported an error, else carries the warnings."""
    root = _Val(data, Location(r.file, 1, 1), "")
    if data is None:
        root.raw = CommentedMap()
    elif not isinstance(data, CommentedMap):
        r.error(f"the config must be a mapping of keys (store:, bsg:, sites:, ...), "
                f"got {_what(data)}", root.loc)
        root.raw = CommentedMap()
    else:
        r.check_keys(root, TOP_KEYS, "the config")

    store = r.path(r.child(root, "store"), "var/herald.db")
    rules = r.path(r.child(root, "rules"), "rules")
    templates = r.path(r.child(root, "templates"), "rules/templates.yaml")
    tz = r.timezone(r.child(root, "timezone"), DEFAULT_TIMEZONE)
    bsg = read_bsg(r, r.section(root, "bsg"))
    senders = read_senders(r, r.section(root, "senders"))
    sites = read_sites(r, r.child(root, "sites"), tz, senders)
    http = read_http(r, r.section(root, "http"))
    smtp = read_smtp(r, r.section(root, "smtp"))
    connectors = read_connectors(r, r.child(root, "connectors"))
    directory = read_directory(r, r.section(root, "directory"))
    bitrix24 = read_bitrix24(r, r.section(root, "bitrix24"), sites)
    subscriptions = read_subscriptions(r, r.section(root, "subscriptions"), sites)

    if r.sink.has_errors:
        raise ConfigError(r.sink.items)
    return Config(
        path=path, base_dir=r.base_dir, store=store, rules=rules, templates=templates,
        timezone=tz, bsg=bsg, senders=senders, sites=sites, http=http,
        smtp=smtp, connectors=connectors, warnings=tuple(r.sink.items), directory=directory,
        bitrix24=bitrix24, subscriptions=subscriptions,
    )


def load_config(path: str | os.PathLike[str] | None = None, *,
                env: Mapping[str, str] | None = None, lenient: bool = False) -> Config:
    """Read and validate a config file. None → `herald.yaml` in the working directory
    when it exists, else the built-in defaults. `env` defaults to os.environ.
    Raises ConfigError carrying every problem found.

    lenient is for commands that only read the store (history, timeline, trace): an
    unset `!env` or a missing `!secret` is then no error but an unusable placeholder
    Secret (`<unset: !env NAME>`), so they work without the daemon's secrets."""
    env = os.environ if env is None else env
    if path is None:
        if not Path(CONFIG_FILE).is_file():
            return default_config(Path.cwd())
        path = CONFIG_FILE
    display = os.fspath(path)
    p = Path(display)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Diagnostic("config file not found", Location(display),
                                      hint="create it (see docs/configuration.md) or pass -c FILE")]) from None
    except IsADirectoryError:
        raise ConfigError([Diagnostic("expected a config file, got a folder", Location(display))]) from None
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError([Diagnostic("the config file is not UTF-8 text",
                                      Location(display, line, 1))]) from None
    except OSError as exc:
        raise ConfigError([Diagnostic(f"cannot read the config file: {exc.strerror or exc}",
                                      Location(display))]) from None
    return _load_text(text, display, p.absolute(), env, lenient)


def _load_text(text: str, display: str, abspath: Path, env: Mapping[str, str],
               lenient: bool = False) -> Config:
    reader = ValueReader(display, abspath.parent, text.splitlines(), env, lenient)
    try:
        data = _yaml().load(text)
    except _Oversized as exc:
        mark = exc.problem_mark
        reader.error(exc.problem, Location(display, mark.line + 1, mark.column + 1), exc.hint)
        raise ConfigError(reader.sink.items) from exc
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(display, mark.line + 1, mark.column + 1) if mark else Location(display)
        hint = None
        if _problem(exc).startswith("duplicate key"):
            hint = "a key may appear only once in a mapping"
        elif _problem(exc).startswith("maximum depth"):
            reader.error(f"the config nests more than {MAX_CONFIG_DEPTH} levels deep", loc,
                         "no Herald setting needs that many; check the brackets and indentation")
            raise ConfigError(reader.sink.items) from exc
        elif exc.context and exc.context_mark is not None and exc.problem_mark is not None:
            what = re.sub(r"^while \w+ (an? )?", "", exc.context.strip())
            hint = (f"the {what} starts at line {exc.context_mark.line + 1}, "
                    f"column {exc.context_mark.column + 1}")
        reader.error(f"invalid YAML: {_problem(exc)}", loc, hint)
        raise ConfigError(reader.sink.items) from exc
    except YAMLError as exc:
        raise ConfigError([_reader_problem(exc, text, display)]) from exc
    return build(reader, data, abspath)


def default_config(base_dir: str | os.PathLike[str] | None = None) -> Config:
    """The configuration of an empty file in base_dir (default: the working directory)."""
    base = Path(base_dir if base_dir is not None else Path.cwd()).absolute()
    reader = ValueReader("<defaults>", base, [], {})
    return build(reader, None, None)
