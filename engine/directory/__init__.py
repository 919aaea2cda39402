"""Who to send to: users, departments, groups and subscription lists.

Three directories share one protocol:

- `StaticDirectory`: in memory (rule tests, `simulate`'s STATE.json);
- `FileDirectory`: a StaticDirectory read from a YAML file (`directory: {file: people.yaml}`),
  checked with located errors when the config loads;
- `BitrixDirectory`: the shop's Bitrix database (`directory: {bitrix: URL}`), through
  SQLAlchemy, with a TTL cache.

Lookups never raise: an unknown user, a department without people or a database that
does not answer is a per-recipient problem with a reason. See docs/directory.md.
"""

from __future__ import annotations

from typing import Any

from herald.engine.directory.base import (  # noqa: F401  (the package's public names)
    PHONE_AUTH, PHONE_FIELDS, Directory, Lookup, NoDirectory, StaticDirectory, known_names, lookup, lookup_user,
    members_text, members_trace, phone_field, phone_of, user_trace,
)
from herald.engine.directory.bitrix import BitrixDirectory, bitrix_engine, check_bitrix_url, describe_error  # noqa: F401
from herald.engine.directory.people import FileDirectory  # noqa: F401


def open_directory(cfg: Any) -> Directory:
    """The directory a `directory:` config section (herald.engine.config.DirectoryConfig) names.
    Never raises: a Bitrix database is only connected to on the first lookup."""
    if cfg is None:
        return NoDirectory()
    if cfg.people is not None:
        return cfg.people
    if cfg.bitrix is not None:
        return BitrixDirectory(cfg.bitrix, ttl=cfg.ttl, groups=cfg.groups)
    return StaticDirectory()
