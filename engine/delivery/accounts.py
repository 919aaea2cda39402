"""The BSG clients the dispatcher talks through, and the trace of their exchanges.

One client per endpoint (main, backup1 …), plus one per site with its own BSG account
(sites.X.api_key) for each endpoint that uses the main key — made on first use and closed
with the others. Every request/response pair is kept in memory by `record_exchange` (in
the trio thread) and written with the next batch by `flush_exchanges`.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, Sequence

import httpx
import trio

from herald.engine.bsg.client import BsgClient, budgets
from herald.engine.bsg.fake import FakeBSG, serve
from herald.engine.config import Config
from herald.engine.delivery.endpoints import Endpoint, Router
from herald.engine.delivery.services import DeliveryServices
from herald.engine.store import OutboxRow

log = logging.getLogger("herald.dispatch")

# (name, url, api key, transport) of one endpoint
EndpointSpec = tuple[str, str, Any, "httpx.AsyncBaseTransport | None"]


class Accounts:
    def __init__(self, services: DeliveryServices):
        self.services = services
        self.router: Router | None = None
        self._exchanges: list[tuple] = []
        # (endpoint, site) → a client with the site's key for that endpoint's URL
        self._site_clients: dict[tuple[str, str], BsgClient] = {}
        self._main_keyed: dict[str, httpx.AsyncBaseTransport | None] = {}  # endpoint → transport, on bsg.api_key
        self._stack: AsyncExitStack | None = None

    async def open(self, stack: AsyncExitStack, nursery: trio.Nursery) -> Router:
        """Make every endpoint's client (closed by `stack`) and the router over them."""
        bsg = self.services.config().bsg
        endpoints = []
        for name, url, key, transport in await self._endpoint_specs(nursery):
            client = BsgClient(url, key, **budgets(bsg), timeout=bsg.timeout, transport=transport,
                               name=name, on_exchange=partial(self.record_exchange, name))
            await stack.enter_async_context(client)
            endpoints.append(Endpoint(name, client, bsg.failover))
            if name == "main" or key is bsg.api_key:
                self._main_keyed[name] = transport
        self._stack = stack
        self.router = Router(endpoints)
        return self.router

    async def _endpoint_specs(self, nursery: trio.Nursery) -> list[EndpointSpec]:
        """(name, url, key, transport) per endpoint, main first; in sandbox mode the
        built-in fake BSG is the only one."""
        bsg = self.services.config().bsg
        transports = self.services.backup_transports or {}
        if not bsg.sandbox or self.services.bsg_transport is not None:
            specs: list[EndpointSpec] = [("main", bsg.url, bsg.api_key or "sandbox", self.services.bsg_transport)]
            for n, b in enumerate(bsg.backup, 1):
                name = f"backup{n}"
                specs.append((name, b.url, b.api_key if b.api_key is not None else bsg.api_key,
                              transports.get(name)))
            return specs
        port = await nursery.start(serve, FakeBSG(), "127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}"
        self.services.on_sandbox(url)
        log.warning("sandbox mode: no BSG api_key is configured, so messages go to the built-in fake BSG "
                    "at %s and nothing is really sent", url)
        return [("main", url, "sandbox", None)]

    def client_for(self, endpoint: Endpoint, site: str | None) -> BsgClient:
        """The client for a message of `site` through `endpoint`: the endpoint's own, or,
        when the site has its own BSG account (sites.X.api_key) and the endpoint uses the
        main key, a client with the site's key for the same URL (a backup with its own
        key keeps it). Made on first use; closed at shutdown with the endpoints' clients."""
        config = self.services.config()
        site_config = config.sites.get(site) if site else None
        if site_config is None or site_config.api_key is None or endpoint.name not in self._main_keyed:
            return endpoint.client
        client = self._site_clients.get((endpoint.name, site))
        if client is None:
            bsg = config.bsg
            client = BsgClient(endpoint.client.url, site_config.api_key, **budgets(bsg), timeout=bsg.timeout,
                               transport=self._main_keyed[endpoint.name], name=f"{endpoint.name}/{site}",
                               on_exchange=partial(self.record_exchange, endpoint.name))
            self._stack.push_async_callback(client.aclose)
            self._site_clients[(endpoint.name, site)] = client
        return client

    def apply_config(self, config: Config) -> None:
        """A reload: the new rate and look-up budget apply to every client at once (callers
        already waiting for a slot included), the new failover policy to every endpoint."""
        if self.router is None:
            return
        clients = [e.client for e in self.router.endpoints] + list(self._site_clients.values())
        for client in clients:
            client.set_rates(**budgets(config.bsg))
        for endpoint in self.router.endpoints:
            endpoint.policy = config.bsg.failover

    def by_account(self, rows: Sequence[OutboxRow]) -> list[list[OutboxRow]]:
        """Rows split by the BSG account they go through (sites with their own key apart)."""
        sites = self.services.config().sites
        groups: dict[str, list[OutboxRow]] = {}
        for row in rows:
            site = sites.get(row.site)
            groups.setdefault(row.site if site is not None and site.api_key is not None else "", []).append(row)
        return list(groups.values())

    def record_exchange(self, endpoint: str, method: str, path: str, request: Any, status: int | None,
                        response: Any, seconds: float) -> None:
        # called by the client in the trio thread: kept in memory, written with the next batch
        self._exchanges.append((endpoint, method, path, request, status, response, seconds,
                                tuple(references(request, path))))

    async def flush_exchanges(self) -> None:
        pending, self._exchanges = self._exchanges, []
        if not pending:
            return
        store = self.services.store

        def write() -> None:
            with store.transaction():
                for endpoint, method, path, request, status, response, seconds, refs in pending:
                    store.add_exchange(endpoint, method, path, request, status, response, seconds, refs)
        await self.services.db(write)


def references(request: Any, path: str) -> list[str]:
    """Every BSG reference a request names (its body, or a /reference/{ref} path)."""
    found = []
    if "/reference/" in path:
        found.append(path.rsplit("/", 1)[-1])

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(request)
    return found
