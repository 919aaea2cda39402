"""Herald's one exception tree, and the located diagnostics it carries.

Every input boundary (rule files, templates, config, events) reports problems as
`Diagnostic`s: where (`FILE:LINE:COL` or a JSON pointer), what, and what to do.
A load collects all of them before raising, so an author fixes everything in one go.

Every exception class of Herald's derives from `HeraldError`, lives here (but for the two
BSG errors, which carry the wire format's types) and says when it is raised (httpx's
`_exceptions.py` is the model). The modules that raise one import it from here, some under
their old local name.

    HeraldError
    ├── LoadError                  input could not be loaded (diagnostics)
    │   ├── ConfigError            the config file, a secret, an environment variable
    │   └── RulesError             rule files or templates
    ├── EventError                 a malformed incoming event (JSON pointer)
    ├── SourceRowError             a SQL row gave an event Herald refuses
    ├── SubscriptionError          a subscription request that cannot be served
    ├── BitrixDecodeError          C_FIELDS of a Bitrix mail event cannot be decoded
    ├── MailRejected               a mail that gives no event (IMAP connector)
    ├── MailOptionError            a wrong mail-mapping option (IMAP connector)
    ├── HookError                  a refused Bitrix24 webhook post
    ├── Bitrix24RestError          a failed call of Bitrix24's REST API
    ├── FakeBsgRejection           the built-in fake BSG refuses a whole request
    ├── ApiError                   an HTTP answer 4xx/5xx with a JSON body
    ├── StartupError               the daemon cannot start (exit 2)
    ├── CampaignError              a campaign request that cannot be served
    ├── UnknownEntity              a timeline of an entity nothing is known of
    ├── TestDefinitionError        a rule-test file that is itself wrong
    └── BsgError                   BSG refused a whole request (engine/bsg/wire.py, beside
        │                          the wire's `Kind` and results it carries)
        └── BsgUnavailable         BSG could not be reached

    EventError
    └── UnresolvableRecipients     a manual send none of whose recipients is found
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a text file; line and column count from 1."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One located problem. `severity` is "error" or "warning"."""

    message: str
    location: Location | None = None
    severity: str = "error"
    hint: str | None = None          # what to do: "did you mean …?", "expected …"
    source_line: str | None = None   # the offending line, for the caret display

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def headline(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.severity}: {self.message}"

    def format(self) -> str:
        """The headline, then the source line with a caret, then the hint."""
        lines = [self.headline()]
        if self.source_line is not None and self.location and self.location.col > 0:
            text = self.source_line.rstrip("\n").expandtabs(1)
            lines.append(f"    {text}")
            lines.append("    " + " " * (self.location.col - 1) + "^")
        if self.hint:
            lines.append(f"  {self.hint}")
        return "\n".join(lines)


def sort_key(d: Diagnostic) -> tuple:
    loc = d.location or Location("")
    return (loc.file, loc.line, loc.col, d.severity != "error", d.message)


class HeraldError(Exception):
    """Base of every error Herald raises on purpose."""


class LoadError(HeraldError):
    """Input could not be loaded; `diagnostics` holds every problem found, in order."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=sort_key)
        errors = [d for d in self.diagnostics if d.is_error]
        first = errors[0].headline() if errors else "no errors"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)

    def format(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)


class ConfigError(LoadError):
    """The config file (or a secret or environment variable it names) is wrong."""


class RulesError(LoadError):
    """Rule files or templates did not compile."""


class EventError(HeraldError):
    """An incoming event is malformed. `pointer` is a JSON pointer into it."""

    def __init__(self, message: str, pointer: str = ""):
        self.message = message
        self.pointer = pointer
        super().__init__(f"{pointer or '/'}: {message}")

    def as_json(self) -> dict:
        return {"error": self.message, "pointer": self.pointer}


class SourceRowError(HeraldError):
    """Raised by the SQL connector's poll (connectors/sql/connector.py) when a row gives an
    event Herald refuses (an EventError from the journal): that source waits at the row,
    the other sources go on, and /health shows the message."""


class SubscriptionError(HeraldError):
    """Raised by herald.engine.audience.subscriptions when a subscription request cannot be
    served: an HTTP status, a message, a JSON pointer; `reason` names a refusal for the logs
    and /health, `limit` the cap that was hit, `retry_after` the seconds until asking again
    can succeed."""

    def __init__(self, status: int, message: str, pointer: str | None = None, *, reason: str = "invalid",
                 limit: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.pointer = status, message, pointer
        self.reason, self.limit, self.retry_after = reason, limit, retry_after

    def as_json(self) -> dict:
        body: dict[str, Any] = {"error": self.message, "reason": self.reason}
        if self.pointer is not None:
            body["pointer"] = self.pointer
        if self.limit is not None:
            body["limit"] = self.limit
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class BitrixDecodeError(HeraldError):
    """Raised by `decode_c_fields` (connectors/sql/bitrix/php.py) and the mail mapping when
    C_FIELDS (or a mail event) could not be decoded. `offset` is the byte offset in the raw
    C_FIELDS where the problem is, when known."""

    def __init__(self, message: str, offset: int | None = None):
        self.message = message
        self.offset = offset
        super().__init__(f"cannot decode Bitrix C_FIELDS: {message}")


class MailRejected(HeraldError):
    """Raised by the mail mapping (connectors/mail.py) for a mail that gives no event:
    `reason` is one of its REASONS, `detail` says more. The IMAP connector records it."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class MailOptionError(HeraldError):
    """Raised while reading a mail mapping's options (connectors/mail.py) for one problem
    with a mapping option: `path` locates it inside the connector entry."""

    def __init__(self, message: str, *path: Any, hint: str | None = None, key: bool = False):
        super().__init__(message)
        self.message, self.path, self.hint, self.key = message, path, hint, key


class HookError(HeraldError):
    """Raised while decoding a Bitrix24 outbound-webhook post (engine/api/bitrix24.py) that is
    refused: the HTTP status, what is wrong and, where it is one field, which."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class Bitrix24RestError(HeraldError):
    """Raised by a call of Bitrix24's REST API (engine/api/bitrix24.py) that failed: an HTTP
    failure, Bitrix24's `error`, an answer that is not JSON. The message names the method
    and what went wrong, never the URL (it holds the webhook's token)."""


class FakeBsgRejection(HeraldError):
    """Raised inside the built-in fake BSG (engine/bsg/fake.py) when it refuses a whole
    request; answered as HTTP 200 with a top-level `error` of BSG error `code` (the fake's
    ERRORS name them)."""

    def __init__(self, code: int, reference: object = None):
        self.code = code
        self.reference = reference
        super().__init__(f"BSG error {code}")


class ApiError(HeraldError):
    """Raised by the HTTP API's handlers (engine/api/) for a 4xx/5xx answer: the message
    says what to do; `pointer` is where in the JSON body, `parameter` which query or path
    parameter. engine/api/base.py turns it into the JSON reply."""

    def __init__(self, status: int, message: str, pointer: str | None = None, *, parameter: str | None = None):
        super().__init__(message)
        self.status, self.message, self.pointer, self.parameter = status, message, pointer, parameter

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.pointer is not None:
            body["pointer"] = self.pointer
        if self.parameter is not None:
            body["parameter"] = self.parameter
        return body


class StartupError(HeraldError):
    """Raised by the daemon (engine/daemon.py) when it cannot start — a taken port, say:
    `herald run` prints one clear line and exits 2."""


class CampaignError(HeraldError):
    """Raised by the campaigns (engine/audience/campaigns.py) for a request that cannot be
    served — a bad field, an unknown list, a change the campaign's state forbids: an HTTP
    `status`, the message and a JSON `pointer` into the request."""

    def __init__(self, status: int, message: str, pointer: str | None = None):
        super().__init__(message)
        self.status, self.message, self.pointer = status, message, pointer


class UnresolvableRecipients(EventError):
    """Raised by a manual send (engine/delivery/manual.py) when not one of its recipients
    can be found (an unknown department, no directory): a 400 with a pointer at the first,
    not a batch of failed messages."""

    def __init__(self, message: str, pointer: str, hint: str | None):
        super().__init__(message + (f"; {hint}" if hint else ""), pointer)
        self.hint = hint

    def as_json(self) -> dict:
        return {**super().as_json(), **({"hint": self.hint} if self.hint else {})}


class UnknownEntity(HeraldError):
    """Raised by the timeline (engine/store/timeline.py) when nothing is known about an
    entity: no state, no event, no message (`herald timeline`, `GET /timeline/...`: 404)."""


class TestDefinitionError(HeraldError):
    """Raised by the rule tests (engine/rules/ruletest.py) when a test file itself is
    wrong — not YAML, a case without an event: the run reports it against the file."""

    __test__ = False            # not a pytest test class, whatever its name says


@dataclass
class DiagnosticSink:
    """Collects diagnostics while loading; raise once at the end."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, location: Location | None = None, *,
              hint: str | None = None, source_line: str | None = None) -> None:
        self.items.append(Diagnostic(message, location, "error", hint, source_line))

    def warning(self, message: str, location: Location | None = None, *,
                hint: str | None = None, source_line: str | None = None) -> None:
        self.items.append(Diagnostic(message, location, "warning", hint, source_line))

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.items.extend(diagnostics)

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if not d.is_error]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """`did you mean "x"?` for the closest choice, or None when nothing is close."""
    choices = list(choices)
    best = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not best:
        lowered = {c.lower(): c for c in choices}
        best = [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)]
    return f'did you mean "{best[0]}"?' if best else None


def display_path(path: str | os.PathLike) -> str:
    """Paths in messages: relative to the working directory when inside it."""
    try:
        relative = Path(os.path.relpath(path))
    except ValueError:
        return str(path)
    return str(path) if relative.parts[:1] == ("..",) else str(relative)
