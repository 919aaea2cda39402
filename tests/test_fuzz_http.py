"""Every HTTP endpoint on generated bodies, queries and paths (issue #12, hypothesis suite b):
the answer is a 2xx/4xx with a JSON body — never a 5xx — and the daemon keeps serving
(`GET /health` after each request).

The routes come from `create_app`, so a new endpoint is fuzzed without touching this file;
they are grouped by their first path segment, one test (and one daemon) per group. The
daemon is real (SQLite store in a temporary directory, the shipped subscription rules, the
fake BSG over loopback); requests go to its app in-process through httpx's ASGI transport.
Hypothesis runs in a worker thread and hands each request to the daemon's trio loop.

    HERALD_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz_http.py
"""

from __future__ import annotations

import json
import math
import re
from urllib.parse import quote, urlencode

import httpx
import pytest
import trio
from hypothesis import given, note
from hypothesis import strategies as st

from herald.engine.api.routes import create_app
from tests.audience_helpers import fake_and_project, running
from tests.fuzz import fuzz

SECRET = "fuzz-callback-secret-0123456789"
B24_TOKEN = "fuzz-b24-token"
PHONE = "+79123456789"
RULES = 'rule "news" on order.created send sms to order.phone text "Заказ #ORDER_ID#: #STATUS#"\n'

# every route of the app (method, path template), grouped by the first segment of the path
ROUTES = [(method, route.path, tuple(route.param_convertors)) for route in create_app(None).routes
          for method in sorted(route.methods)]
GROUPS = sorted({path.split("/")[1] for _, path, _ in ROUTES})

# ---- values -------------------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
TEXT = st.one_of(st.text(max_size=20), st.text(st.one_of(st.characters(), SURROGATES), max_size=8),
                 st.sampled_from(["", " ", "news", "s1", "order", "1", "-1", "..", "\x00", "9" * 30, PHONE,
                                  "2026-11-27T10:00:00Z", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-01:00",
                                  "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "10/s", "1e999/s",
                                  "9" * 400 + "/s", "0.000000001/s", "1E+999999", "delivered", "failed", "*"]))
NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, -2**63 - 1, 1e308, 1e-300, 5e-324]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
# JSON text that no Python value serialises to: huge literals, NaN, deep nesting
RAW = st.one_of(st.integers(20, 6000).map(lambda n: "9" * n), st.sampled_from(["NaN", "-Infinity", "1e999",
                                                                                "-0", "1E-400", '"\\ud800"',
                                                                                '"\\udfff\\ud800"']),
                st.integers(60, 20_000).map(lambda n: "[" * n + "]" * n))
RAW_MARK = "\x00raw\x00"

# a well-formed body per route, which the strategies then mutate
SHAPES = {
    ("POST", "/events"): {"type": "order.created", "id": "o1", "data": {"order": {"id": 1, "phone": PHONE,
                                                                                   "status": "new"}}},
    ("POST", "/messages"): {"to": PHONE, "text": "Hi"},
    ("POST", "/messages/retry"): {"status": "failed", "since": "2026-01-01T00:00:00Z", "dry_run": True},
    ("POST", "/orders/{id}/messages"): {"text": "Hi", "data": {"x": 1}},
    ("POST", "/subscriptions"): {"phone": PHONE, "list": "news"},
    ("POST", "/subscriptions/confirm"): {"phone": PHONE, "list": "news", "code": "123456"},
    ("DELETE", "/subscriptions"): {"phone": PHONE, "list": "news"},
    ("POST", "/subscriptions/cancel"): {"phone": PHONE},
    ("POST", "/sms/incoming"): {"id": "m1", "from": PHONE, "text": "STOP"},
    ("POST", "/campaigns"): {"phones": [PHONE], "text": "Sale", "end": "2099-01-01T00:00:00Z", "rate": "10/s"},
    ("PATCH", "/campaigns/{id}"): {"rate": "10/s", "budget": "5", "end": "2099-06-01T00:00:00Z"},
    ("POST", "/bsg/callback/{secret}"): {"reference": "x1", "status": "delivered"},
    ("POST", "/bsg/callback/{secret}/{endpoint}"): [{"reference": "x1", "status": "delivered", "price": 1}],
}
QUERY_KEYS = ("limit", "before", "since", "status", "phone", "rule", "event", "site", "x")
PATH_VALUES = {"type": ["order", "shipment", "subscription"], "id": ["1", "2", "A-1", "o1"],
               "secret": [SECRET], "endpoint": ["main", "backup"]}


def mutate(shape, draw):
    """The shape with a few fields replaced, removed or added (at any depth)."""
    if isinstance(shape, dict) and shape:
        out = dict(shape)
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from([*out, "extra"]) if out else st.just("extra"))
            action = draw(st.sampled_from(["replace", "drop", "deeper"]))
            if action == "drop":
                out.pop(key, None)
            elif action == "deeper" and isinstance(out.get(key), (dict, list)):
                out[key] = mutate(out[key], draw)
            else:
                out[key] = draw(JSON | RAW.map(lambda raw: RAW_MARK + raw))
        return out
    if isinstance(shape, list) and shape:
        return [mutate(item, draw) for item in shape] + draw(st.lists(JSON, max_size=2))
    return draw(JSON)


def encode(value) -> bytes:
    """JSON text (ASCII: surrogates travel as \\udXXX escapes), raw fragments spliced in."""
    text = json.dumps(value, allow_nan=True)
    text = re.sub(r'"\\u0000raw\\u0000((?:[^"\\]|\\.)*)"', lambda m: json.loads(f'"{m.group(1)}"'), text)
    return text.encode()


@st.composite
def bodies(draw, method: str, path: str) -> bytes | None:
    if method in ("GET", "HEAD") and draw(st.booleans()):
        return None
    kind = draw(st.sampled_from(["shape", "shape", "shape", "json", "raw", "bytes", "form"]))
    if kind == "shape":
        return encode(mutate(SHAPES.get((method, path), {}), draw))
    if kind == "json":
        return encode(draw(JSON))
    if kind == "raw":
        return draw(RAW).encode()
    if kind == "form":
        fields = {"event": draw(st.sampled_from(["ONTASKADD", "ONTASKUPDATE", "ONTASKDELETE", "X"])),
                  "data[FIELDS_AFTER][ID]": draw(TEXT), "ts": draw(TEXT),
                  "auth[application_token]": draw(st.sampled_from([B24_TOKEN, "wrong"]))}
        return urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in fields.items()}).encode()
    return draw(st.binary(max_size=64))


@st.composite
def requests(draw, group: str) -> tuple[str, str, bytes | None, dict]:
    method, path, params = draw(st.sampled_from([r for r in ROUTES if r[1].split("/")[1] == group]))
    if draw(st.integers(0, 19)) == 0:          # now and then a method the route does not take
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    url = path
    for name in params:
        value = draw(st.sampled_from(PATH_VALUES[name]) | TEXT.filter(bool))
        url = url.replace("{" + name + "}", quote(value.encode("utf-8", "surrogatepass"), safe=""))
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), TEXT | NUMBERS.map(str), max_size=3))
    if query:
        url += "?" + urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})
    body = draw(bodies(method, path))
    content_type = draw(st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain"]))
    return method, url, body, {"content-type": content_type}


def check_answer(method: str, response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if method == "HEAD":
        return
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = json.loads(response.content)             # strict JSON: no NaN, valid UTF-8
    if response.status_code >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    _finite(body)


def _finite(value) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for item in value.values():
            _finite(item)
    elif isinstance(value, list):
        for item in value:
            _finite(item)


@pytest.mark.parametrize("group", GROUPS)
async def test_every_endpoint_answers_bad_input_with_a_4xx_json_and_keeps_serving(tmp_path, monkeypatch, group):
    monkeypatch.chdir(tmp_path)
    async with fake_and_project(tmp_path, rules=RULES, subscriptions="  lists: [news]",
                                bsg=f"  callback_secret: {SECRET}") as (fake, config):
        config.write_text(config.read_text(encoding="utf-8") + f"bitrix24:\n  application_token: {B24_TOKEN}\n",
                          encoding="utf-8")
        async with running(config) as (daemon, _):
            await seed(daemon)
            transport = httpx.ASGITransport(app=create_app(daemon.services), client=("127.0.0.1", 4242))
            async with httpx.AsyncClient(transport=transport, base_url="http://herald") as client:
                async def exchange(method: str, url: str, body: bytes | None, headers: dict):
                    response = await client.request(method, url, content=body, headers=headers)
                    health = await client.get("/health")
                    return response, health

                @fuzz()
                @given(requests(group))
                def one(request) -> None:
                    method, url, body, headers = request
                    note(f"{method} {url} {body[:300] if body else body!r}")
                    response, health = trio.from_thread.run(exchange, method, url, body, headers)
                    check_answer(method, response)
                    assert health.status_code == 200, health.text

                await trio.to_thread.run_sync(one)


async def seed(daemon) -> None:
    """Something for the fuzzed ids to find: an order with a message, a campaign."""
    transport = httpx.ASGITransport(app=create_app(daemon.services), client=("127.0.0.1", 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://herald") as client:
        r = await client.post("/events", json=SHAPES[("POST", "/events")])
        assert r.status_code == 202, r.text
        r = await client.post("/campaigns", json=SHAPES[("POST", "/campaigns")])
        assert r.status_code == 201, r.text
