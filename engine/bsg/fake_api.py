"""The fake BSG's API: each request of BSG REST API v1 (BSG-API.md) answered on the fake's
state (engine/bsg/fake_state.py) — validation in the documented order with the documented
error codes, SMS (single, phones, individual; quotes), Viber, the balance and incoming SMS.
A whole-request error raises `_Reject`; engine/bsg/fake.py turns it into the answer.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from herald.engine.bsg.fake_state import (
    _ALPHA_SENDER, _NUMERIC_SENDER, _SMS_LIMITS, _TIME_FORMAT, _UCS2_LIMIT, _VIBER_TEXT_LIMIT, _ALPHA_NAME_LIMIT,
    FakeState, _Reject, _Task, _as_msisdn, _fmt_money, _int_in, _missing, _valid_reference)
from herald.engine.helpers.segments import analyze


class FakeBSG(FakeState):
    """The fake BSG: its state plus the API's requests. Not thread-safe (trio)."""

    # -- validation ----------------------------------------------------------

    def _originator_error(self, originator: object) -> int | None:
        if not isinstance(originator, str) or not (
            _NUMERIC_SENDER.fullmatch(originator) or _ALPHA_SENDER.fullmatch(originator)
        ):
            return 25
        if self.sms_senders is not None and originator not in self.sms_senders:
            return 32
        return None

    @staticmethod
    def _sms_text_error(text: object) -> int | None:
        if not isinstance(text, str) or not text.strip():
            return 26
        seg = analyze(text)
        if seg.units > _SMS_LIMITS.get(seg.encoding, _UCS2_LIMIT):
            return 26
        return None

    def _recipient_error(self, channel: str, msisdn: object, reference: object,
                         seen_phones: set[str], seen_refs: set[str], quote: bool) -> int | None:
        viber = channel == "viber"
        phone = _as_msisdn(msisdn)
        if phone is None:
            return 41 if viber else 21
        if not quote:
            if _missing(reference):
                return 22
            if not _valid_reference(reference):
                return 47 if viber else 27
        if phone in seen_phones:
            return 51 if viber else 31
        seen_phones.add(phone)
        if not quote:
            if reference in seen_refs or reference in self._refs[channel]:
                return 43 if viber else 23
            seen_refs.add(reference)
            if self.balance <= 0:
                return 8
        return None

    # -- SMS -----------------------------------------------------------------

    def create_sms(self, body: object, *, quote: bool = False) -> dict:
        """POST /sms/create (or /sms/price with quote=True); raises _Reject for whole-request errors."""
        self.advance()
        if not isinstance(body, dict):
            raise _Reject(24)
        destination = body.get("destination")
        if _missing(destination):
            raise _Reject(3)
        if "validity" in body and body["validity"] is not None and not _int_in(body["validity"], 1, 72):
            raise _Reject(28, body.get("reference"))
        if destination == "phone":
            return self._sms_single(body, quote)
        if destination == "phones":
            return self._sms_phones(body, quote)
        if destination == "individual":
            return self._sms_individual(body, quote)
        raise _Reject(7)

    def _quote(self, total: Decimal) -> dict:
        return self._ok(totalprice=total, currency=self.currency)

    def _sms_single(self, body: dict, quote: bool) -> dict:
        msisdn, originator, text = body.get("msisdn"), body.get("originator"), body.get("body")
        reference = body.get("reference")
        if _missing(msisdn) or _missing(originator) or text is None:
            raise _Reject(3, reference)
        code = self._recipient_error("sms", msisdn, reference, set(), set(), quote=True)
        if code is None and not quote:
            if _missing(reference):
                code = 22
            elif not _valid_reference(reference):
                code = 27
        code = code or self._originator_error(originator) or self._sms_text_error(text)
        if code is None and not quote:
            if reference in self._refs["sms"]:
                code = 23
            elif self.balance <= 0:
                code = 8
        if code is not None:
            raise _Reject(code, reference)
        parts = analyze(text).parts
        price = self.sms_price * parts
        if quote:
            return self._quote(price)
        m = self._add("sms", _as_msisdn(msisdn), reference, originator, text, price, parts=parts)
        item = self._ok(reference=m.reference, id=m.id, price=m.price, currency=self.currency)
        if self._shape == "flat":
            return item
        return {"result": item}

    def _batch(self, phones: object) -> list:
        if not isinstance(phones, list) or not phones:
            raise _Reject(3)
        if len(phones) > self.max_batch:
            raise _Reject(12)
        return phones

    def _sms_phones(self, body: dict, quote: bool) -> dict:
        originator, text = body.get("originator"), body.get("body")
        phones = self._batch(body.get("phones"))
        if _missing(originator) or text is None:
            raise _Reject(3)
        code = self._originator_error(originator) or self._sms_text_error(text)
        if code is not None:
            raise _Reject(code)
        if not quote and self.balance <= 0:
            raise _Reject(8)
        parts = analyze(text).parts
        price = self.sms_price * parts
        task = None
        results: list[dict] = []
        total = Decimal(0)
        seen_phones: set[str] = set()
        seen_refs: set[str] = set()
        for item in phones:
            if not isinstance(item, dict):
                results.append(self.error(24))
                continue
            reference = item.get("reference")
            code = self._recipient_error("sms", item.get("msisdn"), reference,
                                         seen_phones, seen_refs, quote)
            if code is not None:
                results.append(self.error(code, reference))
                continue
            total += price
            if quote:
                continue
            if task is None:
                self._task_seq += 1
                task = _Task(str(self._task_seq), originator, text)
                self._tasks[task.id] = task
            m = self._add("sms", _as_msisdn(item["msisdn"]), reference, originator, text, price,
                          parts=parts, task_id=task.id)
            task.message_ids.append(m.id)
            results.append(self._ok(reference=reference, id=m.id, price=price, currency=self.currency))
        if quote:
            return self._quote(total)
        out: dict[str, Any] = {}
        if task is not None:
            out["task_id"] = task.id
        out.update({"result": results, self._total_key(): total, "currency": self.currency})
        return out

    def _sms_individual(self, body: dict, quote: bool) -> dict:
        phones = self._batch(body.get("phones"))
        if not quote and self.balance <= 0:
            raise _Reject(8)
        results: list[dict] = []
        total = Decimal(0)
        seen_phones: set[str] = set()
        seen_refs: set[str] = set()
        for item in phones:
            if not isinstance(item, dict):
                results.append(self.error(24))
                continue
            reference, originator, text = item.get("reference"), item.get("originator"), item.get("body")
            if _missing(item.get("msisdn")) or _missing(originator) or text is None:
                results.append(self.error(3, reference))
                continue
            code = (self._originator_error(originator) or self._sms_text_error(text)
                    or self._recipient_error("sms", item.get("msisdn"), reference,
                                             seen_phones, seen_refs, quote))
            if code is not None:
                results.append(self.error(code, reference))
                continue
            parts = analyze(text).parts
            price = self.sms_price * parts
            total += price
            if quote:
                continue
            m = self._add("sms", _as_msisdn(item["msisdn"]), reference, originator, text, price,
                          parts=parts)
            results.append(self._ok(reference=reference, id=m.id, price=price, currency=self.currency))
        if quote:
            return self._quote(total)
        return {"result": results, self._total_key(): total, "currency": self.currency}

    def sms_status(self, message_id: str) -> dict:
        self.advance()
        m = self._messages.get(message_id)
        if m is None or m.channel != "sms":
            raise _Reject(20)
        return self._status_json(m)

    def sms_status_by_reference(self, reference: str) -> dict:
        self.advance()
        message_id = self._refs["sms"].get(reference)
        if message_id is None:
            raise _Reject(20, reference)
        return self._status_json(self._messages[message_id])

    def task_status(self, task_id: str) -> dict:
        self.advance()
        if not task_id.isdigit():
            raise _Reject(29)
        task = self._tasks.get(task_id)
        if task is None:
            raise _Reject(30)
        statuses = [self._status_json(self._messages[i]) for i in task.message_ids]
        total = sum((self._messages[i].price for i in task.message_ids), Decimal(0))
        return self._ok(task_id=task.id, originator=task.originator, body=task.body,
                        result=statuses, **{self._total_key(): total}, currency=self.currency)

    # -- Viber ---------------------------------------------------------------

    def _viber_options_error(self, options: object) -> int | None:
        if options is None:
            return None
        if not isinstance(options, dict):
            return 49
        viber = options.get("viber")
        if viber is None:
            return None
        if not isinstance(viber, dict):
            return 49
        if viber.get("img") and (_missing(viber.get("caption")) or _missing(viber.get("action"))):
            return 49
        alt = viber.get("alt_route")
        if alt is not None:
            if not isinstance(alt, dict):
                return 49
            # The fallback SMS must itself be sendable.
            if self._originator_error(alt.get("originator")) or self._sms_text_error(alt.get("text")):
                return 49
        return None

    def create_viber(self, body: object, *, quote: bool = False) -> dict:
        """POST /viber/create (or /viber/price with quote=True)."""
        self.advance()
        if not isinstance(body, dict):
            raise _Reject(44)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Reject(3)
        if "validity" in body and body["validity"] is not None and not _int_in(body["validity"], 15, 86400):
            raise _Reject(48)
        recipients = 0
        for msg in messages:
            if not isinstance(msg, dict):
                raise _Reject(44)
            to, text, alpha_name = msg.get("to"), msg.get("text"), msg.get("alpha_name")
            if not isinstance(to, list) or not to or text is None or _missing(alpha_name):
                raise _Reject(3)
            recipients += len(to)
            if not isinstance(text, str) or not text.strip() or len(text) > _VIBER_TEXT_LIMIT:
                raise _Reject(46)
            if (not isinstance(alpha_name, str) or len(alpha_name) > _ALPHA_NAME_LIMIT
                    or (self.viber_senders is not None and alpha_name not in self.viber_senders)):
                raise _Reject(45)
            code = self._viber_options_error(msg.get("options"))
            if code is not None:
                raise _Reject(code)
        if recipients > self.max_batch:
            raise _Reject(12)
        if not quote and self.balance <= 0:
            raise _Reject(8)
        results: list[dict] = []
        total = Decimal(0)
        seen_phones: set[str] = set()
        seen_refs: set[str] = set()
        for msg in messages:
            viber_opts = (msg.get("options") or {}).get("viber") or {}
            alt = viber_opts.get("alt_route")
            alt_route = {"originator": alt["originator"], "text": alt["text"]} if alt else None
            for item in msg["to"]:
                if not isinstance(item, dict):
                    results.append(self.error(44))
                    continue
                reference = item.get("reference")
                code = self._recipient_error("viber", item.get("msisdn"), reference,
                                             seen_phones, seen_refs, quote)
                if code is not None:
                    results.append(self.error(code, reference))
                    continue
                total += self.viber_price
                if quote:
                    continue
                m = self._add("viber", _as_msisdn(item["msisdn"]), reference, msg["alpha_name"],
                              msg["text"], self.viber_price, alt_route=alt_route)
                results.append(self._ok(reference=reference, id=m.id, price=m.price,
                                        currency=self.currency))
        if quote:
            return self._quote(total)
        return {"result": results, "total_price": total, "currency": self.currency}

    def viber_status(self, message_id: str) -> dict:
        self.advance()
        m = self._messages.get(message_id)
        if m is None or m.channel != "viber":
            raise _Reject(40)
        return self._status_json(m)

    def viber_status_by_reference(self, reference: str) -> dict:
        self.advance()
        message_id = self._refs["viber"].get(reference)
        if message_id is None:
            raise _Reject(40, reference)
        return self._status_json(self._messages[message_id])

    # -- account and 2-way ---------------------------------------------------

    def balance_json(self) -> dict:
        self.advance()
        return self._ok(amount=_fmt_money(self.balance), currency=self.currency, limit="0")

    def incoming(self, start_date: str | None, end_date: str | None, sender: str | None = None) -> dict:
        """GET /sms/2wayIncoming: injected SMS with start_date <= time <= end_date."""
        if _missing(start_date) or _missing(end_date):
            raise _Reject(3)
        try:
            start = datetime.strptime(start_date, _TIME_FORMAT).replace(tzinfo=timezone.utc)
            end = datetime.strptime(end_date, _TIME_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            raise _Reject(7) from None
        found = [self._incoming_json(r) for r in self._incoming
                 if start <= r.time <= end and (not sender or r.sender == sender)]
        return self._ok(result=found)
