"""`connectors:` — each entry's type, and its other keys as plain values for the connector
to check (a secret-ish key or an `!env`/`!secret` value becomes a `Secret`)."""

from __future__ import annotations

from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from herald.engine.config.model import ConnectorConfig
from herald.engine.config.reader import _MISSING, _SECRETISH, _Ref, _Val, _is_bool, _plain, _url_password, _what
from herald.engine.config.secret import Secret
from herald.engine.config.values import ValueReader
from herald.engine.errors import Location

def read_connectors(r: ValueReader, v: _Val | None) -> tuple[ConnectorConfig, ...]:
    if v is None:
        return ()
    raw, origin = r.resolve(v)
    if raw is None or raw is _MISSING:
        return ()
    if not isinstance(raw, CommentedSeq):
        r.error(f"connectors: expected a list of connectors (- type: ...), got "
                f"{r.what(raw, origin)}", v.loc)
        return ()
    out = []
    for item in r.items(v):
        if not isinstance(item.raw, CommentedMap):
            r.error(f"{item.path}: expected a connector (type: ... and its keys), got "
                    f"{_what(item.raw)}", item.loc)
            continue
        t = r.child(item, "type")
        if t is None:
            r.error(f"{item.path}: type is required", item.loc, "e.g. type: sql")
            continue
        ctype = r.string(t, "", what="a connector type such as sql", allow_empty=False)
        options: dict[str, Any] = {}
        locations: dict[str, Location] = {}
        for key in item.raw:
            if key == "type":
                continue
            entry = r.entry(item, key)
            name = str(key)
            options[name] = _option(r, entry, bool(_SECRETISH.search(name)))
            locations[name] = entry.loc
        if ctype:
            out.append(ConnectorConfig(ctype, options, item.loc, locations, r.base_dir))
    return tuple(out)


def _option(r: ValueReader, v: _Val, secretish: bool) -> Any:
    raw = v.raw
    if isinstance(raw, _Ref):
        value, origin = r.resolve(v)
        if value is _MISSING:
            return None
        if isinstance(value, (int, float)) and not _is_bool(value):
            value = str(value)
        return Secret(value) if isinstance(value, str) else value
    if isinstance(raw, CommentedMap):
        return {str(k): _option(r, r.entry(v, k), secretish or bool(_SECRETISH.search(str(k))))
                for k in raw}
    if isinstance(raw, CommentedSeq):
        return [_option(r, i, secretish) for i in r.items(v)]
    value = _plain(raw)
    if secretish and isinstance(value, str) and value:
        r.plain_secret_warning(v)
        return Secret(value)
    if isinstance(value, str) and _url_password(value):
        # mysql://user:PASSWORD@host/db written literally: warned like any plain-text secret,
        # and held as a Secret so the log redaction knows the URL and its password
        r.warning(f"{v.path} holds a password written in the config file in plain text", v.loc,
                  "move the URL to an environment variable (!env NAME) or to secrets.yaml "
                  "(!secret NAME)", secret=True)
        return Secret(value)
    return value
