"""`connector.down` / `connector.up` bookkeeping for connectors that poll a server.

The behaviour is the SQL connector's (docs/connectors/sql.md, "When the database is
down"), shared by the SQL and IMAP connectors: the connector reports each failure
(`failing_now`) and each successful round (`succeeded`); `/health` follows at once, and
after `silence` seconds without a successful round one `connector.down` event is
journaled (`watchdog`), then one `connector.up` with the first success after it. A
connector that also calls `started` when a round begins has a round that runs for
`silence` seconds counted as a failure (a server that accepts connections but no
longer answers). A reported outage survives a restart through the connector's cursor
`_down`, so Herald restarted mid-outage neither repeats `down` nor forgets `up`.

Event ids (`<kind>:<name>:down:<since>`, `…:up:<since>`), the `_down` cursor's JSON and
the log lines are what the SQL connector wrote before this module existed: stores
written by older versions keep working.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import trio

from herald.connectors.base import ConnectorContext

DOWN_KEY = "_down"          # cursor key: the reported outage (JSON), "" when up


class Outage:
    """One connector's outage state.

    `where` prefixes the error in `/health` (the server, never its password); `noun`
    and `again` word the log lines ("no successful <noun> for 60s", "<again>:
    connector.up journaled"); `hang` words the error of a round that has run for
    `silence` seconds ("<hang> for 61.0s").
    """

    def __init__(self, kind: str, silence: float, log: logging.Logger, where: str, *, noun: str = "round",
                 again: str = "working again", hang: str = "no answer from the server"):
        self.kind, self.silence, self.log, self.where = kind, silence, log, where
        self.noun, self.again, self.hang = noun, again, hang
        self.failing = False                   # the last round failed (or the running one hangs)
        self.error = ""
        self.since: datetime | None = None     # wall clock of the first failure of this outage
        self.reported = False                  # connector.down journaled, connector.up not yet
        self.last_ok = 0.0                     # trio clock of the last success (or the start)
        self.round_since: float | None = None  # trio clock when the running round began (see `started`)
        self._lock = trio.Lock()               # down/up events: one at a time

    async def resume(self, ctx: ConnectorContext) -> None:
        """Read back an outage reported before a restart."""
        self.last_ok = trio.current_time()
        state = await ctx.get_cursor(DOWN_KEY)
        if state:
            try:
                data = json.loads(state)
                self.since = datetime.fromisoformat(data["since"])
                self.error = str(data.get("error") or "")
                self.reported = True
            except (ValueError, KeyError, TypeError):
                pass

    def started(self) -> None:
        """A round begins: the watchdog counts it as failed if it runs for `silence` seconds."""
        self.round_since = trio.current_time()

    def heartbeat(self) -> None:
        """The connection is healthy between rounds (an IMAP IDLE waiting quietly): a
        failure right after a long quiet wait is measured from here, not from the last
        round, so a short blip is no outage."""
        if not self.failing:
            self.last_ok = trio.current_time()

    def failing_now(self, ctx: ConnectorContext, error: str) -> None:
        """A round failed: down in /health at once."""
        self.round_since = None
        self._failing(ctx, error)

    async def succeeded(self, ctx: ConnectorContext) -> None:
        """A round worked: journal connector.up if down was reported."""
        self.round_since = None
        self.failing = False
        self.last_ok = trio.current_time()
        async with self._lock:
            if self.reported:
                try:
                    await self._report(ctx, up=True)
                except Exception as exc:       # Herald's own store: try again after the next round
                    self.log.error("%s connector %s: could not journal connector.up: %s", self.kind, ctx.name, exc)
            if not self.reported:
                self.since = None

    async def watchdog(self, ctx: ConnectorContext) -> None:
        """Journals `connector.down` once `silence` seconds pass without a success —
        whether rounds fail or one hangs."""
        while True:
            await trio.sleep(min(1.0, self.silence / 4))
            now = trio.current_time()
            if not self.failing and self.round_since is not None and now - self.round_since >= self.silence:
                self._failing(ctx, f"{self.hang} for {now - self.round_since:.1f}s")
            if self.failing and not self.reported and now - self.last_ok >= self.silence:
                async with self._lock:
                    if self.failing and not self.reported:
                        await self._report_down(ctx)

    def _failing(self, ctx: ConnectorContext, error: str) -> None:
        self.failing, self.error = True, error
        if self.since is None:
            self.since = datetime.now(timezone.utc)
        ctx.down(self._detail())

    def _detail(self) -> str:
        return f"{self.where}: {self.error}" if self.where else self.error

    async def _report_down(self, ctx: ConnectorContext) -> None:
        try:
            await self._report(ctx, up=False)
        except Exception as exc:               # Herald's own store: the watchdog tries again
            self.log.error("%s connector %s: could not journal connector.down: %s", self.kind, ctx.name, exc)
            return
        ctx.down(self._detail())               # emit marked us alive; we are not
        self.log.warning("%s connector %s: no successful %s for %gs: connector.down journaled", self.kind,
                         ctx.name, self.noun, self.silence)

    async def _report(self, ctx: ConnectorContext, *, up: bool) -> None:
        since = self.since or datetime.now(timezone.utc)
        status = "up" if up else "down"
        event = {"type": f"connector.{status}", "id": f"{self.kind}:{ctx.name}:{status}:{since.isoformat()}",
                 "data": {"connector": {"name": ctx.name, "type": self.kind, "status": status,
                                        "error": "" if up else self.error,
                                        "since": (datetime.now(timezone.utc) if up else since).isoformat()}}}
        state = "" if up else json.dumps({"since": since.isoformat(), "error": self.error})
        await ctx.emit([event], cursor=(DOWN_KEY, state))
        self.reported = not up
        if up:
            self.error = ""
            self.log.info("%s connector %s: %s: connector.up journaled", self.kind, ctx.name, self.again)
