"""Mail → event (connectors/mail.py) on real sample mails: transfer encodings, RFC 2047
headers, UTF-8 / windows-1251 / KOI8-R, HTML, signatures, matchers and extractors."""

from __future__ import annotations

import re

import pytest

from herald.connectors.mail import MailMapping, OptionError, Rejected, mapping_from_options
from tests.dovecot import bitrix_mail

PREFIX = "imap:mailbox:"


def mapping(**options) -> MailMapping:
    problems: list[OptionError] = []
    result = mapping_from_options(options, problems.append, max_size=options.pop("max_size", 100_000))
    assert not problems, [p.message for p in problems]
    return result


@pytest.mark.parametrize("charset", ["utf-8", "windows-1251", "koi8-r"])
@pytest.mark.parametrize("cte", ["quoted-printable", "base64"])
def test_cyrillic_in_every_charset_and_transfer_encoding(charset, cte):
    raw = bitrix_mail("SALE_NEW_ORDER", subject="Modern Clothes: Новый заказ N1024",
                      text="Уважаемый Иван Петров,\n\nВаш заказ номер 1024 от 19.05.2024 принят.\n"
                           "Стоимость заказа: 4 590 руб.",
                      charset=charset, cte=cte, to="Иван <ivan@example.com>")
    assert f"charset={charset}".encode() in raw and b"=?" in raw          # really encoded
    event = mapping().event(raw, id_prefix=PREFIX)
    assert event["type"] == "mail.SALE_NEW_ORDER"
    data = event["data"]
    assert data["MAIL_SUBJECT"] == "Modern Clothes: Новый заказ N1024"
    assert data["MAIL_TEXT"] == ("Уважаемый Иван Петров, Ваш заказ номер 1024 от 19.05.2024 принят. "
                                 "Стоимость заказа: 4 590 руб.")
    assert data["MAIL_TO"] == "ivan@example.com" and data["MAIL_FROM"] == "shop@example.com"


def test_an_rfc2047_subject_split_over_two_encoded_words_and_a_message_id_event_id():
    raw = (b"From: =?koi8-r?B?7cHHwdrJzg==?= <shop@example.com>\r\nTo: a@example.com\r\n"
           b"Subject: =?utf-8?B?0J3QvtCy0YvQuSDQt9Cw0LrQsNC3?=\r\n =?windows-1251?Q?_=B91024?=\r\n"
           b"Message-ID: <42@shop.example.com>\r\nX-EVENT_NAME: SALE_NEW_ORDER\r\n"
           b"Date: Sun, 19 May 2024 14:03:11 +0300\r\n\r\nText\r\n")
    first = mapping().event(raw, id_prefix=PREFIX)
    assert first["data"]["MAIL_SUBJECT"] == "Новый заказ №1024"
    assert first["data"]["MAIL_MESSAGE_ID"] == "42@shop.example.com"
    assert first["time"] == "2024-05-19T14:03:11+03:00"
    # the same Message-ID in another copy (a BCC and a forward): the same event id
    other = raw.replace(b"Text", b"Forwarded text")
    assert mapping().event(other, id_prefix=PREFIX)["id"] == first["id"]
    assert mapping().event(raw.replace(b"<42@", b"<43@"), id_prefix=PREFIX)["id"] != first["id"]


def test_html_becomes_folded_plain_text_with_the_signature_cut():
    html = ("<html><body><h1>Заказ&nbsp;№7</h1><p>Здравствуйте,<br>ваш заказ <b>принят</b>.</p>"
            "<table><tr><td>Сумма:</td><td>1&nbsp;500 руб.</td></tr></table>"
            "<p>-- </p><p>Магазин, +7 495 000-00-00</p></body></html>")
    raw = bitrix_mail("SALE_NEW_ORDER", text=html, html=True, charset="windows-1251")
    data = mapping(extract=[{"lines": {"Сумма": "PRICE"}}]).event(raw, id_prefix=PREFIX)["data"]
    assert data["MAIL_TEXT"] == "Заказ №7 Здравствуйте, ваш заказ принят. Сумма: 1 500 руб."
    assert data["PRICE"] == "1 500 руб."


def test_a_multipart_mail_prefers_its_plain_part():
    raw = (b"From: shop@example.com\r\nTo: a@example.com\r\nSubject: x\r\nX-EVENT_NAME: NEW_USER\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html</p>\r\n"
           b"--B\r\nContent-Type: text/plain; charset=koi8-r\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           + "простой текст".encode("koi8-r") + b"\r\n--B--\r\n")
    assert mapping().event(raw, id_prefix=PREFIX)["data"]["MAIL_TEXT"] == "простой текст"


def test_configured_signature_markers_and_the_text_limit():
    raw = bitrix_mail("NEW_USER", text="Новый пользователь: anna\n\nПисьмо сгенерировано автоматически.\nlegal")
    data = mapping(signature=["^Письмо сгенерировано"]).event(raw, id_prefix=PREFIX)["data"]
    assert data["MAIL_TEXT"] == "Новый пользователь: anna"
    data = mapping(text_limit=10).event(raw, id_prefix=PREFIX)["data"]
    assert data["MAIL_TEXT"] == "Новый пол…"


def test_matchers_name_mails_without_the_header_and_extractors_fill_fields():
    m = mapping(match=[{"event": "WRONG", "from": "@other\\.example$", "subject": "заказ"},
                       {"event": "ORDER_NEW", "from": "@example\\.com$", "subject": "^Ваш заказ",
                        "headers": {"X-Mailer": "WooCommerce"}}],
                extract=[{"subject": "№\\s*(?P<ORDER_ID>\\d+)"},
                         {"text": "Итого:\\s*(?P<PRICE>[\\d\\s]+\\d)", "events": ["ORDER_NEW"]},
                         {"text": "(?P<NEVER>x)", "events": ["OTHER"]},
                         {"lines": True},
                         {"text": "(?P<ORDER_ID>\\d+)"}])                   # later: ORDER_ID already found
    raw = bitrix_mail(None, subject="Ваш заказ №555 принят",
                      text="Итого: 12 300 руб.\nPhone number: +7 900 123-45-67\nДоставка: курьер",
                      headers={"X-Mailer": "WooCommerce 8.1"})
    event = m.event(raw, id_prefix=PREFIX, site="s2")
    assert event["type"] == "mail.ORDER_NEW" and event["site"] == "s2"
    data = event["data"]
    assert (data["ORDER_ID"], data["PRICE"], data["PHONE_NUMBER"]) == ("555", "12 300", "+7 900 123-45-67")
    assert "NEVER" not in data and not any(not k.isascii() for k in data)      # "Доставка" is no field name
    with pytest.raises(Rejected) as caught:                                    # the header is missing
        m.event(bitrix_mail(None, subject="Ваш заказ №1"), id_prefix=PREFIX)
    assert caught.value.reason == "no match" and "no X-EVENT_NAME header" in caught.value.detail


def test_the_header_wins_over_matchers_unless_turned_off():
    raw = bitrix_mail("SALE_ORDER_PAID", subject="Оплата")
    matched = [{"event": "PAID", "subject": "Оплата"}]
    assert mapping(match=matched).event(raw, id_prefix=PREFIX)["type"] == "mail.SALE_ORDER_PAID"
    assert mapping(match=matched, event_header=False).event(raw, id_prefix=PREFIX)["type"] == "mail.PAID"


@pytest.mark.parametrize("raw, reason, detail", [
    (b"\x00\x01 not a mail", "unparseable", "no mail headers"),
    (b"Subject: x\r\nX-EVENT_NAME: A\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\nhi",
     "unknown charset", '"x-klingon"'),
    (b"Subject: x\r\nX-EVENT_NAME: bad name!\r\n\r\nhi", "bad event name", "not a name"),
    (b"Subject: hi\r\nFrom: a@b.c\r\n\r\nhi", "no match", "from a@b.c"),
    (b"Subject: x\r\nX-EVENT_NAME: A\r\n\r\n" + b"x" * 200, "oversize", "more than max_size 100"),
])
def test_bad_mail_is_rejected_with_a_reason(raw, reason, detail):
    with pytest.raises(Rejected) as caught:
        mapping(max_size=100).event(raw, id_prefix=PREFIX)
    assert caught.value.reason == reason and detail in caught.value.detail


def test_option_problems_are_reported_with_their_place():
    problems: list[OptionError] = []
    mapping_from_options({"match": [{"event": "a b", "subject": "("}], "extract": [{"lines": 5}],
                          "text_limit": 0, "event_header": 3}, problems.append, max_size=1)
    found = {(p.path, re.sub(r":.*", "", p.message)) for p in problems}
    assert (("match", 0, "event"), "match[0]") in found
    assert (("match", 0, "subject"), "match[0].subject") in found
    assert (("extract", 0, "lines"), "extract[0].lines") in found
    assert (("text_limit",), "text_limit") in found and (("event_header",), "event_header") in found


def test_an_unknown_charset_in_an_rfc2047_header_is_rejected():
    raw = (b"From: shop@example.com\r\nSubject: =?x-klingon?B?0J/RgNC40LLQtdGC?=\r\n"
           b"X-EVENT_NAME: SALE_NEW_ORDER\r\n\r\nText\r\n")
    with pytest.raises(Rejected) as caught:
        mapping().event(raw, id_prefix=PREFIX)
    assert caught.value.reason == "unknown charset" and "x-klingon" in caught.value.detail
    assert "Subject" in caught.value.detail


@pytest.mark.parametrize("body, cte, charset", [
    (b"0J/RgNC4!!!@@@\r\n", "base64", "utf-8"),                 # not base64
    (b"\xff\xfe \xd0 broken\r\n", "8bit", "utf-8"),             # not UTF-8
])
def test_a_body_that_cannot_be_decoded_is_unparseable(body, cte, charset):
    raw = (b"From: shop@example.com\r\nSubject: s\r\nX-EVENT_NAME: SALE_NEW_ORDER\r\nMIME-Version: 1.0\r\n"
           + f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode()
           + body)
    with pytest.raises(Rejected) as caught:
        mapping().event(raw, id_prefix=PREFIX)
    assert caught.value.reason == "unparseable"


def test_the_rejection_record_of_an_oversize_mail_has_its_subject_and_sender():
    from herald.connectors.mail import rejected_event
    raw = bitrix_mail("SALE_NEW_ORDER", subject="Огромное письмо", text="x" * 5000)
    with pytest.raises(Rejected) as caught:
        mapping(max_size=1000).event(raw, id_prefix=PREFIX)
    record = rejected_event(raw, caught.value, id_prefix=PREFIX, quarantine="Quarantine")
    assert record["data"]["MAIL_REASON"] == "oversize"
    assert record["data"]["MAIL_SUBJECT"] == "Огромное письмо" and record["data"]["MAIL_FROM"] == "shop@example.com"
