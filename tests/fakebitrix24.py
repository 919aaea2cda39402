"""A fake Bitrix24 REST API (an incoming webhook) for tests: a real Starlette app served
over HTTP on loopback by hypercorn, answering `tasks.task.get` and `user.get` from a
small in-memory portal and recording every call.

URLs are `/rest/<user id>/<token>/<method>` (with or without `.json`), as Bitrix24's;
a wrong token is answered like Bitrix24 answers it (401 `invalid_token`). The shapes
are those docs/bitrix24.md says Herald assumes.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# What tasks.task.get answers for each upper-case `select` name (camelCase, like Bitrix24).
TASK_KEYS = {"ID": "id", "TITLE": "title", "STATUS": "status", "PRIORITY": "priority", "DEADLINE": "deadline",
             "RESPONSIBLE_ID": "responsibleId", "CREATED_BY": "createdBy", "ACCOMPLICES": "accomplices",
             "AUDITORS": "auditors"}


@dataclass
class FakePortal:
    token: str
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)    # id → camelCase fields, all strings
    users: dict[int, dict[str, Any]] = field(default_factory=dict)    # id → user.get record
    calls: list[tuple[str, dict]] = field(default_factory=list)       # (method, params), in order
    down: bool = False                                                # answer every call with 503

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]


def _error(status: int, code: str, description: str) -> JSONResponse:
    return JSONResponse({"error": code, "error_description": description}, status_code=status)


def create_app(portal: FakePortal) -> Starlette:
    async def call(request: Request) -> JSONResponse:
        method = request.path_params["method"].removesuffix(".json")
        params = await request.json() if await request.body() else {}
        portal.calls.append((method, params))
        if portal.down:
            return _error(503, "INTERNAL_SERVER_ERROR", "the portal is under maintenance")
        if request.path_params["token"] != portal.token:
            return _error(401, "invalid_token", "Invalid request credentials")
        if method == "tasks.task.get":
            return task_get(params)
        if method == "user.get":
            return user_get(params)
        return _error(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")

    def task_get(params: dict) -> JSONResponse:
        task = portal.tasks.get(int(params.get("taskId") or 0))
        if task is None:
            return _error(400, "ERROR_CORE", "Задача не найдена или доступ запрещен")
        select = params.get("select") or list(TASK_KEYS)
        keys = [TASK_KEYS[name] for name in select if name in TASK_KEYS]
        return JSONResponse({"result": {"task": {k: task.get(k) for k in keys}}})

    def user_get(params: dict) -> JSONResponse:
        wanted = (params.get("FILTER") or {}).get("ID")
        wanted = wanted if isinstance(wanted, list) else [wanted]
        found = [portal.users[int(i)] for i in wanted if i is not None and int(i) in portal.users]
        return JSONResponse({"result": found[:50], "total": len(found)})

    return Starlette(routes=[Route("/rest/{user}/{token}/{method}", call, methods=["POST"])])


async def serve(portal: FakePortal, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the portal on 127.0.0.1 until cancelled; `task_status.started(port)`."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.loglevel = "WARNING"
    config.accesslog = None            # the URL holds the token
    config.graceful_timeout = 0.5
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn_serve, create_app(portal), config,
                                            shutdown_trigger=shutdown.wait, mode="asgi"))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))


@asynccontextmanager
async def fake_bitrix24(portal: FakePortal):
    """Yields the portal's incoming webhook URL (…/rest/1/<token>/)."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, portal)
        yield f"http://127.0.0.1:{port}/rest/1/{portal.token}/"
        nursery.cancel_scope.cancel()
