"""Herald's configuration: one YAML file, read into frozen, typed dataclasses.

Paths in the file are relative to the file's folder. `!env NAME` reads an environment
variable and `!secret NAME` reads `secrets.yaml` beside the config. Every problem is
collected as a located `Diagnostic` (`FILE:LINE:COL`) and all of them are raised at
once as one `ConfigError`. Secret values (anything read through `!env`/`!secret`, and
keys, tokens and passwords) are never put into a message, a repr or a source line.

See docs/configuration.md for every key.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import math
import os
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from herald.engine.errors import ConfigError, Diagnostic, DiagnosticSink, Location, did_you_mean
from herald.engine.helpers.windows import WINDOW_FORMAT, SendWindow, parse_window

__all__ = [
    "Secret", "reveal", "Config", "BsgConfig", "BackupEndpoint", "Failover", "Senders", "Site",
    "HttpConfig", "SmtpConfig", "ConnectorConfig", "DirectoryConfig", "load_config", "default_config",
    "CONFIG_FILE", "SECRETS_FILE", "DEFAULT_TIMEZONE", "CHANNELS", "OMNI_MODES", "is_loopback",
]

CONFIG_FILE = "herald.yaml"
SECRETS_FILE = "secrets.yaml"
DEFAULT_TIMEZONE = "Europe/Moscow"
DEFAULT_BSG_URL = "https://api.bsg.world/rest"
DEFAULT_RATE = 20.0
DEFAULT_LOOKUP_RATE = 50.0           # BSG publishes no limit; look-ups are rare bursts
DEFAULT_LOOKUP_CONCURRENCY = 16
DEFAULT_UNCERTAIN_FAILOVER = 600.0   # 10 minutes
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8780
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_SMS_SENDERS = ("testsms",)
DEFAULT_VIBER_SENDERS = ("AdvInform",)
DEFAULT_SITE_ID = "s1"
DEFAULT_CHANNEL = "sms"
DEFAULT_DIRECTORY_TTL = 300.0
CHANNELS = ("sms", "viber", "omni")
OMNI_MODES = ("provider", "engine")


# --------------------------------------------------------------------------- secrets

class Secret:
    """A secret string. It prints as `Secret('****')` everywhere; `.reveal()` is the
    only way to the value, so call it only where the value leaves the process."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not isinstance(value, str):
            raise TypeError("Secret wraps a string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> "Secret":
        return self

    def __deepcopy__(self, memo: dict) -> "Secret":  # immutable; keeps dataclasses.asdict working
        return self

    def __reduce__(self):  # no pickling: pickles end up in files and logs
        raise TypeError("a Secret cannot be pickled")


def reveal(value: Any) -> Any:
    """`value.reveal()` for a Secret, anything else unchanged (for connector options)."""
    return value.reveal() if isinstance(value, Secret) else value


MAX_LOOKUP_RATE = 10_000.0
MAX_LOOKUP_CONCURRENCY = 1000

# --------------------------------------------------------------------------- the model

@dataclass(frozen=True, slots=True)
class BackupEndpoint:
    url: str
    api_key: Secret | None = None      # None: use the main bsg.api_key


@dataclass(frozen=True, slots=True)
class Failover:
    """`bsg.failover`: when an endpoint counts as down, and when it is tried again."""

    window: float = 60.0               # seconds of request outcomes that count
    failures: int = 3                  # failed requests in the window before it trips …
    ratio: float = 0.5                 # … when they are at least this share of its requests
    probe: float = 30.0                # seconds after tripping before a probe (GET balance)
    slow_receipts: float | None = None # trip when the median send → final report exceeds this


@dataclass(frozen=True, slots=True)
class BsgConfig:
    url: str = DEFAULT_BSG_URL
    api_key: Secret | None = None      # None (absent, or !env unset/empty) → sandbox
    backup: tuple[BackupEndpoint, ...] = ()
    rate: float = DEFAULT_RATE         # requests per second at most
    callback_secret: Secret | None = None   # None: delivery-report callbacks off (polling only)
    failover: Failover = Failover()
    balance_alert: float | None = None # alert the admins when the balance falls under this
    balance_every: float = 900.0       # seconds between balance reads (provider.balance events)
    timeout: float = 10.0              # seconds to wait for an answer to one request
    # look-ups of unknown outcomes (recovery, 23/43, uncertain messages): their own budget
    lookup_rate: float = DEFAULT_LOOKUP_RATE          # look-ups per second at most, per account
                                                      # (unset: 50, or `rate` when higher)
    lookup_concurrency: int = DEFAULT_LOOKUP_CONCURRENCY   # look-ups in flight at most
    # seconds an unknown outcome waits for its endpoint before going to the next one
    # (it may then arrive twice); math.inf: `never`
    uncertain_failover_after: float = DEFAULT_UNCERTAIN_FAILOVER

    @property
    def callbacks(self) -> bool:
        """Delivery reports are accepted at POST /bsg/callback/{callback_secret}."""
        return self.callback_secret is not None

    @property
    def sandbox(self) -> bool:
        """No API key: Herald talks to its built-in fake BSG and sends nothing."""
        return self.api_key is None


@dataclass(frozen=True, slots=True)
class Senders:
    sms: tuple[str, ...] = DEFAULT_SMS_SENDERS
    viber: tuple[str, ...] = DEFAULT_VIBER_SENDERS


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    name: str = ""                     # #SITE_NAME# (defaults to the id)
    server_name: str = ""              # #SERVER_NAME#
    email_from: str = ""               # #DEFAULT_EMAIL_FROM#
    phone_from: str = ""               # #DEFAULT_PHONE_FROM#
    timezone: str = DEFAULT_TIMEZONE
    channel: str = DEFAULT_CHANNEL     # sms | viber | omni
    sms_sender: str = DEFAULT_SMS_SENDERS[0]
    viber_sender: str = DEFAULT_VIBER_SENDERS[0]
    send_window: SendWindow | None = None   # None: any time of day
    admins: tuple[str, ...] = ()       # as written; phone validation happens elsewhere
    admin_email: str = ""
    translit: bool = False
    omni: str = "provider"             # provider: BSG's Viber alt_route; engine: Herald falls back
    omni_deadline: float = 600.0       # omni: engine — seconds Viber may take before the SMS goes
    language: str = "ru"
    api_key: Secret | None = None      # the site's own BSG account (None: bsg.api_key)
    uncertain_failover_after: float | None = None   # None: bsg.uncertain_failover_after; inf: never

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def macros(self) -> dict[str, str]:
        """The site's template macros."""
        return {
            "SITE_NAME": self.name,
            "SERVER_NAME": self.server_name,
            "DEFAULT_EMAIL_FROM": self.email_from,
            "DEFAULT_PHONE_FROM": self.phone_from,
        }


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tokens: tuple[Secret, ...] = ()    # empty: no auth, local-only API
    max_body: int = DEFAULT_MAX_BODY   # bytes
    trusted_proxies: tuple = ()        # ip_network: peers whose X-Forwarded-For is believed

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def local_only(self) -> bool:
        """No tokens: the API must accept requests from this machine only."""
        return not self.tokens


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int = 25
    from_addr: str = "herald@localhost"   # the `from` key
    username: str | None = None
    password: Secret | None = None
    starttls: bool = False


@dataclass(frozen=True, slots=True)
class Bitrix24Config:
    """`bitrix24:` — Bitrix24's outbound webhooks on POST /hooks/bitrix24 (docs/bitrix24.md)."""

    application_token: Secret          # the token Bitrix24 gave the webhook; posts must carry it
    site: str | None = None            # the site its events belong to (None: the default site)
    rest_url: Secret | None = None     # an incoming webhook URL (…/rest/USER/TOKEN/): task events get
                                       # their title and people from Bitrix24's REST API (None: ids only)


@dataclass(frozen=True, slots=True)
class ProofConfig:
    """`subscriptions.proof`: a CAPTCHA token checked by a siteverify-style verifier."""

    url: str
    secret: Secret
    lists: tuple[str, ...] = ()        # the lists that ask for it
    timeout: float = 5.0               # seconds; no answer by then: 503 (fail closed)


@dataclass(frozen=True, slots=True)
class SubscriptionsConfig:
    """`subscriptions:` — subscription lists, the guards against SMS pumping on
    POST /subscriptions, and how often incoming SMS are polled (docs/subscriptions.md)."""

    lists: Mapping[str, str] = field(default_factory=dict)   # name → title
    countries: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # site → calling codes (empty: any)
    per_ip: tuple[int, float] = (5, 3600.0)       # code requests per client address per period
    per_phone: tuple[int, float] = (3, 3600.0)    # code requests per phone number per period
    total: tuple[int, float] = (200, 3600.0)      # codes sent in all per period
    per_country: Mapping[str, tuple[int, float]] = field(
        default_factory=lambda: {"*": (100, 3600.0)})   # calling code ("7"; "*": any other) → rate
    number_types: tuple[str, ...] = ("mobile", "fixed_line_or_mobile")   # engine/helpers/phones.py NUMBER_TYPES
    proof: ProofConfig | None = None              # the CAPTCHA step (None: none)
    code_attempts: int = 5                        # wrong codes before the code is void
    code_lifetime: float = 600.0                  # seconds a confirmation code is good for
    code_length: int = 6                          # digits
    poll_incoming: float | None = 60.0            # seconds between BSG 2-way polls (None: off)


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """One `connectors:` item. `options` holds its other keys as plain Python values
    (dict, list, str, int, float, bool, None); every `!env`/`!secret` value, and every
    value of a key that names a password, token, secret or key, is a `Secret`.
    The connector validates its options itself, locating errors with `locations`."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)
    location: Location | None = None
    locations: Mapping[str, Location] = field(default_factory=dict)  # option → where
    base_dir: Path | None = None       # the config file's folder: resolve relative paths against it

    def path(self, value: str | os.PathLike[str]) -> Path:
        """An option's path, relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir or Path.cwd()) / p


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    """`directory:` — where `user`, `department`, `group` and `subscribers` recipients
    are looked up: a YAML file (read and checked with the config) or the Bitrix database."""

    file: Path | None = None           # the people file, absolute
    bitrix: Secret | None = None       # SQLAlchemy URL of the Bitrix database
    ttl: float = DEFAULT_DIRECTORY_TTL # seconds a Bitrix answer is cached (0: not cached)
    groups: Mapping[str, str] = field(default_factory=dict)  # rule's group name → Bitrix NAME/STRING_ID/ID
    people: Any = field(default=None, compare=False, repr=False)  # the loaded herald.engine.audience.directory.FileDirectory
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None                  # the file read (absolute); None for built-in defaults
    base_dir: Path                     # relative paths are resolved against it
    store: Path
    rules: Path
    templates: Path
    timezone: str
    bsg: BsgConfig
    senders: Senders
    sites: Mapping[str, Site]          # ordered; the first is the default site
    http: HttpConfig
    smtp: SmtpConfig | None
    connectors: tuple[ConnectorConfig, ...]
    warnings: tuple[Diagnostic, ...] = ()
    directory: DirectoryConfig | None = None   # None: no directory (lookups find no one)
    bitrix24: Bitrix24Config | None = None     # None: POST /hooks/bitrix24 answers 404
    subscriptions: SubscriptionsConfig = SubscriptionsConfig()

    @property
    def default_site(self) -> Site:
        return next(iter(self.sites.values()))

    @property
    def secrets_path(self) -> Path:
        return self.base_dir / SECRETS_FILE


# --------------------------------------------------------------------------- YAML

@dataclass(frozen=True, slots=True)
class _Ref:
    """A `!env NAME` / `!secret NAME` (or an unknown tag) found while parsing."""

    tag: str
    name: str | None                   # None: the tag was not on a plain name
    line: int                          # 0-based, from ruamel
    col: int


class _Constructor(RoundTripConstructor):
    pass


def _construct_tag(self: RoundTripConstructor, node: Any) -> _Ref:
    tag = str(node.tag)
    name = None
    if type(node).__name__ == "ScalarNode" and isinstance(node.value, str) and node.value.strip():
        name = node.value.strip()
    return _Ref(tag, name, node.start_mark.line, node.start_mark.column)


_Constructor.add_constructor("!env", _construct_tag)
_Constructor.add_constructor("!secret", _construct_tag)
_Constructor.add_constructor(None, _construct_tag)   # any other tag: reported later

# Bounds on the tree (docs/configuration.md "Limits"): Herald's own walks, and the connectors'
# walks of their options, stay shallow and small however the YAML nests or aliases.
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_VALUES = 10_000             # values, with every alias expanded (a "billion laughs" stops here)


def _located_constructor(construct: Any) -> Any:
    """ruamel's constructors raise bare ValueError/TypeError (a 5,000-digit int, `!!float x`,
    2001-02-30, a list as a mapping key): re-raise them as YAML errors with the node's mark."""
    import inspect

    def guarded(gen: Any, node: Any) -> Any:
        try:
            return (yield from gen)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise _constructor_error(exc, node) from exc

    def located(self: RoundTripConstructor, node: Any) -> Any:
        try:
            result = construct(self, node)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise _constructor_error(exc, node) from exc
        return guarded(result, node) if inspect.isgenerator(result) else result
    return located


def _constructor_error(exc: Exception, node: Any) -> MarkedYAMLError:
    from ruamel.yaml.constructor import ConstructorError
    text = str(exc).split(";")[0]
    if "Exceeds the limit" in text:
        text = "a number with too many digits"
    tag = str(getattr(node, "tag", "") or "")
    what = {"map": "a mapping", "seq": "a list", "set": "a set", "omap": "a mapping"}.get(tag.rsplit(":", 1)[-1])
    return ConstructorError(None, None, f"cannot read {what or 'this value'}: {text}", node.start_mark)


for _tag, _construct in list(RoundTripConstructor.yaml_constructors.items()):
    if _tag not in ("!env", "!secret", None):
        _Constructor.add_constructor(_tag, _located_constructor(_construct))


class _Oversized(MarkedYAMLError):
    """The document is too deep or too big, or holds a lone surrogate: `problem` says which."""

    def __init__(self, problem: str, mark: Any, hint: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


def _check_nodes(root: Any) -> None:
    """Before anything is constructed (ruamel's constructor hashes keys and formats
    duplicate-key errors with the whole value): one pass without recursion over the distinct
    nodes. Aliases may not nest deeper than MAX_CONFIG_DEPTH nor expand past
    MAX_CONFIG_VALUES values, no alias may sit inside its own anchor, and no string may hold
    a lone surrogate (a "\\ud800" escape)."""
    from ruamel.yaml.nodes import CollectionNode, MappingNode, ScalarNode

    def children(node: Any) -> list:
        if isinstance(node, MappingNode):
            return [n for pair in node.value for n in pair]
        return list(node.value) if isinstance(node, CollectionNode) else []

    def check_text(node: Any) -> None:
        if isinstance(node, ScalarNode) and isinstance(node.value, str) and _has_surrogate(node.value):
            raise _Oversized("a string holds a lone surrogate, which is not a character", node.start_mark,
                             "write the character itself (the file is UTF-8), not a \\ud800-style escape")

    check_text(root)
    sized: dict[int, tuple[int, int, Any]] = {}        # id → (height, expanded size, deepest mark)
    inside: set[int] = set()                           # being walked: an alias to one is a cycle
    stack: list[tuple[Any, bool]] = [(root, False)] if isinstance(root, CollectionNode) else []
    while stack:
        node, done = stack.pop()
        if done:
            inside.discard(id(node))
            height, size, deepest = 1, 1, node.start_mark
            for child in children(node):
                if isinstance(child, CollectionNode):
                    h, n, d = sized[id(child)]
                    if h + 1 > height:
                        height, deepest = h + 1, d
                    size += n
                else:
                    size += 1
            if size > MAX_CONFIG_VALUES:
                raise _Oversized(f"the config holds more than {MAX_CONFIG_VALUES} values once its aliases are "
                                 "expanded", node.start_mark,
                                 "use aliases (*name) for shared settings, not to multiply them")
            if height > MAX_CONFIG_DEPTH:
                raise _Oversized(f"the config nests more than {MAX_CONFIG_DEPTH} levels deep (counting what "
                                 "its aliases hold)", deepest, "no Herald setting needs that many")
            sized[id(node)] = (height, size, deepest)
            continue
        if id(node) in sized:
            continue
        inside.add(id(node))
        stack.append((node, True))
        for child in children(node):
            if id(child) in inside:
                raise _Oversized("an alias refers to a mapping or list it is inside of", child.start_mark,
                                 "an alias may only repeat a finished mapping or list")
            check_text(child)
            if isinstance(child, CollectionNode) and id(child) not in sized:
                stack.append((child, False))


def _construct_document(self: RoundTripConstructor, node: Any) -> Any:
    _check_nodes(node)
    return RoundTripConstructor.construct_document(self, node)


_Constructor.construct_document = _construct_document


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.Constructor = _Constructor
    y.max_depth = MAX_CONFIG_DEPTH + 1      # the composer recurses per level: stop it early, located
    y.composer.warn_double_anchors = False   # legal YAML; ruamel's warning would go to stderr
    return y


_KNOWN_TAGS = ("!env", "!secret")
_SECRETISH = re.compile(
    r"passw|passphrase|secret|token|api_?key|apikey|credential|private_?key|(^|_)(pass|pwd)$", re.I)
_SECRET_LINE = re.compile(r"(pass|secret|token|api_?key|apikey|credential|private)\w*\s*:", re.I)
_MISSING = object()


@dataclass(slots=True)
class _Val:
    """A value in the tree with where it is and its dotted path for messages."""

    raw: Any
    loc: Location
    path: str
    key_loc: Location | None = None


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, ScalarBoolean))


def _what(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if _is_bool(v):
        return "true/false"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, CommentedSeq)):
        return "a list"
    if isinstance(v, (dict, CommentedMap)):
        return "a mapping"
    if isinstance(v, dt.datetime):
        return "a date"
    if isinstance(v, dt.date):
        return "a date"
    return type(v).__name__


def _plain(v: Any) -> Any:
    """ruamel's scalar subclasses → plain Python values."""
    if _is_bool(v):
        return bool(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, TaggedScalar):
        return v.value
    return v


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _url_password(text: str) -> bool:
    """Does this look like a URL with a password in it (scheme://user:password@host)?"""
    if "://" not in text or "@" not in text:
        return False
    try:
        return bool(urlsplit(text.strip()).password)
    except ValueError:                  # e.g. a bad [IPv6] host: not a URL we can read
        return False


# --------------------------------------------------------------------------- the reader

class _Reader:
    """Walks the YAML tree once, building the dataclasses and collecting diagnostics."""

    def __init__(self, file: str, base_dir: Path, lines: list[str], env: Mapping[str, str],
                 lenient: bool = False):
        self.file = file
        self.base_dir = base_dir
        self.lines = lines
        self.env = env
        # lenient (store-only commands): an unset !env / missing !secret becomes a placeholder,
        # and nothing is reported about a value that is one (see load_config)
        self.lenient = lenient
        self._placeholders: set[Location] = set()
        self.sink = DiagnosticSink()
        self._secrets: dict[str, Any] | None = None
        self._secrets_problem: str | None = None
        self._secret_locs: dict[str, Location] = {}

    # ---- diagnostics

    def _src(self, loc: Location | None, secret: bool) -> str | None:
        if secret or loc is None or loc.file != self.file or not (0 < loc.line <= len(self.lines)):
            return None
        line = self.lines[loc.line - 1]
        if _SECRET_LINE.search(line) or self._in_secret_list(loc.line):
            return None  # the line may hold a secret written in plain text
        return line

    def _in_secret_list(self, line_no: int) -> bool:
        """Is this line an item of a block list under a secret-ish key (e.g. tokens:)?"""
        line = self.lines[line_no - 1]
        if not line.lstrip().startswith("-"):
            return False
        indent = len(line) - len(line.lstrip())
        for prev in reversed(self.lines[: line_no - 1]):
            stripped = prev.lstrip()
            if not stripped or stripped.startswith("#"):
                continue
            if len(prev) - len(stripped) < indent or not stripped.startswith("-"):
                return bool(_SECRET_LINE.search(prev))
        return False

    def error(self, message: str, loc: Location | None, hint: str | None = None,
              *, secret: bool = False) -> None:
        if loc is not None and loc in self._placeholders:
            return          # about a placeholder of an unset secret: known unusable, not this command's concern
        self.sink.error(message, loc, hint=hint, source_line=self._src(loc, secret))

    def warning(self, message: str, loc: Location | None, hint: str | None = None,
                *, secret: bool = False) -> None:
        self.sink.warning(message, loc, hint=hint, source_line=self._src(loc, secret))

    def loc(self, line0: int, col0: int) -> Location:
        return Location(self.file, line0 + 1, col0 + 1)

    # ---- walking

    def child(self, parent: _Val | None, key: str) -> _Val | None:
        """parent[key] as a _Val, or None when the key is absent."""
        if parent is None or not isinstance(parent.raw, CommentedMap) or key not in parent.raw:
            return None
        return self._entry(parent, key)

    def _entry(self, parent: _Val, key: Any) -> _Val:
        m: CommentedMap = parent.raw
        raw = m[key]
        key_loc = self._lc(m.lc.key, key) or parent.loc
        loc = self._lc(m.lc.value, key) or key_loc
        if isinstance(raw, _Ref):
            loc = self.loc(raw.line, raw.col)
        path = f"{parent.path}.{key}" if parent.path else str(key)
        return _Val(raw, loc, path, key_loc)

    def items(self, seq: _Val) -> list[_Val]:
        s: CommentedSeq = seq.raw
        out = []
        for i, raw in enumerate(s):
            loc = self._lc(s.lc.item, i) or seq.loc
            if isinstance(raw, _Ref):
                loc = self.loc(raw.line, raw.col)
            out.append(_Val(raw, loc, f"{seq.path}[{i}]", loc))
        return out

    def _lc(self, fn, key) -> Location | None:
        try:
            line, col = fn(key)
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return self.loc(line, col)

    def check_keys(self, node: _Val, known: Iterable[str], where: str) -> None:
        known = tuple(known)
        for key in node.raw:
            if isinstance(key, str) and key in known:
                continue
            kloc = self._lc(node.raw.lc.key, key) or node.loc
            name = str(key)
            hint = did_you_mean(name, known) or ("known keys: " + ", ".join(known))
            self.error(f'unknown key "{name}" in {where}', kloc, hint)

    def section(self, parent: _Val, key: str) -> _Val | None:
        """A mapping under parent[key]; None when absent, null, or wrong (reported)."""
        v = self.child(parent, key)
        if v is None:
            return None
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return None
        if not isinstance(raw, CommentedMap):
            self.error(f"{v.path}: expected a mapping of keys, got {self.what(raw, origin)}", v.loc)
            return None
        return v

    # ---- tags and secrets

    def resolve(self, v: _Val, *, unset_ok: bool = False,
                unset_hint: str | None = None) -> tuple[Any, str | None]:
        """The value of v with `!env`/`!secret` resolved: (value, origin). origin is the
        tag text (e.g. "!env BSG_API_KEY") when the value came through one, and the value
        must then never be shown. Reports and returns _MISSING on a problem; with
        unset_ok, an unset environment variable returns (None, origin) silently."""
        raw = v.raw
        if not isinstance(raw, _Ref):
            return raw, None
        if raw.tag not in _KNOWN_TAGS:
            hint = did_you_mean(raw.tag, _KNOWN_TAGS) or "Herald knows !env NAME and !secret NAME"
            self.error(f"{v.path}: unknown tag {raw.tag}", v.loc, hint)
            return _MISSING, None
        if raw.name is None:
            example = "!env BSG_API_KEY" if raw.tag == "!env" else "!secret backup_key"
            self.error(f"{v.path}: {raw.tag} needs a name after it, e.g. {example}", v.loc)
            return _MISSING, None
        origin = f"{raw.tag} {raw.name}"
        if raw.tag == "!env":
            value = self.env.get(raw.name)
            if value is None:
                if unset_ok:
                    return None, origin
                if self.lenient:
                    return self._placeholder(v, origin), origin
                self.error(f"{v.path}: environment variable {raw.name} is not set", v.loc,
                           unset_hint or f"set it before starting Herald: export {raw.name}=...")
                return _MISSING, origin
            if _has_surrogate(value):       # undecodable bytes in the environment (surrogateescape)
                self.error(f"{v.path}: the value of {origin} is not valid UTF-8 text", v.loc, secret=True)
                return _MISSING, origin
            return value, origin
        if self.lenient:
            path = self.base_dir / SECRETS_FILE
            if self._secrets is None and self._secrets_problem is None:
                self._load_secrets(path)
            if self._secrets is None or raw.name not in self._secrets:
                return self._placeholder(v, origin), origin
        return self._secret(v, raw.name), origin

    def _placeholder(self, v: _Val, origin: str) -> str:
        """An unusable stand-in for an unset secret (lenient loading only)."""
        self._placeholders.add(v.loc)
        return f"<unset: {origin}>"

    def _secret(self, v: _Val, name: str) -> Any:
        path = self.base_dir / SECRETS_FILE
        if self._secrets is None and self._secrets_problem is None:
            self._load_secrets(path)
        if self._secrets is None:
            self.error(f"{v.path}: cannot read secret \"{name}\": {self._secrets_problem}", v.loc,
                       f"put `{name}: VALUE` in {path} (keep that file out of git)")
            return _MISSING
        if name not in self._secrets:
            hint = did_you_mean(name, self._secrets) or f"add `{name}: VALUE` to {path}"
            self.error(f'{v.path}: secret "{name}" is not in {path}', v.loc, hint)
            return _MISSING
        value = self._secrets[name]
        if not isinstance(value, str) or _has_surrogate(value):
            where = self._secret_locs.get(name, Location(str(path)))
            got = "text with a lone surrogate" if isinstance(value, str) else _what(value)
            self.error(f'secret "{name}" must be a string (write it in quotes), '
                       f"got {got}", where, secret=True)
            return _MISSING
        return value

    def _load_secrets(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._secrets_problem = f"{path} does not exist"
            return
        except (OSError, UnicodeDecodeError) as exc:
            self._secrets_problem = f"{path} cannot be read ({type(exc).__name__})"
            return
        try:
            data = _yaml().load(text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = Location(str(path), mark.line + 1, mark.column + 1) if mark else Location(str(path))
            # No source line and no ruamel text beyond the problem: this file holds secrets.
            self.sink.error(f"invalid YAML: {_problem(exc)}", where)
            self._secrets_problem = f"{path} is not valid YAML"
            return
        except YAMLError:
            self._secrets_problem = f"{path} is not valid YAML"
            return
        if data is None:
            data = CommentedMap()
        if not isinstance(data, CommentedMap):
            self._secrets_problem = f"{path} must be a mapping of name: value"
            return
        secrets: dict[str, Any] = {}
        for key, value in data.items():
            try:
                line, col = data.lc.key(key)
                self._secret_locs[str(key)] = Location(str(path), line + 1, col + 1)
            except (KeyError, TypeError):
                pass
            if isinstance(value, (int, float)) and not _is_bool(value):
                value = str(value)
            secrets[str(key)] = value
        self._secrets = secrets

    def what(self, raw: Any, origin: str | None) -> str:
        return f"{_what(raw)} (from {origin})" if origin else _what(raw)

    def show(self, raw: Any, origin: str | None) -> str:
        """A value for a message: quoted, or only its origin when it is secret."""
        if origin:
            return f"the value of {origin}"
        text = str(raw)
        if len(text) > 60:
            text = text[:57] + "..."
        return f'"{text}"'

    # ---- typed values

    def string(self, v: _Val | None, default: str, *, what: str = "a string",
               allow_empty: bool = True, hint: str | None = None) -> str:
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING:
            return default
        if raw is None:
            return default
        if not isinstance(raw, str) or _is_bool(raw):
            self.error(f"{v.path}: expected {what}, got {self.what(raw, origin)}", v.loc, hint)
            return default
        if not allow_empty and not raw.strip():
            self.error(f"{v.path}: expected {what}, got an empty string", v.loc)
            return default
        return str(raw)

    def phone(self, v: _Val | None, default: str, *, what: str = "a phone number") -> str:
        example = 'write phone numbers in quotes, e.g. "+79001234567"'
        if v is not None and isinstance(v.raw, int) and not _is_bool(v.raw):
            self.error(f"{v.path}: expected {what} in quotes, got a number", v.loc, example)
            return default
        return self.string(v, default, what=what, hint=example)

    def email(self, v: _Val | None, default: str) -> str:
        value = self.string(v, default, what="an e-mail address")
        if v is not None and value and value != default and "@" not in value:
            self.error(f"{v.path}: {self.show(value, self._origin(v))} is not an e-mail address",
                       v.loc, "expected something like shop@example.com")
        return value

    def _origin(self, v: _Val) -> str | None:
        return f"{v.raw.tag} {v.raw.name}" if isinstance(v.raw, _Ref) else None

    def boolean(self, v: _Val | None, default: bool) -> bool:
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return default
        if origin and isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.strip().lower() in ("true", "1", "yes")
        if not _is_bool(raw):
            self.error(f"{v.path}: expected true or false, got {self.what(raw, origin)}", v.loc,
                       "write true or false (yes/no/on/off are strings in YAML 1.2)"
                       if isinstance(raw, str) else None)
            return default
        return bool(raw)

    def number(self, v: _Val | None, default: float, *, what: str, integer: bool = False,
               positive: bool = False, maximum: float | None = None) -> Any:
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return default
        if origin and isinstance(raw, str):
            try:
                raw = int(raw.strip()) if integer else float(raw.strip())
            except ValueError:
                self.error(f"{v.path}: expected {what}, got a string that is not a number "
                           f"(from {origin})", v.loc)
                return default
        if _is_bool(raw) or not isinstance(raw, (int, float)) or (integer and not isinstance(raw, int)):
            self.error(f"{v.path}: expected {what}, got {self.what(raw, origin)}", v.loc)
            return default
        if isinstance(raw, float) and not math.isfinite(raw):      # .inf, .nan, 1e999
            self.error(f"{v.path}: expected {what}, got {'the value of ' + origin if origin else raw}", v.loc)
            return default
        if not integer and isinstance(raw, int) and abs(raw) > 1e300:   # float() would overflow
            self.error(f"{v.path}: expected {what}, got a number too large to use", v.loc)
            return default
        if (positive and raw <= 0) or (maximum is not None and raw > maximum):
            shown = f"the value of {origin}" if origin else str(_plain(raw))
            rng = f" up to {maximum:g}" if maximum is not None else ""
            self.error(f"{v.path}: expected {what}{rng}, got {shown}", v.loc)
            return default
        return int(raw) if integer else float(raw)

    def path(self, v: _Val | None, default: str) -> Path:
        text = self.string(v, default, what="a path", allow_empty=False)
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def timezone(self, v: _Val | None, default: str) -> str:
        name = self.string(v, default, what="a time zone name such as Europe/Moscow",
                           allow_empty=False)
        if v is None or name == default:
            return name
        try:
            zoneinfo.ZoneInfo(name)
            return name
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
        origin = self._origin(v)
        hint = None if origin else did_you_mean(name, zoneinfo.available_timezones())
        message = (f"the value of {origin} is not a known time zone" if origin
                   else f'unknown time zone "{name}"')
        self.error(f"{v.path}: {message}", v.loc,
                   hint or "use an IANA name such as Europe/Moscow or Asia/Yekaterinburg")
        return default

    def choice(self, v: _Val | None, default: str, choices: tuple[str, ...], what: str) -> str:
        value = self.string(v, default, what=what)
        if v is None or value in choices:
            return value
        if value == default and v.raw is None:
            return default
        origin = self._origin(v)
        hint = (None if origin else did_you_mean(value, choices)) or ("expected " + " | ".join(choices))
        self.error(f"{v.path}: {self.show(value, origin)} is not {what}", v.loc, hint)
        return default

    def secret(self, v: _Val | None, *, unset_ok: bool = False) -> Secret | None:
        """A secret value. A plain string in the file works but draws a warning."""
        if v is None:
            return None
        raw, origin = self.resolve(v, unset_ok=unset_ok)
        if raw is _MISSING or raw is None:
            return None
        if _is_bool(raw) or not isinstance(raw, (str, int)):
            self.error(f"{v.path}: expected a string, got {_what(raw)}", v.loc, secret=True)
            return None
        value = str(raw)
        if not value.strip():
            return None
        if origin is None:
            self._plain_secret_warning(v)
        return Secret(value)

    def _plain_secret_warning(self, v: _Val) -> None:
        self.warning(f"{v.path} is written in the config file in plain text", v.loc,
                     "move it to an environment variable (!env NAME) or to "
                     "secrets.yaml (!secret NAME)", secret=True)

    def str_list(self, v: _Val | None, default: tuple[str, ...], *, what: str,
                 allow_empty: bool = False) -> tuple[str, ...]:
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return default
        if not isinstance(raw, CommentedSeq):
            self.error(f"{v.path}: expected a list of {what}, got {self.what(raw, origin)}", v.loc,
                       f"write a list: [{', '.join(default) or '...'}]" if default else None)
            return default
        out = []
        for item in self.items(v):
            s = self.string(item, "", what=f"one of {what} (a string)", allow_empty=False)
            if s:
                out.append(s)
        if not out and not allow_empty:
            self.error(f"{v.path}: expected at least one of {what}, got an empty list", v.loc)
            return default
        return tuple(out)

    # ---- sections

    TOP_KEYS = ("store", "rules", "templates", "timezone", "bsg", "senders", "sites",
                "http", "smtp", "connectors", "directory", "bitrix24", "subscriptions")
    BSG_KEYS = ("url", "api_key", "backup", "rate", "callback_secret", "failover", "balance_alert",
                "balance_every", "timeout", "lookup_rate", "lookup_concurrency", "uncertain_failover_after")
    FAILOVER_KEYS = ("window", "failures", "ratio", "probe", "slow_receipts")
    BACKUP_KEYS = ("url", "api_key")
    SENDER_KEYS = ("sms", "viber")
    SITE_KEYS = ("name", "server_name", "email_from", "phone_from", "timezone", "channel",
                 "sms_sender", "viber_sender", "send_window", "admins", "admin_email",
                 "translit", "omni", "omni_deadline", "language", "api_key", "uncertain_failover_after")
    HTTP_KEYS = ("listen", "tokens", "max_body", "trusted_proxies")
    SMTP_KEYS = ("host", "port", "from", "username", "password", "starttls")
    DIRECTORY_KEYS = ("file", "bitrix", "ttl", "groups")
    BITRIX24_KEYS = ("application_token", "site", "rest_url")
    SUBSCRIPTIONS_KEYS = ("lists", "countries", "per_ip", "per_phone", "code_attempts", "code_lifetime",
                          "code_length", "poll_incoming", "total", "per_country", "number_types", "proof")

    def build(self, data: Any, path: Path | None) -> Config:
        root = _Val(data, Location(self.file, 1, 1), "")
        if data is None:
            root.raw = CommentedMap()
        elif not isinstance(data, CommentedMap):
            self.error(f"the config must be a mapping of keys (store:, bsg:, sites:, ...), "
                       f"got {_what(data)}", root.loc)
            root.raw = CommentedMap()
        else:
            self.check_keys(root, self.TOP_KEYS, "the config")

        store = self.path(self.child(root, "store"), "var/herald.db")
        rules = self.path(self.child(root, "rules"), "rules")
        templates = self.path(self.child(root, "templates"), "rules/templates.yaml")
        tz = self.timezone(self.child(root, "timezone"), DEFAULT_TIMEZONE)
        bsg = self.bsg(self.section(root, "bsg"))
        senders = self.senders(self.section(root, "senders"))
        sites = self.sites(self.child(root, "sites"), tz, senders)
        http = self.http(self.section(root, "http"))
        smtp = self.smtp(self.section(root, "smtp"))
        connectors = self.connectors(self.child(root, "connectors"))
        directory = self.directory(self.section(root, "directory"))
        bitrix24 = self.bitrix24(self.section(root, "bitrix24"), sites)
        subscriptions = self.subscriptions(self.section(root, "subscriptions"), sites)

        if self.sink.has_errors:
            raise ConfigError(self.sink.items)
        return Config(
            path=path, base_dir=self.base_dir, store=store, rules=rules, templates=templates,
            timezone=tz, bsg=bsg, senders=senders, sites=sites, http=http,
            smtp=smtp, connectors=connectors, warnings=tuple(self.sink.items), directory=directory,
            bitrix24=bitrix24, subscriptions=subscriptions,
        )

    def url(self, v: _Val | None, default: str) -> str:
        value = self.string(v, default, what="a URL", allow_empty=False)
        if v is None or value == default:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            origin = self._origin(v)
            self.error(f"{v.path}: {self.show(value, origin)} is not an http(s) URL", v.loc,
                       f"e.g. {DEFAULT_BSG_URL}")
            return default
        if _url_password(value) and self._origin(v) is None:
            # https://user:PASSWORD@host/ written literally: warned like any plain-text secret
            # (engine/redaction.py keeps the password out of logs either way)
            self.warning(f"{v.path} holds a password written in the config file in plain text", v.loc,
                         "move the URL to an environment variable (!env NAME) or to secrets.yaml "
                         "(!secret NAME)", secret=True)
        return value

    def bsg(self, node: _Val | None) -> BsgConfig:
        if node is None:
            return BsgConfig()
        self.check_keys(node, self.BSG_KEYS, "bsg")
        url = self.url(self.child(node, "url"), DEFAULT_BSG_URL)
        # An unset or empty !env for the main key is not an error: it means sandbox.
        api_key = self.secret(self.child(node, "api_key"), unset_ok=True)
        rate = self.rate(self.child(node, "rate"), DEFAULT_RATE, what="a positive number of requests per second")
        # An unset or empty !env means callbacks are off: Herald polls statuses instead.
        callback_secret = self.secret(self.child(node, "callback_secret"), unset_ok=True)
        backup: list[BackupEndpoint] = []
        b = self.child(node, "backup")
        if b is not None and b.raw is not None:
            if not isinstance(b.raw, CommentedSeq):
                self.error(f"{b.path}: expected a list of endpoints (- url: ...), got {_what(b.raw)}",
                           b.loc)
            else:
                for item in self.items(b):
                    if not isinstance(item.raw, CommentedMap):
                        self.error(f"{item.path}: expected an endpoint (url:, api_key:), "
                                   f"got {_what(item.raw)}", item.loc)
                        continue
                    self.check_keys(item, self.BACKUP_KEYS, item.path)
                    u = self.child(item, "url")
                    if u is None:
                        self.error(f"{item.path}: url is required", item.loc)
                        continue
                    backup.append(BackupEndpoint(self.url(u, DEFAULT_BSG_URL),
                                                 self.secret(self.child(item, "api_key"))))
        balance_alert = self.number(self.child(node, "balance_alert"), None,
                                    what="an amount in the account's currency")
        balance_every = self.duration(self.child(node, "balance_every"), 900.0)
        timeout = self.duration(self.child(node, "timeout"), 10.0)
        # by default never slower than sends: a budget of their own must not become a tighter one
        lookup_rate = self.rate(self.child(node, "lookup_rate"),
                                max(DEFAULT_LOOKUP_RATE, min(rate, MAX_LOOKUP_RATE)),
                                what="a positive number of look-ups per second", maximum=MAX_LOOKUP_RATE)
        lookup_concurrency = self.number(self.child(node, "lookup_concurrency"), DEFAULT_LOOKUP_CONCURRENCY,
                                         what="a whole number of look-ups in flight", integer=True,
                                         positive=True, maximum=MAX_LOOKUP_CONCURRENCY)
        return BsgConfig(url=url, api_key=api_key, backup=tuple(backup), rate=rate,
                         callback_secret=callback_secret, failover=self.failover(self.child(node, "failover")),
                         balance_alert=balance_alert, balance_every=balance_every, timeout=timeout,
                         lookup_rate=lookup_rate, lookup_concurrency=lookup_concurrency,
                         uncertain_failover_after=self.wait_or_never(self.child(node, "uncertain_failover_after"),
                                                                     DEFAULT_UNCERTAIN_FAILOVER))

    def rate(self, v: _Val | None, default: float, *, what: str, maximum: float | None = None) -> float:
        """A positive number per second (.nan is no number: it would stop the BSG client)."""
        value = self.number(v, default, what=what, positive=True, maximum=maximum)
        if math.isnan(value):
            self.error(f"{v.path}: expected {what}, got .nan", v.loc)
            return default
        return value

    def wait_or_never(self, v: _Val | None, default: float | None) -> float | None:
        """A duration, or `never` (math.inf): how long an unknown outcome may wait."""
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if isinstance(raw, str) and raw.strip().lower() == "never":
            return math.inf
        numeric = isinstance(raw, (int, float)) and not _is_bool(raw)
        if raw is _MISSING or raw is None or (numeric and math.isfinite(raw) and raw > 0) or (
                isinstance(raw, str) and re.fullmatch(r"(\d+(ms|s|m|h|d|w))+", raw.strip())):
            return self.duration(v, default)
        self.error(f"{v.path}: expected a duration such as 30s, 10m or 1h, or never, got "
                   f"{self.what(raw, origin)}", v.loc)
        return default

    def failover(self, node: _Val | None) -> Failover:
        if node is None or node.raw is None:
            return Failover()
        if not isinstance(node.raw, CommentedMap):
            self.error(f"{node.path}: expected window:, failures:, ratio:, probe:, got {_what(node.raw)}", node.loc)
            return Failover()
        self.check_keys(node, self.FAILOVER_KEYS, "bsg.failover")
        c = lambda key: self.child(node, key)  # noqa: E731
        slow = c("slow_receipts")
        return Failover(
            window=self.duration(c("window"), 60.0),
            failures=self.number(c("failures"), 3, what="a whole number of failed requests", integer=True,
                                 positive=True),
            ratio=self.number(c("ratio"), 0.5, what="a share between 0 and 1", positive=True, maximum=1),
            probe=self.duration(c("probe"), 30.0),
            slow_receipts=self.duration(slow, 0.0) or None if slow is not None else None,
        )

    def duration(self, v: _Val | None, default: float) -> float:
        """Seconds, from a number of seconds or a duration like `90s`, `10m`, `1h`."""
        if v is None:
            return default
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return default
        from herald.grammar.compiler import MAX_DURATION, MAX_DURATION_TEXT, parse_duration
        if isinstance(raw, (int, float)) and not _is_bool(raw) and raw > 0:
            if raw > MAX_DURATION.total_seconds():      # also .inf; a timedelta or deadline must hold it
                self.error(f"{v.path}: a duration is at most {MAX_DURATION_TEXT}", v.loc)
                return default
            return float(raw)
        if isinstance(raw, str) and re.fullmatch(r"(\d+(ms|s|m|h|d|w))+", raw.strip()):
            try:
                return parse_duration(raw.strip()).total_seconds()
            except ValueError:
                self.error(f"{v.path}: a duration is at most {MAX_DURATION_TEXT}", v.loc)
                return default
        self.error(f"{v.path}: expected a duration such as 30s, 10m or 1h, got {self.what(raw, origin)}", v.loc)
        return default

    def senders(self, node: _Val | None) -> Senders:
        if node is None:
            return Senders()
        self.check_keys(node, self.SENDER_KEYS, "senders")
        sms = self.str_list(self.child(node, "sms"), DEFAULT_SMS_SENDERS, what="SMS senders")
        viber = self.str_list(self.child(node, "viber"), DEFAULT_VIBER_SENDERS,
                              what="Viber senders")
        good_sms = []
        for i, s in enumerate(sms):
            digits = s.lstrip("+").isdigit()
            if (digits and len(s.lstrip("+")) > 15) or (not digits and len(s) > 11):
                self.error(f'senders.sms[{i}]: "{s}" is too long for an SMS sender', self._item_loc(
                    node, "sms", i), "BSG allows up to 11 letters and digits, or 15 digits")
            else:
                good_sms.append(s)
        good_viber = []
        for i, s in enumerate(viber):
            if len(s) > 14:
                self.error(f'senders.viber[{i}]: "{s}" is too long for a Viber sender',
                           self._item_loc(node, "viber", i), "BSG allows up to 14 characters")
            else:
                good_viber.append(s)
        return Senders(sms=tuple(good_sms) or sms, viber=tuple(good_viber) or viber)

    def _item_loc(self, node: _Val, key: str, i: int) -> Location | None:
        seq = node.raw.get(key)
        loc = self._lc(seq.lc.item, i) if isinstance(seq, CommentedSeq) else None
        return loc or self.child(node, key).loc

    def sites(self, v: _Val | None, tz: str, senders: Senders) -> dict[str, Site]:
        sites: dict[str, Site] = {}
        if v is not None:
            raw, origin = self.resolve(v)
            if raw is not None and raw is not _MISSING:
                if not isinstance(raw, CommentedMap):
                    self.error(f"sites: expected a mapping of site id to its keys (s1: ...), "
                               f"got {self.what(raw, origin)}", v.loc)
                else:
                    for key in raw:
                        site_id = str(key).strip() if isinstance(key, (str, int)) and not _is_bool(key) else ""
                        entry = self._entry(v, key)
                        if not site_id or any(c.isspace() for c in site_id):
                            self.error(f"sites: a site id must be a word such as s1, got "
                                       f"{_what(key) if not isinstance(key, str) else repr(str(key))}",
                                       entry.key_loc)
                            continue
                        entry.path = f"sites.{site_id}"
                        sites[site_id] = self.site(site_id, entry, tz, senders)
        if not sites:
            sites[DEFAULT_SITE_ID] = Site(id=DEFAULT_SITE_ID, name=DEFAULT_SITE_ID, timezone=tz,
                                          sms_sender=senders.sms[0],
                                          viber_sender=senders.viber[0])
        return sites

    def site(self, site_id: str, node: _Val, tz: str, senders: Senders) -> Site:
        raw, origin = self.resolve(node)
        if raw is None or raw is _MISSING:
            node = _Val(CommentedMap(), node.loc, node.path, node.key_loc)
        elif not isinstance(raw, CommentedMap):
            self.error(f"{node.path}: expected a mapping of the site's keys (name:, timezone:, ...), "
                       f"got {self.what(raw, origin)}", node.loc)
            node = _Val(CommentedMap(), node.loc, node.path, node.key_loc)
        else:
            self.check_keys(node, self.SITE_KEYS, node.path)
        c = lambda key: self.child(node, key)  # noqa: E731
        window = None
        w = c("send_window")
        text = self.string(w, "", what="a window such as 09:00-21:00")
        if w is not None and text:
            try:
                window = parse_window(text)
            except ValueError as exc:
                origin = self._origin(w)
                message = str(exc) if not origin else f"the value of {origin} is not a window"
                self.error(f"{w.path}: {message}", w.loc,
                           WINDOW_FORMAT if message != WINDOW_FORMAT else None)
        admins = ()
        a = c("admins")
        if a is not None:
            raw_a, origin_a = self.resolve(a)
            if raw_a is not None and raw_a is not _MISSING:
                if not isinstance(raw_a, CommentedSeq):
                    self.error(f"{a.path}: expected a list of phone numbers, got "
                               f"{self.what(raw_a, origin_a)}", a.loc,
                               'e.g. admins: ["+79001234567"]')
                else:
                    admins = tuple(p for p in (self.phone(i, "") for i in self.items(a)) if p)
        return Site(
            id=site_id,
            name=self.string(c("name"), site_id),
            server_name=self.string(c("server_name"), ""),
            email_from=self.email(c("email_from"), ""),
            phone_from=self.phone(c("phone_from"), ""),
            timezone=self.timezone(c("timezone"), tz),
            channel=self.choice(c("channel"), DEFAULT_CHANNEL, CHANNELS, "a channel (sms, viber or omni)"),
            sms_sender=self.sender(c("sms_sender"), senders.sms, "senders.sms"),
            viber_sender=self.sender(c("viber_sender"), senders.viber, "senders.viber"),
            send_window=window,
            admins=admins,
            admin_email=self.email(c("admin_email"), ""),
            translit=self.boolean(c("translit"), False),
            omni=self.choice(c("omni"), "provider", OMNI_MODES, "an omni mode (provider or engine)"),
            omni_deadline=self.duration(c("omni_deadline"), 600.0),
            language=self.language(c("language")),
            api_key=self.secret(c("api_key")),
            uncertain_failover_after=self.wait_or_never(c("uncertain_failover_after"), None),
        )

    def sender(self, v: _Val | None, allowed: tuple[str, ...], where: str) -> str:
        value = self.string(v, allowed[0], what="a sender name", allow_empty=False)
        if v is None or value in allowed:
            return value
        origin = self._origin(v)
        hint = (None if origin else did_you_mean(value, allowed))
        hint = (hint + " " if hint else "") + f"{where} allows: {', '.join(allowed)}"
        self.error(f"{v.path}: {self.show(value, origin)} is not in {where}", v.loc, hint)
        return allowed[0]

    def language(self, v: _Val | None) -> str:
        value = self.string(v, "ru", what="a two-letter language code such as ru")
        if v is not None and not re.fullmatch(r"[a-z]{2}", value):
            self.error(f"{v.path}: {self.show(value, self._origin(v))} is not a two-letter "
                       "language code", v.loc, "e.g. ru, en")
            return "ru"
        return value

    def http(self, node: _Val | None) -> HttpConfig:
        if node is None:
            return HttpConfig()
        self.check_keys(node, self.HTTP_KEYS, "http")
        host, port = DEFAULT_HOST, DEFAULT_PORT
        lv = self.child(node, "listen")
        if lv is not None:
            host, port = self.listen(lv)
        tokens: list[Secret] = []
        t = self.child(node, "tokens")
        if t is not None and t.raw is not None:
            if not isinstance(t.raw, CommentedSeq):
                self.error(f"{t.path}: expected a list of tokens, got {_what(t.raw)}", t.loc,
                           "e.g. tokens: [!env HERALD_TOKEN]; tokens: [] keeps the API "
                           "local-only", secret=True)
            else:
                for item in self.items(t):
                    value, origin = self.resolve(item, unset_hint=(
                        "set it before starting Herald, or write tokens: [] for a local-only "
                        "API without tokens"))
                    if value is _MISSING:
                        continue
                    if not isinstance(value, str) or _is_bool(value):
                        self.error(f"{item.path}: expected a token (a string), got "
                                   f"{self.what(value, origin)}", item.loc, secret=True)
                    elif not value.strip():
                        self.error(f"{item.path}: a token cannot be empty"
                                   + (f" ({origin} is set but empty)" if origin else ""),
                                   item.loc, secret=True)
                    else:
                        if origin is None:
                            self._plain_secret_warning(item)
                        tokens.append(Secret(value))
        max_body = DEFAULT_MAX_BODY
        mb = self.child(node, "max_body")
        if mb is not None:
            max_body = self.size(mb)
        cfg = HttpConfig(host=host, port=port, tokens=tuple(tokens), max_body=max_body,
                         trusted_proxies=self.trusted_proxies(self.child(node, "trusted_proxies")))
        if not tokens and not is_loopback(host) and not self.sink.has_errors:
            self.warning(f"http.tokens is empty, so the API on {cfg.listen} answers only "
                         "requests from this machine",
                         (t or lv or node).loc,
                         "add tokens: [!env HERALD_TOKEN] to accept authenticated requests "
                         "from elsewhere, or listen on 127.0.0.1")
        return cfg

    def trusted_proxies(self, v: _Val | None) -> tuple:
        """`http.trusted_proxies: [127.0.0.1, 10.0.0.0/8]` (engine/helpers/client_address.py)."""
        from herald.engine.helpers.client_address import parse_proxy
        out = []
        for item in self.items(v) if v is not None and isinstance(v.raw, CommentedSeq) else ():
            try:
                out.append(parse_proxy(str(item.raw)))
            except ValueError:
                self.error(f"{item.path}: {self.show(str(item.raw), None)} is not an IP address or network",
                           item.loc, "e.g. 127.0.0.1, 10.0.0.0/8 or 2001:db8::/32")
        if v is not None and v.raw is not None and not isinstance(v.raw, CommentedSeq):
            self.error(f"{v.path}: expected a list of addresses or networks, got {_what(v.raw)}", v.loc,
                       "e.g. trusted_proxies: [127.0.0.1, 10.0.0.0/8]")
        return tuple(out)

    def listen(self, v: _Val) -> tuple[str, int]:
        raw, origin = self.resolve(v)
        if raw is _MISSING or raw is None:
            return DEFAULT_HOST, DEFAULT_PORT
        if isinstance(raw, int) and not _is_bool(raw):
            raw = f"{DEFAULT_HOST}:{raw}"
        bad = f"{v.path}: expected HOST:PORT such as 127.0.0.1:8780, got "
        if not isinstance(raw, str):
            self.error(bad + self.what(raw, origin), v.loc)
            return DEFAULT_HOST, DEFAULT_PORT
        m = re.fullmatch(r"\s*(\[[^\]]+\]|[^\s:\[\]]+|):(\d+)\s*", raw)
        if not m:
            self.error(bad + self.show(raw, origin), v.loc)
            return DEFAULT_HOST, DEFAULT_PORT
        host, port = m.group(1).strip("[]") or "0.0.0.0", int(m.group(2))
        if not 0 < port < 65536:
            shown = "the port" if origin else f"port {port}"
            self.error(f"{v.path}: {shown} is out of range (1-65535)", v.loc)
            return DEFAULT_HOST, DEFAULT_PORT
        return host, port

    def size(self, v: _Val) -> int:
        raw, origin = self.resolve(v)
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
        self.error(f"{v.path}: expected a size in bytes such as 1048576 or \"1 MiB\", got "
                   f"{self.show(raw, origin) if isinstance(raw, (str, int)) else self.what(raw, origin)}",
                   v.loc)
        return DEFAULT_MAX_BODY

    def smtp(self, node: _Val | None) -> SmtpConfig | None:
        if node is None:
            return None
        self.check_keys(node, self.SMTP_KEYS, "smtp")
        h = self.child(node, "host")
        if h is None:
            self.error("smtp: host is required", node.key_loc or node.loc,
                       "e.g. host: 127.0.0.1 (or remove smtp: to send no e-mail alerts)")
        username = self.string(self.child(node, "username"), "") or None
        return SmtpConfig(
            host=self.string(h, "localhost", what="a host name", allow_empty=False),
            port=self.number(self.child(node, "port"), 25, what="a port number", integer=True,
                             positive=True, maximum=65535),
            from_addr=self.email(self.child(node, "from"), "herald@localhost"),
            username=username,
            password=self.secret(self.child(node, "password")),
            starttls=self.boolean(self.child(node, "starttls"), False),
        )

    def bitrix24(self, node: _Val | None, sites: Mapping[str, Site]) -> Bitrix24Config | None:
        """`bitrix24: {application_token: !env B24_TOKEN, site: s1}`."""
        if node is None:
            return None
        self.check_keys(node, self.BITRIX24_KEYS, "bitrix24")
        t = self.child(node, "application_token")
        reported = len(self.sink.items)
        token = self.secret(t)
        if token is None and len(self.sink.items) == reported:   # absent or empty, not already reported
            self.error("bitrix24: application_token is required", (t.loc if t else node.key_loc or node.loc),
                       "e.g. application_token: !env B24_TOKEN (the token Bitrix24 shows for the webhook)")
        s = self.child(node, "site")
        site = self.string(s, "", what="a site id", allow_empty=False) or None if s is not None else None
        if site is not None and sites and site not in sites:
            self.error(f'bitrix24.site: unknown site "{site}"', s.loc,
                       did_you_mean(site, tuple(sites)) or "configured sites: " + ", ".join(sites))
        rest_url = self.bitrix24_rest_url(self.child(node, "rest_url"))
        return (Bitrix24Config(application_token=token, site=site, rest_url=rest_url)
                if token is not None else None)

    def bitrix24_rest_url(self, v: _Val | None) -> Secret | None:
        """`rest_url: !env B24_REST_URL` — an incoming webhook's URL, which holds its token:
        the error never shows the value."""
        from urllib.parse import urlsplit
        url = self.secret(v)
        if url is None:
            return None
        parts = urlsplit(url.reveal().strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            self.error("bitrix24.rest_url: expected the URL of a Bitrix24 incoming webhook", v.loc,
                       "like https://portal.bitrix24.ru/rest/1/abc123/ (Developer resources → Other → "
                       "Inbound webhook, with the task and user scopes)", secret=True)
            return None
        text = url.reveal().strip()
        return Secret(text if text.endswith("/") else text + "/")

    def subscriptions(self, node: _Val | None, sites: Mapping[str, Site]) -> SubscriptionsConfig:
        """`subscriptions: {lists: [news], countries: [7], per_ip: 5/h, ...}` (docs/subscriptions.md)."""
        if node is None:
            return SubscriptionsConfig()
        from herald.engine.audience.subscriptions import parse_config
        return parse_config(self, node, sites)

    def directory(self, node: _Val | None) -> DirectoryConfig | None:
        """`directory: {file: people.yaml}` or `directory: {bitrix: URL, ttl:, groups:}`."""
        if node is None:
            return None
        from herald.engine.audience.directory import FileDirectory, check_bitrix_url
        from herald.engine.errors import display_path

        self.check_keys(node, self.DIRECTORY_KEYS, "directory")
        f, b = self.child(node, "file"), self.child(node, "bitrix")
        ttl_v, groups_v = self.child(node, "ttl"), self.child(node, "groups")
        where = node.key_loc or node.loc
        if f is None and b is None:
            self.error("directory: give file: (a YAML file of people) or bitrix: (the shop's database URL)",
                       where, "e.g. directory: {file: people.yaml} or directory: {bitrix: !env SHOP_DB_URL}")
            return None
        if f is not None and b is not None:
            self.error("directory: file and bitrix exclude each other", b.key_loc or b.loc,
                       "keep one: people come from a file or from the Bitrix database")
            return None
        if f is not None:
            for extra in (ttl_v, groups_v):
                if extra is not None:
                    key = extra.path.rsplit(".", 1)[-1]
                    self.error(f"directory.{key} applies to bitrix: only", extra.key_loc or extra.loc,
                               "a people file is read at start and on reload")
            text = self.string(f, "", what="a file name such as people.yaml", allow_empty=False)
            if not text:
                return None
            p = Path(text).expanduser()
            p = p if p.is_absolute() else self.base_dir / p
            shown = display_path(p)
            try:
                people = FileDirectory.load(p, shown)
            except ConfigError as exc:
                self.sink.extend(exc.diagnostics)
                return None
            except FileNotFoundError:
                self.error(f"directory.file: {shown} does not exist", f.loc,
                           "create it (see docs/directory.md), or fix the path (relative to the config's folder)")
                return None
            except IsADirectoryError:
                self.error(f"directory.file: {shown} is a folder, not a file", f.loc)
                return None
            except UnicodeDecodeError:
                self.error(f"directory.file: {shown} is not UTF-8 text", f.loc)
                return None
            except OSError as exc:
                self.error(f"directory.file: cannot read {shown}: {exc.strerror or exc}", f.loc)
                return None
            return DirectoryConfig(file=p, people=people, location=node.loc)
        raw, origin = self.resolve(b)
        if raw is _MISSING:
            return None
        example = "e.g. bitrix: !env SHOP_DB_URL with SHOP_DB_URL=mysql+pymysql://user:password@host/sitemanager"
        if raw is None or _is_bool(raw) or not isinstance(raw, str) or not raw.strip():
            got = "an empty string" if isinstance(raw, str) and not _is_bool(raw) else self.what(raw, origin)
            self.error(f"directory.bitrix: expected a database URL, got {got}", b.loc, example, secret=True)
            return None
        problem, url = check_bitrix_url(raw, self.base_dir)
        if problem:
            where_from = f" (the value of {origin})" if origin else ""
            self.error(f"directory.bitrix: {problem}{where_from}", b.loc, example, secret=True)
            return None
        if origin is None and urlsplit(url).password:
            self._plain_secret_warning(b)   # a password written in the file
        ttl = self.number(ttl_v, DEFAULT_DIRECTORY_TTL, what="a number of seconds (0 turns the cache off)")
        if ttl < 0:
            self.error(f"directory.ttl: expected a number of seconds (0 turns the cache off), got {ttl:g}",
                       ttl_v.loc)
            ttl = DEFAULT_DIRECTORY_TTL
        groups: dict[str, str] = {}
        if groups_v is not None:
            graw, gorigin = self.resolve(groups_v)
            if graw is not None and graw is not _MISSING:
                if not isinstance(graw, CommentedMap):
                    self.error(f"directory.groups: expected a mapping of a rule's group name to the Bitrix "
                               f"group's name, STRING_ID or ID, got {self.what(graw, gorigin)}", groups_v.loc,
                               'e.g. groups: {ops: "Администраторы интернет-магазина", managers: 5}')
                else:
                    for key in graw:
                        entry = self._entry(groups_v, key)
                        value, vorigin = self.resolve(entry)
                        if value is _MISSING:
                            continue
                        if _is_bool(value) or not isinstance(value, (str, int)) or not str(value).strip():
                            self.error(f"{entry.path}: expected a Bitrix group's name, STRING_ID or ID, got "
                                       f"{self.what(value, vorigin)}", entry.loc)
                            continue
                        groups[str(key)] = str(_plain(value)).strip()
        return DirectoryConfig(bitrix=Secret(url), ttl=ttl, groups=groups, location=node.loc)

    def connectors(self, v: _Val | None) -> tuple[ConnectorConfig, ...]:
        if v is None:
            return ()
        raw, origin = self.resolve(v)
        if raw is None or raw is _MISSING:
            return ()
        if not isinstance(raw, CommentedSeq):
            self.error(f"connectors: expected a list of connectors (- type: ...), got "
                       f"{self.what(raw, origin)}", v.loc)
            return ()
        out = []
        for item in self.items(v):
            if not isinstance(item.raw, CommentedMap):
                self.error(f"{item.path}: expected a connector (type: ... and its keys), got "
                           f"{_what(item.raw)}", item.loc)
                continue
            t = self.child(item, "type")
            if t is None:
                self.error(f"{item.path}: type is required", item.loc, "e.g. type: sql")
                continue
            ctype = self.string(t, "", what="a connector type such as sql", allow_empty=False)
            options: dict[str, Any] = {}
            locations: dict[str, Location] = {}
            for key in item.raw:
                if key == "type":
                    continue
                entry = self._entry(item, key)
                name = str(key)
                options[name] = self.option(entry, bool(_SECRETISH.search(name)))
                locations[name] = entry.loc
            if ctype:
                out.append(ConnectorConfig(ctype, options, item.loc, locations, self.base_dir))
        return tuple(out)

    def option(self, v: _Val, secretish: bool) -> Any:
        raw = v.raw
        if isinstance(raw, _Ref):
            value, origin = self.resolve(v)
            if value is _MISSING:
                return None
            if isinstance(value, (int, float)) and not _is_bool(value):
                value = str(value)
            return Secret(value) if isinstance(value, str) else value
        if isinstance(raw, CommentedMap):
            return {str(k): self.option(self._entry(v, k), secretish or bool(_SECRETISH.search(str(k))))
                    for k in raw}
        if isinstance(raw, CommentedSeq):
            return [self.option(i, secretish) for i in self.items(v)]
        value = _plain(raw)
        if secretish and isinstance(value, str) and value:
            self._plain_secret_warning(v)
            return Secret(value)
        if isinstance(value, str) and _url_password(value):
            # mysql://user:PASSWORD@host/db written literally: warned like any plain-text secret,
            # and held as a Secret so the log redaction knows the URL and its password
            self.warning(f"{v.path} holds a password written in the config file in plain text", v.loc,
                         "move the URL to an environment variable (!env NAME) or to secrets.yaml "
                         "(!secret NAME)", secret=True)
            return Secret(value)
        return value


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (a host name is not looked up)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _problem(exc: MarkedYAMLError) -> str:
    problem = (exc.problem or exc.context or "syntax error").strip()
    m = re.match(r'found duplicate key "(.*?)" with value', problem)
    if m:  # ruamel quotes both values; they may be secrets
        return f'duplicate key "{m.group(1)}"'
    return problem


# --------------------------------------------------------------------------- entry points

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
    reader = _Reader(display, abspath.parent, text.splitlines(), env, lenient)
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
    return reader.build(data, abspath)


def _reader_problem(exc: YAMLError, text: str, display: str) -> Diagnostic:
    """ruamel's ReaderError (a control character, a lone surrogate) carries an offset, not a mark."""
    position = getattr(exc, "position", None)
    if not isinstance(position, int) or not 0 <= position <= len(text):
        return Diagnostic(f"invalid YAML: {type(exc).__name__}", Location(display))
    line = text.count("\n", 0, position) + 1
    col = position - (text.rfind("\n", 0, position) + 1) + 1
    character = getattr(exc, "character", None)
    if isinstance(character, str) and len(character) == 1:
        character = ord(character)
    what = f"U+{character:04X}" if isinstance(character, int) else "a character"
    return Diagnostic(f"invalid YAML: {what} is not allowed in a YAML file", Location(display, line, col),
                      hint="remove it; write special characters as escapes in double quotes (\"\\t\")")


def default_config(base_dir: str | os.PathLike[str] | None = None) -> Config:
    """The configuration of an empty file in base_dir (default: the working directory)."""
    base = Path(base_dir if base_dir is not None else Path.cwd()).absolute()
    reader = _Reader("<defaults>", base, [], {})
    return reader.build(None, None)
