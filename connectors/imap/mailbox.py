"""The IMAP connector's blocking side: the mailbox calls that run in worker threads
(connect, fetch, acknowledge, move). Mixed into ImapConnector, whose options they read."""

from __future__ import annotations

import ssl

from imapclient import IMAPClient

from herald.connectors.imap.options import _SYSTEM_FLAGS
from herald.connectors.imap.fetched import _Fetched, _close, _seconds
from herald.engine.config import reveal


class MailboxCalls:
    """Blocking IMAP calls; each runs in a worker thread (ImapConnector._call)."""

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> tuple[IMAPClient, bool]:
        """Connect, log in, make sure the folders exist: (connection, IDLE offered)."""
        conn = IMAPClient(self.host, port=self.port, ssl=self.security == "tls",
                          ssl_context=self._ssl_context() if self.security == "tls" else None,
                          timeout=self.timeout)
        conn.normalise_times = False      # INTERNALDATE with its zone: the position stores Unix seconds
        try:
            if self.security == "starttls":
                conn.starttls(self._ssl_context())
            conn.login(self.user, reveal(self._password))
            for folder in (self.move_to, self.quarantine):
                if folder and not conn.folder_exists(folder):
                    conn.create_folder(folder)
            return conn, conn.has_capability("IDLE")
        except BaseException:
            _close(conn)
            raise

    def _unacked(self) -> list:
        """The search criteria of mail not acknowledged yet."""
        if self.move_to:
            return []
        system = _SYSTEM_FLAGS.get(self.flag.lower())
        return [f"UN{system}"] if system else ["UNKEYWORD", self.flag]

    def _fetch(self, conn: IMAPClient, uids: list[int]) -> list[_Fetched]:
        """The mails of these UIDs (only the headers of an oversize one). The server may
        add unsolicited FETCH responses (another client's flag change): only requested
        UIDs that carry what was asked for count — a mail expunged meanwhile is gone."""
        wanted = set(uids)
        info = {u: d for u, d in conn.fetch(uids, ["RFC822.SIZE", "INTERNALDATE"]).items()
                if u in wanted and b"RFC822.SIZE" in d}
        small = [u for u in uids if u in info and info[u][b"RFC822.SIZE"] <= self.mapping.max_size]
        big = [u for u in uids if u in info and info[u][b"RFC822.SIZE"] > self.mapping.max_size]
        out = {}
        for ask, part, chosen in (("BODY.PEEK[]", b"BODY[]", small),
                                  ("BODY.PEEK[HEADER]", b"BODY[HEADER]", big)):     # headers: for the record
            if not chosen:
                continue
            asked = set(chosen)
            for uid, data in conn.fetch(chosen, [ask]).items():
                if uid in asked and part in data:
                    out[uid] = _Fetched(uid, data[part] or b"", info[uid][b"RFC822.SIZE"],
                                        _seconds(info[uid].get(b"INTERNALDATE")))
        return [out[u] for u in sorted(out)]

    def _dates(self, conn: IMAPClient, uids: list[int] | str) -> dict[int, int]:
        """UID → INTERNALDATE (Unix seconds)."""
        out = {}
        for uid, data in conn.fetch(uids, ["INTERNALDATE"]).items():
            seconds = _seconds(data.get(b"INTERNALDATE"))
            if seconds is not None:
                out[uid] = seconds
        return out

    def _acknowledge(self, conn: IMAPClient, done: list[int], bad: list[int]) -> None:
        if done:
            if self.move_to:
                self._move(conn, done, self.move_to)
            else:
                conn.add_flags(done, [self.flag], silent=True)
        if bad:
            self._move(conn, bad, self.quarantine)

    @staticmethod
    def _move(conn: IMAPClient, uids: list[int], folder: str) -> None:
        if conn.has_capability("MOVE"):
            conn.move(uids, folder)
            return
        conn.copy(uids, folder)
        conn.add_flags(uids, [b"\\Deleted"], silent=True)
        if conn.has_capability("UIDPLUS"):
            conn.uid_expunge(uids)
        else:
            conn.expunge()
