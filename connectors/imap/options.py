"""The checks of a `type: imap` entry's options (every problem located, raised at once as
one ConfigError); `ImapOptions` holds what they give the connector."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from herald.connectors.mail import MailMapping, OptionError, mapping_from_options
from herald.connectors.options import OptionChecker, number as _number, what as _what
from herald.engine.config import ConnectorConfig, is_loopback, reveal
from herald.engine.errors import ConfigError, did_you_mean

OPTIONS = ("name", "host", "port", "security", "verify", "ca_file", "user", "password", "folder", "flag",
           "move_to", "quarantine", "idle", "interval", "batch", "max_size", "timeout", "silence", "start",
           "site", "event_header", "match", "extract", "text_limit", "signature")
SECURITY = {"tls": 993, "starttls": 143, "none": 143}
STARTS = ("end", "beginning")
_SYSTEM_FLAGS = {"\\seen": "SEEN", "\\flagged": "FLAGGED", "\\answered": "ANSWERED", "\\draft": "DRAFT",
                 "\\deleted": "DELETED"}
_KEYWORD = re.compile(r'^[!#$&\'+-\[^-z|~]+$')      # an IMAP atom: no space, ( ) { % * " \\ ] or controls


class _Checker(OptionChecker):
    """Located diagnostics for one `type: imap` entry."""

    kind = "imap"

    def option(self, problem: OptionError) -> None:
        self.error(problem.message, *problem.path, key=problem.key, hint=problem.hint)

    def text(self, name: str, *, required: bool = False, default: str | None = None, example: str) -> str | None:
        options = self.config.options
        if name not in options:
            if required:
                self.error(f"{name} is required", hint=f"e.g. {example}")
            return default
        value = reveal(options[name])
        if not isinstance(value, str) or not value.strip():
            self.error(f"{name}: expected text, got {_what(options[name])}", name, hint=f"e.g. {example}")
            return default
        return value.strip()

    def number(self, name: str, default: float, *, integer: bool = False, high: float = 86400,
               example: str) -> float:
        raw = self.config.options.get(name, default)
        value = _number(reveal(raw))
        kind = "a whole number" if integer else "a number of seconds"
        if value is None or (integer and value != int(value)) or not (0 < value <= high):
            self.error(f"{name}: expected {kind} more than 0 and at most {high:g}, got {_what(raw)}", name,
                       hint=f"e.g. {example}")
            return default
        return int(value) if integer else value

    def boolean(self, name: str, default: bool) -> bool:
        value = reveal(self.config.options.get(name, default))
        if not isinstance(value, bool):
            self.error(f"{name}: expected true or false, got {_what(value)}", name)
            return default
        return value


def _size(raw: Any) -> int | None:
    import re
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw if raw > 0 else None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]i?[bB]?|[bB])?\s*", str(raw)) if isinstance(raw, str) else None
    if not m:
        return None
    n = float(m.group(1)) * {"b": 1, "k": 1024, "m": 1024 * 1024}[(m.group(2) or "b").lower()[0]]
    return int(n) if n >= 1 else None


class ImapOptions:
    """The checked options of one `type: imap` entry (raises ConfigError on any problem)."""

    def __init__(self, config: ConnectorConfig):
        self.config = config
        check = _Checker(config)
        options = config.options
        for key in options:
            if key not in OPTIONS:
                check.error(f'unknown option "{key}"', key, key=True,
                            hint=did_you_mean(str(key), OPTIONS) or f"the imap connector has: {', '.join(OPTIONS)}")

        self.host = check.text("host", required=True, default="", example="host: mail.example.com") or ""
        self.security = check.text("security", default="tls", example="security: tls") or "tls"
        if self.security not in SECURITY:
            check.error(f'security: expected tls, starttls or none, got "{self.security}"', "security",
                        hint=did_you_mean(self.security, SECURITY) or "tls: port 993; starttls: port 143")
            self.security = "tls"
        if self.security == "none" and self.host and not is_loopback(self.host):
            check.error("security: none would send the password in clear text; it is allowed only for a "
                        "loopback host", "security", hint="use tls (port 993) or starttls (port 143)")
        self.port = int(check.number("port", SECURITY[self.security], integer=True, high=65535,
                                     example=f"port: {SECURITY[self.security]}"))
        self.verify = check.boolean("verify", True)
        self.ca_file: Path | None = None
        ca = check.text("ca_file", example="ca_file: certs/mail-ca.pem")
        if ca:
            self.ca_file = config.path(ca)
            if not self.ca_file.is_file():
                check.error(f"ca_file: {self.ca_file} is not a file", "ca_file")
        self.user = check.text("user", required=True, default="", example="user: herald@example.com") or ""
        self._password = None
        if "password" not in options:
            check.error("password is required", hint="e.g. password: !env IMAP_PASSWORD")
        elif not isinstance(reveal(options["password"]), str) or not reveal(options["password"]):
            check.error(f"password: expected text, got {_what(options['password'])}", "password",
                        hint="e.g. password: !env IMAP_PASSWORD")
        else:
            self._password = options["password"]
        self.folder = check.text("folder", default="INBOX", example="folder: INBOX") or "INBOX"
        self.move_to = check.text("move_to", example="move_to: Herald/Done")
        self.flag = _flag(check, check.text("flag", default="\\Seen",
                                            example='flag: "\\\\Seen" (or a keyword: $Herald)') or "\\Seen")
        if self.move_to and "flag" in options:
            check.error("flag and move_to: give one — processed mail is either flagged or moved", "flag",
                        hint="leave out flag to move, or move_to to flag")
        self.quarantine = check.text("quarantine", default="Quarantine", example="quarantine: Quarantine")
        for name in ("move_to", "quarantine"):
            if getattr(self, name) == self.folder:
                check.error(f"{name}: must differ from folder ({self.folder})", name)
        self.idle = check.boolean("idle", True)
        self.interval = check.number("interval", 30.0, example="interval: 30")
        self.batch = int(check.number("batch", 100, integer=True, high=10_000, example="batch: 100"))
        self.timeout = check.number("timeout", 30.0, high=600, example="timeout: 30")
        self.silence = check.number("silence", 60.0, example="silence: 60")
        max_size = _size(reveal(options.get("max_size", 10 * 1024 * 1024)))
        if max_size is None:
            check.error(f"max_size: expected a size such as 10485760 or \"10 MiB\", got "
                        f"{_what(options.get('max_size'))}", "max_size")
            max_size = 10 * 1024 * 1024
        self.start = reveal(options.get("start", "end"))
        if self.start not in STARTS:
            check.error(f"start: expected end or beginning, got {_what(self.start)}", "start",
                        hint="end: leave the mail already there at the first start; beginning: take it all")
            self.start = "end"
        self.site = check.text("site", example="site: s1")
        self.mapping: MailMapping = mapping_from_options(options, check.option, max_size=max_size)
        if check.problems:
            raise ConfigError(check.problems)


def _flag(check: _Checker, flag: str) -> str:
    """`flag`: an IMAP system flag (any case, written back in its own) or a keyword atom."""
    if flag.startswith("\\"):
        names = {k: "\\" + v.capitalize() for k, v in _SYSTEM_FLAGS.items()}
        if flag.lower() in names:
            return names[flag.lower()]
        check.error(f'flag: "{flag}" is not an IMAP system flag', "flag",
                    hint=did_you_mean(flag, list(names.values())) or f"system flags: {', '.join(names.values())}")
    elif not (flag.isascii() and _KEYWORD.match(flag)):
        check.error(f'flag: "{flag}" is neither an IMAP system flag nor a keyword (letters, digits, $ _ - . '
                    'and no spaces)', "flag", hint="e.g. flag: $Herald, or flag: \"\\\\Seen\"")
    return flag
