"""The configuration's model: frozen, typed dataclasses and their defaults.

The readers in this package build them (one module per section); everything else
only reads them.
"""

from __future__ import annotations

import os
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from herald.engine.config.secret import Secret
from herald.engine.errors import Diagnostic, Location
from herald.engine.helpers.windows import SendWindow

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

MAX_LOOKUP_RATE = 10_000.0
MAX_LOOKUP_CONCURRENCY = 1000


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
    people: Any = field(default=None, compare=False, repr=False)  # the loaded herald.engine.directory.FileDirectory
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

