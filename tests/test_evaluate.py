"""From an event to planned messages: rendering, recipients, windows, after, once per."""

from datetime import datetime
from zoneinfo import ZoneInfo

from herald.engine.directory import StaticDirectory
from herald.engine.rules.evaluate import Evaluator
from herald.engine.events import parse_event
from tests.conftest import BASE_CONFIG

MSK = ZoneInfo("Europe/Moscow")


def at(hour, minute=0, day=27):
    return datetime(2026, 11, day, hour, minute, tzinfo=MSK)


def event(obj, when):
    obj = dict(obj)
    obj.setdefault("time", when.isoformat())
    return parse_event(obj, default_site="s1")


def messages(project, obj, when, **kw):
    ev = Evaluator(project, directory=kw.pop("directory", None))
    runs, delayed = ev.process(event(obj, when), when)
    return [m for r in runs for m in r.messages], runs, delayed, ev


ORDER = {"type": "order.created",
         "data": {"order": {"id": 42, "number": "A-42", "price": "1500.00", "paid": False},
                  "customer": {"phone": "8 (900) 111-22-33", "name": "Ivan"}}}


def test_macros_resolve_in_documented_order(project_dir):
    project_dir.setup('''
    rule "m" on order.created send sms to customer.phone
      text "#ORDER_ID#|#ORDER_NUMBER#|#CUSTOMER_NAME#|#SITE_NAME#|#SERVER_NAME#|#DEFAULT_PHONE_FROM#|#PHONE_TO#|#NOPE#"
    ''')
    obj = {"type": "order.created", "data": dict(ORDER["data"], ORDER_ID="A-42")}
    (m,), runs, _, _ = messages(project_dir.load(), obj, at(12))
    # the flat Bitrix field ORDER_ID wins over order.id; unknown macros render empty and are reported
    assert m.text == "A-42|A-42|Ivan|Modern Clothes|shop.example.com|+74950000000|+79001112233|"
    assert "#NOPE#" in m.reason and m.status == "planned"


def test_omni_uses_viber_text_and_sms_variant(project_dir):
    project_dir.setup('rule "o" on order.created send omni to customer.phone using "new_order"')
    (m,), *_ = messages(project_dir.load(), ORDER, at(12))
    assert (m.channel, m.to, m.sender, m.sms_sender) == ("omni", "+79001112233", "AdvInform", "testsms")
    assert m.text == "Ваш заказ №A-42 принят. Стоимость: 1500.00"
    assert m.sms_text == "Заказ A-42 принят"
    assert (m.encoding, m.parts) == ("UCS-2", 1)


def test_outside_window_waits_for_next_opening_in_site_zone(project_dir):
    project_dir.setup('rule "w" on order.created send sms to customer.phone text "hi"')
    (m,), *_ = messages(project_dir.load(), ORDER, at(23, 30))
    assert m.status == "deferred" and m.send_at == at(9, 0, day=28)


def test_rule_window_overrides_site_window_and_may_wrap_midnight(project_dir):
    project_dir.setup('rule "w" on order.created send sms to customer.phone text "hi" between 22:00-02:00')
    (m,), *_ = messages(project_dir.load(), ORDER, at(23, 30))
    assert m.status == "planned" and m.send_at == at(23, 30)
    (m,), *_ = messages(project_dir.load(), ORDER, at(12))
    assert m.status == "deferred" and m.send_at == at(22)


def test_stale_after_expires_instead_of_waiting_too_long(project_dir):
    project_dir.setup('rule "s" on order.created send sms to customer.phone text "hi" stale after 1h')
    (m,), *_ = messages(project_dir.load(), ORDER, at(23, 30))
    assert m.status == "expired" and "stale after 1h" in m.reason


def test_empty_render_is_skipped_and_bad_phone_fails_only_that_recipient(project_dir):
    project_dir.setup('''
    rule "e" on order.created send sms to customer.phone using "empty"
    rule "p" on order.created send sms to customer.phone, "+7 900 765-43-21", order.nophone text "hi"
    ''')
    msgs, *_ = messages(project_dir.load(), ORDER, at(12))
    assert [(m.rule_id, m.to, m.status) for m in msgs] == [
        ("e", "+79001112233", "skipped"), ("p", "+79001112233", "planned"), ("p", "+79007654321", "planned"),
        ("p", "", "failed")]
    assert msgs[3].reason == "order.nophone gives no phone number"


def test_copy_admins_and_admins_recipients(project_dir):
    project_dir.setup('rule "c" on order.created send sms to customer.phone text "hi" copy admins')
    msgs, *_ = messages(project_dir.load(), ORDER, at(12))
    assert [(m.to, m.copy) for m in msgs] == [("+79001112233", False), ("+79001234567", True),
                                              ("+79007654321", True)]


def test_directory_recipients(project_dir):
    project_dir.setup('rule "d" on order.created send sms to user order.user_id, department "Sales" text "hi"')
    directory = StaticDirectory.from_mapping({
        "users": [{"id": 7, "login": "anna", "PERSONAL_MOBILE": "89005550001", "department": ["Sales Moscow"]},
                  {"id": 8, "login": "boris", "WORK_PHONE": "+79005550002", "department": ["Sales"]},
                  {"id": 9, "login": "olga", "PERSONAL_PHONE": "+79005550003", "department": ["IT"]}],
        "departments": {"Sales": None, "Sales Moscow": "Sales", "IT": None}})
    obj = {"type": "order.created", "data": {"order": {"id": 1, "user_id": 9}}}
    msgs, *_ = messages(project_dir.load(), obj, at(12), directory=directory)
    assert [m.to for m in msgs] == ["+79005550003", "+79005550001", "+79005550002"]


def test_translit_for_sms_where_the_site_asks(project_dir):
    project_dir.setup('rule "t" on order.created send sms to customer.phone text "Заказ #ORDER_NUMBER# принят"',
                      config=BASE_CONFIG.replace('    channel: sms\n', '    channel: sms\n    translit: true\n'))
    (m,), *_ = messages(project_dir.load(), ORDER, at(12))
    assert m.sms_text == "Zakaz A-42 prinyat" and m.encoding == "GSM-7"


def test_after_rereads_latest_state_so_payment_cancels_reminder(project_dir):
    project_dir.setup('rule "remind" on order.created after 2h if order.paid == false '
                      'send sms to customer.phone text "pay"')
    project = project_dir.load()
    _, _, delayed, ev = messages(project, ORDER, at(10))
    assert [d.due for d in delayed] == [at(12)]
    paid = {"type": "order.updated", "data": {"order": {"id": 42, "paid": True}}}
    ev.process(event(paid, at(11)), at(11))
    run = ev.run_delayed(delayed[0], at(12))
    assert not run.fired and run.reason == "if is false: order.paid == false: order.paid is true"


def test_once_per_within(project_dir):
    project_dir.setup('rule "o" on order.updated once per customer.phone within 1d '
                      'send sms to customer.phone text "hi"')
    project = project_dir.load()
    ev = Evaluator(project)
    upd = {"type": "order.updated", "data": ORDER["data"]}
    sent = []
    for when in (at(10), at(11), at(10, day=28), at(11, day=28)):
        runs, _ = ev.process(event(upd, when), when)
        sent.append(sum(len(r.messages) for r in runs))
    assert sent == [1, 0, 1, 0]


def test_site_time_zone_and_default_channel(project_dir):
    project_dir.setup('rule "z" on order.created send to customer.phone text "hi"')
    obj = dict(ORDER, site="s2")
    # 06:30 Moscow is 08:30 in Yekaterinburg; site s2 has no window, default channel viber
    (m,), *_ = messages(project_dir.load(), obj, at(6, 30))
    assert m.channel == "viber" and m.status == "planned" and m.sms_text is None


def test_previous_paths_read_the_recorded_state_when_the_event_has_none(project_dir):
    project_dir.setup('rule "np" on order.status changes if previous.order.status == "N" '
                      'send sms to customer.phone text "#ORDER_STATUS#"')
    ev = Evaluator(project_dir.load())
    ev.process(event({"type": "order.created", "data": dict(ORDER["data"], order={"id": 42, "status": "N"})},
                     at(10)), at(10))
    runs, _ = ev.process(event({"type": "order.updated", "data": dict(ORDER["data"], order={"id": 42, "status": "P"})},
                               at(11)), at(11))
    assert [m.text for r in runs for m in r.messages] == ["P"]


def test_omni_from_names_the_sender_of_its_leg(project_dir):
    project_dir.setup('''
    rule "a" on order.created send omni to customer.phone text "x" from "Shop"
    rule "b" on order.updated send omni to customer.phone text "x" from "AdvInform"
    ''')
    (a,), *_ = messages(project_dir.load(), ORDER, at(12))
    (b,), *_ = messages(project_dir.load(), dict(ORDER, type="order.updated"), at(12))
    assert (a.sender, a.sms_sender) == ("AdvInform", "Shop")
    assert (b.sender, b.sms_sender) == ("AdvInform", "testsms")


def test_bitrix_y_n_words_compare_equal_to_booleans(project_dir):
    project_dir.setup('rule "r" on order.created if order.paid == "N" send sms to customer.phone text "pay"')
    msgs, *_ = messages(project_dir.load(), ORDER, at(12))       # canonical paid: false
    assert [m.text for m in msgs] == ["pay"]
