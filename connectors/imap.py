"""The IMAP connector: mails arriving in a mailbox become events.

    connectors:
      - type: imap
        name: mailbox
        host: mail.example.com
        user: herald@example.com
        password: !env IMAP_PASSWORD
        folder: INBOX
        move_to: Herald/Done          # or flag: "\\Seen" (the default)

A shop that e-mails its notifications (Bitrix, or any other) sends a copy — BCC or a
forwarding rule — to a mailbox; this connector reads it. How a mail becomes an event
(`mail.<EVENT_NAME>`) is connectors/mail.py; this module is the mailbox side:

- `imapclient` in worker threads (trio.to_thread), one connection, TLS (default),
  STARTTLS or, on loopback only, plain;
- IDLE where the server offers it (a new mail is an event within moments), polling
  every `interval` seconds otherwise;
- every message after the position is taken, `batch` at a time, in UID order. The
  position — UIDVALIDITY and the last UID — is the connector's cursor, moved in the
  same transaction as the events (`ctx.emit(events, cursor=…)`); a changed UIDVALIDITY
  starts the folder over, and the event ids (from the Message-ID) keep mails already
  journaled from counting twice;
- only after the events are committed is the mail acknowledged: flagged (`flag`) or
  moved (`move_to`). A crash in between leaves mail below the position unacknowledged;
  the next session acknowledges it without journaling it again;
- a bad mail (oversize, unparseable, unknown charset, no event name) is journaled as a
  `mail.rejected` event with the reason and moved to the `quarantine` folder; the
  mailbox goes on;
- a failure reports down in /health at once, reconnects with back-off (1 s … 60 s,
  jittered), and after `silence` seconds journals `connector.down`, then
  `connector.up` when it works again (connectors/outage.py).

The password never reaches a log line, an error or /health.
User documentation: docs/connectors/imap.md.
"""

from __future__ import annotations

import imaplib
import ipaddress
import json
import logging
import random
import select
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import trio
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from connectors.base import ConnectorContext
from connectors.mail import MailMapping, OptionError, Rejected, mapping_from_options, rejected_event
from connectors.options import number as _number, what as _what
from connectors.outage import Outage
from connectors.sql import Locator
from engine.config import ConnectorConfig, reveal
from engine.errors import ConfigError, Diagnostic, EventError, did_you_mean

log = logging.getLogger("herald.connectors.imap")

__all__ = ["ImapConnector", "CONNECTOR"]

OPTIONS = ("name", "host", "port", "security", "verify", "ca_file", "user", "password", "folder", "flag",
           "move_to", "quarantine", "idle", "interval", "batch", "max_size", "timeout", "silence", "start",
           "site", "event_header", "match", "extract", "text_limit", "signature")
SECURITY = {"tls": 993, "starttls": 143, "none": 143}
STARTS = ("end", "beginning")
CURSOR = "position"
IDLE_RENEW = 300.0          # seconds in one IDLE before it is renewed (RFC 2177: under 29 min)
IDLE_STEP = 1.0             # seconds per wait in a worker thread, so shutdown is prompt
_SYSTEM_FLAGS = {"\\seen": "SEEN", "\\flagged": "FLAGGED", "\\answered": "ANSWERED", "\\draft": "DRAFT"}
_NETWORK_ERRORS = (IMAPClientError, imaplib.IMAP4.error, OSError, ssl.SSLError, socket.timeout, EOFError)


@dataclass(frozen=True)
class _Position:
    uidvalidity: int
    uid: int             # the last UID journaled
    base: int = 0        # UIDs up to this were there at the first start (start: end) — never ours

    def dump(self) -> str:
        return json.dumps({"uidvalidity": self.uidvalidity, "uid": self.uid, "base": self.base})

    @staticmethod
    def load(text: str | None) -> "_Position | None":
        try:
            data = json.loads(text or "")
            return _Position(int(data["uidvalidity"]), int(data["uid"]), int(data.get("base", 0)))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class _Fetched:
    uid: int
    raw: bytes
    size: int


class _Checker:
    """Located diagnostics for one `type: imap` entry."""

    def __init__(self, config: ConnectorConfig):
        self.config = config
        self.where = Locator(config)
        self.problems: list[Diagnostic] = []

    def error(self, message: str, *path: Any, key: bool = False, hint: str | None = None) -> None:
        loc = self.where.at(*path, key=key) if path else self.config.location
        self.problems.append(Diagnostic(f"imap connector: {message}", loc, hint=hint,
                                        source_line=self.where.source_line(loc) if path else None))

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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ImapConnector:
    """`type: imap` — see the module docstring and docs/connectors/imap.md."""

    type = "imap"
    BACKOFF_MIN = 1.0           # seconds; tests lower these
    BACKOFF_MAX = 60.0

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
        if self.security == "none" and self.host and not _is_loopback(self.host):
            check.error("security: none would send the password in clear text; it is allowed only for a "
                        "loopback host", "security", hint="use tls (port 993) or starttls (port 143)")
        self.port = int(check.number("port", SECURITY[self.security], integer=True, high=65535,
                                     example=f"port: {SECURITY[self.security]}"))
        self.verify = check.boolean("verify", True)
        self.ca_file = None
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
        self.flag = check.text("flag", default="\\Seen", example='flag: "\\\\Seen" (or a keyword: $Herald)')
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
        self.start = options.get("start", "end")
        if self.start not in STARTS:
            check.error(f"start: expected end or beginning, got {_what(self.start)}", "start",
                        hint="end: leave the mail already there at the first start; beginning: take it all")
            self.start = "end"
        self.site = check.text("site", example="site: s1")
        self.mapping: MailMapping = mapping_from_options(options, check.option, max_size=max_size)
        if check.problems:
            raise ConfigError(check.problems)

        self.where = f"{self.user}@{self.host}:{self.port}/{self.folder}"
        self.read = self.new_events = self.rejected = 0
        self._conn: IMAPClient | None = None
        self._position: _Position | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._leftovers = True            # look for mail journaled but not acknowledged (once per session)
        self._session_ok = False
        self.outage = Outage(self.type, self.silence, log, self.where)

    # ------------------------------------------------------------------ blocking side (threads)

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> tuple[IMAPClient, bool]:
        """Connect, log in, make sure the folders exist: (connection, IDLE offered)."""
        conn = IMAPClient(self.host, port=self.port, ssl=self.security == "tls",
                          ssl_context=self._ssl_context() if self.security == "tls" else None,
                          timeout=self.timeout)
        try:
            if self.security == "starttls":
                conn.starttls(self._ssl_context())
            conn.login(self.user, reveal(self._password))
            for folder in (self.move_to, self.quarantine):
                if folder and not conn.folder_exists(folder):
                    conn.create_folder(folder)
            return conn, conn.has_capability("IDLE")
        except BaseException:
            _close(conn)
            raise

    async def _call(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=True)

    def _unacked(self) -> list:
        """The search criteria of mail not acknowledged yet."""
        if self.move_to:
            return []
        system = _SYSTEM_FLAGS.get(self.flag.lower())
        return [f"UN{system}"] if system else ["UNKEYWORD", self.flag]

    def _fetch(self, conn: IMAPClient, uids: list[int]) -> list[_Fetched]:
        sizes = conn.fetch(uids, ["RFC822.SIZE"])
        small = [u for u in uids if sizes.get(u, {}).get(b"RFC822.SIZE", 0) <= self.mapping.max_size]
        big = [u for u in uids if u not in small]
        out = {}
        if small:
            for uid, data in conn.fetch(small, ["BODY.PEEK[]"]).items():
                out[uid] = _Fetched(uid, data.get(b"BODY[]") or b"", sizes[uid][b"RFC822.SIZE"])
        if big:                       # only the headers, for the rejection record
            for uid, data in conn.fetch(big, ["BODY.PEEK[HEADER]"]).items():
                out[uid] = _Fetched(uid, data.get(b"BODY[HEADER]") or b"", sizes[uid][b"RFC822.SIZE"])
        return [out[u] for u in sorted(out)]

    def _acknowledge(self, conn: IMAPClient, done: list[int], bad: list[int]) -> None:
        if done:
            if self.move_to:
                self._move(conn, done, self.move_to)
            else:
                conn.add_flags(done, [self.flag], silent=True)
        if bad:
            self._move(conn, bad, self.quarantine)

    @staticmethod
    def _move(conn: IMAPClient, uids: list[int], folder: str) -> None:
        if conn.has_capability("MOVE"):
            conn.move(uids, folder)
            return
        conn.copy(uids, folder)
        conn.add_flags(uids, [b"\\Deleted"], silent=True)
        if conn.has_capability("UIDPLUS"):
            conn.uid_expunge(uids)
        else:
            conn.expunge()

    # ------------------------------------------------------------------ mapping

    def _map(self, fetched: list[_Fetched], prefix: str) -> list[tuple[int, dict, bool]]:
        """(uid, event, is_good) for each mail: its event or its mail.rejected record."""
        out = []
        for item in fetched:
            try:
                if item.size > self.mapping.max_size:
                    raise Rejected("oversize", f"{item.size} bytes, more than max_size {self.mapping.max_size}")
                out.append((item.uid, self.mapping.event(item.raw, id_prefix=prefix, site=self.site), True))
            except Rejected as problem:
                out.append((item.uid, self._rejection(item, problem, prefix), False))
        return out

    def _rejection(self, item: _Fetched, problem: Rejected, prefix: str) -> dict:
        return rejected_event(item.raw, problem, id_prefix=prefix, quarantine=self.quarantine, site=self.site,
                              extra={"MAIL_UID": item.uid, "MAIL_FOLDER": self.folder,
                                     "MAIL_SIZE": item.size})

    # ------------------------------------------------------------------ the loop

    async def run(self, ctx: ConnectorContext, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self._position = _Position.load(await ctx.get_cursor(CURSOR))
        await self.outage.resume(ctx)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.outage.watchdog, ctx)
                await self._loop(ctx)
        finally:
            if self._conn is not None:
                _close(self._conn)            # closes the socket: an abandoned thread wakes and ends

    async def _loop(self, ctx: ConnectorContext) -> None:
        failures = 0
        while True:
            self._session_ok = False
            try:
                await self._session(ctx)
            except Exception as exc:          # never BaseException: trio.Cancelled goes through
                failures = 1 if self._session_ok else failures + 1   # a session that worked: back-off anew
                error = self._describe(exc)
                if not isinstance(exc, _NETWORK_ERRORS):
                    log.warning("imap connector %s: unexpected %s", ctx.name, error, exc_info=True)
                self.outage.failing_now(ctx, error)
                delay = min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2 ** min(failures - 1, 30))
                await trio.sleep(delay * random.uniform(0.8, 1.2))
            finally:
                if self._conn is not None:
                    conn, self._conn = self._conn, None
                    _close(conn)

    async def _session(self, ctx: ConnectorContext) -> None:
        self._conn, can_idle = await self._call(self._connect)
        self._leftovers = True
        idle = self.idle and can_idle
        while True:
            more = await self.round(ctx)
            self._session_ok = True
            await self.outage.succeeded(ctx)
            ctx.alive(f"{self.where}: {'IDLE' if idle else f'polling every {self.interval:g}s'}; "
                      f"{self.read} mail(s) read, {self.new_events} event(s), {self.rejected} rejected since start")
            if more:
                continue
            if idle:
                await self._wait_idle()
            else:
                await trio.sleep(self.interval)
                await self._call(self._conn.noop)

    async def _wait_idle(self) -> None:
        """IDLE until the server reports a change (or IDLE_RENEW passes)."""
        conn = self._conn
        await self._call(conn.idle)
        try:
            deadline = trio.current_time() + IDLE_RENEW
            while trio.current_time() < deadline:
                responses = await self._call(_idle_step, conn, IDLE_STEP)
                if any(not (isinstance(r, tuple) and r and r[0] == b"OK") for r in responses):
                    return
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 2 * IDLE_STEP + 1
                if self._conn is conn:
                    try:
                        await self._call(conn.idle_done)
                    except _NETWORK_ERRORS:
                        pass

    async def round(self, ctx: ConnectorContext) -> bool:
        """Take one batch of new mail: journal, then acknowledge. True when more is waiting."""
        conn = self._conn
        info = await self._call(conn.select_folder, self.folder)
        validity = int(info[b"UIDVALIDITY"])
        last_uid = int(info.get(b"UIDNEXT", 1)) - 1
        position = self._position
        if position is None:
            start = _Position(validity, last_uid, last_uid) if self.start == "end" else _Position(validity, 0)
            await ctx.emit([], cursor=(CURSOR, start.dump()))
            self._position = position = start
            if self.start == "end":
                log.info("imap connector %s: first start: %d mail(s) already in %s left alone", ctx.name,
                         last_uid, self.folder)
        elif position.uidvalidity != validity:
            log.warning("imap connector %s: UIDVALIDITY of %s changed (%d → %d): reading the folder again; "
                        "mails journaled before are recognised by their Message-ID", ctx.name, self.folder,
                        position.uidvalidity, validity)
            position = _Position(validity, 0)
            await ctx.emit([], cursor=(CURSOR, position.dump()))
            self._position = position
        prefix = f"imap:{ctx.name}:"
        if self._leftovers:
            await self._acknowledge_leftovers(position, prefix)
            self._leftovers = False
        found = await self._call(conn.search, ["UID", f"{position.uid + 1}:*", *self._unacked()])
        uids = sorted(u for u in found if u > position.uid)
        if not uids:
            return False
        batch = uids[: self.batch]
        fetched = await self._call(self._fetch, conn, batch)
        mapped = await trio.to_thread.run_sync(self._map, fetched, prefix)
        self.read += len(mapped)
        new_ids = await self._emit(ctx, mapped, _Position(validity, batch[-1], position.base))
        self.new_events += sum(1 for _, e, good in mapped if good and e["id"] in new_ids)
        await self._call(self._acknowledge, conn, [u for u, _, good in mapped if good],
                         [u for u, _, good in mapped if not good])
        return len(uids) > len(batch)

    async def _emit(self, ctx: ConnectorContext, mapped: list, position: _Position) -> set[str]:
        """Journal the batch with the new position. An event Herald refuses (EventError)
        turns that mail into a rejected one and the rest are journaled again."""
        while True:
            try:
                new_ids = set(await ctx.emit([e for _, e, _ in mapped], cursor=(CURSOR, position.dump())))
                break
            except EventError as exc:
                index = _index_of(exc.pointer)
                if index is None or index >= len(mapped) or not mapped[index][2]:
                    raise
                uid, event, _ = mapped[index]
                problem = Rejected("refused", f"{exc.pointer}: {exc.message}")
                record = rejected_event(b"", problem, id_prefix=event["id"] + ":",
                                        quarantine=self.quarantine, site=None,
                                        extra={k: v for k, v in event["data"].items() if k.startswith("MAIL_")
                                               and k != "MAIL_TEXT"} | {"MAIL_UID": uid})
                mapped[index] = (uid, record, False)
        self._position = position
        for uid, event, good in mapped:
            if not good and event["id"] in new_ids:
                self.rejected += 1
                data = event["data"]
                log.warning("imap connector %s: mail UID %s rejected (%s: %s), moved to %s; subject %r",
                            ctx.name, uid, data["MAIL_REASON"], data["MAIL_ERROR"], self.quarantine,
                            data.get("MAIL_SUBJECT", ""))
        return new_ids

    async def _acknowledge_leftovers(self, position: _Position, prefix: str) -> None:
        """Mail at or below the position that is still unacknowledged was journaled
        when the acknowledgement failed (a crash, a lost connection): acknowledge it now."""
        if position.uid <= position.base:
            return
        found = await self._call(self._conn.search, ["UID", f"{position.base + 1}:{position.uid}",
                                                     *self._unacked()])
        uids = sorted(u for u in found if position.base < u <= position.uid)
        for i in range(0, len(uids), self.batch):
            chunk = uids[i:i + self.batch]
            fetched = await self._call(self._fetch, self._conn, chunk)
            mapped = await trio.to_thread.run_sync(self._map, fetched, prefix)
            await self._call(self._acknowledge, self._conn, [u for u, _, good in mapped if good],
                             [u for u, _, good in mapped if not good])
        if uids:
            log.info("imap connector: %d mail(s) journaled before but not acknowledged: acknowledged now", len(uids))

    def _describe(self, exc: BaseException) -> str:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        password = reveal(self._password) if self._password is not None else ""
        if password and len(password) >= 3:
            text = text.replace(password, "****")
        return text[:500]


def _idle_step(conn: IMAPClient, timeout: float) -> list:
    """The server's IDLE responses within `timeout` seconds. imapclient's idle_check
    reads a closed connection as "nothing yet": a socket still readable after a read
    that found nothing (twice: the first may have been a TLS record) is closed."""
    responses = conn.idle_check(timeout)
    if responses:
        return responses
    poller = select.poll()
    poller.register(conn.socket().fileno(), select.POLLIN)
    for _ in range(2):
        if not poller.poll(0):
            return []
        responses = conn.idle_check(0)
        if responses:
            return responses
    raise ConnectionError("the server closed the connection")


def _close(conn: IMAPClient) -> None:
    try:
        conn.shutdown()
    except Exception:                 # already closed or broken: nothing to release
        pass


def _index_of(pointer: str) -> int | None:
    import re
    m = re.match(r"^/(\d+)", pointer or "")
    return int(m.group(1)) if m else None


CONNECTOR = ImapConnector
