"""Admin alerts by e-mail: one mail when an incident opens, one when it is resolved.

An incident has a key ("provider.down:main", "bsg.error:8", "balance.low"); raising it
while it is open only counts it, so a thousand failing messages make one mail, not a
thousand. Incidents and the mails they queue live in the store (migration 0007_alerts):
`open()` and `resolve()` run in the database thread inside the caller's transaction,
so an alert is recorded atomically with whatever caused it, and survives a restart.

An incident still open at start is re-checked, not trusted (docs/alerts.md, "Across a
restart"): `carry_over()` settles what the store can tell and hands the rest to its
owner (the dispatcher re-probes a `provider.down` endpoint at once). And a stale one never
swallows a new outage: `open(fresh=True)` closes it, with its mail, before opening anew.

`run()` is the trio task that delivers queued mails over SMTP. A mail is marked sent
right after the SMTP server accepted it; a crash between the two is the only way a
mail goes twice (it then carries the same Message-Id, so mail clients can merge it).
"""

from __future__ import annotations

import logging
import random
import smtplib
import socket
import ssl
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid
from typing import Any, Awaitable, Callable, Iterable, Sequence
from zoneinfo import ZoneInfo

import trio

from herald.engine.config import Config, SmtpConfig
from herald.engine.redaction import secret_values
from herald.engine.store import Store

log = logging.getLogger("herald.alerts")

SUBJECT_PREFIX = "[Herald] "
SMTP_TIMEOUT = 30.0        # seconds for connect and each SMTP command
SMTPS_PORT = 465           # implicit TLS (SMTPS); any other port is plain SMTP, STARTTLS if configured

# Errors that say the server (or the way to it) is unavailable: every queued mail waits.
# Anything else the server answered is about one mail: only that one waits.
_SERVER_ERRORS = (OSError, smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected,
                  smtplib.SMTPHeloError, smtplib.SMTPNotSupportedError, smtplib.SMTPAuthenticationError)

Db = Callable[..., Awaitable[Any]]

STALE_BODY = ("Herald did not record when this ended (most likely it ended while Herald was stopped or "
              "restarting), but Herald has seen it over since, so this incident is closed now.\n\n"
              "It has just started again: the next mail is about that new incident.")


class Alerter:
    """Admin alerts: one e-mail per incident, never one per message; incidents survive restarts.

    `config` is read at every `open()`/`resolve()` and send: assign a reloaded config to
    `alerter.config`. `retry_base`/`retry_cap` bound the SMTP retry back-off (seconds);
    `poll` is how long `run()` sleeps at most without a wake-up (a safety net only).
    """

    def __init__(self, store: Store, config: Config, now: Callable[[], datetime], *,
                 retry_base: float = 5.0, retry_cap: float = 900.0, poll: float = 60.0) -> None:
        self.store = store
        self.config = config
        self.now = now
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.poll = poll
        self._token: trio.lowlevel.TrioToken | None = None
        self._wakeup = trio.Event()

    # ---- raising and resolving (database thread, inside the caller's transaction) ----
    def open(self, key: str, subject: str, body: str, *, site: str | None = None, fresh: bool = False) -> bool:
        """Open incident `key`. Queues ONE e-mail when it was not already open (True);
        an open incident raised again is only counted (False).

        `fresh=True` says the caller saw the condition begin just now, after seeing it
        fine (an endpoint that took traffic trips): an incident of that key still open
        in the store is then stale — its end was never recorded, e.g. across a crash —
        so it is closed (with its own recovery mail) and the new one opens and mails.
        A stale incident never swallows a new outage's mail."""
        when = self.now()
        with self.store.transaction():
            if fresh:
                self._close_stale(key, when)
            incident = self.store.open_incident(key, site, subject, when)
            if incident is None:
                return False
            recipients = self.recipients(site)
            text = self._redact(self._opened_body(key, body, site, when))
            queued = self._queue(incident, "opened", recipients, subject, text, when)
        log.warning("incident %s opened: %s%s", key, self._redact(subject), self._mail_note(queued, recipients, site))
        return True

    def resolve(self, key: str, subject: str, body: str) -> bool:
        """Close incident `key` if it is open and queue the recovery e-mail; True then."""
        when = self.now()
        with self.store.transaction():
            incident = self.store.resolve_incident(key, when)
            if incident is None:
                return False
            recipients = self.recipients(incident["site"])
            text = self._redact(self._resolved_body(incident, body, when))
            queued = self._queue(incident["id"], "resolved", recipients, subject, text, when)
        log.info("incident %s resolved after %s: %s%s", key, _duration(when - incident["opened_at"]),
                 self._redact(subject), self._mail_note(queued, recipients, incident["site"]))
        return True

    def _close_stale(self, key: str, when: datetime) -> None:
        stale = self.store.resolve_incident(key, when)
        if stale is None:
            return
        recipients = self.recipients(stale["site"])
        text = self._redact(self._resolved_body(stale, STALE_BODY, when))
        queued = self._queue(stale["id"], "resolved", recipients, f"Ended: {stale['subject']}", text, when)
        log.warning("incident %s (open since %s) was still open although it had ended unseen: closed, and the "
                    "new one opens%s", key, self._time(stale["opened_at"]),
                    self._mail_note(queued, recipients, stale["site"]))

    def carry_over(self) -> list[dict]:
        """At start (database thread): the incidents a previous run left open. Those this
        module can check against the store alone are settled now — `campaign.stopped:ID`
        is resolved unless campaign ID is still stopped; the others are returned, for
        their owners to re-check (the dispatcher: provider.down, bsg.error, balance.low)."""
        left = []
        for incident in self.store.open_incidents():
            key = incident["key"]
            kind, _, name = key.partition(":")
            if kind == "campaign.stopped":
                campaign = self.store.campaign(int(name)) if name.isdigit() else None
                if campaign is None or campaign["state"] != "stopped":
                    state = campaign["state"] if campaign else "gone"
                    label = (campaign or {}).get("name") or f"#{name}"
                    self.resolve(key, f"Campaign {label} is no longer stopped",
                                 f"The campaign is {state} now (found when Herald started).")
                    continue
            left.append(incident)
        if left:
            log.info("%d incident(s) still open from before this start, re-checked now: %s", len(left),
                     ", ".join(i["key"] for i in left))
        return left

    def open_incidents(self) -> list[dict]:
        """Open incidents for /health, oldest first: key, site, subject, since (ISO 8601),
        occurrences (how often it was raised while open). Call it in the database thread."""
        return [{"key": i["key"], "site": i["site"], "subject": i["subject"], "since": i["since"].isoformat(),
                 "occurrences": i["occurrences"]} for i in self.store.open_incidents()]

    def unsent_mails(self) -> int:
        """Alert mails queued and not yet accepted by the SMTP server (database thread)."""
        return self.store.alert_mail_backlog()

    def recipients(self, site: str | None) -> list[str]:
        """The site's admin_email, or for a global incident every site's (distinct, in order)."""
        sites = self.config.sites
        if site is None:
            chosen = list(sites.values())
        else:
            chosen = [sites[site]] if site in sites else []
        out: list[str] = []
        for s in chosen:
            for _, address in getaddresses([(s.admin_email or "").replace(";", ",")]):
                if "@" in address and address.lower() not in (a.lower() for a in out):
                    out.append(address)
        return out

    def _queue(self, incident_id: int, kind: str, recipients: Sequence[str], subject: str, text: str,
               when: datetime) -> bool:
        smtp = self.config.smtp
        if smtp is None or not recipients:
            return False
        full = subject if subject.startswith(SUBJECT_PREFIX) else SUBJECT_PREFIX + subject
        domain = smtp.from_addr.rpartition("@")[2] or "localhost"
        message_id = make_msgid(f"herald.alert.{kind}.{incident_id}", domain=domain)
        self.store.queue_alert_mail(incident_id, kind, recipients, self._redact(full), text, message_id, when)
        self._wake()
        return True

    def _mail_note(self, queued: bool, recipients: Sequence[str], site: str | None) -> str:
        if queued:
            return f" (alert mail queued for {', '.join(recipients)})"
        if self.config.smtp is None:
            return " (no alert mail: no smtp: in the config)"
        if site is not None:
            return f" (no alert mail: site {site} has no admin_email)"
        return " (no alert mail: no site has an admin_email)"

    # ---- the mail text ----
    def _opened_body(self, key: str, body: str, site: str | None, when: datetime) -> str:
        lines = [body.rstrip(), "", f"Incident: {key}", f"Since:    {self._time(when)}"]
        lines += self._site_lines(site)
        lines += ["", "Herald mails once more when this is resolved, and no more about it meanwhile.",
                  "GET /health lists the open incidents."]
        return self._signed(lines, site)

    def _resolved_body(self, incident: dict, body: str, when: datetime) -> str:
        opened = incident["opened_at"]
        lines = [body.rstrip(), "", f"Incident: {incident['key']}",
                 f"Opened:   {self._time(opened)}", f"Resolved: {self._time(when)}",
                 f"Lasted:   {_duration(when - opened)}; raised {incident['occurrences']} time(s) while open"]
        lines += self._site_lines(incident["site"])
        return self._signed(lines, incident["site"])

    def _site_lines(self, site: str | None) -> list[str]:
        if site is None or site not in self.config.sites:
            return [] if site is None else [f"Site:     {site}"]
        s = self.config.sites[site]
        return [f"Site:     {site}" + (f" ({s.name})" if s.name and s.name != site else "")]

    def _signed(self, lines: list[str], site: str | None) -> str:
        where = f"the admin_email of site {site}" if site else "an admin_email"
        config = f" in {self.config.path}" if self.config.path else ""
        return "\n".join(lines + ["", "-- ", f"Herald on {socket.gethostname()}.",
                                   f"You get this mail because your address is {where}{config}."]) + "\n"

    def _time(self, when: datetime) -> str:
        local = when.astimezone(ZoneInfo(self.config.timezone))
        return f"{local:%Y-%m-%d %H:%M:%S} {self.config.timezone} ({when.astimezone(ZoneInfo('UTC')):%H:%M} UTC)"

    def _redact(self, text: str) -> str:
        """No secret of the config ever goes into a mail or a log line, whatever the caller wrote."""
        for secret in secret_values(self.config):
            text = text.replace(secret, "****")
        return text

    # ---- delivery (trio) ----
    def _wake(self) -> None:
        """Wake `run()`; safe from any thread (the token's run_sync_soon is thread-safe)."""
        token = self._token
        if token is None:
            return                      # run() not started: it reads the queue when it starts
        try:
            token.run_sync_soon(lambda: self._wakeup.set())
        except trio.RunFinishedError:
            pass

    async def run(self, db: Db, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver queued alert mails, oldest first, until cancelled. `db(fn, *args)` runs fn
        in the database thread."""
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        try:
            while True:
                self._wakeup = trio.Event()     # before reading: a wake-up from now on is kept
                await self._deliver_due(db)
                due = await db(self.store.next_alert_mail_due) if self.config.smtp else None
                timeout = self.poll if due is None else min(self.poll, (due - self.now()).total_seconds())
                if timeout > 0:
                    with trio.move_on_after(timeout):
                        await self._wakeup.wait()
        finally:
            self._token = None

    async def _deliver_due(self, db: Db) -> None:
        smtp = self.config.smtp
        if smtp is None:
            return                      # mails queued before smtp: was removed wait for it to return
        mails = await db(self.store.due_alert_mails, self.now())
        for i, mail in enumerate(mails):
            try:
                refused = await trio.to_thread.run_sync(self._send, smtp, mail, abandon_on_cancel=True)
            except Exception as exc:        # whatever it is, it must not stop the daemon: retry later
                error = self._redact(_describe(exc))
                whole_queue = isinstance(exc, _SERVER_ERRORS)
                waiting = mails[i:] if whole_queue else [mail]
                retry_at = self.now() + timedelta(seconds=self._backoff(mail["attempts"] + 1))
                await db(self._postpone, [m["id"] for m in waiting], error, retry_at)
                expected = isinstance(exc, (smtplib.SMTPException, OSError))
                log.log(logging.WARNING if expected else logging.ERROR,
                        "alert mail %r not sent (attempt %d, %d mail(s) waiting): %s; next try at %s",
                        mail["subject"], mail["attempts"] + 1, len(waiting), error, self._time(retry_at))
                if whole_queue:
                    return
                continue
            await db(self.store.alert_mail_sent, mail["id"], self.now())
            log.info("alert mail %r sent to %s", mail["subject"], ", ".join(mail["recipients"]))
            if refused:
                log.warning("alert mail %r: the SMTP server refused %s", mail["subject"],
                            self._redact(", ".join(f"{a} ({_describe_reply(*r)})" for a, r in refused.items())))

    def _postpone(self, ids: Iterable[int], error: str, retry_at: datetime) -> None:
        with self.store.transaction():
            for mail_id in ids:
                self.store.alert_mail_failed(mail_id, error, retry_at)

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with jitter: between half and all of base·2^(attempt-1), capped."""
        delay = min(self.retry_cap, self.retry_base * 2 ** min(attempt - 1, 30))
        return delay / 2 + random.uniform(0, delay / 2)

    def _send(self, smtp: SmtpConfig, mail: dict) -> dict:
        """One SMTP transaction (worker thread). Returns the recipients refused while others
        were accepted; raises when none was or the server failed."""
        message = self.message(smtp, mail)
        factory = smtplib.SMTP_SSL if smtp.port == SMTPS_PORT else smtplib.SMTP
        extra = {"context": ssl.create_default_context()} if factory is smtplib.SMTP_SSL else {}
        with factory(smtp.host, smtp.port, timeout=SMTP_TIMEOUT, **extra) as client:
            if smtp.starttls and factory is smtplib.SMTP:
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                password = smtp.password.reveal() if smtp.password else ""
                client.login(smtp.username, password)
            return client.send_message(message, smtp.from_addr, mail["recipients"])

    def message(self, smtp: SmtpConfig, mail: dict) -> EmailMessage:
        """The e-mail of a queued alert: plain UTF-8 text, Date = when it was raised."""
        message = EmailMessage()
        message["Subject"] = mail["subject"]
        message["From"] = smtp.from_addr
        message["To"] = ", ".join(mail["recipients"])
        message["Date"] = format_datetime(mail["created_at"])
        message["Message-Id"] = mail["message_id"]
        message["Auto-Submitted"] = "auto-generated"     # RFC 3834: no vacation replies to Herald
        message.set_content(mail["body"], charset="utf-8")
        return message


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient refused: " + ", ".join(f"{a} ({_describe_reply(*r)})"
                                                       for a, r in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__}: {_describe_reply(exc.smtp_code, exc.smtp_error)}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _describe_reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}".strip()


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
