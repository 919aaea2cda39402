"""An example connector in a package of its own: every `interval` seconds it journals a
`heartbeat.tick` event. See docs/connectors/writing.md."""

from __future__ import annotations

from datetime import datetime, timezone

import trio

from herald.connectors.base import ConfigError, ConnectorConfig, ConnectorContext, Diagnostic


class HeartbeatConnector:
    type = "heartbeat"

    def __init__(self, config: ConnectorConfig) -> None:
        self.interval = config.options.get("interval", 60)
        if not isinstance(self.interval, (int, float)) or not 1 <= self.interval <= 86400:
            where = config.locations.get("interval", config.location)
            raise ConfigError([Diagnostic("interval must be a number of seconds from 1 to 86400", where)])

    async def run(self, ctx: ConnectorContext, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = datetime.now(timezone.utc).replace(microsecond=0)
            await ctx.emit([{"id": f"{ctx.name}:{now.isoformat()}", "type": "heartbeat.tick",
                             "time": now.isoformat(), "data": {}}])
            ctx.alive(f"last tick {now.isoformat()}")
            await trio.sleep(self.interval)
