"""The IMAP connector at run time: the mailbox side (worker threads) and the loop
(see the package docstring)."""

from __future__ import annotations

import imaplib
import json
import logging
import random
import re
import select
import socket
import ssl
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Collection

import trio
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from herald.connectors.base import ConnectorContext
from herald.connectors.mail import MailMapping, Rejected, rejected_event
from herald.connectors.imap.fetched import _Fetched, _close
from herald.connectors.imap.mailbox import MailboxCalls
from herald.connectors.imap.options import ImapOptions, _Checker
from herald.connectors.outage import Outage
from herald.engine.config import ConnectorConfig, reveal
from herald.engine.errors import Diagnostic, EventError, did_you_mean

log = logging.getLogger("herald.connectors.imap")


CURSOR = "position"
IDLE_RENEW = 60.0           # at most this many seconds in one IDLE (or `timeout`, if less): the renewal
                            # is the check that the server still answers
IDLE_STEP = 1.0             # seconds per wait in a worker thread, so shutdown is prompt
_NETWORK_ERRORS = (IMAPClientError, imaplib.IMAP4.error, OSError, ssl.SSLError, socket.timeout, EOFError)


@dataclass(frozen=True)
class _Position:
    uidvalidity: int
    uid: int                        # the last UID journaled
    base: int = 0                   # UIDs up to this were there at the first start (start: end) — never ours
    date: int | None = None         # INTERNALDATE (Unix seconds) of the newest mail seen: journaled or left alone
    base_date: int | None = None    # … of the newest mail left alone by start: end

    def dump(self) -> str:
        extra = {k: v for k, v in (("date", self.date), ("base_date", self.base_date)) if v is not None}
        return json.dumps({"uidvalidity": self.uidvalidity, "uid": self.uid, "base": self.base, **extra})

    @staticmethod
    def load(text: str | None) -> "_Position | None":
        try:
            data = json.loads(text or "")
            dates = [None if data.get(k) is None else int(data[k]) for k in ("date", "base_date")]
            return _Position(int(data["uidvalidity"]), int(data["uid"]), int(data.get("base", 0)), *dates)
        except (ValueError, KeyError, TypeError):
            return None


class ImapConnector(MailboxCalls):
    """`type: imap` — see the module docstring and docs/connectors/imap.md."""

    type = "imap"
    BACKOFF_MIN = 1.0           # seconds; tests lower these
    BACKOFF_MAX = 60.0

    def __init__(self, config: ConnectorConfig):
        """Check the options (ConfigError with every problem, located) and get ready."""
        self.config = config
        options = ImapOptions(config)
        self.host = options.host
        self.security = options.security
        self.port = options.port
        self.verify = options.verify
        self.ca_file = options.ca_file
        self.user = options.user
        self._password = options._password
        self.folder = options.folder
        self.move_to = options.move_to
        self.flag = options.flag
        self.quarantine = options.quarantine
        self.idle = options.idle
        self.interval = options.interval
        self.batch = options.batch
        self.timeout = options.timeout
        self.silence = options.silence
        self.start = options.start
        self.site = options.site
        self.mapping: MailMapping = options.mapping

        self.where = f"{self.user}@{self.host}:{self.port}/{self.folder}"
        self.read = self.new_events = self.rejected = 0
        self._conn: IMAPClient | None = None
        self._position: _Position | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._leftovers = True            # look for mail journaled but not acknowledged
        self._ack_error = ""              # the last acknowledgement the server refused (for /health)
        self._session_ok = False
        self.renew = min(IDLE_RENEW, self.timeout)
        self.outage = Outage(self.type, self.silence, log, self.where)

    def check_sites(self, sites: Collection[str]) -> list[Diagnostic]:
        """The `site` option names a configured site (engine/rules/loader.py asks, with the
        config's sites: `herald check`, reload and start report it)."""
        if self.site is None or self.site in sites:
            return []
        check = _Checker(self.config)
        check.error(f'site: unknown site "{self.site}"', "site",
                    hint=did_you_mean(self.site, sites) or f"sites: {', '.join(sites)}")
        return check.problems

    async def _call(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=True)

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
            trouble = f"; could not acknowledge: {self._ack_error}" if self._ack_error else ""
            ctx.alive(f"{self.where}: {'IDLE' if idle else f'polling every {self.interval:g}s'}; "
                      f"{self.read} mail(s) read, {self.new_events} event(s), {self.rejected} rejected since start"
                      f"{trouble}")
            if more:
                continue
            if idle:
                await self._wait_idle()
            else:
                await self._wait_poll()

    async def _wait_poll(self) -> None:
        """Sleep `interval`, with a NOOP every `renew` seconds: a quiet wait is healthy."""
        deadline = trio.current_time() + self.interval
        while (left := deadline - trio.current_time()) > 0:
            await trio.sleep(min(left, self.renew))
            await self._call(self._conn.noop)
            self.outage.heartbeat()

    async def _wait_idle(self) -> None:
        """IDLE until the server reports a change, or for `renew` seconds. Ending it
        (DONE) needs the server's answer within `timeout` (the socket's timeout): a
        frozen server or a silently dropped connection fails the session here."""
        conn = self._conn
        await self._call(conn.idle)
        deadline = trio.current_time() + self.renew
        while (left := deadline - trio.current_time()) > 0:
            responses = await self._call(_idle_step, conn, min(IDLE_STEP, left))
            self.outage.heartbeat()          # a quiet IDLE on an open connection is no silence
            if any(not (isinstance(r, tuple) and r and r[0] == b"OK") for r in responses):
                break
        await self._call(conn.idle_done)

    async def round(self, ctx: ConnectorContext) -> bool:
        """Take one batch of new mail: journal, then acknowledge. True when more is waiting."""
        conn = self._conn
        info = await self._call(conn.select_folder, self.folder)
        validity = int(info[b"UIDVALIDITY"])
        last_uid = int(info.get(b"UIDNEXT", 1)) - 1
        exists = int(info.get(b"EXISTS", 1))
        position = self._position
        if position is None:
            position = await self._first_position(ctx, validity, last_uid, exists)
        elif position.uidvalidity != validity:
            position = await self._revalidated(ctx, position, validity, last_uid)
        prefix = f"imap:{ctx.name}:"
        if self._leftovers:
            self._leftovers = not await self._acknowledge_leftovers(ctx, position, prefix)
        # new mail is the mail after the position, whatever its flags: someone may have read it
        found = await self._call(conn.search, ["UID", f"{position.uid + 1}:*"])
        uids = sorted(u for u in found if u > position.uid)
        if not uids:
            return False
        batch = uids[: self.batch]
        fetched = await self._call(self._fetch, conn, batch)
        mapped = await trio.to_thread.run_sync(self._map, fetched, prefix)
        self.read += len(mapped)
        dates = [d for d in [position.date, *(f.date for f in fetched)] if d is not None]
        new_ids = await self._emit(ctx, mapped, replace(position, uid=batch[-1], date=max(dates, default=None)))
        self.new_events += sum(1 for _, e, good in mapped if good and e["id"] in new_ids)
        if not await self._acknowledge_now(ctx, mapped):
            self._leftovers = True           # the next round tries again; new mail does not wait for it
        return len(uids) > len(batch)

    async def _first_position(self, ctx: ConnectorContext, validity: int, last_uid: int, exists: int) -> _Position:
        if self.start == "end":
            top = await self._call(self._conn.search, ["UID", f"{max(last_uid, 1)}:*"]) if exists else []
            newest = await self._call(self._dates, self._conn, top) if top else {}   # the highest UID's
            date = max(newest.values(), default=None)
            start = _Position(validity, last_uid, last_uid, date, date)
            log.info("imap connector %s: first start: %d mail(s) already in %s left alone", ctx.name,
                     exists, self.folder)
        else:
            start = _Position(validity, 0)
        await ctx.emit([], cursor=(CURSOR, start.dump()))
        self._position = start
        return start

    async def _revalidated(self, ctx: ConnectorContext, position: _Position, validity: int,
                           last_uid: int) -> _Position:
        """The folder's UIDs changed meaning. New is the mail delivered (INTERNALDATE) at or
        after the newest mail seen before, and after the newest one `start: end` left
        alone; reading starts at the first such UID. Mail of that very second that was
        journaled before is known by its event id, so the tie sends nothing twice and
        loses nothing new."""
        if position.date is None:             # nothing was ever there: all of it is new
            start = 0
        else:
            since = datetime.fromtimestamp(position.date, timezone.utc).date() - timedelta(days=1)
            found = await self._call(self._conn.search, ["SINCE", since])
            dates = await self._call(self._dates, self._conn, found) if found else {}
            new = [u for u, d in dates.items()
                   if d >= position.date and (position.base_date is None or d > position.base_date)]
            start = min(new) - 1 if new else last_uid
        log.warning("imap connector %s: UIDVALIDITY of %s changed (%d → %d): mail delivered since the last "
                    "one seen is read from UID %d on; mails journaled before are recognised by their Message-ID",
                    ctx.name, self.folder, position.uidvalidity, validity, start + 1)
        position = _Position(validity, start, start, position.date, position.base_date)
        await ctx.emit([], cursor=(CURSOR, position.dump()))
        self._position = position
        return position

    async def _emit(self, ctx: ConnectorContext, mapped: list, position: _Position) -> set[str]:
        """Journal the batch with the new position. An event Herald refuses (EventError)
        turns that mail into a rejected one; a refused rejection record is journaled
        without its site, or — refused again — dropped (the mail is still quarantined,
        and logged): a record never blocks the mailbox."""
        while True:
            live = [i for i, (_, e, _) in enumerate(mapped) if e is not None]
            try:
                new_ids = set(await ctx.emit([mapped[i][1] for i in live], cursor=(CURSOR, position.dump())))
                break
            except EventError as exc:
                index = _index_of(exc.pointer)
                if index is None or index >= len(live):
                    raise
                mapped[live[index]] = self._refused(ctx, *mapped[live[index]], exc)
        self._position = position
        for uid, event, good in mapped:
            if not good and event is not None and event["id"] in new_ids:
                self.rejected += 1
                data = event["data"]
                log.warning("imap connector %s: mail UID %s rejected (%s: %s), moved to %s; subject %r",
                            ctx.name, uid, data["MAIL_REASON"], data["MAIL_ERROR"], self.quarantine,
                            data.get("MAIL_SUBJECT", ""))
        return new_ids

    def _refused(self, ctx: ConnectorContext, uid: int, event: dict, good: bool, exc: EventError) -> tuple:
        """What to journal instead of a refused event."""
        if good:
            problem = Rejected("refused", f"{exc.pointer}: {exc.message}")
            return uid, rejected_event(b"", problem, id_prefix=event["id"] + ":", quarantine=self.quarantine,
                                       site=None, extra={k: v for k, v in event["data"].items()
                                                         if k.startswith("MAIL_") and k != "MAIL_TEXT"}
                                       | {"MAIL_UID": uid, "MAIL_FOLDER": self.folder}), False
        if "site" in event:
            return uid, {k: v for k, v in event.items() if k != "site"}, False
        log.error("imap connector %s: the rejection record of mail UID %s was refused (%s: %s); the mail is "
                  "quarantined without one", ctx.name, uid, exc.pointer, exc.message)
        return uid, None, False

    async def _acknowledge_now(self, ctx: ConnectorContext, mapped: list) -> bool:
        """Flag or move the journaled mail. A refusal by the server (NO/BAD: a folder
        deleted meanwhile, a quota) is logged and shown in /health — the mail stays a
        leftover; a broken connection ends the session."""
        try:
            await self._call(self._acknowledge, self._conn, [u for u, _, good in mapped if good],
                             [u for u, _, good in mapped if not good])
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            self._ack_error = self._describe(exc)
            log.warning("imap connector %s: could not acknowledge %d mail(s) (%s); trying again later", ctx.name,
                        len(mapped), self._ack_error)
            return False
        self._ack_error = ""
        return True

    async def _acknowledge_leftovers(self, ctx: ConnectorContext, position: _Position, prefix: str) -> bool:
        """Mail at or below the position that is still unacknowledged was journaled
        when the acknowledgement failed (a crash, a lost connection, a refusal):
        acknowledge it now. False when the server refused again."""
        if position.uid <= position.base:
            return True
        found = await self._call(self._conn.search, ["UID", f"{position.base + 1}:{position.uid}",
                                                     *self._unacked()])
        uids = sorted(u for u in found if position.base < u <= position.uid)
        for i in range(0, len(uids), self.batch):
            chunk = uids[i:i + self.batch]
            fetched = await self._call(self._fetch, self._conn, chunk)
            mapped = await trio.to_thread.run_sync(self._map, fetched, prefix)
            if not await self._acknowledge_now(ctx, mapped):
                return False
        if uids:
            log.info("imap connector %s: %d mail(s) journaled before but not acknowledged: acknowledged now",
                     ctx.name, len(uids))
        return True

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


def _index_of(pointer: str) -> int | None:
    m = re.match(r"^/(\d+)", pointer or "")
    return int(m.group(1)) if m else None


