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

from engine.loader import load_project
from engine.templates import load_templates
from engine.simulate import simulate

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
    path = root / "rules" / "catalogue.rules"
    text = path.read_text(encoding="utf-8")
    path.write_text("\n".join(COMMENTED.sub(r"\1", line) for line in text.splitlines()) + "\n", encoding="utf-8")
    return load_project(root / "herald.yaml", strict=True)      # raises on any error or warning


def test_the_catalogue_ships_disabled_with_a_rule_and_a_template_per_event():
    entries = catalogue_entries()
    assert len(entries) == 24
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
