"""The `herald` command line (CONFIG.md "Commands").

Each command imports what it runs inside its function: the daemon, the rule compiler
and the store cost a second of start-up, which `herald emit` or `herald balance` should
not pay (and `herald fake-bsg` needs none of them)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from herald.engine.errors import ConfigError, EventError, HeraldError, LoadError, display_path
from herald.engine.events import parse_time


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", default=None,
                        help="config file (default: herald.yaml in the working directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herald", description="Rules-driven notifications for online shops.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate config, rules and templates")
    _add_config(p)
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument("paths", nargs="*", help="rule files or folders to check (default: the configured rules)")

    p = sub.add_parser("simulate", help="dry run of one event")
    _add_config(p)
    p.add_argument("event", metavar="EVENT.json")
    p.add_argument("--at", metavar="TIME", help="the time to simulate at (ISO 8601; default: the event's time)")
    p.add_argument("--state", metavar="STATE.json", help="previous entity states and a directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("test", help="run rule tests")
    _add_config(p)
    p.add_argument("path", nargs="?", default=None, help="a test file or folder (default: rules/tests)")
    p.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")

    p = sub.add_parser("run", help="run the daemon (reactor, connectors, HTTP API)")
    _add_config(p)
    p.add_argument("--log-format", choices=("text", "json"), default="text")

    p = sub.add_parser("emit", help="post events to the running daemon")
    _add_config(p)
    p.add_argument("event", metavar="EVENT.json", help="one event or a list ('-' reads standard input)")

    p = sub.add_parser("reload", help="reload the running daemon's config, rules and templates")
    _add_config(p)

    p = sub.add_parser("send", help="send a message by hand through the running daemon")
    _add_config(p)
    p.add_argument("to", nargs="*", help="phone numbers")
    p.add_argument("--department", action="append", metavar="NAME",
                   help="everyone in this department (and its sub-departments) in the directory; repeatable")
    p.add_argument("--group", action="append", metavar="NAME", help="every member of this group; repeatable")
    p.add_argument("--order", metavar="ID", help="send from this order: rendered with its latest known state, "
                                                  "to its customer unless numbers are given, on its timeline")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--text")
    group.add_argument("--template")
    p.add_argument("--channel", choices=("sms", "viber", "omni"))
    p.add_argument("--site")
    p.add_argument("--sender")
    p.add_argument("--now", action="store_true", help="send now, outside the site's sending window too")

    p = sub.add_parser("timeline", help="an entity's events, rule verdicts, messages, attempts and receipts in time order")
    _add_config(p)
    p.add_argument("entity", metavar="TYPE:ID", help="e.g. order:42 (order:42@s2 for another site)")
    p.add_argument("--site", help="the site (default: the default site)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("history", help="messages Herald queued and sent")
    _add_config(p)
    p.add_argument("--status")
    p.add_argument("--phone")
    p.add_argument("--rule")
    p.add_argument("--event")
    p.add_argument("--since", metavar="TIME")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--csv", action="store_true", help="CSV instead of a table")

    p = sub.add_parser("trace", help="one message's trace: event, rule verdicts, BSG exchanges")
    _add_config(p)
    p.add_argument("id", help="message id or BSG reference")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("store", help="what the store file holds: migrations, tables and their row counts")
    _add_config(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("retry", help="replay failed (or expired) messages through the running daemon")
    _add_config(p)
    p.add_argument("--status", default="failed", choices=("failed", "expired"))
    p.add_argument("--since", metavar="TIME", help="created at or after (ISO 8601)")
    p.add_argument("--until", metavar="TIME", help="created before (ISO 8601)")
    p.add_argument("--rule", help="only messages of this rule")
    p.add_argument("--id", dest="ids", type=int, action="append", help="a message id (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    p.add_argument("--now", action="store_true", help="send at once, outside the sending window too")

    p = sub.add_parser("balance", help="the BSG account balance")
    _add_config(p)

    _add_campaign_commands(sub)
    p = sub.add_parser("unsubscribe", help="take a phone number off a subscription list (or all, and opt it out)")
    _add_config(p)
    p.add_argument("phone")
    p.add_argument("--list", help="the list (default: every list, and the number goes on the opt-out list)")

    sub.add_parser("fake-bsg", help="run the fake BSG server: herald fake-bsg --port 8781 (see docs/fake-bsg.md)",
                   add_help=False)
    return parser


def _add_campaign_commands(sub) -> None:
    campaign = sub.add_parser("campaign", help="bulk messages to a list between a start and an end")
    commands = campaign.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")
    p = commands.add_parser("create", help="plan a campaign (see docs/campaigns.md)")
    _add_config(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--list", help="confirmed subscribers of this list")
    who.add_argument("--csv", metavar="FILE", help="a CSV file with a phone column (other columns: macros)")
    who.add_argument("--phones", nargs="+", metavar="PHONE")
    who.add_argument("--department")
    who.add_argument("--group")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--template")
    what.add_argument("--text")
    p.add_argument("--channel", choices=("sms", "viber", "omni"))
    p.add_argument("--start", metavar="TIME", help="ISO 8601; without an offset, the site's local time (default: now)")
    p.add_argument("--end", metavar="TIME", required=True, help="unsent messages are recalled then")
    p.add_argument("--window", metavar="HH:MM-HH:MM", help="each recipient's hours (default: the site's)")
    p.add_argument("--rate", help="messages per time, e.g. 20/s or 600/m (default 10/s)")
    p.add_argument("--budget", help="stop when the cost would pass this amount")
    p.add_argument("--name", help="a unique name")
    p.add_argument("--site")
    p.add_argument("--sender")
    p = commands.add_parser("status", help="a campaign's progress (a live bar until done or Ctrl-C)")
    _add_config(p)
    p.add_argument("id", help="campaign id or name")
    p.add_argument("--once", action="store_true", help="print one line and exit")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("list", help="every campaign with its counts")
    _add_config(p)
    p = commands.add_parser("set", help="change a campaign's budget, end or rate (then `resume` a stopped one)")
    _add_config(p)
    p.add_argument("id", help="campaign id or name")
    p.add_argument("--budget", help="a new budget (BSG account's currency)")
    p.add_argument("--end", metavar="TIME", help="a new end (ISO 8601; without an offset, the site's local time)")
    p.add_argument("--rate", help="a new rate, e.g. 20/s or 600/m")
    for action in ("pause", "resume", "cancel"):
        p = commands.add_parser(action, help=f"{action} a campaign")
        _add_config(p)
        p.add_argument("id", help="campaign id or name")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fake-bsg"]:                 # its own options: hand them over untouched
        from herald.engine.bsg.fake import main as fake_main
        return fake_main(argv[1:])
    args = build_parser().parse_args(argv)
    from herald.engine.cli import client as cc
    handler = {"check": cmd_check, "simulate": cmd_simulate, "test": cmd_test, "run": cmd_run,
               "emit": cc.cmd_emit, "reload": cc.cmd_reload, "send": cc.cmd_send, "history": cc.cmd_history,
               "trace": cc.cmd_trace, "store": cc.cmd_store, "timeline": cc.cmd_timeline, "balance": cc.cmd_balance, "retry": cc.cmd_retry,
               "campaign": cc.cmd_campaign, "unsubscribe": cc.cmd_unsubscribe}[args.command]
    try:
        return handler(args)
    except BrokenPipeError:
        return _reader_went_away()
    except ConfigError as exc:
        print(exc.format(), file=sys.stderr)
        return 2 if args.command == "run" else 1
    except LoadError as exc:
        print(exc.format(), file=sys.stderr)
        return 1
    except EventError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except HeraldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _reader_went_away() -> int:
    """`herald timeline … | head`: the reader closed the pipe. Stop quietly, as `git log`
    does; stdout is pointed at /dev/null so the interpreter's final flush cannot raise
    again (and print a traceback) on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):        # stdout is no real file (e.g. captured by a test)
        pass
    return 141                           # 128 + SIGPIPE, what a shell reports for `git log | head`


def _project(args, strict: bool = False, rules_path: Path | None = None):
    from herald.engine.rules.loader import load_project
    return load_project(args.config, rules_path=rules_path, strict=strict)


def cmd_check(args) -> int:
    from herald.engine.config import load_config
    from herald.engine.rules.loader import load_project
    from herald.engine.errors import RulesError

    config = load_config(args.config)
    paths = [Path(p) for p in args.paths] or [None]
    diagnostics, rule_count, failed, project = [], 0, False, None
    for path in paths:
        try:
            project = load_project(config, rules_path=path)
            diagnostics += project.diagnostics
            rule_count += len(project.rules)
        except RulesError as exc:
            diagnostics += exc.diagnostics
            failed = True
    if project is not None and not args.paths:        # rules/campaigns/*.yaml (docs/campaigns.md)
        from herald.engine.audience.campaigns import check_declared
        diagnostics += check_declared(config, project)
    seen = set()
    for d in diagnostics:
        if d not in seen:
            seen.add(d)
            print(d.format(), file=sys.stderr)
    errors = sum(1 for d in seen if d.is_error)
    warnings = len(seen) - errors
    if failed or errors:
        print(f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)
        return 1
    print(f"ok: {rule_count} rule(s), {len(project.templates.templates)} template(s), {warnings} warning(s)")
    return 1 if args.strict and warnings else 0


def cmd_simulate(args) -> int:
    from herald.engine.rules.simulate import format_simulation, read_json, simulate

    project = _project(args)
    event_obj = read_json(args.event, "event")
    state_obj = read_json(args.state, "state") if args.state else None
    at = parse_time(args.at, "--at") if args.at else None
    events = event_obj if isinstance(event_obj, list) else [event_obj]
    outputs = []
    for i, obj in enumerate(events):
        try:
            sim = simulate(project, obj, at=at, state_obj=state_obj)
        except EventError as exc:
            pointer = f"/{i}{exc.pointer}" if isinstance(event_obj, list) else exc.pointer
            raise EventError(f"{args.event}: {exc.message}", pointer) from exc
        outputs.append(sim)
    if args.json:
        data = [s.as_json() for s in outputs]
        print(json.dumps(data if isinstance(event_obj, list) else data[0], ensure_ascii=False, indent=2,
                         default=str))
    else:
        print("\n\n".join(format_simulation(s) for s in outputs))
    return 0


def cmd_test(args) -> int:
    from herald.engine.rules.ruletest import format_results, run_tests

    project = _project(args)
    path = Path(args.path) if args.path else project.config.rules / "tests"
    if not path.exists():
        raise HeraldError(f"{display_path(path)}: no such test file or folder")
    results, seconds = run_tests(project, path)
    print(format_results(results, seconds, verbose=not args.quiet))
    if not results:
        print(f"no tests found under {display_path(path)}", file=sys.stderr)
        return 1
    return 0 if all(r.passed for r in results) else 1


def cmd_run(args) -> int:
    from herald.engine.daemon import run_daemon
    return run_daemon(args.config, args.log_format)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
