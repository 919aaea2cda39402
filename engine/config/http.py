"""`http:` — where the API listens, its tokens, body size limit and trusted proxies."""

from __future__ import annotations

import ipaddress
import re

from ruamel.yaml.comments import CommentedSeq

from herald.engine.helpers.client_address import parse_proxy
from herald.engine.config.model import DEFAULT_HOST, DEFAULT_MAX_BODY, DEFAULT_PORT, HttpConfig
from herald.engine.config.reader import _MISSING, _Val, _is_bool, _what
from herald.engine.config.secret import Secret
from herald.engine.config.values import ValueReader

HTTP_KEYS = ("listen", "tokens", "max_body", "trusted_proxies")


def read_http(r: ValueReader, node: _Val | None) -> HttpConfig:
    if node is None:
        return HttpConfig()
    r.check_keys(node, HTTP_KEYS, "http")
    host, port = DEFAULT_HOST, DEFAULT_PORT
    lv = r.child(node, "listen")
    if lv is not None:
        host, port = _listen(r, lv)
    tokens: list[Secret] = []
    t = r.child(node, "tokens")
    if t is not None and t.raw is not None:
        if not isinstance(t.raw, CommentedSeq):
            r.error(f"{t.path}: expected a list of tokens, got {_what(t.raw)}", t.loc,
                    "e.g. tokens: [!env HERALD_TOKEN]; tokens: [] keeps the API "
                    "local-only", secret=True)
        else:
            for item in r.items(t):
                value, origin = r.resolve(item, unset_hint=(
                    "set it before starting Herald, or write tokens: [] for a local-only "
                    "API without tokens"))
                if value is _MISSING:
                    continue
                if not isinstance(value, str) or _is_bool(value):
                    r.error(f"{item.path}: expected a token (a string), got "
                            f"{r.what(value, origin)}", item.loc, secret=True)
                elif not value.strip():
                    r.error(f"{item.path}: a token cannot be empty"
                            + (f" ({origin} is set but empty)" if origin else ""),
                            item.loc, secret=True)
                else:
                    if origin is None:
                        r.plain_secret_warning(item)
                    tokens.append(Secret(value))
    max_body = DEFAULT_MAX_BODY
    mb = r.child(node, "max_body")
    if mb is not None:
        max_body = _size(r, mb)
    cfg = HttpConfig(host=host, port=port, tokens=tuple(tokens), max_body=max_body,
                     trusted_proxies=_trusted_proxies(r, r.child(node, "trusted_proxies")))
    if not tokens and not is_loopback(host) and not r.sink.has_errors:
        r.warning(f"http.tokens is empty, so the API on {cfg.listen} answers only "
                  "requests from this machine",
                  (t or lv or node).loc,
                  "add tokens: [!env HERALD_TOKEN] to accept authenticated requests "
                  "from elsewhere, or listen on 127.0.0.1")
    return cfg


def _trusted_proxies(r: ValueReader, v: _Val | None) -> tuple:
    """`http.trusted_proxies: [127.0.0.1, 10.0.0.0/8]` (engine/helpers/client_address.py)."""
    out = []
    for item in r.items(v) if v is not None and isinstance(v.raw, CommentedSeq) else ():
        try:
            out.append(parse_proxy(str(item.raw)))
        except ValueError:
            r.error(f"{item.path}: {r.show(str(item.raw), None)} is not an IP address or network",
                    item.loc, "e.g. 127.0.0.1, 10.0.0.0/8 or 2001:db8::/32")
    if v is not None and v.raw is not None and not isinstance(v.raw, CommentedSeq):
        r.error(f"{v.path}: expected a list of addresses or networks, got {_what(v.raw)}", v.loc,
                "e.g. trusted_proxies: [127.0.0.1, 10.0.0.0/8]")
    return tuple(out)


def _listen(r: ValueReader, v: _Val) -> tuple[str, int]:
    raw, origin = r.resolve(v)
    if raw is _MISSING or raw is None:
        return DEFAULT_HOST, DEFAULT_PORT
    if isinstance(raw, int) and not _is_bool(raw):
        raw = f"{DEFAULT_HOST}:{raw}"
    bad = f"{v.path}: expected HOST:PORT such as 127.0.0.1:8780, got "
    if not isinstance(raw, str):
        r.error(bad + r.what(raw, origin), v.loc)
        return DEFAULT_HOST, DEFAULT_PORT
    m = re.fullmatch(r"\s*(\[[^\]]+\]|[^\s:\[\]]+|):(\d+)\s*", raw)
    if not m:
        r.error(bad + r.show(raw, origin), v.loc)
        return DEFAULT_HOST, DEFAULT_PORT
    host, port = m.group(1).strip("[]") or "0.0.0.0", int(m.group(2))
    if not 0 < port < 65536:
        shown = "the port" if origin else f"port {port}"
        r.error(f"{v.path}: {shown} is out of range (1-65535)", v.loc)
        return DEFAULT_HOST, DEFAULT_PORT
    return host, port


def _size(r: ValueReader, v: _Val) -> int:
    raw, origin = r.resolve(v)
    if raw is _MISSING or raw is None:
        return DEFAULT_MAX_BODY
    if isinstance(raw, int) and not _is_bool(raw):
        if raw > 0:
            return int(raw)
    elif isinstance(raw, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]i?[bB]?|[bB])?\s*", raw)
        if m:
            n = float(m.group(1))
            unit = (m.group(2) or "b").lower()[0]
            n *= {"b": 1, "k": 1024, "m": 1024 * 1024}[unit]
            if n >= 1:
                return int(n)
    r.error(f"{v.path}: expected a size in bytes such as 1048576 or \"1 MiB\", got "
            f"{r.show(raw, origin) if isinstance(raw, (str, int)) else r.what(raw, origin)}",
            v.loc)
    return DEFAULT_MAX_BODY


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (a host name is not looked up)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
