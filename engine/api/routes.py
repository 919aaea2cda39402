"""The HTTP API (CONFIG.md "HTTP"): Starlette on trio, served by Hypercorn.

Every endpoint but `GET /health` needs `Authorization: Bearer TOKEN` (compared in
constant time). With no tokens configured the API is local-only: it answers clients
on the loopback address and nobody else. Errors are JSON with a JSON pointer where
the problem is in the request body (engine/api/base.py). The routes reach Herald
through its `Services` (engine/services.py), never the services.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime
from typing import Any, Mapping
from urllib.parse import urlencode

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from herald.engine.api import bitrix24
from herald.engine.api.audience import routes as audience_routes
from herald.engine.api.base import (ApiError, Handler, JSONResponse, authorize, guarded, json_body, not_found,
                                    path_key, path_name, path_text, query_int, query_text, too_large)
from herald.engine.bsg.client import BsgError
from herald.engine.delivery.manual import manual_send, order_send, send_answer
from herald.engine.delivery.replay import parse_filter, replay
from herald.engine.errors import EventError
from herald.engine.events import parse_time
from herald.engine.services import Services
from herald.engine.store.timeline import UnknownEntity, build_timeline

log = logging.getLogger("herald.http")


def create_app(services: Services) -> Starlette:
    """The app; it reads `services` only when a request comes (so the routes can be listed
    without a running Herald)."""

    def check_token(request: Request) -> None:
        authorize(request, services.config.http.tokens)

    def endpoint(fn: Handler, *, auth: bool = True) -> Handler:
        return guarded(fn, check_token if auth else None)

    async def post_events(request: Request):
        if services.stopping.is_set():
            raise ApiError(503, "herald is shutting down; send again in a moment")
        payload = await json_body(request, services.config.http.max_body)
        events = services.parse_events(payload)
        accepted = await services.accept(events, "http")
        return JSONResponse({"accepted": [i for i, _ in accepted],
                             "duplicates": [i for i, new in accepted if not new]}, status_code=202)

    async def health(request: Request):
        return JSONResponse(await services.health())

    async def list_messages(request: Request):
        q = request.query_params
        limit = min(query_int(request, "limit", 50, 1), 500)      # more than a page reads as a page
        before = query_int(request, "before", None, 1)
        since = _query_time(request, "since")
        state, phone, rule, event = (query_text(request, name) for name in ("status", "phone", "rule", "event"))
        rows = await services.db(lambda: services.store.messages(
            state=state, phone=phone, rule=rule, event=event, since=since, limit=limit, before_id=before))
        body: dict[str, Any] = {"messages": rows}
        if len(rows) == limit and rows:
            body["next"] = f"/messages?{_next_query(q, rows[-1]['id'])}"
        return JSONResponse(body)

    async def get_message(request: Request):
        key = path_key(request)
        trace = await services.db(services.store.message_trace, key)
        if trace is None:
            raise ApiError(404, f"no message {key}")
        return JSONResponse(trace)

    async def post_message(request: Request):
        payload = await json_body(request, services.config.http.max_body)
        results = await manual_send(services, payload)
        return JSONResponse(send_answer(results), status_code=202)

    async def post_order_message(request: Request):
        payload = await json_body(request, services.config.http.max_body)
        try:
            results = await order_send(services, path_text(request), payload)
        except UnknownEntity as exc:
            raise ApiError(404, str(exc)) from exc
        return JSONResponse(send_answer(results), status_code=202)

    async def get_timeline(request: Request):
        entity_type, entity_id = path_name(request, "type"), path_text(request)
        site = query_text(request, "site") or next(iter(services.config.sites))
        if site not in services.config.sites:
            raise ApiError(400, f"unknown site {site!r}; configured sites: {', '.join(services.config.sites)}",
                           parameter="site")
        try:
            timeline = await services.db(build_timeline, services.store, entity_type, entity_id, site)
        except UnknownEntity as exc:
            raise ApiError(404, str(exc)) from exc
        return JSONResponse(timeline)

    async def retry_messages(request: Request):
        flt = parse_filter(await json_body(request, services.config.http.max_body))
        replays = await services.db(replay, services.store, flt, services.config, services.clock.now())
        if not flt.dry_run:
            services.wakes.dispatch.set()
        return JSONResponse({"replayed" if not flt.dry_run else "would_replay": replays,
                             "count": len(replays)}, status_code=202 if replays and not flt.dry_run else 200)

    async def balance(request: Request):
        sending = services.sending()
        client = sending.client if sending else None
        if client is None:
            raise ApiError(503, "BSG client not started")
        try:
            result = await client.balance()
        except BsgError as exc:
            raise ApiError(502, f"BSG: {exc}") from exc
        return JSONResponse({"amount": str(result.amount), "currency": result.currency,
                             "limit": str(result.limit) if result.limit is not None else None})

    async def bsg_callback(request: Request):
        # BSG's delivery reports. No bearer token (BSG cannot send one): the secret in the
        # path is the credential, compared in constant time; a wrong one gets the same 404
        # as any unknown path, so the endpoint cannot be discovered.
        secret = services.config.bsg.callback_secret
        given = request.path_params["secret"].encode()
        if (secret is None or not hmac.compare_digest(given, secret.reveal().encode())
                or request.method != "POST"):
            return JSONResponse({"error": f"no such endpoint: {request.method} {request.url.path}"},
                                status_code=404)
        sending = services.sending()
        if services.stopping.is_set() or sending is None:
            raise ApiError(503, "herald is not ready for delivery reports; send again in a moment")
        endpoint = request.path_params.get("endpoint")
        if endpoint is not None and sending.router is not None and endpoint not in sending.router.by_name:
            raise ApiError(404, f"no BSG endpoint {endpoint!r}: use one of "
                                f"{', '.join(sending.router.by_name)}")
        payload = await json_body(request, services.config.http.max_body)
        bodies = _receipts(payload)
        counts, final = await services.db(sending.apply_receipts, bodies, endpoint)
        if final:
            services.wakes.events.set()
        services.wakes.dispatch.set()          # a report may have queued an omni's SMS leg
        return JSONResponse(counts)

    async def bitrix24_hook(request: Request):
        # Bitrix24's outbound webhooks (docs/bitrix24.md). No bearer token (Bitrix24 cannot
        # send one): auth[application_token] in the form is the credential. The form also
        # holds OAuth tokens, so neither the body nor the token is ever logged.
        settings = services.config.bitrix24
        if settings is None:
            raise ApiError(404, bitrix24.NOT_CONFIGURED)
        if services.stopping.is_set():
            raise ApiError(503, "herald is shutting down; send again in a moment")
        limit, body = services.config.http.max_body, bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
        client = request.client.host if request.client else "?"
        try:
            event = bitrix24.decode(bytes(body), request.headers.get("content-type"),
                                    token=settings.application_token.reveal(), site=settings.site)
        except bitrix24.HookError as exc:
            log.warning("POST /hooks/bitrix24 from %s refused (%d): %s", client, exc.status, exc.message)
            return JSONResponse(exc.as_json(), status_code=exc.status)
        code = event["data"]["bitrix24"]["event"]
        report: dict = {}
        if code in bitrix24.FETCHED and settings.rest_url is not None:
            # The post holds ids only; the REST API says the rest. A failure still journals
            # the id-only event (nothing is lost) and the answer says why.
            report = await bitrix24.enrich(event, settings.rest_url.reveal())
        elif code == "ONTASKDELETE":
            site = event.get("site") or next(iter(services.config.sites))
            last = await services.db(services.store.get_state, f"task:{event['data']['task']['id']}@{site}")
            report = bitrix24.from_last_state(event, last)
            if settings.rest_url is None:
                report = {}
        if report.get("enriched") is False:
            log.warning("bitrix24 %s task %s: journaled with the id only: %s", code,
                        event["data"]["task"]["id"], report["why"])
        [(event_id, new)] = await services.accept(services.parse_events(event), "bitrix24")
        log.info("bitrix24 %s from %s: %s %s", code, client, event["type"],
                 event_id if new else f"{event_id} (duplicate)")
        return JSONResponse({"accepted": [event_id], "duplicates": [] if new else [event_id], **report},
                            status_code=202)

    async def reload(request: Request):
        ok, errors = await services.reload()
        body = {"reloaded": ok, "rules": len(services.project.rules), "errors": errors}
        return JSONResponse(body, status_code=200 if ok else 422)

    routes = [
        Route("/events", endpoint(post_events), methods=["POST"]),
        Route("/health", endpoint(health, auth=False), methods=["GET"]),
        Route("/messages", endpoint(list_messages), methods=["GET"]),
        Route("/messages", endpoint(post_message), methods=["POST"]),
        Route("/messages/retry", endpoint(retry_messages), methods=["POST"]),
        Route("/messages/{id}", endpoint(get_message), methods=["GET"]),
        Route("/orders/{id}/messages", endpoint(post_order_message), methods=["POST"]),
        Route("/timeline/{type}/{id}", endpoint(get_timeline), methods=["GET"]),
        Route("/balance", endpoint(balance), methods=["GET"]),
        Route("/reload", endpoint(reload), methods=["POST"]),
        Route("/hooks/bitrix24", endpoint(bitrix24_hook, auth=False), methods=["POST"]),
        Route("/bsg/callback/{secret}", endpoint(bsg_callback, auth=False),
              methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),       # any other method: 404 too
        Route("/bsg/callback/{secret}/{endpoint}", endpoint(bsg_callback, auth=False),
              methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),       # reports of one endpoint (backup1 …)
        *audience_routes(services, endpoint),      # subscriptions, incoming SMS, campaigns
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.router.redirect_slashes = False     # /messages/ is no endpoint: a JSON 404, not a bare 307
    return app


def _receipts(payload: Any) -> list[dict]:
    """BSG delivery reports: one status object or a list; each needs a `status` and a
    `reference` or `id` (BSG-API.md "Not documented by BSG": the status shape)."""
    single = isinstance(payload, dict)
    items = [payload] if single else payload
    if not isinstance(items, list):
        raise ApiError(400, "expected a status object or a list of them", "")
    for i, item in enumerate(items):
        at = "" if single else f"/{i}"
        if not isinstance(item, dict):
            raise ApiError(400, "expected a status object", at)
        status = item.get("status")
        if not isinstance(status, str) or not status.strip():
            raise ApiError(400, "expected a status (a string, e.g. \"delivered\")", f"{at}/status")
        for key in ("reference", "id"):
            value = item.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                raise ApiError(400, f"{key} must be a string", f"{at}/{key}")
        if item.get("reference") in (None, "") and item.get("id") in (None, ""):
            raise ApiError(400, "a status needs its reference (or BSG's id)", f"{at}/reference")
        alt = item.get("alt_route")
        if alt is not None and not isinstance(alt, (list, dict)):
            raise ApiError(400, "alt_route must be a list of {channel, id, status, price}", f"{at}/alt_route")
    return items


def _query_time(request: Request, name: str) -> datetime | None:
    """An ISO 8601 time query parameter (a 400 naming it when it is not one)."""
    text = query_text(request, name, 64)
    if text is None:
        return None
    try:
        return parse_time(text, name)
    except EventError as exc:
        raise ApiError(400, f"{name}: {exc.message}", parameter=name) from exc


def _next_query(q: Mapping[str, str], last_id: int) -> str:
    params = {k: v for k, v in q.items() if k != "before"}
    params["before"] = str(last_id)
    return urlencode(params)


async def serve_api(services: Services, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; `started(url)` once the socket listens (OSError if it cannot)."""
    http = services.config.http
    config = HypercornConfig()
    config.bind = [f"[{http.host}]:{http.port}" if ":" in http.host else f"{http.host}:{http.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(create_app(services), config,
                                                              task_status=task_status))
        task_status.started(binds[0] if binds else f"http://{http.host}:{http.port}")
