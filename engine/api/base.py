"""The HTTP base every route builds on: JSON answers (errors included), the bearer-token
check, JSON bodies read within a size limit and the JSON bounds, and query and path
parameters read within bounds. Nothing here knows a route or the services behind it."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
from typing import Any, Awaitable, Callable, Sequence

import starlette.responses
from starlette.requests import ClientDisconnect, Request

from herald.engine.config import Secret
from herald.engine.errors import ApiError, EventError
from herald.engine.helpers import bounds

log = logging.getLogger("herald.http")

Handler = Callable[[Request], Awaitable[starlette.responses.Response]]


class JSONResponse(starlette.responses.JSONResponse):
    """Starlette's, but always encodable: a lone surrogate in a string (an id or a
    pointer echoed from a refused request, an old row) is written as its JSON escape
    `\\udXXX` instead of failing the answer with UnicodeEncodeError."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8", "backslashreplace")


def error_response(exc: ApiError) -> JSONResponse:
    """An ApiError as the JSON answer it stands for."""
    return JSONResponse(exc.as_json(), status_code=exc.status)


def guarded(fn: Handler, authorize: Callable[[Request], None] | None) -> Handler:
    """`fn` with the JSON error replies: ApiError and EventError become their 4xx answer,
    a client gone mid-body a 400, anything else a logged 500 that names no detail.
    `authorize` (raising ApiError) runs first when given."""
    async def handler(request: Request):
        try:
            if authorize is not None:
                authorize(request)
            return await fn(request)
        except ApiError as exc:
            return error_response(exc)
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


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's 404 and 405, as JSON."""
    return JSONResponse({"error": f"no such endpoint: {request.method} {request.url.path}"},
                        status_code=getattr(exc, "status_code", 404))


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authorize(request: Request, tokens: Sequence[Secret]) -> None:
    """`Authorization: Bearer TOKEN`, one of `tokens`, compared in constant time; with no
    tokens, the loopback address only. Raises ApiError (401/403) otherwise."""
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


# ---- bodies ----

def too_large(limit: int, setting: str = "http.max_body") -> ApiError:
    """413 that names the limit and where it is set."""
    return ApiError(413, f"the body is over the limit of {limit} bytes ({setting})")


async def read_body(request: Request, limit: int, setting: str = "http.max_body") -> bytes:
    """The body, refused with a 413 as soon as it is over `limit` (a declared length
    over it is refused before a byte is read)."""
    length = request.headers.get("content-length")
    if length and length.isascii() and length.isdigit() and int(length) > limit:
        raise too_large(limit, setting)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit, setting)
    return bytes(body)


async def json_body(request: Request, limit: int, setting: str = "http.max_body") -> Any:
    """The body as JSON within `limit` bytes and the JSON bounds (engine/helpers/bounds.py:
    an EventError, a 400 with the pointer, when out of them)."""
    return bounds.loads(await read_body(request, limit, setting))


# ---- query and path parameters ----

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
