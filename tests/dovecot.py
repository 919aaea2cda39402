"""A throw-away Dovecot IMAP server for tests (Debian's `dovecot-imapd`).

`dovecot` (fixture): a separate Dovecot instance with its own config file, base_dir,
maildir and passwd-file user under the test's tmp_path, listening on free loopback
ports — plain IMAP (STARTTLS offered) and IMAPS, with a self-signed certificate made by
the `openssl` CLI — stopped after the test. It never touches the system's Dovecot.

    def test_x(dovecot):
        dovecot.append(raw_bytes)            # IMAP APPEND to INBOX
        dovecot.restart()                    # stop and start on the same ports

Missing Dovecot skips the test with how to install it, or fails it under `CI=true`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
USER, PASSWORD = "shop", "mail-Secret-42"
HOW_TO_INSTALL = "install Debian's dovecot-imapd (apt-get install -y dovecot-imapd)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing() -> None:
    message = f"Dovecot not found at {DOVECOT} — {HOW_TO_INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class Dovecot:
    """One running instance; `port` is plain IMAP (with STARTTLS), `tls_port` IMAPS."""

    def __init__(self, root: Path):
        self.root = root
        self.host = "127.0.0.1"
        self.port, self.tls_port = _free_port(), _free_port()
        self.user, self.password = USER, PASSWORD
        self.cert = root / "cert.pem"
        self.process: subprocess.Popen | None = None
        self._write_files()

    # ------------------------------------------------------------------ setup

    def _write_files(self) -> None:
        for sub in ("run", "state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(self.root / "key.pem"), "-out", str(self.cert)],
                       check=True, capture_output=True)
        me = pwd.getpwuid(os.getuid())
        if os.getuid() == 0:                       # root: Dovecot's own users for its helpers
            internal, login = "dovecot", "dovenull"
        else:                                      # unprivileged: everything runs as us
            internal = login = me.pw_name
        auth_user = me.pw_name           # reads the passwd file inside tmp_path (mode 0700 parents)
        (self.root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        # Dovecot refuses uid 0 for mail: as root the maildir belongs to the dovecot user,
        # in a folder of its own (tmp_path's parents are mode 0700, closed to it).
        mail_owner = pwd.getpwnam("dovecot") if os.getuid() == 0 else me
        self.mail = Path(tempfile.mkdtemp(prefix="herald-dovecot-"))
        os.chown(self.mail, mail_owner.pw_uid, mail_owner.pw_gid)
        (self.root / "dovecot.conf").write_text(f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
instance_name = herald-test-{self.port}
log_path = {self.root}/dovecot.log
protocols = imap
mail_fsync = never
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 0
mail_location = maildir:{self.mail}/%u
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_owner.pw_uid} gid={mail_owner.pw_gid} home={self.mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
service auth {{
  user = {auth_user}
}}
service auth-worker {{
  user = {auth_user}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
""")
    # ------------------------------------------------------------------ control

    def start(self) -> None:
        # its own process group: stop() ends the master and every child it forked (as
        # systemd does with the service's cgroup) — a master alone leaves sessions open
        self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.process.stdout.read().decode(errors='replace')}"
                                   f"{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not answer on {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            group = self.process.pid               # = its process group (start_new_session)
            for sig, patience in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
                if not _signal_group(group, sig):
                    break
                deadline = time.monotonic() + patience
                while time.monotonic() < deadline and self.process.poll() is None or _signal_group(group, 0):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ mailbox

    def client(self):
        """A logged-in IMAPClient on the plain port (the test's own, not Herald's)."""
        from imapclient import IMAPClient
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        client.login(self.user, self.password)
        return client

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        client = self.client()
        try:
            for i in range(0, len(messages), 200):         # MULTIAPPEND: one command per 200
                client.multiappend(folder, list(messages[i:i + 200]))
        finally:
            client.logout()

    def folder(self, folder: str = "INBOX") -> list[bytes]:
        """The raw messages now in a folder (empty when it does not exist)."""
        client = self.client()
        try:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [fetched[u][b"BODY[]"] for u in sorted(fetched)]
        finally:
            client.logout()

    def flags(self, folder: str = "INBOX") -> list[tuple]:
        client = self.client()
        try:
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            return [v[b"FLAGS"] for _, v in sorted(client.fetch(uids, ["FLAGS"]).items())] if uids else []
        finally:
            client.logout()

    def set_uidvalidity(self, value: int, folder: str = "INBOX") -> None:
        """Change a folder's UIDVALIDITY, as a server does when it rebuilds a mailbox."""
        subprocess.run([DOVEADM, "-c", str(self.root / "dovecot.conf"), "mailbox", "update", "-u", self.user,
                        "--uid-validity", str(value), folder], check=True, capture_output=True)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def _signal_group(group: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group is gone."""
    try:
        os.killpg(group, sig)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture
def dovecot(tmp_path):
    if not os.path.exists(DOVECOT):
        _missing()
    server = Dovecot(tmp_path / "dovecot")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.mail, ignore_errors=True)


def bitrix_mail(event_name: str | None, *, to: str = "ivan@example.com",
                subject: str = "Modern Clothes: Новый заказ N1", text: str = "Ваш заказ номер 1 принят.",
                message_id: str | None = None, charset: str = "utf-8", cte: str = "quoted-printable",
                html: bool = False, headers: dict | None = None) -> bytes:
    """A mail as Bitrix sends it, byte for byte: an X-EVENT_NAME header (unless None),
    the subject RFC 2047-encoded in `charset`, the body in `charset` and `cte`."""
    import base64
    import quopri
    from email.header import Header
    from email.utils import formataddr, formatdate, make_msgid, parseaddr

    body = text.replace("\n", "\r\n").encode(charset)
    encoded = base64.encodebytes(body) if cte == "base64" else quopri.encodestring(body)
    head = {"From": "Modern Clothes <shop@example.com>", "To": formataddr(parseaddr(to), charset),
            "Subject": Header(subject, charset).encode(), "Date": formatdate(localtime=False),
            "Message-ID": message_id or make_msgid(domain="shop.example.com"), "MIME-Version": "1.0",
            "Content-Type": f"text/{'html' if html else 'plain'}; charset={charset}",
            "Content-Transfer-Encoding": cte, **({"X-EVENT_NAME": event_name} if event_name else {}),
            **(headers or {})}
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode("ascii")
    return lines + b"\r\n" + encoded.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
