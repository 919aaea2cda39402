"""Reading BSG's answers: a whole request's error, and one result per reference of a send.

Mixed into BsgClient (engine/bsg/client.py), whose `name` and API key (to keep it out of
every message) it uses. BSG's answer shapes are in shared/spec/BSG-API.md; the per-item
parsing is in wire.py."""

from __future__ import annotations

import logging

from herald.engine.bsg.wire import (
    OPERATOR_HINTS, BsgError, Kind, SendResult, _Answer, _code, _description, _text, classify, describe,
    item_result, redact,
)

log = logging.getLogger("herald.bsg")


class AnswerReading:
    """How a BSG answer becomes a BsgError or SendResults."""

    name: str

    def _operator_alert(self, code: int, description: str) -> None:
        hint = OPERATOR_HINTS.get(code, "the admin must act")
        words = description if description and description != describe(code) else describe(code)
        log.error("BSG %s says: %s (%d) — %s", self.name, words, code, hint)

    def _failure(self, answer: _Answer, what: str) -> BsgError:
        """A BsgError for an answer that is an error (top-level or HTTP)."""
        http = answer.status_code
        body = answer.body if answer.is_json_object else None
        code = _code(body) if body is not None else None
        if not code and body is not None and isinstance(body.get("result"), dict) \
                and _code(body["result"]):
            body = body["result"]
            code = _code(body)
        if code and code > 0:
            kind = classify(code, http)
            description = _description(body, code)
            message = f"BSG {self.name}: {what} failed: {description} ({code})"
        elif not 200 <= http < 300:
            kind = classify(None, http)
            description = f"HTTP {http}"
            if http == 404:
                description += " (unknown route: check bsg.url)"
            said = body.get("errorDescription") or body.get("error") if body is not None else None
            if said:
                description += f": {said}"
            message = f"BSG {self.name}: {what} failed: {description}"
            code = 0
        else:
            # 2xx, but not the JSON expected (HTML from a proxy, an error that is no
            # number): a read may simply be repeated, a send may have been taken (its
            # reference turns the repeat into 23 → look-up), so RETRY
            kind = Kind.RETRY
            said = body.get("errorDescription") or body.get("error") if body is not None else None
            description = f"unexpected answer: {said}" if said else "the answer is not JSON"
            message = f"BSG {self.name}: {what}: {description}: {answer.text[:120]!r}"
            code = 0
        if kind is Kind.OPERATOR:
            self._operator_alert(code, description)
        secret = self._key.reveal() if self._key else ""
        if secret:
            message = message.replace(secret, "****")
            description = description.replace(secret, "****")
        return BsgError(message, code=code, description=description, kind=kind,
                        http_status=http, retry_after=answer.retry_after)

    def _results(self, answer: _Answer, references: list[str]) -> list[SendResult]:
        """One SendResult per reference (in that order) from one answer."""
        http = answer.status_code
        body = answer.body

        def everyone(kind: Kind, code: int, description: str, uncertain: bool = False) -> list[SendResult]:
            return [SendResult(ref, kind, code=code, description=description, http_status=http,
                               uncertain=uncertain) for ref in references]

        if 200 <= http < 300 and not isinstance(body, dict):
            # BSG may have taken it: RETRY is safe (the reference makes it 23 → look-up)
            log.warning("BSG %s: the answer to a send is not a JSON object: %r",
                        self.name, answer.text[:120])
            return everyone(Kind.RETRY, 0, "BSG's answer is not JSON", uncertain=True)
        if not 200 <= http < 300:
            err = self._failure(answer, "send")
            log.warning("%s", err)
            return everyone(err.kind, err.code, err.description, uncertain=http >= 500)

        # the entries that describe single items; what is left is a top-level error
        raw = body.get("result")
        if isinstance(raw, list):
            entries = [e for e in raw if isinstance(e, dict)]
        elif isinstance(raw, dict):
            whole = len(references) > 1 and _code(raw) and _text(raw.get("reference")) is None
            entries = [] if whole else [raw]
        elif len(references) == 1:
            entries = [body]          # the flat single-SMS shape (an error in it is the item's)
        else:
            entries = []

        out: list[SendResult | None] = [None] * len(references)
        free: dict[str, list[int]] = {}
        for i, ref in enumerate(references):
            free.setdefault(ref, []).append(i)
        by_order: list[tuple[int, dict]] = []
        for pos, e in enumerate(entries):
            ref = _text(e.get("reference"))
            if ref is None:
                by_order.append((pos, e))
            elif free.get(ref):
                i = free[ref].pop(0)
                out[i] = item_result(references[i], e, http)
            else:
                log.warning("BSG %s: a result for a reference not sent: %r", self.name, ref)
        for pos, e in by_order:       # BSG left out the reference: match by order
            i = pos if pos < len(out) and out[pos] is None else next(
                (j for j, r in enumerate(out) if r is None), None)
            if i is None:
                log.warning("BSG %s: an extra result entry: %r", self.name, redact(e))
                continue
            out[i] = item_result(references[i], e, http)

        for code, description in {r.code: r.description for r in out
                                  if r is not None and r.kind is Kind.OPERATOR}.items():
            self._operator_alert(code, description)

        missing = [i for i, r in enumerate(out) if r is None]
        if missing:
            top = _code(body) or (_code(raw) if isinstance(raw, dict) else None)
            if top:
                err = self._failure(answer, "send")
                log.warning("%s", err)
                for i in missing:
                    out[i] = SendResult(references[i], err.kind, code=err.code,
                                        description=err.description, http_status=http)
            else:
                log.warning("BSG %s: no result for %d of %d references; they will be retried",
                            self.name, len(missing), len(references))
                for i in missing:
                    out[i] = SendResult(references[i], Kind.RETRY,
                                        description="BSG's answer has no result for this reference",
                                        http_status=http, uncertain=True)
        return out  # type: ignore[return-value]  # every slot is filled
