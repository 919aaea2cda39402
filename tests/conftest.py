"""Shared helpers: a throw-away Herald project on disk (config, rules, templates)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

BASE_CONFIG = """
senders:
  sms: [testsms, Shop]
  viber: [AdvInform]
sites:
  s1:
    name: Modern Clothes
    server_name: shop.example.com
    phone_from: "+74950000000"
    timezone: Europe/Moscow
    channel: sms
    send_window: "09:00-21:00"
    admins: ["+79001234567", "+79007654321"]
  s2:
    name: Second Shop
    timezone: Asia/Yekaterinburg
    channel: viber
"""

BASE_TEMPLATES = """
shipped: "Новый статус отгрузки заказа N #ORDER_ID#: #STATUS_NAME#"
new_order:
  viber: "Ваш заказ №#ORDER_NUMBER# принят. Стоимость: #ORDER_PRICE#"
  sms: "Заказ #ORDER_NUMBER# принят"
empty: "#NOTHING_HERE#"
"""


class ProjectDir:
    def __init__(self, root: Path):
        self.root = root
        (root / "rules").mkdir(parents=True, exist_ok=True)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    def setup(self, rules: str = "", templates: str = BASE_TEMPLATES, config: str = BASE_CONFIG) -> "ProjectDir":
        self.write("herald.yaml", config)
        self.write("rules/templates.yaml", templates)
        if rules:
            self.write("rules/main.rules", rules)
        return self

    def load(self, **kw):
        from herald.engine.rules.loader import load_project
        return load_project("herald.yaml", **kw)  # relative, as users type it


@pytest.fixture
def project_dir(tmp_path, monkeypatch) -> ProjectDir:
    monkeypatch.chdir(tmp_path)
    return ProjectDir(tmp_path)


def pytest_report_header(config) -> str:
    from tests.fuzz import EXAMPLES, SEED
    return f"fuzz: HERALD_FUZZ_SEED={SEED} HERALD_FUZZ_EXAMPLES={EXAMPLES} (set both to replay a fuzz run)"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    # -q hides the header, so the seed is repeated at the end where a failure is read.
    terminalreporter.write_line(pytest_report_header(config))
