"""A fake BSG REST API v1 server for tests and local runs.

No machine here reaches BSG, so Herald's client is tested against this: a real
HTTP server (Starlette app, served by hypercorn on trio) that speaks the API as
documented in BSG-API.md — the same routes, request bodies, response shapes
(both documented variants), error codes and limits — plus an admin API under
`/_fake/` to inject faults, inspect what was "sent" and drive incoming SMS.

Delivery is deterministic: the last two digits of the number pick the final
status (see `OUTCOMES` and docs/fake-bsg.md), and statuses move
new → sent → final over `delivery_delay` seconds of an injectable clock.

    fake = FakeBSG(delivery_delay=0)
    app = create_app(fake)                       # in-process, via httpx.ASGITransport
    port = await nursery.start(serve, fake)      # or over real HTTP on loopback

API keys are checked but never logged, echoed or listed.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from functools import partial
from typing import Callable, Sequence

import httpx
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

# The state and the API's handlers live beside this module; their public names (and a few
# the benchmarks use) are importable from here, as before the split.
from herald.engine.bsg.fake_api import FakeBSG
from herald.engine.bsg.fake_state import (  # noqa: F401
    _CALLBACK_POSTS, _SOCKET_SCOPE_KEY, CALLBACK_TICK, ERRORS, FALLBACK_ON, FAULT_MODES, OUTCOMES, Fault, _Reject,
    _fmt_money)
from herald.engine.helpers.segments import analyze  # noqa: F401  (bench/e2e.py imports it from here)

log = logging.getLogger("herald.fakebsg")

__all__ = [
    "FakeBSG",
    "Fault",
    "create_app",
    "serve",
    "main",
    "ERRORS",
    "OUTCOMES",
    "FAULT_MODES",
]


# -- ASGI app -------------------------------------------------------------------


def _json(fake: FakeBSG, obj: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(fake.render(obj), status_code=status)


async def _body(request: Request, invalid: int) -> object:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise _Reject(invalid) from None


def _api(handler: Callable) -> Callable:
    """Wrap an API endpoint: key check, whole-request errors, style rendering."""

    async def endpoint(request: Request) -> Response:
        fake: FakeBSG = request.app.state.fake
        if not fake.check_key(request.headers.get("x-api-key")):
            return _json(fake, fake.error(1))
        try:
            result = await handler(fake, request)
        except _Reject as rejected:
            result = fake.error(rejected.code, rejected.reference)
        return _json(fake, result)

    return endpoint


async def _sms_create(fake: FakeBSG, request: Request) -> dict:
    return fake.create_sms(await _body(request, 24))


async def _sms_price(fake: FakeBSG, request: Request) -> dict:
    return fake.create_sms(await _body(request, 24), quote=True)


async def _sms_get(fake: FakeBSG, request: Request) -> dict:
    return fake.sms_status(request.path_params["id"])


async def _sms_by_reference(fake: FakeBSG, request: Request) -> dict:
    return fake.sms_status_by_reference(request.path_params["reference"])


async def _sms_task(fake: FakeBSG, request: Request) -> dict:
    return fake.task_status(request.path_params["task_id"])


async def _viber_create(fake: FakeBSG, request: Request) -> dict:
    return fake.create_viber(await _body(request, 44))


async def _viber_price(fake: FakeBSG, request: Request) -> dict:
    return fake.create_viber(await _body(request, 44), quote=True)


async def _viber_get(fake: FakeBSG, request: Request) -> dict:
    return fake.viber_status(request.path_params["id"])


async def _viber_by_reference(fake: FakeBSG, request: Request) -> dict:
    return fake.viber_status_by_reference(request.path_params["reference"])


async def _balance(fake: FakeBSG, request: Request) -> dict:
    return fake.balance_json()


async def _incoming(fake: FakeBSG, request: Request) -> dict:
    q = request.query_params
    return fake.incoming(q.get("start_date"), q.get("end_date"), q.get("sender"))


# -- admin API (no key, never faulted) --

def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


async def _admin_body(request: Request) -> dict:
    raw = await request.body()
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _admin(handler: Callable) -> Callable:
    async def endpoint(request: Request) -> Response:
        fake: FakeBSG = request.app.state.fake
        try:
            return await handler(fake, request)
        except (ValueError, TypeError) as exc:  # bad JSON or bad values
            return _bad(str(exc))

    return endpoint


async def _faults_set(fake: FakeBSG, request: Request) -> Response:
    data = await _admin_body(request)
    kwargs = {k: data[k] for k in ("code", "status", "delay", "count") if data.get(k) is not None}
    fault = fake.set_fault(data.get("mode"), **kwargs)
    return JSONResponse({"fault": fault.as_json()})


async def _faults_get(fake: FakeBSG, request: Request) -> Response:
    return JSONResponse({"fault": fake.fault.as_json() if fake.fault else None})


async def _faults_clear(fake: FakeBSG, request: Request) -> Response:
    fake.clear_faults()
    return JSONResponse({"fault": None})


async def _messages(fake: FakeBSG, request: Request) -> Response:
    rows = fake.messages(request.query_params.get("channel"))
    return JSONResponse({"count": len(rows), "messages": rows})


async def _requests(fake: FakeBSG, request: Request) -> Response:
    rows = fake.requests()
    return JSONResponse({"count": len(rows), "requests": rows})


async def _reset(fake: FakeBSG, request: Request) -> Response:
    fake.reset()
    return JSONResponse({"ok": True})


async def _set_balance(fake: FakeBSG, request: Request) -> Response:
    data = await _admin_body(request)
    if "amount" not in data:
        raise ValueError('expected {"amount": "10"}')
    fake.set_balance(data["amount"])
    return JSONResponse({"amount": _fmt_money(fake.balance), "currency": fake.currency})


async def _inject_incoming(fake: FakeBSG, request: Request) -> Response:
    data = await _admin_body(request)
    if "msisdn" not in data or "body" not in data:
        raise ValueError('expected {"msisdn": "380501234567", "body": "..."}')
    record = fake.inject_incoming(data["msisdn"], data["body"], data.get("sender") or "testsms",
                                  data.get("time"))
    return JSONResponse(record)


async def _set_style(fake: FakeBSG, request: Request) -> Response:
    data = await _admin_body(request)
    if "response_style" in data:
        fake.response_style = data["response_style"]
    return JSONResponse({"response_style": fake.response_style})


class _FakeBSGApp(Starlette):
    """Starlette with faults applied before routing (outside its error middleware)."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_fake/"):
            fake: FakeBSG = self.state.fake
            fault = fake._take_fault()
            fake._log_request(scope["method"], scope["path"], fault)
            if fault is not None:
                if fault.mode == "slow":
                    await trio.sleep(fault.delay)
                else:
                    await _answer_fault(fake, fault, scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


async def _answer_fault(fake: FakeBSG, fault: Fault, scope, receive, send) -> None:
    if fault.mode == "down":
        # Read the request, then drop the connection without a final response.
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            more = message.get("more_body", False)
        if scope.get(_SOCKET_SCOPE_KEY):
            # hypercorn writes a 1xx at once; when the app then ends without a final
            # response it closes the connection. An HTTP client skips the 1xx and sees
            # the peer hang up: httpx raises RemoteProtocolError("Server disconnected
            # without sending a response.").
            await send({"type": "http.response.start", "status": 102, "headers": []})
            return
        # In-process (httpx.ASGITransport): there is no socket to drop, so raise what
        # httpx raises for the socket case; ASGITransport passes it to the caller.
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
    if fault.mode == "5xx":
        phrase = "Service Unavailable" if fault.status == 503 else "Internal Server Error"
        response: Response = PlainTextResponse(phrase, status_code=fault.status)
    elif fault.mode == "429":
        response = PlainTextResponse("too many duplicate requests", status_code=429)
    else:  # "error"
        response = _json(fake, fake.error(fault.code))
    await response(scope, receive, send)


def create_app(fake: FakeBSG | None = None) -> Starlette:
    """The fake BSG as an ASGI app; its state is `app.state.fake`."""
    api_create = ["POST", "PUT"]
    routes = [
        Route("/sms/create", _api(_sms_create), methods=api_create),
        Route("/sms/price", _api(_sms_price), methods=api_create),
        Route("/sms/2wayIncoming", _api(_incoming), methods=["GET"]),
        Route("/sms/reference/{reference}", _api(_sms_by_reference), methods=["GET"]),
        Route("/sms/task/{task_id}", _api(_sms_task), methods=["GET"]),
        Route("/sms/{id}", _api(_sms_get), methods=["GET"]),
        Route("/viber/create", _api(_viber_create), methods=api_create),
        Route("/viber/price", _api(_viber_price), methods=api_create),
        Route("/viber/reference/{reference}", _api(_viber_by_reference), methods=["GET"]),
        Route("/viber/{id}", _api(_viber_get), methods=["GET"]),
        Route("/common/balance", _api(_balance), methods=["GET"]),
        Route("/_fake/faults", _admin(_faults_set), methods=["POST"]),
        Route("/_fake/faults", _admin(_faults_get), methods=["GET"]),
        Route("/_fake/faults", _admin(_faults_clear), methods=["DELETE"]),
        Route("/_fake/messages", _admin(_messages), methods=["GET"]),
        Route("/_fake/requests", _admin(_requests), methods=["GET"]),
        Route("/_fake/reset", _admin(_reset), methods=["POST"]),
        Route("/_fake/balance", _admin(_set_balance), methods=["POST"]),
        Route("/_fake/incoming", _admin(_inject_incoming), methods=["POST"]),
        Route("/_fake/style", _admin(_set_style), methods=["POST"]),
    ]
    app = _FakeBSGApp(routes=routes)
    app.state.fake = fake if fake is not None else FakeBSG()
    return app


def _over_socket(app: Starlette) -> Callable:
    async def marked(scope, receive, send) -> None:
        if scope["type"] == "http":
            scope = {**scope, _SOCKET_SCOPE_KEY: True}
        await app(scope, receive, send)

    return marked


async def serve(fake: FakeBSG | None = None, host: str = "127.0.0.1", port: int = 0, *,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the fake over HTTP until cancelled; `task_status.started(port)` once listening.

    `port=0` picks a free port; the port reported is the one actually bound.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.loglevel = "WARNING"       # no banner; errors still reach stderr
    config.accesslog = None           # (and no headers are ever logged)
    config.graceful_timeout = 1.0
    app = create_app(fake)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(
            hypercorn_serve, _over_socket(app), config, shutdown_trigger=shutdown.wait, mode="asgi",
        ))
        # hypercorn reports "http://HOST:PORT" per socket after listen(), from getsockname().
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
        if app.state.fake.callback_url:
            nursery.start_soon(_callback_ticker, app.state.fake)


async def _callback_ticker(fake: FakeBSG) -> None:
    """Post each newly final message's status to `fake.callback_url` once, best effort:
    a failed post is logged and dropped (Herald's polling is the fallback)."""
    limiter = trio.CapacityLimiter(_CALLBACK_POSTS)
    async with httpx.AsyncClient(timeout=5.0) as client, trio.open_nursery() as posts:
        while True:
            await trio.sleep(CALLBACK_TICK)
            if not fake.callback_url:
                continue
            for body in fake.due_callbacks():
                posts.start_soon(_post_callback, client, fake.callback_url, body, limiter)


async def _post_callback(client: httpx.AsyncClient, url: str, body: dict, limiter: trio.CapacityLimiter) -> None:
    async with limiter:
        try:
            response = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            log.warning("delivery report for %s not posted: %s", body.get("reference"), exc)
            return
    if response.status_code >= 300:
        log.warning("delivery report for %s: HTTP %d", body.get("reference"), response.status_code)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """`herald fake-bsg`: run the fake until interrupted."""
    parser = argparse.ArgumentParser(prog="herald fake-bsg",
                                     description="Run a fake BSG REST API on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8781, help="0 picks a free port (default 8781)")
    parser.add_argument("--delivery-delay", type=float, default=0.5, metavar="SECONDS",
                        help="seconds until statuses are final (default 0.5)")
    parser.add_argument("--balance", default="100", help="starting balance (default 100)")
    parser.add_argument("--currency", default="EUR")
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                        help="accepted key (repeatable; default: any non-empty key)")
    parser.add_argument("--viber-sender", action="append", dest="viber_senders", metavar="NAME",
                        help="registered Viber sender (repeatable; default AdvInform and BSG)")
    parser.add_argument("--response-style", default="nested",
                        help="nested | flat, optionally +strings (default nested)")
    parser.add_argument("--callback-url", metavar="URL",
                        help="POST each message's final status here once (delivery reports), "
                             "e.g. http://127.0.0.1:8780/bsg/callback/SECRET")
    args = parser.parse_args(argv)
    try:
        fake = FakeBSG(
            api_keys=set(args.api_keys) if args.api_keys else None,
            balance=args.balance, currency=args.currency,
            delivery_delay=args.delivery_delay, response_style=args.response_style,
            callback_url=args.callback_url,
            **({"viber_senders": set(args.viber_senders)} if args.viber_senders else {}),
        )
    except ValueError as exc:
        parser.error(str(exc))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, fake, args.host, args.port)
            shown = f"[{args.host}]" if ":" in args.host else args.host
            print(f"fake BSG listening on http://{shown}:{port}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:  # SIGTERM: stop cleanly, exit 0
                    nursery.cancel_scope.cancel()
                    break

    failure: BaseException | None = None
    try:
        try:
            trio.run(run)
        except* KeyboardInterrupt:
            pass
        except* OSError as group:
            failure = _first_leaf(group)
    except KeyboardInterrupt:
        pass
    if failure is not None:
        print(f"herald fake-bsg: cannot listen on {args.host}:{args.port}: {failure}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
