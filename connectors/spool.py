"""The spool-folder connector: `*.json` files dropped into a folder become events.

Any script or cron job can feed Herald by writing a file (one event, or a list of
events, in the shape of docs/events.md) into the folder. Every `interval` seconds the
connector takes the files in name order: it journals a file's events, then moves the
file to `done/`; a file that is not valid JSON or holds an invalid event goes to
`bad/`, with `<file>.error.txt` beside it naming the JSON pointer and the problem.

Exactly once, even across a crash between journaling and moving the file:
- an event without an `id` gets one derived from the file's name, its content and the
  event's index in the file, so journaling the same file again finds known ids;
- the last journaled file (name and SHA-1) is the connector's cursor, moved in the
  same transaction as the events, so after a restart that file is just moved to done/.

This module is also the worked example of docs/connectors/writing.md.
User documentation: docs/connectors/spool.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from herald.connectors.base import ConnectorContext
from herald.connectors.options import number as _number, what as _what
from herald.engine.config import ConnectorConfig, reveal
from herald.engine.errors import ConfigError, Diagnostic, EventError, did_you_mean

log = logging.getLogger("herald.connectors.spool")

OPTIONS = ("path", "interval", "name")
DEFAULT_INTERVAL = 1.0
DONE, BAD = "done", "bad"
CURSOR_KEY = "last_file"
SETTLE = 2.0            # seconds: an unparsable file this fresh may still be being written


@dataclass(frozen=True, slots=True)
class _File:
    name: str
    data: bytes
    mtime: float

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.data).hexdigest()


class SpoolConnector:
    """`type: spool` — see the module docstring and docs/connectors/spool.md."""

    type = "spool"

    def __init__(self, config: ConnectorConfig):
        self.config = config
        problems: list[Diagnostic] = []

        def error(message: str, key: str | None, hint: str | None = None) -> None:
            where = config.locations.get(key) if key else None
            problems.append(Diagnostic(f"spool connector: {message}", where or config.location, hint=hint))

        for key in config.options:
            if key not in OPTIONS:
                error(f'unknown option "{key}"', key,
                      did_you_mean(key, OPTIONS) or f"the spool connector has: {', '.join(OPTIONS)}")

        self.path = Path(".")
        raw_path = config.options.get("path")
        if "path" not in config.options:
            error("path is required: the folder to watch", None, "e.g. path: spool")
        elif not isinstance(reveal(raw_path), str) or not reveal(raw_path).strip():
            error(f"path: expected a folder path, got {_what(raw_path)}", "path", "e.g. path: spool")
        else:
            self.path = config.path(reveal(raw_path).strip())

        self.interval = DEFAULT_INTERVAL
        raw_interval = config.options.get("interval", DEFAULT_INTERVAL)
        interval = _number(reveal(raw_interval))
        if interval is None:
            error(f"interval: expected a number of seconds, got {_what(raw_interval)}", "interval",
                  "e.g. interval: 1.0")
        elif not (0 < interval <= 86400):
            error(f"interval: {interval:g} is out of range: more than 0 and at most 86400 seconds",
                  "interval", "e.g. interval: 1.0")
        else:
            self.interval = interval

        self.name = config.options.get("name")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            error(f"name: expected a non-empty string, got {_what(self.name)}", "name",
                  "e.g. name: orders (it keys the connector's cursor and its /health entry)")

        if problems:
            raise ConfigError(problems)
        self.done = self.bad = 0
        self._cursor: tuple[str, str] | None = None      # (file name, sha1) last journaled

    # ------------------------------------------------------------------ the loop

    async def run(self, ctx: ConnectorContext, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        await self.resume(ctx)
        task_status.started()
        while True:
            try:
                await self.scan(ctx)
            except Exception as exc:   # never BaseException: trio.Cancelled must go through
                log.exception("spool connector %s: scan failed", ctx.name)
                ctx.down(f"scan failed: {type(exc).__name__}: {exc}")
            await trio.sleep(self.interval)

    async def resume(self, ctx: ConnectorContext) -> None:
        """Read back the last journaled file (name and SHA-1) after a restart."""
        self._cursor = _parse_cursor(await ctx.get_cursor(CURSOR_KEY))

    async def scan(self, ctx: ConnectorContext) -> None:
        """Take every file of the folder once, in name order; report liveness."""
        try:
            names = await trio.to_thread.run_sync(self._list)
        except OSError as exc:
            ctx.down(_folder_problem(self.path, exc))
            return
        for name in names:
            try:
                if not await self._take(ctx, name):
                    break                   # still being written: later files wait for it
            except OSError as exc:
                # Left in place and retried next scan; later files wait, keeping the order.
                ctx.down(f"{name}: {exc.strerror or exc}")
                return
        ctx.alive(f"watching {self.path}: {self.done} file(s) done, {self.bad} bad since start")

    async def _take(self, ctx: ConnectorContext, name: str) -> bool:
        """Journal one file and move it away; False when it should be retried later."""
        file = await trio.to_thread.run_sync(self._read, name)
        if file is None:
            return True                     # gone meanwhile
        digest = file.digest
        if self._cursor == (name, digest):  # journaled, then crashed (or the move failed)
            await trio.to_thread.run_sync(self._move, name, DONE)
            self.done += 1
            return True
        try:
            payload = json.loads(file.data.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            if abs(time.time() - file.mtime) < SETTLE:
                return False                # probably half-written: look again next scan
            await self._reject(ctx, name, "", _json_problem(exc))
            return True
        single = not isinstance(payload, list)
        events = [payload] if single else payload
        events = [_with_id(event, name, digest, i) for i, event in enumerate(events)]
        try:
            await ctx.emit(events, cursor=(CURSOR_KEY, json.dumps({"file": name, "sha1": digest})))
        except EventError as exc:
            pointer = exc.pointer
            if single:                      # we sent [payload]: point into the file as written
                pointer = pointer[2:] if pointer.startswith("/0") else pointer
            await self._reject(ctx, name, pointer, exc.message)
            return True
        self._cursor = (name, digest)
        await trio.to_thread.run_sync(self._move, name, DONE)
        self.done += 1
        log.info("spool connector %s: %s: %d event(s) journaled", ctx.name, name, len(events))
        return True

    async def _reject(self, ctx: ConnectorContext, name: str, pointer: str, message: str) -> None:
        log.warning("spool connector %s: %s moved to %s/: %s: %s",
                    ctx.name, name, BAD, pointer or "/", message)
        await trio.to_thread.run_sync(self._move, name, BAD, _error_text(name, pointer, message))
        self.bad += 1

    # ------------------------------------------------------------------ blocking file work (threads)

    def _list(self) -> list[str]:
        with os.scandir(self.path) as entries:
            return sorted(e.name for e in entries
                          if e.name.lower().endswith(".json") and not e.name.startswith(".")
                          and e.is_file())

    def _read(self, name: str) -> _File | None:
        try:
            with open(self.path / name, "rb") as f:
                return _File(name, f.read(), os.fstat(f.fileno()).st_mtime)
        except FileNotFoundError:
            return None

    def _move(self, name: str, folder: str, error_text: str | None = None) -> Path:
        """Move the file into done/ or bad/ under a free name; the error file goes first,
        so a crash in between only means the file is rejected again."""
        target_dir = self.path / folder
        target_dir.mkdir(exist_ok=True)
        target = target_dir / name
        stem, suffix = os.path.splitext(name)
        n = 1
        while target.exists() or (error_text is not None and _error_file(target).exists()):
            target = target_dir / f"{stem}.{n}{suffix}"
            n += 1
        if error_text is not None:
            _error_file(target).write_text(error_text, encoding="utf-8")
        os.replace(self.path / name, target)
        return target


# ---------------------------------------------------------------------- helpers



def _folder_problem(path: Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"folder {path} does not exist"
    if isinstance(exc, NotADirectoryError):
        return f"{path} is not a folder"
    return f"cannot read folder {path}: {exc.strerror or exc}"


def _parse_cursor(value: str | None) -> tuple[str, str] | None:
    try:
        data = json.loads(value) if value else None
        return (data["file"], data["sha1"]) if data else None
    except (ValueError, TypeError, KeyError):
        return None


def _with_id(event: Any, name: str, digest: str, index: int) -> Any:
    """The event, with an id derived from its file when it has none. The same file
    (name and content) always gives the same ids, so journaling it again is a no-op."""
    if not isinstance(event, dict) or event.get("id") is not None:
        return event                     # not an object: emit reports it with its pointer
    return {**event, "id": f"spool:{name}:{index}:{digest[:12]}"}


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if isinstance(exc, UnicodeDecodeError):
        return f"the file is not UTF-8 text (byte {exc.start})"
    return f"invalid JSON: {exc}"


def _error_file(target: Path) -> Path:
    return target.with_name(target.name + ".error.txt")


def _error_text(name: str, pointer: str, message: str) -> str:
    return (f"file: {name}\n"
            f"pointer: {pointer or '(the whole file)'}\n"
            f"error: {message}\n"
            f"\nFix the file and move it back into the spool folder to retry.\n")


CONNECTOR = SpoolConnector
