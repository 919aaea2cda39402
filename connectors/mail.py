"""Mail → event: how an intercepted e-mail becomes a `mail.<EVENT_NAME>` event.

Pure functions and small value classes — no I/O; the IMAP connector (connectors/imap/)
feeds raw messages in. User documentation: docs/connectors/imap.md.

- The **event name** comes from the `X-EVENT_NAME` header that every Bitrix mail
  carries (the header is configurable), else from the first configured matcher whose
  conditions (regexes over the sender, recipients, subject, other headers) all match.
  A mail with neither is rejected ("no match").
- **Fields** come from configured extractors, in order (the first value found for a
  field wins): regexes with named groups over the subject or the text, and
  `Key: value` lines.
- Every event also carries `MAIL_SUBJECT`, `MAIL_TEXT` (the text part, or the HTML
  part made plain text with inscriptis; signature cut, whitespace folded, at most
  `text_limit` characters), `MAIL_FROM`, `MAIL_TO` (the first recipient's address —
  `send sms to user MAIL_TO` looks its phone up in the directory), `MAIL_TO_ALL`,
  `MAIL_MESSAGE_ID` and `MAIL_DATE`.
- Decoding is the stdlib `email` package's (policy.default): quoted-printable,
  base64, RFC 2047 headers, any charset Python knows (UTF-8, windows-1251, KOI8-R …).
  A charset Python does not know — in the body or in an encoded word of Subject,
  From, To or Cc — is rejected ("unknown charset"): a guessed subject in an SMS is worse
  than a quarantined mail. So is a body that does not decode (broken base64, bytes
  that are not in its charset: "unparseable"), and an oversize mail.

`MailMapping.event(raw, …)` returns the event or raises `Rejected` with a short reason
(`oversize`, `unparseable`, `unknown charset`, `no match`, `bad event name`) and a detail.
"""

from __future__ import annotations

import codecs
import email
import email.policy
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any, Callable, Mapping

from inscriptis import get_text

from herald.engine.errors import MailOptionError as OptionError, MailRejected as Rejected

__all__ = ["Mail", "Matcher", "Extractor", "MailMapping", "Rejected", "parse_mail", "mail_digest",
           "DEFAULT_HEADER", "DEFAULT_TEXT_LIMIT", "REASONS"]

DEFAULT_HEADER = "X-EVENT_NAME"
DEFAULT_TEXT_LIMIT = 1000
DEFAULT_SIGNATURE = (r"^--\s*$",)            # RFC 3676's "-- " line, and a bare "--"
REASONS = ("oversize", "unparseable", "unknown charset", "no match", "bad event name",
           "refused")                       # refused: Herald refused the event (EventError)
_EVENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LINE = re.compile(r"^\s*([^:\n]{1,60}?)\s*:\s*(.*?)\s*$", re.M)
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?[bBqQ]\?")
_DECODED_HEADERS = ("subject", "from", "to", "cc")


# ====================================================================== a parsed mail

@dataclass(frozen=True)
class Mail:
    message: EmailMessage
    subject: str
    sender: str                     # the From address
    to: tuple[str, ...]             # To, then Cc addresses
    text: str                       # plain text, line structure kept, signature cut
    message_id: str                 # without <>, "" when absent
    date: datetime | None

    def header(self, name: str) -> str:
        value = self.message.get(name)
        return "" if value is None else " ".join(str(value).split())


def parse_mail(raw: bytes, signature: tuple[re.Pattern, ...] = ()) -> Mail:
    """Raw RFC 5322 bytes → Mail; raises Rejected (unparseable, unknown charset)."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception as exc:                       # the parser is lenient; this is rare
        raise Rejected("unparseable", f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(message, EmailMessage) or not list(message.keys()):
        raise Rejected("unparseable", "no mail headers")
    _check_charsets(message)
    try:
        subject = _header(message, "Subject")
        sender = _addresses(message, "From")
        to = _addresses(message, "To") + _addresses(message, "Cc")
        message_id = _header(message, "Message-ID").strip().strip("<>").strip()
    except Exception as exc:                       # a header the parser cannot make sense of
        raise Rejected("unparseable", f"bad header: {type(exc).__name__}: {exc}") from exc
    return Mail(message, subject, sender[0] if sender else "", tuple(to), _body_text(message, signature),
                message_id, _date(message))


def _header(message: EmailMessage, name: str) -> str:
    value = message.get(name)
    if value is None:
        return ""
    for defect in getattr(value, "defects", ()):
        if "charset" in str(defect).lower() or "unknown" in type(defect).__name__.lower():
            raise Rejected("unknown charset", f"{name} header: {defect}")
    return " ".join(str(value).split())


def _check_charsets(message: EmailMessage) -> None:
    """The stdlib decodes an encoded word in an unknown charset as best it can, without
    a defect: look at the raw headers ourselves."""
    for name, value in message.raw_items():
        if name.lower() not in _DECODED_HEADERS:
            continue
        for charset in _ENCODED_WORD.findall(str(value)):
            try:
                codecs.lookup(charset)
            except LookupError:
                raise Rejected("unknown charset", f'{name} header: "{charset[:40]}"') from None


def _addresses(message: EmailMessage, name: str) -> list[str]:
    values = [str(v) for v in message.get_all(name) or ()]
    return [addr.strip() for _, addr in getaddresses(values) if "@" in addr]


def _date(message: EmailMessage) -> datetime | None:
    try:
        when = parsedate_to_datetime(str(message.get("Date") or ""))
    except (TypeError, ValueError, IndexError):
        return None
    return when if when is not None and when.tzinfo is not None else None


def _body_text(message: EmailMessage, signature: tuple[re.Pattern, ...]) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        content = part.get_content()
    except LookupError as exc:
        raise Rejected("unknown charset", f'"{charset}" in the {part.get_content_type()} part') from exc
    except Exception as exc:
        raise Rejected("unparseable", f"{part.get_content_type()} part: {type(exc).__name__}: {exc}") from exc
    if not isinstance(content, str):
        return ""
    _check_decoding(part, charset)
    if part.get_content_subtype() == "html":
        content = get_text(content)
    lines = [" ".join(line.split()) for line in content.replace("\r\n", "\n").split("\n")]
    for i, line in enumerate(lines):
        if any(p.search(line) for p in signature):
            lines = lines[:i]
            break
    return re.sub(r"\n{2,}", "\n\n", "\n".join(lines)).strip()


def _check_decoding(part: EmailMessage, charset: str) -> None:
    """get_content() hides damage — it skips bad base64 and replaces undecodable bytes —
    so a damaged body would give a garbled SMS: reject it instead."""
    damage = [d for d in part.defects if "Base64" in type(d).__name__]
    if damage:
        raise Rejected("unparseable", f"{part.get_content_type()} part: {type(damage[0]).__name__}")
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes) and part.get_param("charset") is not None:     # declared, so binding
        try:
            payload.decode(charset)
        except UnicodeDecodeError as exc:
            raise Rejected("unparseable", f"{part.get_content_type()} part: not {charset} text "
                           f"(byte {exc.start})") from None
        except LookupError:
            pass                                   # get_content already judged the charset


def fold(text: str) -> str:
    """All whitespace, line breaks included, folded into single spaces."""
    return " ".join(text.split())


def mail_digest(raw: bytes, message_id: str) -> str:
    """The mail's identity: its Message-ID (the same mail delivered twice is one
    event), or the raw content when it has none."""
    basis = ("id:" + message_id).encode() if message_id else b"raw:" + raw
    return hashlib.sha1(basis).hexdigest()[:20]


# ====================================================================== matching and extracting

@dataclass(frozen=True)
class Matcher:
    """`match:` entry: every given regex must be found (case-insensitive)."""

    event: str
    sender: re.Pattern | None = None
    to: re.Pattern | None = None
    subject: re.Pattern | None = None
    headers: tuple[tuple[str, re.Pattern], ...] = ()

    def matches(self, mail: Mail) -> bool:
        if self.sender and not self.sender.search(mail.sender):
            return False
        if self.to and not any(self.to.search(a) for a in mail.to):
            return False
        if self.subject and not self.subject.search(mail.subject):
            return False
        return all(p.search(mail.header(name)) for name, p in self.headers)


@dataclass(frozen=True)
class Extractor:
    """`extract:` entry: a regex with named groups over the subject or the text, or
    `Key: value` lines (`labels` maps a line's key to a field; None: every key whose
    name can be a field, upper-cased)."""

    kind: str                                   # "subject" | "text" | "lines"
    pattern: re.Pattern | None = None
    labels: Mapping[str, str] | None = None
    events: frozenset[str] | None = None        # only for these event names

    def fields(self, mail: Mail, event: str) -> dict[str, str]:
        if self.events is not None and event not in self.events:
            return {}
        if self.kind == "lines":
            return self._lines(mail.text)
        m = self.pattern.search(mail.subject if self.kind == "subject" else mail.text)
        if not m:
            return {}
        return {k: fold(v) for k, v in m.groupdict().items() if v is not None and fold(v)}

    def _lines(self, text: str) -> dict[str, str]:
        out: dict[str, str] = {}
        wanted = {k.casefold(): v for k, v in (self.labels or {}).items()}
        for m in _LINE.finditer(text):
            key, value = m.group(1).strip(), m.group(2)
            if not value:
                continue
            if self.labels is not None:
                name = wanted.get(key.casefold())
            else:
                name = re.sub(r"[\s-]+", "_", key).upper()
                name = name if _FIELD.match(name) and name.isascii() else None
            if name and name not in out:
                out[name] = value
        return out


@dataclass(frozen=True)
class MailMapping:
    """How mails become events: see the module docstring."""

    header: str | None = DEFAULT_HEADER
    matchers: tuple[Matcher, ...] = ()
    extractors: tuple[Extractor, ...] = ()
    text_limit: int = DEFAULT_TEXT_LIMIT
    max_size: int = 10 * 1024 * 1024
    signature: tuple[re.Pattern, ...] = field(
        default_factory=lambda: tuple(re.compile(p) for p in DEFAULT_SIGNATURE))

    def parse(self, raw: bytes) -> Mail:
        if len(raw) > self.max_size:
            raise Rejected("oversize", f"{len(raw)} bytes, more than max_size {self.max_size}")
        return parse_mail(raw, self.signature)

    def event_name(self, mail: Mail) -> str:
        if self.header:
            named = mail.header(self.header).strip()
            if named:
                if not _EVENT_NAME.match(named):
                    raise Rejected("bad event name", f'{self.header}: "{named[:80]}" is not a name '
                                   "of letters, digits and _")
                return named
        for matcher in self.matchers:
            if matcher.matches(mail):
                return matcher.event
        where = f"no {self.header} header and " if self.header else ""
        raise Rejected("no match", f"{where}no matcher fits (from {mail.sender or '?'}, "
                       f'subject "{mail.subject[:80]}")')

    def data(self, mail: Mail, name: str) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for extractor in self.extractors:
            for key, value in extractor.fields(mail, name).items():
                data.setdefault(key, value)
        text = fold(mail.text)
        if len(text) > self.text_limit:
            text = text[: self.text_limit - 1].rstrip() + "…"
        data.update(basics(mail), MAIL_TEXT=text)
        return data

    def event(self, raw: bytes, *, id_prefix: str, site: str | None = None) -> dict:
        """The `mail.<NAME>` event of a raw mail; raises Rejected."""
        mail = self.parse(raw)
        name = self.event_name(mail)
        event: dict[str, Any] = {"type": f"mail.{name}", "id": id_prefix + mail_digest(raw, mail.message_id),
                                 "data": self.data(mail, name)}
        if mail.date is not None:
            event["time"] = mail.date.isoformat()
        if site:
            event["site"] = site
        return event


def basics(mail: Mail) -> dict[str, str]:
    """The MAIL_* fields every mail event (and every mail.rejected record) carries."""
    return {"MAIL_SUBJECT": mail.subject, "MAIL_FROM": mail.sender, "MAIL_TO": mail.to[0] if mail.to else "",
            "MAIL_TO_ALL": ", ".join(mail.to), "MAIL_MESSAGE_ID": mail.message_id,
            "MAIL_DATE": mail.date.isoformat() if mail.date else ""}


def rejected_event(raw: bytes, problem: Rejected, *, id_prefix: str, quarantine: str,
                   site: str | None = None, extra: Mapping[str, Any] | None = None) -> dict:
    """The `mail.rejected` record of a bad mail: the reason and what could be read."""
    data: dict[str, Any] = {"MAIL_REASON": problem.reason, "MAIL_ERROR": problem.detail,
                            "MAIL_SIZE": len(raw), "MAIL_QUARANTINE": quarantine}
    message_id = ""
    try:               # an oversize mail: only its headers (all the connector fetched of it)
        mail = parse_mail(_head(raw) if problem.reason == "oversize" else raw)
        data.update(basics(mail))
        message_id = mail.message_id
    except Rejected:
        pass
    data.update(extra or {})
    event = {"type": "mail.rejected", "id": f"{id_prefix}rejected:{mail_digest(raw, message_id)}", "data": data}
    if site:
        event["site"] = site
    return event


def _head(raw: bytes) -> bytes:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends)] + b"\r\n\r\n" if ends else raw


# ====================================================================== options

MATCH_KEYS = ("event", "from", "to", "subject", "headers")
EXTRACT_KEYS = ("subject", "text", "lines", "events")


def mapping_from_options(options: Mapping[str, Any], report: Callable[[OptionError], None],
                         *, max_size: int) -> MailMapping:
    """A MailMapping from the connector's `event_header`, `match`, `extract`,
    `text_limit` and `signature` options; every problem goes to `report`."""
    header: str | None = DEFAULT_HEADER
    if "event_header" in options:
        raw = options["event_header"]
        if raw in (None, False, ""):
            header = None
        elif isinstance(raw, str) and re.fullmatch(r"[!-9;-~]+", raw.strip()):
            header = raw.strip()
        else:
            report(OptionError("event_header: expected a header name or false", "event_header",
                               hint="e.g. event_header: X-EVENT_NAME"))
    matchers = tuple(_matchers(options.get("match", []), report))
    extractors = tuple(_extractors(options.get("extract", []), report))
    limit = options.get("text_limit", DEFAULT_TEXT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
        report(OptionError("text_limit: expected a whole number of characters (1 to 100000)", "text_limit",
                           hint="e.g. text_limit: 1000"))
        limit = DEFAULT_TEXT_LIMIT
    signature = list(DEFAULT_SIGNATURE)
    raw_sig = options.get("signature", [])
    if not isinstance(raw_sig, list):
        report(OptionError("signature: expected a list of regexes", "signature",
                           hint='e.g. signature: ["^С уважением", "^Письмо сгенерировано автоматически"]'))
        raw_sig = []
    for i, item in enumerate(raw_sig):
        pattern = _regex(item, report, ("signature", i), flags=re.I)
        if pattern is not None:
            signature.append(pattern.pattern)
    return MailMapping(header, matchers, extractors, limit, max_size,
                       tuple(re.compile(p, re.I) for p in signature))


def _regex(value: Any, report: Callable, path: tuple, flags: int = 0) -> re.Pattern | None:
    if not isinstance(value, str) or not value:
        report(OptionError(f"{_where(path)}: expected a regular expression (text)", *path))
        return None
    try:
        return re.compile(value, flags)
    except re.error as exc:
        report(OptionError(f"{_where(path)}: not a valid regular expression: {exc}", *path))
        return None


def _where(path: tuple) -> str:
    out = str(path[0])
    for part in path[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _matchers(raw: Any, report: Callable) -> list[Matcher]:
    if not isinstance(raw, list):
        report(OptionError("match: expected a list of matchers", "match",
                           hint='e.g. match: [{event: ORDER_NEW, subject: "^Новый заказ"}]'))
        return []
    out = []
    for i, item in enumerate(raw):
        at = ("match", i)
        if not isinstance(item, dict):
            report(OptionError(f"match[{i}]: expected a mapping (event, from, to, subject, headers)", *at))
            continue
        bad = False
        for k in item:
            if k not in MATCH_KEYS:
                from herald.engine.errors import did_you_mean
                report(OptionError(f'match[{i}]: unknown key "{k}"', *at, k, key=True,
                                   hint=did_you_mean(str(k), MATCH_KEYS) or f"a matcher has: {', '.join(MATCH_KEYS)}"))
                bad = True
        event = item.get("event")
        if not isinstance(event, str) or not _EVENT_NAME.match(event.strip()):
            report(OptionError(f"match[{i}]: event: expected an event name (letters, digits, _)",
                               *(at + (("event",) if "event" in item else ())),
                               hint="e.g. event: ORDER_NEW (the event is mail.ORDER_NEW)"))
            bad = True
        found = {k: _regex(item[k], report, at + (k,), re.I) for k in ("from", "to", "subject") if k in item}
        headers = []
        raw_headers = item.get("headers", {})
        if not isinstance(raw_headers, dict):
            report(OptionError(f"match[{i}].headers: expected a mapping of header name → regex", *at, "headers"))
            bad = True
        else:
            for name, pattern in raw_headers.items():
                compiled = _regex(pattern, report, at + ("headers", name), re.I)
                if compiled is None:
                    bad = True
                else:
                    headers.append((str(name), compiled))
        if not found and not headers:
            report(OptionError(f"match[{i}]: give at least one of from, to, subject, headers", *at,
                               hint='e.g. subject: "^Новый заказ"'))
            bad = True
        if bad or any(v is None for v in found.values()):
            continue
        out.append(Matcher(event.strip(), found.get("from"), found.get("to"), found.get("subject"),
                           tuple(headers)))
    return out


def _extractors(raw: Any, report: Callable) -> list[Extractor]:
    if not isinstance(raw, list):
        report(OptionError("extract: expected a list of extractors", "extract",
                           hint='e.g. extract: [{subject: "N(?P<ORDER_ID>\\\\d+)"}, {lines: true}]'))
        return []
    out = []
    for i, item in enumerate(raw):
        at = ("extract", i)
        if not isinstance(item, dict):
            report(OptionError(f"extract[{i}]: expected a mapping (subject, text or lines; events)", *at))
            continue
        unknown = [k for k in item if k not in EXTRACT_KEYS]
        for k in unknown:
            from herald.engine.errors import did_you_mean
            report(OptionError(f'extract[{i}]: unknown key "{k}"', *at, k, key=True,
                               hint=did_you_mean(str(k), EXTRACT_KEYS) or f"an extractor has: {', '.join(EXTRACT_KEYS)}"))
        kinds = [k for k in ("subject", "text", "lines") if k in item]
        if len(kinds) != 1:
            report(OptionError(f"extract[{i}]: give exactly one of subject, text, lines", *at,
                               hint='e.g. {text: "Сумма: (?P<PRICE>[\\\\d ]+)"}'))
            continue
        events = None
        if "events" in item:
            names = item["events"] if isinstance(item["events"], list) else [item["events"]]
            if not names or not all(isinstance(n, str) and _EVENT_NAME.match(n) for n in names):
                report(OptionError(f"extract[{i}].events: expected a list of event names", *at, "events",
                                   hint="e.g. events: [SALE_NEW_ORDER]"))
                continue
            events = frozenset(names)
        kind = kinds[0]
        if kind == "lines":
            labels = _labels(item["lines"], report, at + ("lines",))
            if labels is not False and not unknown:
                out.append(Extractor("lines", labels=labels, events=events))
            continue
        pattern = _regex(item[kind], report, at + (kind,), re.M)
        if pattern is None:
            continue
        if not pattern.groupindex:
            report(OptionError(f"extract[{i}].{kind}: the regex has no named group: name the field with "
                               "(?P<NAME>…)", *at, kind, hint='e.g. "N(?P<ORDER_ID>\\\\d+)"'))
            continue
        if not unknown:
            out.append(Extractor(kind, pattern=pattern, events=events))
    return out


def _labels(raw: Any, report: Callable, at: tuple) -> Mapping[str, str] | None | bool:
    if raw is True:
        return None
    if isinstance(raw, dict) and raw and all(isinstance(k, str) for k in raw) and \
            all(isinstance(v, str) and _FIELD.match(v) for v in raw.values()):
        return dict(raw)
    report(OptionError(f"{_where(at)}: expected true or a mapping of line label → field name", *at,
                       hint='e.g. lines: {"Сумма заказа": PRICE, "Телефон": PHONE}'))
    return False
