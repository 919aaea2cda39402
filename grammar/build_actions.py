"""Actions: `send … to … using/text …` with its options, `subscribe`, `unsubscribe`. A part of RuleBuilder."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from herald.engine.helpers.windows import parse_window
from herald.grammar.literals import unquote as _unquote
from herald.grammar.model import Recipient, Send, Subscribe
from herald.grammar.tree import Placeholder as _Placeholder, broken as _broken, loc as _loc



class ActionParts:
    """Callbacks for actions; mixed into RuleBuilder."""

    # ---- actions ----
    def sms(self, items: list):
        return ("channel", "sms")

    def viber(self, items: list):
        return ("channel", "viber")

    def omni(self, items: list):
        return ("channel", "omni")

    def send(self, items: list):
        send_token, items = items[0], items[1:]
        channel = None
        if isinstance(items[0], tuple) and items[0][0] == "channel":
            channel, items = items[0][1], items[1:]
        recipients, content, options = items[0], items[1], items[2:]
        fields: dict[str, Any] = {}
        for name, value, token in options:
            if name in fields:
                return self._error(f"`{_OPTION_WORDS[name]}` is given twice", token or send_token)
            fields[name] = value
            if name in ("sender", "window"):
                fields[name + "_token"] = token
        if _broken(recipients) or any(isinstance(v, _Placeholder) for v in fields.values()):
            return _Placeholder()
        kind, value, content_token = content
        sender_token = fields.get("sender_token")
        return Send(
            channel=channel, recipients=tuple(recipients),
            template=value if kind == "using" else None,
            text=value if kind == "text" else None,
            sender=fields.get("sender"), window=fields.get("window"),
            stale_after=fields.get("stale"), copy_admins=fields.get("copy", False),
            fallback_after=fields.get("fallback"),
            location=_loc(self, send_token), template_location=_loc(self, content_token),
            sender_location=_loc(self, sender_token) if sender_token is not None else None,
        )

    def subscribe(self, items: list):
        path, token = items
        return Subscribe(path.path, _unquote(token), True, path.location)

    def unsubscribe(self, items: list):
        path, token = items
        return Subscribe(path.path, _unquote(token), False, path.location)

    def using(self, items: list):
        return ("using", _unquote(items[0]), items[0])

    def text(self, items: list):
        return ("text", _unquote(items[0]), items[0])

    def from_sender(self, items: list):
        return ("sender", _unquote(items[0]), items[0])

    def between(self, items: list):
        (token,) = items
        text = _unquote(token) if token.type == "STRING" else str(token)
        try:
            return ("window", _window(text), token)
        except ValueError as exc:
            return ("window", self._error(f"invalid window {text!r}: {exc}", token), token)

    def stale_after(self, items: list):
        return ("stale", self._duration(items[0]), items[0])

    def fallback_after(self, items: list):
        return ("fallback", self._duration(items[0]), items[0])

    def copy_admins(self, items: list):
        return ("copy", True, None)

    def recipients(self, items: list):
        return items

    def to_path(self, items: list):
        path = items[0]
        if "*" in path.path or path.path[0] in ("event",):
            return self._error(f"`{path}` cannot hold a phone number", self._token_of(path))
        return Recipient("path", path.path, path.location)

    def to_literal(self, items: list):
        return Recipient("phone", _unquote(items[0]), _loc(self, items[0]))

    def to_user(self, items: list):
        return Recipient("user", items[0].path, items[0].location)

    def to_admins(self, items: list):
        return Recipient("admins")

    def to_department(self, items: list):
        return Recipient("department", _unquote(items[0]), _loc(self, items[0]))

    def to_group(self, items: list):
        return Recipient("group", _unquote(items[0]), _loc(self, items[0]))

    def to_subscribers(self, items: list):
        return Recipient("subscribers", _unquote(items[0]), _loc(self, items[0]))


@lru_cache(maxsize=1024)
def _window(text: str):
    return parse_window(text)          # the same few windows recur in every file


_OPTION_WORDS = {"sender": "from", "window": "between", "stale": "stale after", "copy": "copy admins",
                 "fallback": "fallback after"}
