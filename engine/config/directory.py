"""`directory:` — a people file (read and checked here) or the Bitrix database URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ruamel.yaml.comments import CommentedMap

from herald.engine.directory import FileDirectory, check_bitrix_url
from herald.engine.config.model import DEFAULT_DIRECTORY_TTL, DirectoryConfig
from herald.engine.config.reader import _MISSING, _Val, _is_bool, _plain
from herald.engine.config.secret import Secret
from herald.engine.config.values import ValueReader
from herald.engine.errors import ConfigError, display_path

DIRECTORY_KEYS = ("file", "bitrix", "ttl", "groups")


def read_directory(r: ValueReader, node: _Val | None) -> DirectoryConfig | None:
    """`directory: {file: people.yaml}` or `directory: {bitrix: URL, ttl:, groups:}`."""
    if node is None:
        return None
    r.check_keys(node, DIRECTORY_KEYS, "directory")
    f, b = r.child(node, "file"), r.child(node, "bitrix")
    ttl_v, groups_v = r.child(node, "ttl"), r.child(node, "groups")
    where = node.key_loc or node.loc
    if f is None and b is None:
        r.error("directory: give file: (a YAML file of people) or bitrix: (the shop's database URL)",
                where, "e.g. directory: {file: people.yaml} or directory: {bitrix: !env SHOP_DB_URL}")
        return None
    if f is not None and b is not None:
        r.error("directory: file and bitrix exclude each other", b.key_loc or b.loc,
                "keep one: people come from a file or from the Bitrix database")
        return None
    if f is not None:
        for extra in (ttl_v, groups_v):
            if extra is not None:
                key = extra.path.rsplit(".", 1)[-1]
                r.error(f"directory.{key} applies to bitrix: only", extra.key_loc or extra.loc,
                        "a people file is read at start and on reload")
        text = r.string(f, "", what="a file name such as people.yaml", allow_empty=False)
        if not text:
            return None
        p = Path(text).expanduser()
        p = p if p.is_absolute() else r.base_dir / p
        shown = display_path(p)
        try:
            people = FileDirectory.load(p, shown)
        except ConfigError as exc:
            r.sink.extend(exc.diagnostics)
            return None
        except FileNotFoundError:
            r.error(f"directory.file: {shown} does not exist", f.loc,
                    "create it (see docs/directory.md), or fix the path (relative to the config's folder)")
            return None
        except IsADirectoryError:
            r.error(f"directory.file: {shown} is a folder, not a file", f.loc)
            return None
        except UnicodeDecodeError:
            r.error(f"directory.file: {shown} is not UTF-8 text", f.loc)
            return None
        except OSError as exc:
            r.error(f"directory.file: cannot read {shown}: {exc.strerror or exc}", f.loc)
            return None
        return DirectoryConfig(file=p, people=people, location=node.loc)
    raw, origin = r.resolve(b)
    if raw is _MISSING:
        return None
    example = "e.g. bitrix: !env SHOP_DB_URL with SHOP_DB_URL=mysql+pymysql://user:password@host/sitemanager"
    if raw is None or _is_bool(raw) or not isinstance(raw, str) or not raw.strip():
        got = "an empty string" if isinstance(raw, str) and not _is_bool(raw) else r.what(raw, origin)
        r.error(f"directory.bitrix: expected a database URL, got {got}", b.loc, example, secret=True)
        return None
    problem, url = check_bitrix_url(raw, r.base_dir)
    if problem:
        where_from = f" (the value of {origin})" if origin else ""
        r.error(f"directory.bitrix: {problem}{where_from}", b.loc, example, secret=True)
        return None
    if origin is None and urlsplit(url).password:
        r.plain_secret_warning(b)   # a password written in the file
    ttl = r.number(ttl_v, DEFAULT_DIRECTORY_TTL, what="a number of seconds (0 turns the cache off)")
    if ttl < 0:
        r.error(f"directory.ttl: expected a number of seconds (0 turns the cache off), got {ttl:g}",
                ttl_v.loc)
        ttl = DEFAULT_DIRECTORY_TTL
    groups: dict[str, str] = {}
    if groups_v is not None:
        graw, gorigin = r.resolve(groups_v)
        if graw is not None and graw is not _MISSING:
            if not isinstance(graw, CommentedMap):
                r.error(f"directory.groups: expected a mapping of a rule's group name to the Bitrix "
                        f"group's name, STRING_ID or ID, got {r.what(graw, gorigin)}", groups_v.loc,
                        'e.g. groups: {ops: "Администраторы интернет-магазина", managers: 5}')
            else:
                for key in graw:
                    entry = r.entry(groups_v, key)
                    value, vorigin = r.resolve(entry)
                    if value is _MISSING:
                        continue
                    if _is_bool(value) or not isinstance(value, (str, int)) or not str(value).strip():
                        r.error(f"{entry.path}: expected a Bitrix group's name, STRING_ID or ID, got "
                                f"{r.what(value, vorigin)}", entry.loc)
                        continue
                    groups[str(key)] = str(_plain(value)).strip()
    return DirectoryConfig(bitrix=Secret(url), ttl=ttl, groups=groups, location=node.loc)
