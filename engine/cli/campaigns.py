"""`herald campaign create|status|list|set|pause|resume|cancel`: talks to the running daemon."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from herald.engine.errors import HeraldError

BAR = 30
REFRESH = 1.0


def run(args, call, print_error) -> int:
    action = args.campaign_command
    if action == "create":
        return _create(args, call, print_error)
    if action == "list":
        response = call(args, "GET", "/campaigns")
        if response.status_code != 200:
            print_error(response)
            return 1
        campaigns = response.json()["campaigns"]
        for c in campaigns:
            print(line(c))
        if not campaigns:
            print("no campaigns")
        return 0
    if action == "status":
        return _status(args, call, print_error)
    if action == "set":
        return _set(args, call, print_error)
    response = call(args, "POST", f"/campaigns/{args.id}/{action}")
    if response.status_code != 200:
        print_error(response)
        return 1
    print(line(response.json()))
    return 0


def _create(args, call, print_error) -> int:
    payload: dict = {"end": args.end}
    for key in ("list", "phones", "department", "group", "template", "text", "channel", "start", "window",
                "rate", "budget", "name", "site", "sender"):
        value = getattr(args, key)
        if value is not None:
            payload[key] = value
    if args.csv:
        try:   # the daemon may run elsewhere: the file's content goes in the request
            payload["csv"] = Path(args.csv).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise HeraldError(f"{args.csv}: cannot read: {exc.strerror or exc}") from exc
    response = call(args, "POST", "/campaigns", json=payload)
    if response.status_code != 201:
        print_error(response)
        return 1
    body = response.json()
    print(f"campaign {body['id']} created: {body['total']} recipient(s), {body['state']} "
          f"from {body['start']} to {body['end']}")
    invalid = body.get("invalid") or {}
    if invalid.get("count"):
        print(f"left out {invalid['count']} invalid number(s), e.g. " + "; ".join(invalid["examples"]))
    return 0


def _set(args, call, print_error) -> int:
    payload = {k: getattr(args, k) for k in ("budget", "end", "rate") if getattr(args, k) is not None}
    if not payload:
        raise HeraldError("give what to change: --budget, --end and/or --rate")
    response = call(args, "PATCH", f"/campaigns/{args.id}", json=payload)
    if response.status_code != 200:
        print_error(response)
        return 1
    print(line(response.json()))
    return 0


def _status(args, call, print_error) -> int:
    live = not args.once and not args.json and sys.stdout.isatty()
    try:
        while True:
            response = call(args, "GET", f"/campaigns/{args.id}")
            if response.status_code != 200:
                print_error(response)
                return 1
            body = response.json()
            if args.json:
                print(json.dumps(body, ensure_ascii=False, indent=2))
                return 0
            if not live:
                print(line(body))
                return 0
            print("\r\033[K" + line(body), end="", flush=True)
            if body["done"]:
                print()
                return 0
            time.sleep(REFRESH)
    except KeyboardInterrupt:
        print()
        return 0


def line(c: dict) -> str:
    """`#3 bf running [#########.....] 61% queued 3900 sent 120 delivered 5980 failed 0 cost 121.60 EUR`"""
    total = c["total"] or 0
    handled = total - c["queued"]
    share = handled / total if total else 1.0
    filled = int(round(share * BAR))
    name = f"#{c['id']}" + (f" {c['name']}" if c.get("name") else "")
    extras = [f"{key} {c[key]}" for key in ("expired", "skipped", "cancelled") if c.get(key)]
    text = (f"{name} {c['state']} [{'#' * filled}{'.' * (BAR - filled)}] {share:4.0%} "
            f"queued {c['queued']} sent {c['sent']} delivered {c['delivered']} failed {c['failed']}"
            + "".join(f" {e}" for e in extras) + f" cost {c['cost']} {c['currency']}".rstrip())
    if c.get("reason") and c["state"] in ("stopped", "ended", "paused", "cancelled"):
        text += f" — {c['reason']}"
    return text
