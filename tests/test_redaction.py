"""No secret of the config reaches a log line, whatever setting holds it (engine/redaction.py)."""

from __future__ import annotations

import io
import logging

from herald.engine.config import load_config
from herald.engine.logs import setup_logging
from herald.engine.redaction import secret_values

CONFIG = """
bsg:
  url: https://bsguser:bsg-url-pw@api.bsg.example/
  api_key: main-api-key
  backup:
    - url: https://backup:backup-url-pw@backup.example/
      api_key: backup-api-key
sites:
  s1:
    timezone: Europe/Moscow
    api_key: site-api-key
smtp:
  host: 127.0.0.1
  from: herald@shop.example
  password: smtp-pw
subscriptions:
  lists: [news]
  proof: {url: "https://captcha.example/siteverify", secret: captcha-secret}
connectors:
  - type: sql
    url: mysql+pymysql://shop:db-url-pw@127.0.0.1/shop
    preset: bitrix
"""

SECRETS = ["bsg-url-pw", "main-api-key", "backup-url-pw", "backup-api-key", "site-api-key",
           "smtp-pw", "captcha-secret", "db-url-pw"]


def test_every_secret_of_the_config_is_found_and_redacted_from_logs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "herald.yaml").write_text(CONFIG, encoding="utf-8")
    config = load_config("herald.yaml")
    found = secret_values(config)
    assert [s for s in SECRETS if s not in found] == []
    assert "api.bsg.example" not in " ".join(found)       # a URL's password, not the whole URL

    out = io.StringIO()
    handler = setup_logging(secrets=found, stream=out)
    try:
        logging.getLogger("herald.test").warning("connect failed: %s", " ".join(SECRETS))
    finally:
        logging.getLogger().removeHandler(handler)
    line = out.getvalue()
    assert "connect failed" in line and [s for s in SECRETS if s in line] == []
