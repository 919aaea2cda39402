"""The BSG REST API v1 client: SMS and Viber sends, status look-ups, the balance.

A small surface over httpx (tests swap the transport; nothing here is patched):

- `send_sms` / `send_viber` split a list into requests of at most 50 recipients (no
  phone twice in one request: BSG rejects the whole request with 31/51) and return one
  `SendResult` per item, in the order given. Whatever BSG answered — a per-item error,
  a top-level error, HTTP 429/5xx/404, a body that is not JSON — becomes each item's
  `Kind`. Only when BSG cannot be reached (network error, timeout) do they raise
  `BsgUnavailable`, whose `.results` still holds one result per item: what the earlier
  requests got, and RETRY for the rest.
- `sms_status` / `viber_status` / `balance` raise `BsgError` (or `BsgUnavailable`) for a
  failed request; a status look-up returns None when BSG says "not found" (20 / 40).
- Requests per second are capped by `rate`, shared by every caller of one client. Status
  look-ups made with `lookup=True` (resolving an unknown outcome: recovery after a crash,
  a 23/43 answer, a message uncertain at another endpoint) have a budget of their own —
  `lookup_rate` per second, at most `lookup_concurrency` in flight — so thousands of them
  neither wait behind the send rate cap nor hold up sends. `set_rates()` changes both
  budgets at once, for the callers already waiting too. A 429 or error 11 pauses the
  whole client, sends and look-ups, for a moment (Retry-After, else 1 s).
- The API key goes only into the `X-API-KEY` header: never into a message, a repr, a
  log line or a trace (`on_exchange` gets the request and response bodies, no headers).

BSG's answers vary (see shared/spec/BSG-API.md): nested `{"result": {...}}` and flat
single-SMS shapes, numbers as strings, `total_price` or `totalprice`; all are accepted.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence
from urllib.parse import quote, urlencode

import httpx
import trio

from herald.engine.bsg.answers import AnswerReading
from herald.engine.bsg.pacing import Pacer
from herald.engine.bsg.wire import (  # noqa: F401  (re-exported: the client's public names)
    DESCRIPTIONS, FINAL_FAILURE, FINAL_SUCCESS, MAX_RECIPIENTS, OPERATOR_HINTS, AltRoute, Balance, BsgError,
    BsgUnavailable, Kind, OnExchange, SendResult, SmsItem, Status, ViberItem, _Answer, _chunks, _code, _description,
    _money, _msisdn, _NOT_FOUND_CODES, _retry_after, _text, classify, describe, item_result, parse_status, redact,
    sms_requests, viber_request)
from herald.engine.config import DEFAULT_LOOKUP_CONCURRENCY, DEFAULT_LOOKUP_RATE, Secret

__all__ = [
    "Kind", "classify", "describe", "SmsItem", "ViberItem", "SendResult", "AltRoute", "Status",
    "Balance", "BsgError", "BsgUnavailable", "BsgClient", "clients_from_config", "parse_status",
    "redact", "MAX_RECIPIENTS", "FINAL_SUCCESS", "FINAL_FAILURE", "OnExchange", "budgets",
]

log = logging.getLogger("herald.bsg")

DEFAULT_PAUSE = 1.0          # seconds the client waits after a 429 / error 11 without Retry-After


# --------------------------------------------------------------------------- the client

class BsgClient(AnswerReading):
    """One BSG endpoint. Use as `async with BsgClient(url, key) as bsg: ...`."""

    def __init__(self, url: str, api_key: Secret | str | None, *, rate: float = 20.0,
                 timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None,
                 name: str = "main", on_exchange: OnExchange | None = None,
                 lookup_rate: float = DEFAULT_LOOKUP_RATE,
                 lookup_concurrency: int = DEFAULT_LOOKUP_CONCURRENCY):
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = url.rstrip("/")
        self.name = name
        self.timeout = float(timeout)
        self.on_exchange = on_exchange
        self._key = api_key if isinstance(api_key, Secret) or api_key is None else Secret(api_key)
        self._sends = Pacer(rate)        # every request but budgeted look-ups
        self._lookups = Pacer(lookup_rate)
        self._lookup_slots = trio.CapacityLimiter(_concurrency(lookup_concurrency))
        self.rate = float(rate)
        self.lookup_rate = float(lookup_rate)
        self._http = httpx.AsyncClient(
            base_url=self.url + "/", transport=transport, timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": "herald-bsg/1"},
        )

    def __repr__(self) -> str:
        return f"BsgClient(name={self.name!r}, url={self.url!r}, rate={self.rate!r})"

    @property
    def lookup_concurrency(self) -> int:
        return int(self._lookup_slots.total_tokens)

    def set_rates(self, rate: float, lookup_rate: float | None = None,
                  lookup_concurrency: int | None = None) -> None:
        """New budgets (a reload): they apply at once, to callers already waiting too."""
        self._sends.set_rate(rate)
        self.rate = float(rate)
        if lookup_rate is not None:
            self._lookups.set_rate(lookup_rate)
            self.lookup_rate = float(lookup_rate)
        if lookup_concurrency is not None:
            # look-ups already in flight finish; the new bound holds from the next one
            self._lookup_slots.total_tokens = _concurrency(lookup_concurrency)

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a BsgClient cannot be pickled")

    @classmethod
    def from_config(cls, cfg: Any, **kw: Any) -> "BsgClient":
        """The main endpoint of a BsgConfig."""
        return cls(cfg.url, cfg.api_key, **budgets(cfg), **kw)

    async def __aenter__(self) -> "BsgClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ----------------------------------------------------------------- rate and transport

    async def _wait_turn(self, lookup: bool = False) -> None:
        """Space requests 1/rate apart (look-ups: 1/lookup_rate); callers of one client
        share the slots."""
        await (self._lookups if lookup else self._sends).wait()

    def _pause(self, seconds: float | None) -> None:
        """After a 429 / error 11: no request from this client before now + seconds."""
        seconds = DEFAULT_PAUSE if seconds is None else min(seconds, 60.0)
        self._sends.pause(seconds)
        self._lookups.pause(seconds)
        log.warning("BSG %s: too many requests — pausing %.1f s", self.name, seconds)

    def _trace(self, method: str, path: str, request_json: Any, status: int | None,
               response: Any, seconds: float) -> None:
        if self.on_exchange is None:
            return
        secrets = [self._key] if self._key else []
        try:
            self.on_exchange(method, path, redact(request_json, secrets), status,
                             redact(response, secrets), seconds)
        except Exception:   # a broken trace store must not break sending
            log.exception("BSG %s: the on_exchange callback failed", self.name)

    async def _exchange(self, method: str, path: str, payload: Any = None, *,
                        lookup: bool = False) -> _Answer:
        """One HTTP request. Raises BsgUnavailable when no answer came."""
        if lookup:
            async with self._lookup_slots:
                return await self._request(method, path, payload, lookup=True)
        return await self._request(method, path, payload)

    async def _request(self, method: str, path: str, payload: Any = None, *,
                       lookup: bool = False) -> _Answer:
        await self._wait_turn(lookup)
        headers = {"X-API-KEY": self._key.reveal()} if self._key else {}
        started = trio.current_time()
        try:
            with trio.fail_after(self.timeout):
                response = await self._http.request(method, path.lstrip("/"), json=payload,
                                                    headers=headers)
        except trio.TooSlowError as exc:
            self._trace(method, path, payload, None, None, trio.current_time() - started)
            message = f"BSG {self.name}: no answer to {method} {path} within {self.timeout:g} s"
            log.warning(message)
            raise BsgUnavailable(message) from exc
        except httpx.HTTPError as exc:
            self._trace(method, path, payload, None, None, trio.current_time() - started)
            detail = str(exc) or type(exc).__name__
            if self._key:
                detail = detail.replace(self._key.reveal(), "****")
            message = (f"BSG {self.name} unreachable ({type(exc).__name__}: {detail}) "
                       f"on {method} {path}")
            log.warning(message)
            raise BsgUnavailable(message, reached=not isinstance(exc, (httpx.ConnectError,
                                                                        httpx.ConnectTimeout))) from exc
        except OSError as exc:
            self._trace(method, path, payload, None, None, trio.current_time() - started)
            message = f"BSG {self.name} unreachable ({type(exc).__name__}) on {method} {path}"
            log.warning(message)
            raise BsgUnavailable(message, reached=not isinstance(exc, ConnectionRefusedError)) from exc
        seconds = trio.current_time() - started
        text = response.text
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        secret = self._key.reveal() if self._key else ""
        if secret and secret in text:   # an echo of the key goes no further than here
            text = text.replace(secret, "****")
            body = redact(body, [secret])
        self._trace(method, path, payload, response.status_code,
                    body if body is not None else text[:2000], seconds)
        log.debug("BSG %s: %s %s → HTTP %s in %.3f s", self.name, method, path,
                  response.status_code, seconds)
        answer = _Answer(response.status_code, body, text, _retry_after(response))
        if response.status_code == 429 or (isinstance(body, dict) and _code(body) == 11):
            self._pause(answer.retry_after)
        return answer

    # ----------------------------------------------------------------- sends

    async def send_sms(self, items: Sequence[SmsItem], *,
                       validity_hours: int | None = None) -> list[SendResult]:
        """Send SMS; one SendResult per item, in order. Requests hold ≤ 50 phones, none
        twice; one item → "phone", one body and originator → "phones", else
        "individual". Raises BsgUnavailable (with .results) when BSG is unreachable."""
        if validity_hours is not None and not 1 <= validity_hours <= 72:
            raise ValueError("SMS validity_hours must be 1-72")
        items = list(items)
        requests: list[tuple[list[int], dict[str, Any]]] = []
        for chunk in _chunks(items, lambda it: _msisdn(it.msisdn)):
            requests.extend(sms_requests([items[i] for i in chunk], chunk, validity_hours))
        return await self._send_all("/sms/create", items, requests)

    async def send_viber(self, items: Sequence[ViberItem], *,
                         validity_seconds: int | None = None) -> list[SendResult]:
        """Send Viber messages; one SendResult per item, in order. Items with the same
        text, alpha_name, fallback and promotional flag share one `messages[]` entry;
        requests hold ≤ 50 phones, none twice. Raises BsgUnavailable (with .results)
        when BSG is unreachable."""
        if validity_seconds is not None and not 15 <= validity_seconds <= 86400:
            raise ValueError("Viber validity_seconds must be 15-86400")
        items = list(items)
        for it in items:
            if it.alt_sms_text is not None and not it.alt_sms_originator:
                raise ValueError(f"Viber item {it.reference!r}: alt_sms_text needs alt_sms_originator")
        requests = []
        for chunk in _chunks(items, lambda it: _msisdn(it.msisdn)):
            requests.append((chunk, viber_request([items[i] for i in chunk], validity_seconds)))
        return await self._send_all("/viber/create", items, requests)

    async def _send_all(self, path: str, items: list[Any],
                        requests: list[tuple[list[int], dict[str, Any]]]) -> list[SendResult]:
        results: list[SendResult | None] = [None] * len(items)
        for n, (indexes, payload) in enumerate(requests):
            try:
                answer = await self._exchange("POST", path, payload)
            except BsgUnavailable as exc:
                for k, (rest, _) in enumerate(requests[n:]):   # this request and the ones not made
                    for i in rest:
                        results[i] = SendResult(items[i].reference, Kind.RETRY, description=str(exc),
                                                unavailable=True, uncertain=k == 0 and exc.reached)
                raise BsgUnavailable(str(exc), results=results, reached=exc.reached) from exc.__cause__
            for i, r in zip(indexes, self._results(answer, [items[i].reference for i in indexes])):
                results[i] = r
        return results  # type: ignore[return-value]  # every slot is filled

    # ----------------------------------------------------------------- reads

    # BSG has no look-up of many references in one request: GET /sms/task/{task_id} reads
    # a bulk send's task, whose id only comes back in the answer — and an unknown outcome
    # is exactly a send whose answer never came. So references are looked up one by one,
    # concurrently, under the look-up budget.

    async def sms_status(self, reference: str, *, lookup: bool = False) -> Status | None:
        """The status of the SMS sent with this reference; None when BSG has none (20).
        `lookup=True`: paced by the look-up budget instead of the send rate cap."""
        return await self._status(f"/sms/reference/{quote(reference, safe='')}", "SMS status", lookup)

    async def viber_status(self, reference: str, *, lookup: bool = False) -> Status | None:
        """The status of the Viber message with this reference, with its SMS fallback in
        `alt_route`; None when BSG has none (40). `lookup=True` as for sms_status."""
        return await self._status(f"/viber/reference/{quote(reference, safe='')}", "Viber status", lookup)

    async def _status(self, path: str, what: str, lookup: bool = False) -> Status | None:
        answer = await self._exchange("GET", path, lookup=lookup)
        body = answer.body
        if isinstance(body, dict):
            inner = body.get("result") if isinstance(body.get("result"), dict) else body
            code = _code(body) or _code(inner) or 0
            if code in _NOT_FOUND_CODES:
                return None
            if code == 0 and 200 <= answer.status_code < 300:
                return parse_status(body)
        raise self._failure(answer, what)

    async def balance(self) -> Balance:
        """The account balance (the amount may be negative: credit)."""
        answer = await self._exchange("GET", "/common/balance")
        body = answer.body
        if isinstance(body, dict) and 200 <= answer.status_code < 300:
            data = body["result"] if isinstance(body.get("result"), dict) else body
            code = _code(body) or _code(data) or 0
            if code == 0:
                amount = _money(data.get("amount"))
                if amount is not None:
                    return Balance(amount=amount, currency=str(data.get("currency") or ""),
                                   limit=_money(data.get("limit")))
                raise BsgError(f"BSG {self.name}: the balance answer has no amount",
                               description="no amount", kind=Kind.FATAL,
                               http_status=answer.status_code)
        raise self._failure(answer, "balance")

    async def incoming(self, start: str, end: str) -> list[dict]:
        """Incoming 2-way SMS received between `start` and `end` ("YYYY-MM-DD HH:MM:SS"):
        BSG's items ({id, msisdn, sender, body, time}) as they come."""
        answer = await self._exchange("GET", "/sms/2wayIncoming?" + urlencode({"start_date": start,
                                                                               "end_date": end}))
        body = answer.body
        if isinstance(body, dict) and 200 <= answer.status_code < 300 and not (_code(body) or 0):
            items = body.get("result", [])
            return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        raise self._failure(answer, "incoming SMS")


def _concurrency(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("lookup_concurrency must be a whole number of at least 1")
    return value


def budgets(cfg: Any) -> dict[str, Any]:
    """The BsgClient keyword arguments for a BsgConfig's rate and look-up budget."""
    return {"rate": cfg.rate, "lookup_rate": cfg.lookup_rate, "lookup_concurrency": cfg.lookup_concurrency}


def clients_from_config(cfg: Any, **kw: Any) -> list[BsgClient]:
    """The main client of a BsgConfig, then one per backup endpoint ("backup1", …);
    a backup without its own key uses the main key."""
    clients = [BsgClient(cfg.url, cfg.api_key, name="main", **budgets(cfg), **kw)]
    for n, b in enumerate(cfg.backup, 1):
        clients.append(BsgClient(b.url, b.api_key if b.api_key is not None else cfg.api_key,
                                 name=f"backup{n}", **budgets(cfg), **kw))
    return clients
