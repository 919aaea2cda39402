"""`subscriptions:` — subscription lists and the guards against SMS pumping
(docs/subscriptions.md). The requests themselves are served by
herald.engine.audience.subscriptions, which reads what this builds."""

from __future__ import annotations

import re
from typing import Any, Mapping
from urllib.parse import urlsplit

import phonenumbers
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from herald.engine.config.model import ProofConfig, SubscriptionsConfig
from herald.engine.config.reader import _Val
from herald.engine.config.values import ValueReader
from herald.engine.errors import did_you_mean
from herald.engine.helpers.phones import NUMBER_TYPES

SUBSCRIPTIONS_KEYS = ("lists", "countries", "per_ip", "per_phone", "code_attempts", "code_lifetime",
                      "code_length", "poll_incoming", "total", "per_country", "number_types", "proof")
OTHER_COUNTRIES = "*"     # `per_country`: every calling code not named

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|m|min|h|d)\s*$")
_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_rate(text: str) -> tuple[int, float] | None:
    """`5/h`, `3/10m`, `100/d` → (count, seconds); None when it is not one."""
    m = _RATE.match(text)
    if not m:
        return None
    return int(m.group(1)), float(int(m.group(2) or 1) * _UNIT[m.group(3)])


def read_subscriptions(reader: ValueReader, node: _Val | None, sites: Mapping[str, Any]) -> SubscriptionsConfig:
    """`subscriptions: {lists: [news], countries: [7], per_ip: 5/h, ...}` (docs/subscriptions.md)."""
    if node is None:
        return SubscriptionsConfig()
    reader.check_keys(node, SUBSCRIPTIONS_KEYS, "subscriptions")
    c = lambda key: reader.child(node, key)  # noqa: E731
    defaults = SubscriptionsConfig()
    poll = c("poll_incoming")
    lists = _lists(reader, c("lists"))
    return SubscriptionsConfig(
        lists=lists,
        countries=_countries(reader, c("countries"), sites),
        per_ip=_rate(reader, c("per_ip"), defaults.per_ip),
        per_phone=_rate(reader, c("per_phone"), defaults.per_phone),
        code_attempts=reader.number(c("code_attempts"), defaults.code_attempts, what="a whole number of tries",
                                    integer=True, positive=True),
        code_lifetime=reader.duration(c("code_lifetime"), defaults.code_lifetime),
        code_length=reader.number(c("code_length"), defaults.code_length, what="a number of digits (4-10)",
                                  integer=True, positive=True, maximum=10),
        poll_incoming=None if poll is not None and poll.raw in (False, "off", 0) else
        reader.duration(poll, defaults.poll_incoming),
        total=_rate(reader, c("total"), defaults.total),
        per_country=_per_country(reader, c("per_country"), defaults.per_country),
        number_types=_number_types(reader, c("number_types"), defaults.number_types),
        proof=_proof(reader, reader.section(node, "proof"), lists),
    )


def _lists(reader: ValueReader, v: _Val | None) -> dict[str, str]:
    if v is None or v.raw is None:
        return {}
    if isinstance(v.raw, CommentedSeq):
        return {name: name for name in reader.str_list(v, (), what="list names")}
    if isinstance(v.raw, CommentedMap):
        out = {}
        for key in v.raw:
            item = reader.child(v, key)
            out[str(key)] = reader.string(item, str(key), what="a title for the list") or str(key)
        return out
    reader.error(f"{v.path}: expected list names ([news, offers]) or a mapping of name → title", v.loc)
    return {}


def _rate(reader: ValueReader, v: _Val | None, default: tuple[int, float]) -> tuple[int, float]:
    if v is None or v.raw is None:
        return default
    raw, origin = reader.resolve(v)
    rate = parse_rate(raw) if isinstance(raw, str) else None
    if rate is None or rate[0] < 1:
        reader.error(f"{v.path}: expected a rate such as 5/h or 3/10m, got {reader.what(raw, origin)}", v.loc,
                     "COUNT/PERIOD: at most COUNT code requests per PERIOD (s, m, h, d)")
        return default
    return rate


def _calling_code(text: str) -> int | None:
    text = text.strip().lstrip("+")
    if not text.isdigit() or not phonenumbers.region_codes_for_country_code(int(text)):
        return None
    return int(text)


def _per_country(reader: ValueReader, v: _Val | None, default: Mapping[str, tuple[int, float]]) -> dict[str, tuple[int, float]]:
    """`20/h` (each calling code) or `{7: 500/h, 375: 20/h, other: 10/h}`; unnamed codes keep
    the default unless `other` (or "*") says otherwise."""
    if v is None or v.raw is None:
        return dict(default)
    if not isinstance(v.raw, CommentedMap):
        return {OTHER_COUNTRIES: _rate(reader, v, default[OTHER_COUNTRIES])}
    out = dict(default)
    for key in v.raw:
        item = reader.child(v, key)
        name = str(key).strip()
        code = None if isinstance(key, bool) or name in ("other", OTHER_COUNTRIES) else _calling_code(name)
        if code is None and name not in ("other", OTHER_COUNTRIES):
            reader.error(f"{v.path}: {key!r} is not a country calling code", item.key_loc,
                         "e.g. 7 (Russia, Kazakhstan), 375 (Belarus); `other` for the rest")
            continue
        out[str(code) if code is not None else OTHER_COUNTRIES] = _rate(reader, item, default[OTHER_COUNTRIES])
    return out


def _number_types(reader: ValueReader, v: _Val | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if v is None or v.raw is None:
        return default
    if not isinstance(v.raw, CommentedSeq):
        reader.error(f"{v.path}: expected a list of number types, e.g. [{', '.join(default)}]", v.loc)
        return default
    known, out = tuple(NUMBER_TYPES), []
    for item in reader.items(v):
        name = str(item.raw).strip().lower()
        if name not in known:
            hint = did_you_mean(name, known)
            reader.error(f'{item.path}: unknown number type "{item.raw}"', item.loc,
                         (hint + "; " if hint else "") + "number types: " + ", ".join(known))
            continue
        out.append(name)
    if not out:
        reader.error(f"{v.path}: expected at least one number type, e.g. [mobile]", v.loc)
        return default
    return tuple(out)


PROOF_KEYS = ("url", "secret", "lists", "timeout")


def _proof(reader: ValueReader, node: _Val | None, lists: Mapping[str, str]) -> ProofConfig | None:
    """`proof: {url, secret, lists?, timeout?}`: a CAPTCHA step for `lists` (default: all)."""
    if node is None:
        return None
    reader.check_keys(node, PROOF_KEYS, "subscriptions.proof")
    c = lambda key: reader.child(node, key)  # noqa: E731
    url = reader.string(c("url"), "", what="the verifier's URL", allow_empty=False)
    parts = urlsplit(url)
    if c("url") is None or (url and (parts.scheme not in ("http", "https") or not parts.netloc)):
        reader.error(f"{node.path}.url: expected the verifier's http(s) URL", (c("url") or node).loc,
                     "e.g. https://challenges.cloudflare.com/turnstile/v0/siteverify")
    reported = len(reader.sink.items)
    secret = reader.secret(c("secret"))
    if secret is None and len(reader.sink.items) == reported:   # absent or empty: never a silent "no CAPTCHA"
        reader.error(f"{node.path}.secret: the verifier's secret key is required", (c("secret") or node).loc,
                     "secret: !env CAPTCHA_SECRET (set and not empty)")
    names = tuple(lists)
    v = c("lists")
    if v is not None:
        names = reader.str_list(v, names, what="list names")
        for name in names:
            if name not in lists:
                reader.error(f'{v.path}: unknown list "{name}"', v.loc,
                             did_you_mean(name, tuple(lists)) or "lists: " + (", ".join(lists) or "none"))
    return ProofConfig(url=url, secret=secret, lists=names, timeout=reader.duration(c("timeout"), 5.0)) \
        if secret is not None else None


def _codes(reader: ValueReader, v: _Val | None) -> tuple[int, ...]:
    if not isinstance(v.raw, CommentedSeq):
        reader.error(f"{v.path}: expected a list of country calling codes, e.g. [7, 375]", v.loc)
        return ()
    out = []
    for item in reader.items(v):
        text = str(item.raw).strip().lstrip("+")
        if isinstance(item.raw, bool) or not text.isdigit() or not phonenumbers.region_codes_for_country_code(
                int(text)):
            reader.error(f"{item.path}: {item.raw!r} is not a country calling code", item.loc,
                         "e.g. 7 (Russia, Kazakhstan), 375 (Belarus), 380 (Ukraine)")
            continue
        out.append(int(text))
    return tuple(out)


def _countries(reader: ValueReader, v: _Val | None, sites: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """A list (every site) or a mapping site → list."""
    if v is None or v.raw is None:
        return {}
    if not isinstance(v.raw, CommentedMap):
        codes = _codes(reader, v)
        return {site: codes for site in sites}
    out = {}
    for key in v.raw:
        item = reader.child(v, key)
        if sites and str(key) not in sites:
            reader.error(f'{v.path}: unknown site "{key}"', item.key_loc,
                         did_you_mean(str(key), tuple(sites)) or "configured sites: " + ", ".join(sites))
            continue
        out[str(key)] = _codes(reader, item)
    return out
