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
import re
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
import starlette.responses
from starlette.routing import Route

from herald.engine.helpers import bounds
from herald.engine.errors import EventError, HeraldError
from herald.engine.events import parse_time

log = logging.getLogger("herald.http")


class JSONResponse(starlette.responses.JSONResponse):
    """Starlette's, but always encodable: a lone surrogate in a string (an id or a
    pointer echoed from a refused request, an old row) is written as its JSON escape
    `\\udXXX` instead of failing the answer with UnicodeEncodeError."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8", "backslashreplace")


class ApiError(HeraldError):
    """A 4xx/5xx answer: the message says what to do; `pointer` is where in the body,
    `parameter` which query or path parameter."""

    def __init__(self, status: int, message: str, pointer: str | None = None, *, parameter: str | None = None):
        super().__init__(message)
        self.status, self.message, self.pointer, self.parameter = status, message, pointer, parameter

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.message}
        if self.pointer is not None:
            body["pointer"] = self.pointer
        if self.parameter is not None:
            body["parameter"] = self.parameter
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


def route_of(request: Request) -> str:
    """The route's path template (`/bsg/callback/{secret}`), never the path as sent."""
    route = request.scope.get("route")
    return getattr(route, "path", "?")


def too_large(limit: int, setting: str = "http.max_body") -> ApiError:
    """413 that names the limit and where it is set."""
    return ApiError(413, f"the body is over the limit of {limit} bytes ({setting})")


async def _json_body(request: Request, limit: int, setting: str = "http.max_body") -> Any:
    length = request.headers.get("content-length")
    if length and length.isascii() and length.isdigit() and int(length) > limit:
        raise too_large(limit, setting)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit, setting)
    return bounds.loads(bytes(body))        # EventError (a 400 with the pointer) when out of bounds


def query_int(request: Request, name: str, default: int | None, low: int = 0,
              high: int = bounds.MAX_INT) -> int | None:
    """A whole-number query parameter within [low, high]; a 400 naming it otherwise."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if not _WHOLE.fullmatch(text.strip()) or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}", parameter=name)
    return int(text)


_WHOLE = re.compile(r"-?[0-9]{1,19}")      # at most 19 digits: int() never reads a huge one


def query_text(request: Request, name: str, max_length: int = 200) -> str | None:
    """A text query parameter: bounded, without control characters; a 400 naming it otherwise."""
    text = request.query_params.get(name)
    if text is not None:
        problem = bounds.text_problem(text, max_length=max_length)
        if problem:
            raise ApiError(400, f"{name} {problem}", parameter=name)
    return text


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def path_name(request: Request, name: str) -> str:
    """A path parameter that is a name (an entity type): letters, digits, `_`."""
    value = request.path_params[name]
    if not _NAME.fullmatch(value):
        raise ApiError(400, f"{name} {value!r} is not a name: use letters, digits and _ (e.g. order)",
                       parameter=name)
    return value


def path_key(request: Request, name: str = "id") -> str | int:
    """A path parameter that is Herald's own id or a name (a message's id or reference,
    a campaign's id or name): digits become an int within 64 bits; other text as
    `path_text`."""
    value = request.path_params[name]
    if value.isascii() and value.isdigit():
        if len(value) > 19 or int(value) > bounds.MAX_INT:
            raise ApiError(400, f"{name} {value[:25]}… is out of range: ids go up to {bounds.MAX_INT}",
                           parameter=name)
        return int(value)
    return path_text(request, name)


def path_text(request: Request, name: str = "id", max_length: int = 200) -> str:
    """A path parameter that is someone else's id (an order's, `0042` stays `0042`):
    at most `max_length` characters, no control characters."""
    value = request.path_params[name]
    problem = bounds.text_problem(value, max_length=max_length)
    if problem:
        raise ApiError(400, f"{name} {problem}", parameter=name)
    return value


def create_app(daemon) -> Starlette:
    from herald.engine.api.audience import routes as audience_routes

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
            except ClientDisconnect:       # gone while sending its body: nobody reads an answer
                log.info("%s %s: the client left before its body was read", request.method, route_of(request))
                return JSONResponse({"error": "the request body was cut off"}, status_code=400)
            except Exception:
                # the last resort: a bug, not the request's fault (the fuzz suite treats this
                # as a failure). Logged once with the traceback and the route's template (the
                # path as sent may hold the callback secret); the answer names no detail.
                log.exception("%s %s (%s) failed", request.method, route_of(request), fn.__name__)
                return JSONResponse({"error": "internal error: Herald could not answer this request; "
                                              "its log has the details"}, status_code=500)
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
        limit = min(query_int(request, "limit", 50, 1), 500)      # more than a page reads as a page
        before = query_int(request, "before", None, 1)
        since = _query_time(request, "since")
        state, phone, rule, event = (query_text(request, name) for name in ("status", "phone", "rule", "event"))
        rows = await daemon.db(lambda: daemon.store.messages(
            state=state, phone=phone, rule=rule, event=event, since=since, limit=limit, before_id=before))
        body: dict[str, Any] = {"messages": rows}
        if len(rows) == limit and rows:
            body["next"] = f"/messages?{_next_query(q, rows[-1]['id'])}"
        return JSONResponse(body)

    async def get_message(request: Request):
        key = path_key(request)
        trace = await daemon.db(daemon.store.message_trace, key)
        if trace is None:
            raise ApiError(404, f"no message {key}")
        return JSONResponse(trace)

    async def post_message(request: Request):
        payload = await _json_body(request, daemon.config.http.max_body)
        from herald.engine.delivery.manual import manual_send, send_answer
        results = await manual_send(daemon, payload)
        return JSONResponse(send_answer(results), status_code=202)

    async def post_order_message(request: Request):
        from herald.engine.delivery.manual import order_send, send_answer
        from herald.engine.store.timeline import UnknownEntity
        payload = await _json_body(request, daemon.config.http.max_body)
        try:
            results = await order_send(daemon, path_text(request), payload)
        except UnknownEntity as exc:
            raise ApiError(404, str(exc)) from exc
        return JSONResponse(send_answer(results), status_code=202)

    async def get_timeline(request: Request):
        from herald.engine.store.timeline import UnknownEntity, build_timeline
        entity_type, entity_id = path_name(request, "type"), path_text(request)
        site = query_text(request, "site") or next(iter(daemon.config.sites))
        if site not in daemon.config.sites:
            raise ApiError(400, f"unknown site {site!r}; configured sites: {', '.join(daemon.config.sites)}",
                           parameter="site")
        try:
            timeline = await daemon.db(build_timeline, daemon.store, entity_type, entity_id, site)
        except UnknownEntity as exc:
            raise ApiError(404, str(exc)) from exc
        return JSONResponse(timeline)

    async def retry_messages(request: Request):
        from herald.engine.delivery.replay import parse_filter, replay
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
        from herald.engine.bsg.client import BsgError
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
        from herald.engine.api import bitrix24
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


def _query_time(request: Request, name: str):
    """An ISO 8601 time query parameter (a 400 naming it when it is not one)."""
    text = query_text(request, name, 64)
    if text is None:
        return None
    try:
        return parse_time(text, name)
    except EventError as exc:
        raise ApiError(400, f"{name}: {exc.message}", parameter=name) from exc


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
