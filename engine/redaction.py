"""The values that must never reach a log line or an alert mail.

One walk over the whole loaded config finds them, so a setting added tomorrow that holds
a `Secret` is redacted without anyone remembering to list it here: every `Secret`, the
password inside any URL (a connector's database URL, `bsg.url`, a backup's URL, written
literally or not), and the token alone of a Bitrix24 incoming-webhook URL.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator
from urllib.parse import urlsplit

from herald.engine.config import Config, Secret


def secret_values(config: Config) -> list[str]:
    """Every secret string of `config`, longest first (so a value that contains another is
    replaced whole)."""
    found: set[str] = set()
    for value, is_secret in _leaves(config):
        if is_secret:
            found.add(value)
        password = _url_password(value)
        if password:
            found.add(password)
    if config.bitrix24 is not None and config.bitrix24.rest_url is not None:
        found.add(rest_token(config.bitrix24.rest_url.reveal()))     # the token alone, too
    return sorted((v for v in found if v), key=len, reverse=True)


def rest_token(url: str) -> str:
    """The secret part of a Bitrix24 incoming webhook URL (…/rest/USER_ID/TOKEN/)."""
    segments = [p for p in urlsplit(url).path.split("/") if p]
    return segments[-1] if segments else ""


def _leaves(value: Any, depth: int = 0) -> Iterator[tuple[str, bool]]:
    """(string, is it a Secret) for every string in a config tree."""
    if depth > 32:                   # the config reader bounds nesting; this is only a guard
        return
    if isinstance(value, Secret):
        yield value.reveal(), True
    elif isinstance(value, str):
        yield value, False
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _leaves(getattr(value, field.name), depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _leaves(item, depth + 1)


def _url_password(value: str) -> str | None:
    if "://" not in value or "@" not in value:
        return None
    try:
        return urlsplit(value).password
    except ValueError:              # not a URL after all (a bad port, a stray bracket)
        return None
