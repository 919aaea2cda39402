"""`connector.down` / `connector.up` bookkeeping for connectors that poll a server.

The behaviour is the SQL connector's (docs/connectors/sql.md, "When the database
fails"), packaged so another connector can have it without copying it: the connector
reports each failure (`failing`) and each successful round (`succeeded`); `/health`
follows at once, and after `silence` seconds without a successful round one
`connector.down` event is journaled (`watchdog`), then one `connector.up` with the
first success after it. A reported outage survives a restart through the connector's
cursor `_down`, so Herald restarted mid-outage neither repeats `down` nor forgets `up`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import trio

from connectors.base import ConnectorContext

DOWN_KEY = "_down"          # cursor key: the reported outage (JSON), "" when up


class Outage:
    def __init__(self, kind: str, silence: float, log: logging.Logger):
        self.kind, self.silence, self.log = kind, silence, log
        self.failing = False
        self.error = ""
        self.since: datetime | None = None     # wall clock of the first failure of this outage
        self.reported = False                  # connector.down journaled, connector.up not yet
        self.last_ok = 0.0                     # trio clock of the last success (or the start)
        self._lock = trio.Lock()

    async def resume(self, ctx: ConnectorContext) -> None:
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

    def failing_now(self, ctx: ConnectorContext, error: str, detail: str) -> None:
        """A round failed: down in /health at once (`detail` is what it shows)."""
        self.failing, self.error = True, error
        if self.since is None:
            self.since = datetime.now(timezone.utc)
        ctx.down(detail)

    async def succeeded(self, ctx: ConnectorContext) -> None:
        """A round worked: journal connector.up if down was reported."""
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

    async def watchdog(self, ctx: ConnectorContext, detail: str = "") -> None:
        """Journals `connector.down` once `silence` seconds pass without a success."""
        while True:
            await trio.sleep(min(1.0, self.silence / 4))
            if self.failing and not self.reported and trio.current_time() - self.last_ok >= self.silence:
                async with self._lock:
                    if self.failing and not self.reported:
                        try:
                            await self._report(ctx, up=False)
                        except Exception as exc:
                            self.log.error("%s connector %s: could not journal connector.down: %s",
                                           self.kind, ctx.name, exc)
                            continue
                        ctx.down(detail or self.error)       # emit marked us alive; we are not
                        self.log.warning("%s connector %s: no successful round for %gs: connector.down "
                                         "journaled", self.kind, ctx.name, self.silence)

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
            self.log.info("%s connector %s: working again: connector.up journaled", self.kind, ctx.name)
