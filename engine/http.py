"""The HTTP API (CONFIG.md "HTTP"): Starlette on trio, served by Hypercorn.

Every endpoint but `GET /health` needs `Authorization: Bearer TOKEN` (compared in
constant time). With no tokens configured the API is local-only: it answers clients
on the loopback address and nobody else. Errors are JSON with a JSON pointer where
the problem is in the request body.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.errors import EventError, HeraldError
from engine.events import parse_time

log = logging.getLogger("herald.http")


class ApiError(HeraldError):
    def __init__(self, status: int, message: str, pointer: str | None = None):
        super().__init__(message)
        self.status, self.message, self.pointer = status, message, pointer

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.message}
        if self.pointer is not None:
            body["pointer"] = self.pointer
        return JSONResponse(body, status_code=self.status)


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authorize(request: Request, daemon) -> None:
    tokens = daemon.config.http.tokens
    if not tokens:
        client = request.client.host if request.client else None
        if not _is_loopback(client):
            raise ApiError(403, "no API tokens are configured, so the API answers this machine only")
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "send Authorization: Bearer <token>")
    given_bytes = given.strip().encode()
    if not any(hmac.compare_digest(given_bytes, t.reveal().encode()) for t in tokens):
        raise ApiError(401, "the bearer token is not valid")


def too_large(limit: int, setting: str = "http.max_body") -> ApiError:
    """413 that names the limit and where it is set."""
    return ApiError(413, f"the body is over the limit of {limit} bytes ({setting})")


async def _json_body(request: Request, limit: int, setting: str = "http.max_body") -> Any:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise too_large(limit, setting)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit, setting)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(400, f"the body is not valid JSON{where}", "") from exc


def create_app(daemon) -> Starlette:
    from engine.audience_http import routes as audience_routes

    def endpoint(fn, *, auth: bool = True):
        async def handler(request: Request):
            try:
                if auth:
                    _authorize(request, daemon)
                return await fn(request)
            except ApiError as exc:
                return exc.response()
            except EventError as exc:
                return JSONResponse(exc.as_json(), status_code=400)
        return handler

    async def post_events(request: Request):
        if daemon.stopping.is_set():
            raise ApiError(503, "herald is shutting down; send again in a moment")
        payload = await _json_body(request, daemon.config.http.max_body)
        events = daemon.parse_events(payload)
        accepted = await daemon.accept(events, "http")
        return JSONResponse({"accepted": [i for i, _ in accepted],
                             "duplicates": [i for i, new in accepted if not new]}, status_code=202)

    async def health(request: Request):
        return JSONResponse(await daemon.health())

    async def list_messages(request: Request):
        q = request.query_params
        try:
            limit = min(int(q.get("limit", 50)), 500)
            before = int(q["before"]) if "before" in q else None
        except ValueError as exc:
            raise ApiError(400, "limit and before must be whole numbers") from exc
        since = parse_time(q["since"], "since") if "since" in q else None
        rows = await daemon.db(lambda: daemon.store.messages(
            state=q.get("status"), phone=q.get("phone"), rule=q.get("rule"), event=q.get("event"),
            since=since, limit=limit, before_id=before))
        body: dict[str, Any] = {"messages": rows}
        if len(rows) == limit and rows:
            body["next"] = f"/messages?{_next_query(q, rows[-1]['id'])}"
        return JSONResponse(body)

    async def get_message(request: Request):
        key = request.path_params["id"]
        trace = await daemon.db(daemon.store.message_trace, key)
        if trace is None:
            raise ApiError(404, f"no message {key}")
        return JSONResponse(trace)

    async def post_message(request: Request):
        payload = await _json_body(request, daemon.config.http.max_body)
        from engine.manual import manual_send, send_answer
        results = await manual_send(daemon, payload)
        return JSONResponse(send_answer(results), status_code=202)

    async def post_order_message(request: Request):
        from engine.manual import order_send, send_answer
        from engine.timeline import UnknownEntity
        payload = await _json_body(request, daemon.config.http.max_body)
        try:
            results = await order_send(daemon, request.path_params["id"], payload)
        except UnknownEntity as exc:
            raise ApiError(404, str(exc)) from exc
        return JSONResponse(send_answer(results), status_code=202)

    async def get_timeline(request: Request):
        from engine.timeline import UnknownEntity, build_timeline
        site = request.query_params.get("site") or next(iter(daemon.config.sites))
        if site not in daemon.config.sites:
            raise ApiError(400, f"unknown site {site!r}; configured sites: {', '.join(daemon.config.sites)}")
        try:
            timeline = await daemon.db(build_timeline, daemon.store, request.path_params["type"],
                                       request.path_params["id"], site)
        except UnknownEntity as exc:
            raise ApiError(404, str(exc)) from exc
        return JSONResponse(timeline)

    async def retry_messages(request: Request):
        from engine.replay import parse_filter, replay
        flt = parse_filter(await _json_body(request, daemon.config.http.max_body))
        replays = await daemon.db(replay, daemon.store, flt, daemon.config, daemon.clock.now())
        if not flt.dry_run:
            daemon.dispatch_wake.set()
        return JSONResponse({"replayed" if not flt.dry_run else "would_replay": replays,
                             "count": len(replays)}, status_code=202 if replays and not flt.dry_run else 200)

    async def balance(request: Request):
        client = daemon.dispatcher.client if daemon.dispatcher else None
        if client is None:
            raise ApiError(503, "BSG client not started")
        from engine.bsg import BsgError
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
        secret = daemon.config.bsg.callback_secret
        given = request.path_params["secret"].encode()
        if (secret is None or not hmac.compare_digest(given, secret.reveal().encode())
                or request.method != "POST"):
            return JSONResponse({"error": f"no such endpoint: {request.method} {request.url.path}"},
                                status_code=404)
        if daemon.stopping.is_set() or daemon.dispatcher is None:
            raise ApiError(503, "herald is not ready for delivery reports; send again in a moment")
        endpoint = request.path_params.get("endpoint")
        if endpoint is not None and daemon.dispatcher.router is not None \
                and endpoint not in daemon.dispatcher.router.by_name:
            raise ApiError(404, f"no BSG endpoint {endpoint!r}: use one of "
                                f"{', '.join(daemon.dispatcher.router.by_name)}")
        payload = await _json_body(request, daemon.config.http.max_body)
        bodies = _receipts(payload)
        counts, final = await daemon.db(daemon.dispatcher.apply_receipts, bodies, endpoint)
        if final:
            daemon.events_wake.set()
        daemon.dispatch_wake.set()          # a report may have queued an omni's SMS leg
        return JSONResponse(counts)

    async def bitrix24_hook(request: Request):
        # Bitrix24's outbound webhooks (docs/bitrix24.md). No bearer token (Bitrix24 cannot
        # send one): auth[application_token] in the form is the credential. The form also
        # holds OAuth tokens, so neither the body nor the token is ever logged.
        from engine import bitrix24
        settings = daemon.config.bitrix24
        if settings is None:
            raise ApiError(404, bitrix24.NOT_CONFIGURED)
        if daemon.stopping.is_set():
            raise ApiError(503, "herald is shutting down; send again in a moment")
        limit, body = daemon.config.http.max_body, bytearray()
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
            site = event.get("site") or next(iter(daemon.config.sites))
            last = await daemon.db(daemon.store.get_state, f"task:{event['data']['task']['id']}@{site}")
            report = bitrix24.from_last_state(event, last)
            if settings.rest_url is None:
                report = {}
        if report.get("enriched") is False:
            log.warning("bitrix24 %s task %s: journaled with the id only: %s", code,
                        event["data"]["task"]["id"], report["why"])
        [(event_id, new)] = await daemon.accept(daemon.parse_events(event), "bitrix24")
        log.info("bitrix24 %s from %s: %s %s", code, client, event["type"],
                 event_id if new else f"{event_id} (duplicate)")
        return JSONResponse({"accepted": [event_id], "duplicates": [] if new else [event_id], **report},
                            status_code=202)

    async def reload(request: Request):
        ok, errors = await daemon.reload()
        body = {"reloaded": ok, "rules": len(daemon.project.rules), "errors": errors}
        return JSONResponse(body, status_code=200 if ok else 422)

    async def not_found(request: Request, exc):
        return JSONResponse({"error": f"no such endpoint: {request.method} {request.url.path}"},
                            status_code=getattr(exc, "status_code", 404))

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
        *audience_routes(daemon, endpoint),      # subscriptions, incoming SMS, campaigns
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


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


def _next_query(q, last_id: int) -> str:
    from urllib.parse import urlencode
    params = {k: v for k, v in q.items() if k != "before"}
    params["before"] = str(last_id)
    return urlencode(params)


async def serve_api(daemon, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; `started(url)` once the socket listens (OSError if it cannot)."""
    http = daemon.config.http
    config = HypercornConfig()
    config.bind = [f"[{http.host}]:{http.port}" if ":" in http.host else f"{http.host}:{http.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(create_app(daemon), config,
                                                              task_status=task_status))
        task_status.started(binds[0] if binds else f"http://{http.host}:{http.port}")
