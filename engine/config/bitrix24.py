"""`bitrix24:` — Bitrix24's outbound webhooks (docs/bitrix24.md)."""

from __future__ import annotations

from typing import Mapping
from urllib.parse import urlsplit

from herald.engine.config.model import Bitrix24Config, Site
from herald.engine.config.reader import _Val
from herald.engine.config.secret import Secret
from herald.engine.config.values import ValueReader
from herald.engine.errors import did_you_mean

BITRIX24_KEYS = ("application_token", "site", "rest_url")


def read_bitrix24(r: ValueReader, node: _Val | None, sites: Mapping[str, Site]) -> Bitrix24Config | None:
    """`bitrix24: {application_token: !env B24_TOKEN, site: s1}`."""
    if node is None:
        return None
    r.check_keys(node, BITRIX24_KEYS, "bitrix24")
    t = r.child(node, "application_token")
    reported = len(r.sink.items)
    token = r.secret(t)
    if token is None and len(r.sink.items) == reported:   # absent or empty, not already reported
        r.error("bitrix24: application_token is required", (t.loc if t else node.key_loc or node.loc),
                "e.g. application_token: !env B24_TOKEN (the token Bitrix24 shows for the webhook)")
    s = r.child(node, "site")
    site = r.string(s, "", what="a site id", allow_empty=False) or None if s is not None else None
    if site is not None and sites and site not in sites:
        r.error(f'bitrix24.site: unknown site "{site}"', s.loc,
                did_you_mean(site, tuple(sites)) or "configured sites: " + ", ".join(sites))
    rest_url = _rest_url(r, r.child(node, "rest_url"))
    return (Bitrix24Config(application_token=token, site=site, rest_url=rest_url)
            if token is not None else None)


def _rest_url(r: ValueReader, v: _Val | None) -> Secret | None:
    """`rest_url: !env B24_REST_URL` — an incoming webhook's URL, which holds its token:
    the error never shows the value."""
    url = r.secret(v)
    if url is None:
        return None
    parts = urlsplit(url.reveal().strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        r.error("bitrix24.rest_url: expected the URL of a Bitrix24 incoming webhook", v.loc,
                "like https://portal.bitrix24.ru/rest/1/abc123/ (Developer resources → Other → "
                "Inbound webhook, with the task and user scopes)", secret=True)
        return None
    text = url.reveal().strip()
    return Secret(text if text.endswith("/") else text + "/")
