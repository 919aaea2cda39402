"""`smtp:` — the mail server for e-mail alerts."""

from __future__ import annotations

from herald.engine.config.model import SmtpConfig
from herald.engine.config.reader import _Val
from herald.engine.config.values import ValueReader

SMTP_KEYS = ("host", "port", "from", "username", "password", "starttls")


def read_smtp(r: ValueReader, node: _Val | None) -> SmtpConfig | None:
    if node is None:
        return None
    r.check_keys(node, SMTP_KEYS, "smtp")
    h = r.child(node, "host")
    if h is None:
        r.error("smtp: host is required", node.key_loc or node.loc,
                "e.g. host: 127.0.0.1 (or remove smtp: to send no e-mail alerts)")
    username = r.string(r.child(node, "username"), "") or None
    return SmtpConfig(
        host=r.string(h, "localhost", what="a host name", allow_empty=False),
        port=r.number(r.child(node, "port"), 25, what="a port number", integer=True,
                      positive=True, maximum=65535),
        from_addr=r.email(r.child(node, "from"), "herald@localhost"),
        username=username,
        password=r.secret(r.child(node, "password")),
        starttls=r.boolean(r.child(node, "starttls"), False),
    )
