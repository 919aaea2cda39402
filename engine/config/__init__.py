"""Herald's configuration: one YAML file, read into frozen, typed dataclasses.

Paths in the file are relative to the file's folder. `!env NAME` reads an environment
variable and `!secret NAME` reads `secrets.yaml` beside the config. Every problem is
collected as a located `Diagnostic` (`FILE:LINE:COL`) and all of them are raised at
once as one `ConfigError`. Secret values (anything read through `!env`/`!secret`, and
keys, tokens and passwords) are never put into a message, a repr or a source line.

The package: model.py (the dataclasses), secret.py (`Secret`), document.py (YAML loading
and its bounds), reader.py + values.py (the reader every section reader is given: located
errors, tags and secrets, typed values), one module per section (bsg, sites, http, smtp,
bitrix24, connectors, directory, subscriptions) and loader.py (the entry points).

See docs/configuration.md for every key.
"""

from herald.engine.config.document import MAX_CONFIG_DEPTH, MAX_CONFIG_VALUES, _yaml
from herald.engine.config.http import is_loopback
from herald.engine.config.loader import _load_text, build, default_config, load_config
from herald.engine.config.model import (
    CHANNELS, CONFIG_FILE, DEFAULT_BSG_URL, DEFAULT_CHANNEL, DEFAULT_DIRECTORY_TTL, DEFAULT_HOST,
    DEFAULT_LOOKUP_CONCURRENCY, DEFAULT_LOOKUP_RATE, DEFAULT_MAX_BODY, DEFAULT_PORT, DEFAULT_RATE,
    DEFAULT_SITE_ID, DEFAULT_SMS_SENDERS, DEFAULT_TIMEZONE, DEFAULT_UNCERTAIN_FAILOVER, DEFAULT_VIBER_SENDERS,
    MAX_LOOKUP_CONCURRENCY, MAX_LOOKUP_RATE, OMNI_MODES, SECRETS_FILE, BackupEndpoint, Bitrix24Config,
    BsgConfig, Config, ConnectorConfig, DirectoryConfig, Failover, HttpConfig, ProofConfig, Senders, Site,
    SmtpConfig, SubscriptionsConfig,
)
from herald.engine.config.secret import Secret, reveal

__all__ = [
    "Secret", "reveal", "Config", "BsgConfig", "BackupEndpoint", "Failover", "Senders", "Site",
    "HttpConfig", "SmtpConfig", "ConnectorConfig", "DirectoryConfig", "Bitrix24Config", "ProofConfig",
    "SubscriptionsConfig", "load_config", "default_config", "build",
    "CONFIG_FILE", "SECRETS_FILE", "DEFAULT_TIMEZONE", "CHANNELS", "OMNI_MODES", "is_loopback",
    "DEFAULT_BSG_URL", "DEFAULT_CHANNEL", "DEFAULT_DIRECTORY_TTL", "DEFAULT_HOST", "DEFAULT_LOOKUP_CONCURRENCY",
    "DEFAULT_LOOKUP_RATE", "DEFAULT_MAX_BODY", "DEFAULT_PORT", "DEFAULT_RATE", "DEFAULT_SITE_ID",
    "DEFAULT_SMS_SENDERS", "DEFAULT_UNCERTAIN_FAILOVER", "DEFAULT_VIBER_SENDERS", "MAX_LOOKUP_CONCURRENCY",
    "MAX_LOOKUP_RATE", "MAX_CONFIG_DEPTH", "MAX_CONFIG_VALUES",
    "_load_text", "_yaml",   # tests and connectors/options.py read YAML the way the config does
]
