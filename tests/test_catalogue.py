"""rules/catalogue.rules: every commented-out mail-event rule works once uncommented.

The catalogue ships disabled (one commented-out one-line rule per Bitrix mail event);
a user enables an event by deleting the leading `# `. These tests do that to every
rule in a copy of the repository's project and check that the result passes
`herald check --strict` and that each rule's template renders from the fields its mail
event carries (shared spec BITRIX.md) with no unknown macro.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from herald.engine.rules.loader import load_project
from herald.engine.rules.ruletest import run_file
from herald.engine.rules.templates import load_templates
from herald.engine.rules.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "rules" / "catalogue.rules"
TEMPLATES = ROOT / "rules" / "templates" / "catalogue.yaml"
COMMENTED = re.compile(r'^# (rule "catalogue-([A-Z0-9_]+)" on mail\.([A-Z0-9_]+) .*)$')

ADMIN = "+79001234567"                   # the site's admins in herald.yaml
BUYER = {"id": 17, "login": "ivan", "email": "ivan@example.com", "PERSONAL_MOBILE": "8 912 345-67-89"}
BUYER_PHONE = "+79123456789"
SITE_MACROS = {"SITE_NAME", "SERVER_NAME", "DEFAULT_EMAIL_FROM", "DEFAULT_PHONE_FROM"}

ORDER = {"ORDER_ID": "A-1024", "ORDER_REAL_ID": "1024", "ORDER_DATE": "19.05.2024 14:03:11",
         "ORDER_USER": "Иван Петров", "EMAIL": "ivan@example.com", "SALE_EMAIL": "shop@example.com"}
TICKET = {"ID": "1201", "TITLE": "Не пришёл заказ", "CRITICALITY": "высокая",
          "DATE_CREATE": "19.05.2024 14:03:11", "WHAT_CHANGE": "Изменился статус", "OWNER_USER_ID": "17",
          "OWNER_EMAIL": "ivan@example.com"}
USER = {"USER_ID": "17", "LOGIN": "ivan", "EMAIL": "ivan@example.com", "NAME": "Иван", "LAST_NAME": "Петров"}

# The fields each mail event carries (BITRIX.md; where the spec names none, Bitrix's
# defaults as stated in rules/templates/catalogue.yaml), and who the SMS goes to.

# the fields of Bitrix's workflow mails (WF_NEW_DOCUMENT and WF_STATUS_CHANGE carry the same)
WF_DOCUMENT = {'ID': '15',
               'ADMIN_EMAIL': 'admin@example.com',
               'BCC': '',
               'PREV_STATUS_ID': '2',
               'PREV_STATUS_TITLE': 'Черновик',
               'STATUS_ID': '1',
               'STATUS_TITLE': 'Опубликован',
               'DATE_ENTER': '19.05.2024 14:03:11',
               'ENTERED_BY_ID': '2',
               'ENTERED_BY_NAME': 'Ольга',
               'ENTERED_BY_EMAIL': 'olga@example.com',
               'DATE_MODIFY': '19.05.2024 15:00:00',
               'MODIFIED_BY_ID': '1',
               'MODIFIED_BY_NAME': 'Админ',
               'FILENAME': '/about/delivery.php',
               'TITLE': 'Доставка',
               'BODY_HTML': '',
               'BODY_TEXT': '',
               'BODY': '',
               'BODY_TYPE': 'html',
               'COMMENTS': ''}

FIELDS: dict[str, tuple[dict, str]] = {
    "SALE_NEW_ORDER": ({**ORDER, "PRICE": "4&nbsp;590 руб.", "BCC": "", "ORDER_LIST": "Платье x 1",
                        "DELIVERY_PRICE": "300 руб.", "ORDER_PUBLIC_URL": "https://shop.example.com/o/1"},
                       BUYER_PHONE),
    "SALE_ORDER_PAID": (ORDER, BUYER_PHONE),
    "SALE_ORDER_CANCEL": ({**ORDER, "ORDER_CANCEL_DESCRIPTION": "Нет в наличии"}, BUYER_PHONE),
    "SALE_ORDER_DELIVERY": ({**ORDER, "SHIPMENT_ID": "77", "SHIPMENT_DATE": "20.05.2024"}, BUYER_PHONE),
    "SALE_ORDER_TRACKING_NUMBER": ({**ORDER, "ORDER_TRACKING_NUMBER": "RA123456789RU"}, BUYER_PHONE),
    "SALE_ORDER_REMIND_PAYMENT": (ORDER, BUYER_PHONE),
    **{f"SALE_STATUS_CHANGED_{c}": ({**ORDER, "ORDER_STATUS": "Выполнен", "ORDER_DESCRIPTION": ""}, BUYER_PHONE)
       for c in ("N", "P", "F")},
    **{f"SALE_STATUS_CHANGED_{c}": ({**ORDER, "SHIPMENT_ID": "77", "SHIPMENT_STATUS": "Отгружен"}, BUYER_PHONE)
       for c in ("DN", "DA", "DG", "DT", "DS", "DF")},
    "SALE_ORDER_SHIPMENT_STATUS_CHANGED": ({"STATUS_NAME": "Прибыл в пункт выдачи", "TRACKING_NUMBER": "RA1RU",
                                            "DELIVERY_NAME": "Почта России", "ORDER_NO": "A-1024",
                                            "SHIPMENT_NO": "1024/1", "EMAIL": "ivan@example.com"}, BUYER_PHONE),
    "SUBSCRIBE_CONFIRM": ({"ID": "31", "EMAIL": "ivan@example.com", "CONFIRM_CODE": "k7Qp2x",
                           "DATE_SUBSCR": "19.05.2024 14:03:11"}, BUYER_PHONE),
    "TICKET_NEW_FOR_AUTHOR": (TICKET, BUYER_PHONE),
    "TICKET_NEW_FOR_TECHSUPPORT": (TICKET, ADMIN),
    "TICKET_CHANGE_BY_SUPPORT_FOR_AUTHOR": (TICKET, BUYER_PHONE),
    "TICKET_CHANGE_FOR_TECHSUPPORT": (TICKET, ADMIN),
    "NEW_USER": (USER, BUYER_PHONE),
    "USER_PASS_REQUEST": (USER, BUYER_PHONE),
    "FEEDBACK_FORM": ({"AUTHOR": "Иван", "AUTHOR_EMAIL": "ivan@example.com", "TEXT": "Когда будет поставка?"},
                      ADMIN),
    # the other modules (fields as their install files declare them, see rules/templates/catalogue.yaml)
    'NEW_USER_CONFIRM': (
        {'USER_ID': '17',
          'LOGIN': 'ivan',
          'EMAIL': 'ivan@example.com',
          'NAME': 'Иван',
          'LAST_NAME': 'Петров',
          'CONFIRM_CODE': 'Xy7pQ2'},
        BUYER_PHONE),
    'USER_INFO': (
        {'USER_ID': '17',
          'STATUS': 'активен',
          'MESSAGE': 'Ссылка для смены пароля отправлена на e-mail.',
          'LOGIN': 'ivan',
          'URL_LOGIN': 'ivan',
          'CHECKWORD': 'a1b2c3',
          'NAME': 'Иван',
          'LAST_NAME': 'Петров',
          'EMAIL': 'ivan@example.com'},
        BUYER_PHONE),
    'USER_PASS_CHANGED': (
        {'USER_ID': '17',
          'STATUS': 'активен',
          'MESSAGE': '',
          'LOGIN': 'ivan',
          'URL_LOGIN': 'ivan',
          'CHECKWORD': 'a1b2c3',
          'NAME': 'Иван',
          'LAST_NAME': 'Петров',
          'EMAIL': 'ivan@example.com'},
        BUYER_PHONE),
    'USER_INVITE': (
        {'ID': '17',
          'LOGIN': 'ivan',
          'URL_LOGIN': 'ivan',
          'EMAIL': 'ivan@example.com',
          'NAME': 'Иван',
          'LAST_NAME': 'Петров',
          'PASSWORD': '',
          'CHECKWORD': 'a1b2c3',
          'XML_ID': ''},
        BUYER_PHONE),
    'MAIN_MAIL_CONFIRM_CODE': (
        {'EMAIL_TO': 'ivan@example.com', 'MESSAGE_SUBJECT': 'Подтверждение адреса', 'CONFIRM_CODE': '458921'},
        BUYER_PHONE),
    'SALE_NEW_ORDER_RECURRING': (
        {'ORDER_ID': 'A-1024',
          'ORDER_REAL_ID': '1024',
          'ORDER_DATE': '19.05.2024 14:03:11',
          'ORDER_USER': 'Иван Петров',
          'EMAIL': 'ivan@example.com',
          'SALE_EMAIL': 'shop@example.com',
          'PRICE': '4 590 руб.',
          'ORDER_LIST': 'Платье x 1'},
        BUYER_PHONE),
    'SALE_RECURRING_CANCEL': (
        {'ORDER_ID': 'A-1024',
          'ORDER_REAL_ID': '1024',
          'ORDER_DATE': '19.05.2024 14:03:11',
          'ORDER_USER': 'Иван Петров',
          'EMAIL': 'ivan@example.com',
          'SALE_EMAIL': 'shop@example.com',
          'CANCELED_REASON': 'Карта просрочена'},
        BUYER_PHONE),
    'SALE_SUBSCRIBE_PRODUCT': (
        {'USER_NAME': 'Иван',
          'EMAIL': 'ivan@example.com',
          'NAME': 'Платье летнее',
          'PAGE_URL': 'https://shop.example.com/p/12',
          'SALE_EMAIL': 'shop@example.com'},
        BUYER_PHONE),
    'SALE_CHECK_PRINT': (
        {'ORDER_ID': 'A-1024',
          'ORDER_REAL_ID': '1024',
          'ORDER_DATE': '19.05.2024 14:03:11',
          'ORDER_USER': 'Иван Петров',
          'EMAIL': 'ivan@example.com',
          'SALE_EMAIL': 'shop@example.com',
          'ORDER_ACCOUNT_NUMBER_ENCODE': 'A-1024',
          'CHECK_LINK': 'https://ofd.example.com/c/77'},
        BUYER_PHONE),
    'CATALOG_PRODUCT_SUBSCRIBE_NOTIFY': (
        {'USER_NAME': 'Иван',
          'EMAIL_TO': 'ivan@example.com',
          'NAME': 'Платье летнее',
          'DETAIL_PAGE_URL': 'https://shop.example.com/p/12'},
        BUYER_PHONE),
    'CATALOG_PRODUCT_SUBSCRIBE_NOTIFY_REPEATED': (
        {'USER_NAME': 'Иван',
          'EMAIL_TO': 'ivan@example.com',
          'NAME': 'Платье летнее',
          'DETAIL_PAGE_URL': 'https://shop.example.com/p/12'},
        BUYER_PHONE),
    'TICKET_CHANGE_BY_AUTHOR_FOR_AUTHOR': (
        {'ID': '1201',
          'TITLE': 'Не пришёл заказ',
          'CRITICALITY': 'высокая',
          'DATE_CREATE': '19.05.2024 14:03:11',
          'WHAT_CHANGE': 'Изменился статус',
          'OWNER_USER_ID': '17',
          'OWNER_EMAIL': 'ivan@example.com'},
        BUYER_PHONE),
    'TICKET_OVERDUE_REMINDER': (
        {'ID': '1201',
          'TITLE': 'Не пришёл заказ',
          'CRITICALITY': 'высокая',
          'DATE_CREATE': '19.05.2024 14:03:11',
          'WHAT_CHANGE': 'Изменился статус',
          'OWNER_USER_ID': '17',
          'OWNER_EMAIL': 'ivan@example.com',
          'EXPIRATION_DATE': '20.05.2024 14:03:11',
          'REMAINED_TIME': '2 ч.'},
        ADMIN),
    'TICKET_GENERATE_SUPERCOUPON': (
        {},
        ADMIN),
    'NEW_FORUM_MESSAGE': (
        {'FORUM_ID': '2',
          'FORUM_NAME': 'Вопросы',
          'TOPIC_ID': '40',
          'MESSAGE_ID': '411',
          'TOPIC_TITLE': 'Размеры',
          'MESSAGE_TEXT': 'Какой размер взять?',
          'MESSAGE_DATE': '19.05.2024 14:03:11',
          'AUTHOR': 'Иван',
          'RECIPIENT': 'admin@example.com',
          'TAPPROVED': 'Y',
          'MSG_TYPE': 'NEW',
          'PATH2FORUM': 'https://shop.example.com/forum/',
          'FROM_EMAIL': 'forum@example.com'},
        ADMIN),
    'EDIT_FORUM_MESSAGE': (
        {'FORUM_ID': '2',
          'FORUM_NAME': 'Вопросы',
          'TOPIC_ID': '40',
          'MESSAGE_ID': '411',
          'TOPIC_TITLE': 'Размеры',
          'MESSAGE_TEXT': 'Какой размер взять?',
          'MESSAGE_DATE': '19.05.2024 14:03:11',
          'AUTHOR': 'Иван',
          'RECIPIENT': 'admin@example.com',
          'TAPPROVED': 'Y',
          'MSG_TYPE': 'NEW',
          'PATH2FORUM': 'https://shop.example.com/forum/',
          'FROM_EMAIL': 'forum@example.com'},
        ADMIN),
    'NEW_FORUM_PRIV': (
        {'FROM_NAME': 'Ольга',
          'FROM_USER_ID': '2',
          'FROM_EMAIL': 'olga@example.com',
          'TO_NAME': 'Иван',
          'TO_USER_ID': '17',
          'TO_EMAIL': 'ivan@example.com',
          'SUBJECT': 'Обмен',
          'MESSAGE': 'Давайте обменяемся',
          'MESSAGE_DATE': '19.05.2024 14:03:11',
          'MESSAGE_LINK': 'https://shop.example.com/forum/pm/5/'},
        BUYER_PHONE),
    'NEW_FORUM_PRIVATE_MESSAGE': (
        {'FROM_NAME': 'Ольга',
          'FROM_USER_ID': '2',
          'FROM_EMAIL': 'olga@example.com',
          'TO_NAME': 'Иван',
          'TO_USER_ID': '17',
          'TO_EMAIL': 'ivan@example.com',
          'SUBJECT': 'Обмен',
          'MESSAGE': 'Давайте обменяемся',
          'MESSAGE_DATE': '19.05.2024 14:03:11',
          'MESSAGE_LINK': 'https://shop.example.com/forum/pm/5/'},
        BUYER_PHONE),
    'NEW_BLOG_MESSAGE': (
        {'BLOG_ID': '3',
          'BLOG_NAME': 'Мода',
          'BLOG_URL': 'fashion',
          'MESSAGE_TITLE': 'Тренды лета',
          'MESSAGE_TEXT': '…',
          'MESSAGE_DATE': '19.05.2024 14:03:11',
          'MESSAGE_PATH': 'https://shop.example.com/blog/fashion/9/',
          'AUTHOR': 'Ольга',
          'EMAIL_FROM': 'blog@example.com',
          'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'NEW_BLOG_COMMENT': (
        {'BLOG_ID': '3',
          'BLOG_NAME': 'Мода',
          'BLOG_URL': 'fashion',
          'MESSAGE_TITLE': 'Тренды лета',
          'COMMENT_TITLE': '',
          'COMMENT_TEXT': 'Согласна',
          'COMMENT_DATE': '19.05.2024 14:03:11',
          'COMMENT_PATH': 'https://shop.example.com/blog/fashion/9/#c1',
          'AUTHOR': 'Ольга',
          'EMAIL_FROM': 'blog@example.com',
          'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'NEW_BLOG_COMMENT2COMMENT': (
        {'BLOG_ID': '3',
          'BLOG_NAME': 'Мода',
          'BLOG_URL': 'fashion',
          'MESSAGE_TITLE': 'Тренды лета',
          'COMMENT_TITLE': '',
          'COMMENT_TEXT': 'Согласна',
          'COMMENT_DATE': '19.05.2024 14:03:11',
          'COMMENT_PATH': 'https://shop.example.com/blog/fashion/9/#c1',
          'AUTHOR': 'Ольга',
          'EMAIL_FROM': 'blog@example.com',
          'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'NEW_BLOG_COMMENT_WITHOUT_TITLE': (
        {'BLOG_ID': '3',
          'BLOG_NAME': 'Мода',
          'BLOG_URL': 'fashion',
          'MESSAGE_TITLE': 'Тренды лета',
          'COMMENT_TITLE': '',
          'COMMENT_TEXT': 'Согласна',
          'COMMENT_DATE': '19.05.2024 14:03:11',
          'COMMENT_PATH': 'https://shop.example.com/blog/fashion/9/#c1',
          'AUTHOR': 'Ольга',
          'EMAIL_FROM': 'blog@example.com',
          'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'NEW_BLOG_COMMENT2COMMENT_WITHOUT_TITLE': (
        {'BLOG_ID': '3',
          'BLOG_NAME': 'Мода',
          'BLOG_URL': 'fashion',
          'MESSAGE_TITLE': 'Тренды лета',
          'COMMENT_TITLE': '',
          'COMMENT_TEXT': 'Согласна',
          'COMMENT_DATE': '19.05.2024 14:03:11',
          'COMMENT_PATH': 'https://shop.example.com/blog/fashion/9/#c1',
          'AUTHOR': 'Ольга',
          'EMAIL_FROM': 'blog@example.com',
          'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'BLOG_YOUR_BLOG_TO_USER': (
        {'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'BLOG_YOU_TO_BLOG': (
        {'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'BLOG_BLOG_TO_YOU': (
        {'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'BLOG_USER_TO_YOUR_BLOG': (
        {'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'BLOG_SONET_NEW_POST': (
        {'EMAIL_TO': 'ivan@example.com',
          'RECIPIENT_ID': '17',
          'POST_ID': '9',
          'URL': 'https://portal.example.com/p/9/'},
        BUYER_PHONE),
    'BLOG_SONET_NEW_COMMENT': (
        {'EMAIL_TO': 'ivan@example.com',
          'RECIPIENT_ID': '17',
          'POST_ID': '9',
          'URL': 'https://portal.example.com/p/9/'},
        BUYER_PHONE),
    'BLOG_SONET_POST_SHARE': (
        {'EMAIL_TO': 'ivan@example.com',
          'RECIPIENT_ID': '17',
          'POST_ID': '9',
          'URL': 'https://portal.example.com/p/9/'},
        BUYER_PHONE),
    'BLOG_POST_BROADCAST': (
        {'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'ADD_IDEA': (
        {'FULL_PATH': 'https://shop.example.com/idea/5/',
          'TITLE': 'Доставка в постаматы',
          'AUTHOR': 'Иван Петров',
          'IDEA_TEXT': 'Хочу забирать заказы из постамата',
          'DATE_PUBLISH': '19.05.2024 14:03:11',
          'EMAIL_TO': 'admin@example.com',
          'CATEGORY': 'Доставка'},
        ADMIN),
    'ADD_IDEA_COMMENT': (
        {'FULL_PATH': 'https://shop.example.com/idea/5/',
          'IDEA_TITLE': 'Доставка в постаматы',
          'AUTHOR': 'Ольга',
          'IDEA_COMMENT_TEXT': 'Поддерживаю',
          'DATE_CREATE': '19.05.2024 14:03:11',
          'EMAIL_TO': 'admin@example.com'},
        ADMIN),
    'VOTE_FOR': (
        {'ID': '301',
          'TIME': '19.05.2024 14:03:11',
          'VOTE_TITLE': 'Лучший цвет сезона',
          'VOTE_DESCRIPTION': '',
          'VOTE_ID': '4',
          'CHANNEL': 'Опросы',
          'CHANNEL_ID': '1',
          'VOTER_ID': '88',
          'USER_NAME': 'Иван Петров',
          'LOGIN': 'ivan',
          'USER_ID': '17',
          'STAT_GUEST_ID': '',
          'SESSION_ID': '',
          'IP': '203.0.113.7',
          'VOTE_STATISTIC': '',
          'URL': 'https://shop.example.com/vote/4/'},
        ADMIN),
    'FORM_FILLING_SIMPLE_FORM_1': (
        {'RS_FORM_ID': '1',
          'RS_FORM_NAME': 'Обратный звонок',
          'RS_FORM_SID': 'SIMPLE_FORM_1',
          'RS_RESULT_ID': '57',
          'RS_DATE_CREATE': '19.05.2024 14:03:11',
          'RS_USER_ID': '17',
          'RS_USER_EMAIL': 'ivan@example.com',
          'RS_USER_NAME': 'Иван Петров',
          'RS_USER_AUTH': 'Y'},
        ADMIN),
    'FORM_STATUS_CHANGE_SIMPLE_FORM_1': (
        {'EMAIL_TO': 'ivan@example.com'},
        BUYER_PHONE),
    'WF_NEW_DOCUMENT': (
        WF_DOCUMENT,
        ADMIN),
    'WF_STATUS_CHANGE': (
        WF_DOCUMENT,
        ADMIN),
    'WF_NEW_IBLOCK_ELEMENT': (
        {'ID': '44',
          'IBLOCK_ID': '5',
          'IBLOCK_TYPE': 'news',
          'SECTION_ID': '0',
          'ADMIN_EMAIL': 'admin@example.com',
          'BCC': '',
          'PREV_STATUS_ID': '2',
          'PREV_STATUS_TITLE': 'Черновик',
          'STATUS_ID': '1',
          'STATUS_TITLE': 'Опубликован',
          'DATE_CREATE': '19.05.2024 14:03:11',
          'CREATED_BY_ID': '2',
          'CREATED_BY_NAME': 'Ольга',
          'CREATED_BY_EMAIL': 'olga@example.com',
          'DATE_MODIFY': '19.05.2024 15:00:00',
          'MODIFIED_BY_ID': '1',
          'MODIFIED_BY_NAME': 'Админ',
          'NAME': 'Скидки недели',
          'COMMENTS': ''},
        ADMIN),
    'WF_IBLOCK_STATUS_CHANGE': (
        {'ID': '44',
          'IBLOCK_ID': '5',
          'IBLOCK_TYPE': 'news',
          'SECTION_ID': '0',
          'ADMIN_EMAIL': 'admin@example.com',
          'BCC': '',
          'PREV_STATUS_ID': '2',
          'PREV_STATUS_TITLE': 'Черновик',
          'STATUS_ID': '1',
          'STATUS_TITLE': 'Опубликован',
          'DATE_CREATE': '19.05.2024 14:03:11',
          'CREATED_BY_ID': '2',
          'CREATED_BY_NAME': 'Ольга',
          'CREATED_BY_EMAIL': 'olga@example.com',
          'DATE_MODIFY': '19.05.2024 15:00:00',
          'MODIFIED_BY_ID': '1',
          'MODIFIED_BY_NAME': 'Админ',
          'NAME': 'Скидки недели',
          'COMMENTS': ''},
        ADMIN),
    'ADV_BANNER_STATUS_CHANGE': (
        {'ID': '12', 'CONTRACT_ID': '3', 'TYPE_SID': 'TOP'},
        ADMIN),
    'ADV_CONTRACT_INFO': (
        {},
        ADMIN),
    'STATISTIC_DAILY_REPORT': (
        {},
        ADMIN),
    'STATISTIC_ACTIVITY_EXCEEDING': (
        {},
        ADMIN),
}


def catalogue_entries() -> list[tuple[str, str, str]]:
    """(line, rule name suffix, mail event) of every commented-out catalogue rule."""
    out = []
    for line in CATALOGUE.read_text(encoding="utf-8").splitlines():
        m = COMMENTED.match(line)
        if m:
            out.append(m.groups())
    return out


EVENTS = [event for _, _, event in catalogue_entries()]


@pytest.fixture(scope="module")
def enabled_project(tmp_path_factory):
    """A copy of the repository's project with every catalogue rule uncommented."""
    root = tmp_path_factory.mktemp("catalogue")
    shutil.copy(ROOT / "herald.yaml", root / "herald.yaml")
    shutil.copytree(ROOT / "rules", root / "rules")
    shutil.copytree(ROOT / "examples", root / "examples")      # herald.yaml's directory file
    path = root / "rules" / "catalogue.rules"
    text = path.read_text(encoding="utf-8")
    path.write_text("\n".join(COMMENTED.sub(r"\1", line) for line in text.splitlines()) + "\n", encoding="utf-8")
    return load_project(root / "herald.yaml", strict=True)      # raises on any error or warning


def test_the_catalogue_ships_disabled_with_a_rule_and_a_template_per_event():
    entries = catalogue_entries()
    assert len(entries) == 68
    assert all(name == event for _, name, event in entries)
    assert len(set(EVENTS)) == len(EVENTS), "an event is listed twice"
    templates = load_templates(TEMPLATES)
    assert not templates.diagnostics
    assert sorted(templates.templates) == sorted(f"catalogue_{e}" for e in EVENTS)
    for line, _, event in entries:
        assert f'using "catalogue_{event}"' in line
    shipped = load_project(ROOT / "herald.yaml", strict=True)
    assert not [r.id for r in shipped.rules if r.id.startswith("catalogue-")]


def test_every_event_has_its_fields_declared_here():
    assert sorted(FIELDS) == sorted(EVENTS)


def test_uncommented_the_whole_catalogue_compiles_without_warnings(enabled_project):
    ids = {r.id for r in enabled_project.rules}
    assert {f"catalogue-{e}" for e in EVENTS} <= ids
    assert enabled_project.warnings == []


@pytest.mark.parametrize("event_name", EVENTS)
def test_each_catalogue_rule_renders_from_its_mail_fields(enabled_project, event_name):
    fields, phone = FIELDS[event_name]
    event = {"type": f"mail.{event_name}", "site": "s1", "id": f"mail-{event_name}",
             "time": "2026-01-05T12:00:00+03:00", "data": fields}
    sim = simulate(enabled_project, event, state_obj={"directory": {"users": [BUYER]}})
    [run] = [r for r in sim.runs if r.rule.id == f"catalogue-{event_name}"]
    assert run.fired, run.reason
    [message] = run.messages
    assert (message.channel, message.to, message.status) == ("sms", phone, "planned"), message.reason
    assert "unknown macros" not in message.reason
    assert message.sms_text and not re.search(r"#[A-Z0-9_]+#", message.sms_text)
    template = enabled_project.templates.get(f"catalogue_{event_name}")
    for name in template.macros():
        assert name in fields or name in SITE_MACROS, f"#{name}# is not a field of {event_name}"
        if fields.get(name):
            assert fields[name] in message.sms_text


def test_the_example_test_cases_in_the_catalogue_header_pass_once_their_rules_are_enabled(enabled_project, tmp_path):
    lines = CATALOGUE.read_text(encoding="utf-8").splitlines()
    start = lines.index("#     directory:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#    "):
            break
        block.append(line[6:])
    path = tmp_path / "catalogue.yaml"
    path.write_text("\n".join(block) + "\n", encoding="utf-8")
    results = run_file(enabled_project, path)
    assert len(results) == 2
    assert all(r.passed for r in results), [r.detail for r in results if not r.passed]
