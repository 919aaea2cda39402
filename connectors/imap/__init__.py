"""The IMAP connector: mails arriving in a mailbox become events.

    connectors:
      - type: imap
        name: mailbox
        host: mail.example.com
        user: herald@example.com
        password: !env IMAP_PASSWORD
        folder: INBOX
        move_to: Herald/Done          # or flag: "\\Seen" (the default)

A shop that e-mails its notifications (Bitrix, or any other) sends a copy — BCC or a
forwarding rule — to a mailbox; this connector reads it. How a mail becomes an event
(`mail.<EVENT_NAME>`) is connectors/mail.py; this module is the mailbox side:

- `imapclient` in worker threads (trio.to_thread), one connection, TLS (default),
  STARTTLS or, on loopback only, plain;
- IDLE where the server offers it (a new mail is an event within moments), polling
  every `interval` seconds otherwise;
- every message after the position is taken, `batch` at a time, in UID order — by
  its UID alone: a mail someone else already marked read is still new. The position —
  UIDVALIDITY, the last UID and the INTERNALDATE of the newest mail seen — is the
  connector's cursor, moved in the same transaction as the events (`ctx.emit(events,
  cursor=…)`). A changed UIDVALIDITY makes the UIDs meaningless: the folder's mail
  delivered at or after that date (and after what `start: end` left alone) is new, the
  rest is not; the event ids (from the Message-ID) keep a mail journaled before from
  counting twice;
- only after the events are committed is the mail acknowledged: flagged (`flag`) or
  moved (`move_to`). A crash or a refused acknowledgement in between leaves mail below
  the position unacknowledged (the leftovers); the next round — the next session after
  a crash — acknowledges it without journaling it again, and new mail never waits
  for it;
- a bad mail (oversize, unparseable, unknown charset, no event name) is journaled as a
  `mail.rejected` event with the reason and moved to the `quarantine` folder; the
  mailbox goes on;
- a failure reports down in /health at once, reconnects with back-off (1 s … 60 s,
  jittered), and after `silence` seconds journals `connector.down`, then
  `connector.up` when it works again (connectors/outage.py). A quiet IDLE is healthy;
  it is renewed every min(`timeout`, 60) seconds and the server must answer within
  `timeout`, so a frozen server or a silently dropped connection is noticed.

The password never reaches a log line, an error or /health.
User documentation: docs/connectors/imap.md.

The package: options.py (the options, checked), connector.py (the mailbox and the loop).
"""

from herald.connectors.imap.connector import ImapConnector

__all__ = ["ImapConnector", "CONNECTOR"]

CONNECTOR = ImapConnector
"""What herald.connectors.find("imap") returns."""
