"""HTTP routes for subscriptions, incoming SMS and campaigns (docs/http-api.md).

Registered by engine/api/routes.py's `create_app` through `routes(services, endpoint)`; the
`endpoint` wrapper does the bearer-token check and turns ApiError / EventError into a
4xx JSON answer with a JSON pointer.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from starlette.requests import Request
from starlette.routing import Route

from herald.engine.api.base import ApiError, Handler, JSONResponse, json_body, path_key
from herald.engine.audience import campaigns
from herald.engine.audience import subscriptions as subs
from herald.engine.audience.incoming import parse_push
from herald.engine.helpers.client_address import of_request
from herald.engine.services import Services

CAMPAIGN_MAX_BODY = 256 * 1024 * 1024    # POST /campaigns: a CSV of a few million rows


def routes(services: Services, endpoint: Callable[[Handler], Handler]) -> list[Route]:
    async def body(request: Request, *, large: bool = False) -> Any:
        if services.stopping.is_set():
            raise ApiError(503, "herald is shutting down; send again in a moment")
        if large:      # POST /campaigns carries whole CSV files: its own, larger limit
            limit = max(CAMPAIGN_MAX_BODY, services.config.http.max_body)
            return await json_body(request, limit, "the limit of POST /campaigns; split the CSV or raise "
                                                    "http.max_body above it")
        return await json_body(request, services.config.http.max_body)

    def answer(fn: Callable) -> Callable:
        @functools.wraps(fn)          # its name is what a failure's log line shows
        async def handler(request: Request):
            try:
                return await fn(request)
            except subs.SubscriptionError as exc:
                raise ApiError(exc.status, exc.message, exc.pointer) from exc
            except campaigns.CampaignError as exc:
                raise ApiError(exc.status, exc.message, exc.pointer) from exc
        return endpoint(handler)

    async def subscribe(request: Request):
        config = services.config
        client = of_request(request, config.http.trusted_proxies)
        payload = await body(request)
        services.refusals.note_ip_field(payload)
        try:
            req = subs.parse_subscribe(payload, config)
            if subs.needs_proof(config, req.list):
                token = subs.proof_token(payload)
                await services.db(subs.peek_limits, services.store, config, req, client, services.clock.now())
                await subs.verify_proof(config.subscriptions.proof, token, client)
            status, result = await services.db(subs.subscribe, services.store, config, req, client,
                                             services.clock.now())
        except subs.SubscriptionError as exc:
            services.refusals.refused(exc, payload, client)
            return JSONResponse(exc.as_json(), status_code=exc.status, headers=exc.headers())
        services.wakes.events.set()
        return JSONResponse(result, status_code=status)

    async def confirm(request: Request):
        payload = await body(request)
        result = await services.db(subs.confirm, services.store, services.config, payload, services.clock.now())
        services.wakes.events.set()
        return JSONResponse(result)

    async def unsubscribe(request: Request):
        payload = await body(request)
        result = await services.db(subs.unsubscribe, services.store, services.config, payload, services.clock.now())
        services.wakes.events.set()
        return JSONResponse(result)

    async def incoming(request: Request):
        events = parse_push(await body(request), services)
        accepted = await services.accept(events, "sms-push")
        return JSONResponse({"accepted": [i for i, _ in accepted],
                             "duplicates": [i for i, new in accepted if not new]}, status_code=202)

    async def create_campaign(request: Request):
        spec = campaigns.parse_spec(await body(request, large=True), services.config, services.project, now=services.clock.now())
        result = await services.db(campaigns.create, services, spec)
        services.wakes.campaigns.set()
        return JSONResponse(result, status_code=201)

    async def list_campaigns(request: Request):
        return JSONResponse({"campaigns": await services.db(campaigns.list_status, services)})

    async def get_campaign(request: Request):
        key = path_key(request)
        result = await services.db(campaigns.status, services, key)
        if result is None:
            raise ApiError(404, f"no campaign {key}")
        return JSONResponse(result)

    async def set_campaign(request: Request):
        key = path_key(request)
        result = await services.db(campaigns.update, services, key, await body(request))
        services.wakes.campaigns.set()
        return JSONResponse(result)

    def change(action: str) -> Callable:
        async def handler(request: Request):
            key = path_key(request)
            result = await services.db(campaigns.change_state, services, key, action)
            services.wakes.campaigns.set()
            services.wakes.dispatch.set()
            return JSONResponse(result)
        handler.__name__ = f"{action}_campaign"
        return handler

    return [
        Route("/subscriptions", answer(subscribe), methods=["POST"]),
        Route("/subscriptions/confirm", answer(confirm), methods=["POST"]),
        Route("/subscriptions", answer(unsubscribe), methods=["DELETE"]),
        Route("/subscriptions/cancel", answer(unsubscribe), methods=["POST"]),
        Route("/sms/incoming", answer(incoming), methods=["POST"]),
        Route("/campaigns", answer(create_campaign), methods=["POST"]),
        Route("/campaigns", answer(list_campaigns), methods=["GET"]),
        Route("/campaigns/{id}", answer(get_campaign), methods=["GET"]),
        Route("/campaigns/{id}", answer(set_campaign), methods=["PATCH"]),
        *(Route(f"/campaigns/{{id}}/{action}", answer(change(action)), methods=["POST"])
          for action in ("pause", "resume", "cancel")),
    ]
