"""The commands that talk to a running daemon (emit, reload, send, balance) or read
its store (history, trace).

The store and the timeline are imported by the commands that read them, inside the
function: a client command (`herald emit`) starts without loading SQLite's store."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from urllib.parse import quote

import httpx

from herald.engine.cli import campaigns as campaign_cli
from herald.engine.config import load_config
from herald.engine.errors import HeraldError
from herald.engine.events import parse_time


def _api(args) -> tuple[httpx.Client, object]:
    config = load_config(args.config)
    http = config.http
    host = http.host if http.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    base = f"http://[{host}]:{http.port}" if ":" in host else f"http://{host}:{http.port}"
    headers = {"Authorization": f"Bearer {http.tokens[0].reveal()}"} if http.tokens else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30), config


def _call(args, method: str, path: str, **kw) -> httpx.Response:
    client, _ = _api(args)
    try:
        with client:
            return client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise HeraldError(f"cannot reach the daemon at {client.base_url}: {exc.__class__.__name__}; "
                          "is `herald run` running?") from exc


def _print_error(response: httpx.Response) -> None:
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    pointer = f" at {body['pointer']}" if body.get("pointer") else ""
    print(f"error ({response.status_code}){pointer}: {body.get('error')}", file=sys.stderr)
    for line in body.get("errors", []):
        print(f"  {line}", file=sys.stderr)


def cmd_emit(args) -> int:
    text = sys.stdin.read() if args.event == "-" else Path(args.event).read_text(encoding="utf-8")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HeraldError(f"{args.event}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
    response = _call(args, "POST", "/events", json=payload)
    if response.status_code != 202:
        _print_error(response)
        return 1
    body = response.json()
    print(f"accepted: {', '.join(body['accepted'])}" +
          (f" (already known: {', '.join(body['duplicates'])})" if body.get("duplicates") else ""))
    return 0


def cmd_reload(args) -> int:
    response = _call(args, "POST", "/reload")
    if response.status_code != 200:
        _print_error(response)
        print("kept the running rules", file=sys.stderr)
        return 1
    print(f"reloaded: {response.json()['rules']} rule(s)")
    return 0


def cmd_send(args) -> int:
    payload: dict = {"to": args.to} if args.to else {}
    for key in ("department", "group", "text", "template", "channel", "site", "sender"):
        if getattr(args, key, None):
            payload[key] = getattr(args, key)
    if args.now:
        payload["now"] = True
    path = "/messages"
    if getattr(args, "order", None):
        path = f"/orders/{quote(str(args.order), safe='')}/messages"
    response = _call(args, "POST", path, json=payload)
    if response.status_code != 202:
        _print_error(response)
        return 1
    return _print_send_results(response.json())


def _print_send_results(body: dict) -> int:
    """One line per recipient; exit 1 when no recipient got a message."""
    results = body.get("messages") or [{"id": i, "state": "queued"} for i in body["queued"]]
    for m in results:
        who = " ".join(p for p in (m.get("to") or "", f"({m['recipient']})" if m.get("recipient") else "") if p)
        print(f"message {m['id']}: {m['state']}" + (f" → {who}" if who else "")
              + (f" — {m['reason']}" if m.get("reason") else ""))
    ok = [m for m in results if m["state"] not in ("failed", "skipped", "expired")]
    print(f"queued: {len(ok)} of {len(results)}")
    return 0 if ok else 1


def cmd_retry(args) -> int:
    payload: dict = {"status": args.status}
    for key in ("since", "until", "rule"):
        if getattr(args, key):
            payload[key] = getattr(args, key)
    if args.ids:
        payload["ids"] = args.ids
    if args.dry_run:
        payload["dry_run"] = True
    if args.now:
        payload["now"] = True
    response = _call(args, "POST", "/messages/retry", json=payload)
    if response.status_code not in (200, 202):
        _print_error(response)
        return 1
    body = response.json()
    items = body.get("replayed") or body.get("would_replay") or []
    if not items:
        print("nothing to replay")
        return 0
    for item in items:
        target = (f"→ new message {item['replay']} ({item['state']})" if item["replay"] is not None
                  else f"({item['state']})" if item.get("state") else "(dry run)")
        print(f"message {item['original']} to {item['to']} ({item['rule'] or 'manual'}) {target}"
              + (f"  [{item['reason']}]" if item["reason"] else ""))
    print(("would replay" if args.dry_run else "replayed") + f" {len(items)} message(s)")
    return 0


def cmd_balance(args) -> int:
    response = _call(args, "GET", "/balance")
    if response.status_code != 200:
        _print_error(response)
        return 1
    body = response.json()
    print(f"{body['amount']} {body['currency']}" + (f" (limit {body['limit']})" if body.get("limit") else ""))
    return 0


def cmd_unsubscribe(args) -> int:
    payload = {"phone": args.phone, **({"list": args.list} if args.list else {})}
    response = _call(args, "DELETE", "/subscriptions", json=payload)
    if response.status_code != 200:
        _print_error(response)
        return 1
    body = response.json()
    lists = ", ".join(body["cancelled"]) or "no list it was on"
    print(f"{body['phone']}: unsubscribed from {lists}" + ("; on the opt-out list" if body["opted_out"] else ""))
    return 0


def cmd_campaign(args) -> int:
    return campaign_cli.run(args, _call, _print_error)


def _store(args, config=None):
    """The store, for commands that only read it: the config is loaded leniently (the
    daemon's secrets need not be set)."""
    from herald.engine.store import Store
    config = config or load_config(args.config, lenient=True)
    if not Path(config.store).exists():
        raise HeraldError(f"no store at {config.store} yet: run `herald run` first")
    return Store(config.store)


HISTORY_COLUMNS = ("id", "created_at", "state", "channel", "to", "rule", "text", "reason")


def cmd_history(args) -> int:
    store = _store(args)
    since = parse_time(args.since, "--since") if args.since else None
    rows = store.messages(state=args.status, phone=args.phone, rule=args.rule, event=args.event,
                          since=since, limit=args.limit)
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else list(HISTORY_COLUMNS),
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    print(format_table(rows))
    return 0


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "no messages"
    widths = {"text": 40, "reason": 30, "created_at": 19, "rule": 24}
    cells = [[_cell(r.get(c), widths.get(c, 20)) for c in HISTORY_COLUMNS] for r in rows]
    sizes = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(HISTORY_COLUMNS)]
    line = "  ".join(c.ljust(sizes[i]) for i, c in enumerate(HISTORY_COLUMNS))
    out = [line, "  ".join("-" * s for s in sizes)]
    out += ["  ".join(v.ljust(sizes[i]) for i, v in enumerate(row)) for row in cells]
    return "\n".join(out)


def _cell(value, width: int) -> str:
    text = "" if value is None else str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_store(args) -> int:
    """Read-only, daemon up or down: the store's migrations and each table's row count."""
    info = _store(args).info()
    if args.json:
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return 0
    print(f"store {info['path']}: {len(info['migrations'])} migrations, the last {info['migrations'][-1]}")
    width = max(len(name) for name in info["tables"])
    print("\n".join(f"{name.ljust(width)}  {table['rows']:>10}" for name, table in info["tables"].items()))
    return 0


def cmd_timeline(args) -> int:
    """Read from the store: works while the daemon is down too."""
    from herald.engine.store.timeline import UnknownEntity, build_timeline, format_timeline, parse_target
    config = load_config(args.config, lenient=True)
    entity_type, entity_id, site = parse_target(args.entity, args.site or next(iter(config.sites)))
    if args.site and "@" in args.entity and not args.entity.endswith("@" + args.site):
        raise HeraldError(f"{args.entity} names a site and --site {args.site} another: give one")
    if site not in config.sites:
        raise HeraldError(f"unknown site {site!r}; configured sites: {', '.join(config.sites)}")
    store = _store(args, config)
    try:
        timeline = build_timeline(store, entity_type, entity_id, site)
    except UnknownEntity as exc:
        raise HeraldError(str(exc)) from exc
    print(json.dumps(timeline, ensure_ascii=False, indent=2) if args.json else format_timeline(timeline))
    return 0


def cmd_trace(args) -> int:
    store = _store(args)
    trace = store.message_trace(args.id)
    if trace is None:
        raise HeraldError(f"no message {args.id}")
    if args.json:
        print(json.dumps(trace, ensure_ascii=False, indent=2))
        return 0
    m = trace["message"]
    print(f"message {m['id']} ({m['reference']}): {m['state']}" + (f" — {m['reason']}" if m["reason"] else ""))
    print(f"  {m['channel']} to {m['to']} from {m['sender']}: {m['text']}")
    if m.get("sms_text") and m["channel"] != "sms":
        print(f"  sms fallback from {m['sms_sender']}: {m['sms_text']}")
    print(f"  created {m['created_at']}, send at {m['send_at']}, sent {m['sent_at']}, final {m['final_at']}")
    if trace["event"]:
        e = trace["event"]
        print(f"event {e['id']}: {e['type']} (site {e['site']}, {e['time']})")
    if trace["firing"]:
        f = trace["firing"]
        print(f"rule {f['rule']} (version {f['rule_version']}) at {f['at']}: {f['reason']}")
        for step in f["trace"].get("trace", []):
            print(f"  {step}")
    for a in trace.get("attempts", []):
        where = " ".join(p for p in (a["endpoint"], a["leg"], a["reference"]) if p)
        print(f"{a['at']}  {a['what']}: {a['outcome']}" + (f" [{where}]" if where else "")
              + (f" — {a['detail']}" if a["detail"] else ""))
    for x in trace["exchanges"]:
        print(f"BSG {x.get('endpoint') or 'main'} {x['method']} {x['path']} → {x['status'] or 'no answer'} "
              f"in {x['seconds']:.3f}s")
        print(f"  request:  {json.dumps(x['request'], ensure_ascii=False)}")
        print(f"  response: {json.dumps(x['response'], ensure_ascii=False)}")
    return 0
