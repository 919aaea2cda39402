"""`senders:` and `sites:` — sender names, and each site's time zone, channel, window, admins."""

from __future__ import annotations

import re

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from herald.engine.config.model import (
    CHANNELS, DEFAULT_CHANNEL, DEFAULT_SITE_ID, DEFAULT_SMS_SENDERS, DEFAULT_VIBER_SENDERS, OMNI_MODES, Senders,
    Site,
)
from herald.engine.config.reader import _MISSING, _Val, _is_bool, _what
from herald.engine.config.values import ValueReader
from herald.engine.errors import Location, did_you_mean
from herald.engine.helpers.windows import WINDOW_FORMAT, parse_window

SENDER_KEYS = ("sms", "viber")
SITE_KEYS = ("name", "server_name", "email_from", "phone_from", "timezone", "channel",
             "sms_sender", "viber_sender", "send_window", "admins", "admin_email",
             "translit", "omni", "omni_deadline", "language", "api_key", "uncertain_failover_after")


def read_senders(r: ValueReader, node: _Val | None) -> Senders:
    if node is None:
        return Senders()
    r.check_keys(node, SENDER_KEYS, "senders")
    sms = r.str_list(r.child(node, "sms"), DEFAULT_SMS_SENDERS, what="SMS senders")
    viber = r.str_list(r.child(node, "viber"), DEFAULT_VIBER_SENDERS,
                       what="Viber senders")
    good_sms = []
    for i, s in enumerate(sms):
        digits = s.lstrip("+").isdigit()
        if (digits and len(s.lstrip("+")) > 15) or (not digits and len(s) > 11):
            r.error(f'senders.sms[{i}]: "{s}" is too long for an SMS sender', _item_loc(r, 
                node, "sms", i), "BSG allows up to 11 letters and digits, or 15 digits")
        else:
            good_sms.append(s)
    good_viber = []
    for i, s in enumerate(viber):
        if len(s) > 14:
            r.error(f'senders.viber[{i}]: "{s}" is too long for a Viber sender',
                    _item_loc(r, node, "viber", i), "BSG allows up to 14 characters")
        else:
            good_viber.append(s)
    return Senders(sms=tuple(good_sms) or sms, viber=tuple(good_viber) or viber)


def _item_loc(r: ValueReader, node: _Val, key: str, i: int) -> Location | None:
    seq = node.raw.get(key)
    loc = r.located(seq.lc.item, i) if isinstance(seq, CommentedSeq) else None
    return loc or r.child(node, key).loc


def read_sites(r: ValueReader, v: _Val | None, tz: str, senders: Senders) -> dict[str, Site]:
    sites: dict[str, Site] = {}
    if v is not None:
        raw, origin = r.resolve(v)
        if raw is not None and raw is not _MISSING:
            if not isinstance(raw, CommentedMap):
                r.error(f"sites: expected a mapping of site id to its keys (s1: ...), "
                        f"got {r.what(raw, origin)}", v.loc)
            else:
                for key in raw:
                    site_id = str(key).strip() if isinstance(key, (str, int)) and not _is_bool(key) else ""
                    entry = r.entry(v, key)
                    if not site_id or any(c.isspace() for c in site_id):
                        r.error(f"sites: a site id must be a word such as s1, got "
                                f"{_what(key) if not isinstance(key, str) else repr(str(key))}",
                                entry.key_loc)
                        continue
                    entry.path = f"sites.{site_id}"
                    sites[site_id] = _site(r, site_id, entry, tz, senders)
    if not sites:
        sites[DEFAULT_SITE_ID] = Site(id=DEFAULT_SITE_ID, name=DEFAULT_SITE_ID, timezone=tz,
                                      sms_sender=senders.sms[0],
                                      viber_sender=senders.viber[0])
    return sites


def _site(r: ValueReader, site_id: str, node: _Val, tz: str, senders: Senders) -> Site:
    raw, origin = r.resolve(node)
    if raw is None or raw is _MISSING:
        node = _Val(CommentedMap(), node.loc, node.path, node.key_loc)
    elif not isinstance(raw, CommentedMap):
        r.error(f"{node.path}: expected a mapping of the site's keys (name:, timezone:, ...), "
                f"got {r.what(raw, origin)}", node.loc)
        node = _Val(CommentedMap(), node.loc, node.path, node.key_loc)
    else:
        r.check_keys(node, SITE_KEYS, node.path)
    c = lambda key: r.child(node, key)  # noqa: E731
    window = None
    w = c("send_window")
    text = r.string(w, "", what="a window such as 09:00-21:00")
    if w is not None and text:
        try:
            window = parse_window(text)
        except ValueError as exc:
            origin = r.origin_of(w)
            message = str(exc) if not origin else f"the value of {origin} is not a window"
            r.error(f"{w.path}: {message}", w.loc,
                    WINDOW_FORMAT if message != WINDOW_FORMAT else None)
    admins = ()
    a = c("admins")
    if a is not None:
        raw_a, origin_a = r.resolve(a)
        if raw_a is not None and raw_a is not _MISSING:
            if not isinstance(raw_a, CommentedSeq):
                r.error(f"{a.path}: expected a list of phone numbers, got "
                        f"{r.what(raw_a, origin_a)}", a.loc,
                        'e.g. admins: ["+79001234567"]')
            else:
                admins = tuple(p for p in (r.phone(i, "") for i in r.items(a)) if p)
    return Site(
        id=site_id,
        name=r.string(c("name"), site_id),
        server_name=r.string(c("server_name"), ""),
        email_from=r.email(c("email_from"), ""),
        phone_from=r.phone(c("phone_from"), ""),
        timezone=r.timezone(c("timezone"), tz),
        channel=r.choice(c("channel"), DEFAULT_CHANNEL, CHANNELS, "a channel (sms, viber or omni)"),
        sms_sender=_sender(r, c("sms_sender"), senders.sms, "senders.sms"),
        viber_sender=_sender(r, c("viber_sender"), senders.viber, "senders.viber"),
        send_window=window,
        admins=admins,
        admin_email=r.email(c("admin_email"), ""),
        translit=r.boolean(c("translit"), False),
        omni=r.choice(c("omni"), "provider", OMNI_MODES, "an omni mode (provider or engine)"),
        omni_deadline=r.duration(c("omni_deadline"), 600.0),
        language=_language(r, c("language")),
        api_key=r.secret(c("api_key")),
        uncertain_failover_after=r.wait_or_never(c("uncertain_failover_after"), None),
    )


def _sender(r: ValueReader, v: _Val | None, allowed: tuple[str, ...], where: str) -> str:
    value = r.string(v, allowed[0], what="a sender name", allow_empty=False)
    if v is None or value in allowed:
        return value
    origin = r.origin_of(v)
    hint = (None if origin else did_you_mean(value, allowed))
    hint = (hint + " " if hint else "") + f"{where} allows: {', '.join(allowed)}"
    r.error(f"{v.path}: {r.show(value, origin)} is not in {where}", v.loc, hint)
    return allowed[0]


def _language(r: ValueReader, v: _Val | None) -> str:
    value = r.string(v, "ru", what="a two-letter language code such as ru")
    if v is not None and not re.fullmatch(r"[a-z]{2}", value):
        r.error(f"{v.path}: {r.show(value, r.origin_of(v))} is not a two-letter "
                "language code", v.loc, "e.g. ru, en")
        return "ru"
    return value
