"""Static checks over a whole project: every problem at once, located, with a fix."""

import pytest

from herald.engine.errors import ConfigError, RulesError


def headlines(exc) -> list[str]:
    return [d.headline() for d in exc.diagnostics]


def test_all_errors_across_files_at_once_with_did_you_mean(project_dir):
    project_dir.setup('''
    rule "one" on order.created send sms to customer.phone using "shiped"
    rule "two" on order.created send sms to customer.phone text "x" from "testsmss"
    rule "three" on order.created if event.site == "s3" send sms to customer.phone text "x"
    ''')
    project_dir.write("rules/more/other.rules", '''
    rule "one" on order.updated send sms to customer.phone text "x"
    rule "bad" on order.updated send sms to "12345" text "x"
    ''')
    with pytest.raises(RulesError) as info:
        project_dir.load()
    assert headlines(info.value) == [
        'rules/main.rules:1:62: error: unknown template "shiped"',
        'rules/main.rules:2:70: error: sender "testsmss" is not among the configured senders for sms',
        'rules/main.rules:3:34: error: unknown site "s3"',
        'rules/more/other.rules:1:1: error: duplicate rule name "one" (first at rules/main.rules:1:1)',
        'rules/more/other.rules:2:41: error: "12345" is not a valid phone number (region RU): too short',
    ]
    hints = [d.hint for d in info.value.diagnostics]
    assert hints[:3] == ['did you mean "shipped"?', 'did you mean "testsms"?', 'sites: s1, s2']


def test_warnings_for_fields_and_macros_no_event_carries(project_dir):
    project_dir.setup('''
    rule "w" on order.created if order.stauts == "N" send sms to customer.phone text "#ORDER_NUMBR# #SITE_NAME#"
    rule "ok" on mail.SALE_NEW_ORDER send sms to PHONE text "#ANYTHING#"
    ''')
    project = project_dir.load()
    assert [d.headline() for d in project.warnings] == [
        "rules/main.rules:1:30: warning: no order.created event carries order.stauts",
        "rules/main.rules:1:82: warning: #ORDER_NUMBR# in the text is carried by no order.created event; "
        "it would render empty",
    ]
    assert [d.hint for d in project.warnings] == ['did you mean "order.status"?', 'did you mean "ORDER_NUMBER"?']
    with pytest.raises(RulesError):
        project_dir.load(strict=True)


def test_unknown_event_type_is_a_warning_with_suggestion(project_dir):
    project_dir.setup('rule "t" on order.craeted send sms to customer.phone text "x"')
    (warning,) = project_dir.load().warnings
    assert warning.headline() == "rules/main.rules:1:1: warning: no canonical event has type order.craeted"
    assert warning.hint == 'did you mean "order.created"?'


def test_template_file_errors_are_located(project_dir):
    project_dir.setup('rule "t" on order.created send sms to customer.phone using "a"',
                      templates='a:\n  smss: "x"\nb: [1, 2]\n')
    with pytest.raises(RulesError) as info:
        project_dir.load()
    assert headlines(info.value) == [
        'rules/templates.yaml:1:1: error: template "a" has no text',
        'rules/templates.yaml:2:3: error: unknown variant "smss" in template "a"',
        'rules/templates.yaml:3:1: error: template "b" must be a text or sms: / viber: variants',
    ]
    assert info.value.diagnostics[1].hint == 'did you mean "sms"?'


def test_a_failed_load_raises_and_nothing_is_half_loaded(project_dir):
    project_dir.setup('rule "a" on order.created send sms to customer.phone text "x"\n'
                      'rule "b" on order.created send sms to customer.phone text')
    with pytest.raises(RulesError) as info:
        project_dir.load()
    assert len([d for d in info.value.diagnostics if d.is_error]) == 1


def test_config_errors_raise_config_error(project_dir):
    project_dir.setup("", config="sites:\n  s1:\n    timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError) as info:
        project_dir.load()
    assert headlines(info.value)[0].startswith("herald.yaml:3:15: error:")


def test_a_rule_file_that_is_not_utf8_is_a_located_error(project_dir):
    project_dir.setup('rule "a" on order.created send sms to customer.phone text "x"\n')
    (project_dir.root / "rules/legacy.rules").write_bytes('on order.created\nsend sms to customer.phone text "Заказ"'
                                                          .encode("cp1251"))
    with pytest.raises(RulesError) as info:
        project_dir.load()
    assert headlines(info.value) == ["rules/legacy.rules:2:1: error: the file is not UTF-8"]


def test_site_id_literals_are_checked_like_event_site(project_dir):
    project_dir.setup('''
    rule "a" on order.created if site.id == "s3" send sms to customer.phone text "x"
    rule "b" on order.created if site.id != "s" send sms to customer.phone text "x"
    rule "c" on order.created if site.id in ["s1", "s22"] send sms to customer.phone text "x"
    rule "d" on order.created if site.id == "s2" send sms to customer.phone text "x"
    ''')
    with pytest.raises(RulesError) as info:
        project_dir.load()
    unknown = [d for d in info.value.diagnostics if "unknown site" in d.message]
    assert [(d.location.line, d.message) for d in unknown] == [
        (1, 'unknown site "s3"'), (2, 'unknown site "s"'), (3, 'unknown site "s22"')]
    assert unknown[2].hint == 'did you mean "s2"?'


def test_department_and_group_recipients_without_a_directory_draw_a_warning(project_dir):
    project_dir.setup('rule "a" on order.created send sms to department "Sales" text "x"\n'
                      'rule "b" on order.created send sms to group "ops" text "x"\n')
    warnings = [d for d in project_dir.load().diagnostics if not d.is_error]
    assert [(d.location.line, d.message) for d in warnings] == [
        (1, 'department "Sales" will find no one: no `directory:` is configured'),
        (2, 'group "ops" will find no one: no `directory:` is configured')]
    assert "directory: {file: people.yaml}" in warnings[0].hint


def test_department_and_group_names_missing_from_the_people_file_draw_a_warning(project_dir):
    from tests.conftest import BASE_CONFIG
    project_dir.setup('rule "a" on order.created send sms to department "Salez" text "x"\n'
                      'rule "b" on order.created send sms to group "opz" text "x"\n'
                      'rule "c" on order.created send sms to department "Sales Moscow" text "x"\n'
                      'rule "d" on order.created send sms to group "ops" text "x"\n',
                      config=BASE_CONFIG + "directory:\n  file: people.yaml\n")
    project_dir.write("people.yaml", '''
    users:
      - {id: 7, login: anna, PERSONAL_MOBILE: "+79005550001", department: Sales Moscow, groups: [ops]}
    departments: {Sales: null, Sales Moscow: Sales}
    ''')
    warnings = [d for d in project_dir.load().diagnostics if not d.is_error]
    assert [(d.location.line, d.message, d.hint) for d in warnings] == [
        (1, 'department "Salez" is not in people.yaml: it will find no one', 'did you mean "Sales"?'),
        (2, 'group "opz" is not in people.yaml: it will find no one', 'did you mean "ops"?')]
