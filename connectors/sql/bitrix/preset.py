"""The `bitrix:` options of `preset: bitrix`, checked with located errors, and `_Preset`:
the checked options and what the preset's sources share."""

from __future__ import annotations

import codecs
import re
from typing import Any

from herald.connectors.options import Locator, what as _what
from herald.connectors.sql.bitrix.dialect import DEFAULT_LANGUAGE, _Catalog, _Dialect
from herald.connectors.sql.core import json_value
from herald.engine.config import ConnectorConfig
from herald.engine.errors import ConfigError, Diagnostic, Location, did_you_mean

SOURCES = ("mail", "orders", "shipments", "users", "subscriptions", "tickets", "tasks")
DEFAULT_SOURCES = ("mail", "users", "subscriptions", "tickets", "tasks")
SNAPSHOT_SALE = ("orders", "shipments")
OPTIONS = ("charset", "site", "language", "sources")
CHARSETS = {"utf-8": "utf-8", "cp1251": "cp1251"}      # codecs.lookup names → what the codec is given
PREFIX = "bitrix preset"


class _Options:
    """Collects located diagnostics for the `bitrix:` mapping."""

    def __init__(self, config: ConnectorConfig, settings: dict):
        self.config = config
        self.fallback: Location | None = settings.get("location") or config.location
        self.problems: list[Diagnostic] = []
        try:                                  # line:col of nested keys
            self._locator: Locator | None = Locator(config)
        except Exception:                     # noqa: BLE001 — only the precision of a location is lost
            self._locator = None

    def at(self, *path: Any, key: bool = False) -> Location | None:
        if self._locator is not None:
            try:
                return self._locator.at("bitrix", *path, key=key) or self.fallback
            except Exception:                 # noqa: BLE001
                pass
        return self.fallback

    def error(self, message: str, *path: Any, key: bool = False, hint: str | None = None) -> None:
        self.problems.append(Diagnostic(f"{PREFIX}: {message}", self.at(*path, key=key), hint=hint))


class _Preset:
    """The checked options, and what the sources share: the catalog read in `prepare`."""

    def __init__(self, *, dialect: str, charset: str, sites: str | dict | None, language: str,
                 sources: tuple[str, ...], connector: str | None = None):
        self.dialect = _Dialect(dialect)
        self.charset = charset
        self.sites = sites
        self.language = language
        self.sources = sources
        self.connector = connector
        self.catalog = _Catalog(language)

    @classmethod
    def from_settings(cls, config: ConnectorConfig, settings: dict) -> "_Preset":
        check = _Options(config, settings)
        raw = settings.get("options")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            check.error(f"bitrix: expected a mapping of options, got {_what(raw)}",
                        hint="e.g. bitrix: {charset: windows-1251, site: {s1: s1}}")
            raise ConfigError(check.problems)
        for key in raw:
            if key not in OPTIONS:
                check.error(f'unknown option "{key}"', key, key=True,
                            hint=did_you_mean(str(key), OPTIONS) or f"the bitrix preset has: {', '.join(OPTIONS)}")

        inherited = _charset(settings.get("charset") or "utf-8")      # the connector's `charset:`
        charset = inherited or "utf-8"
        if "charset" in raw:
            found = _charset(raw["charset"])
            if found is None:
                check.error(f"charset: expected utf-8 or windows-1251, got {_what(raw['charset'])}", "charset",
                            hint="the site charset of the Bitrix installation (Settings → Sites): utf-8, or "
                                 "windows-1251 on older Russian sites")
            else:
                charset = found
        elif inherited is None:
            check.error(f"charset: a Bitrix site is utf-8 or windows-1251, not {settings.get('charset')}",
                        hint="set bitrix: {charset: utf-8} or {charset: windows-1251}")

        sites: str | dict | None = None
        if "site" in raw:
            value = raw["site"]
            if isinstance(value, str) and value.strip():
                sites = value.strip()
            elif isinstance(value, dict) and value:
                sites = {}
                for lid, target in value.items():
                    if not isinstance(lid, str) or not lid.strip():
                        check.error(f"site: {_what(lid)} is not a Bitrix site id (LID)", "site", lid, key=True,
                                    hint="e.g. site: {s1: shop}")
                    elif target is not None and (not isinstance(target, str) or not target.strip()):
                        check.error(f"site: {lid}: expected a Herald site id or null (skip that site), got "
                                    f"{_what(target)}", "site", lid, hint="e.g. site: {s1: shop, s2: null}")
                    else:
                        sites[lid.strip()] = target.strip() if isinstance(target, str) else None
            else:
                check.error(f"site: expected a Herald site id or a mapping of Bitrix site ids (LID) to Herald "
                            f"site ids, got {_what(value)}", "site", hint="e.g. site: {s1: shop, s2: outlet}")

        language = DEFAULT_LANGUAGE
        if "language" in raw:
            value = raw["language"]
            if isinstance(value, str) and re.fullmatch(r"[A-Za-z]{2}", value.strip()):
                language = value.strip().lower()
            else:
                check.error(f"language: expected a two-letter language id, got {_what(value)}", "language",
                            hint="the LID of b_sale_status_lang, e.g. language: ru")

        chosen = DEFAULT_SOURCES
        if "sources" in raw:
            value = raw["sources"]
            if not isinstance(value, list) or not value:
                check.error(f"sources: expected a list of sources, got {_what(value)}", "sources",
                            hint=f"choose from: {', '.join(SOURCES)}")
            else:
                picked: list[str] = []
                for i, item in enumerate(value):
                    if not isinstance(item, str) or item.strip() not in SOURCES:
                        check.error(f"sources: unknown source {_what(item)}", "sources", i,
                                    hint=(did_you_mean(item.strip(), SOURCES) if isinstance(item, str) else None)
                                    or f"choose from: {', '.join(SOURCES)}")
                    elif item.strip() in picked:
                        check.error(f'sources: "{item.strip()}" is listed twice', "sources", i)
                    else:
                        picked.append(item.strip())
                chosen = tuple(picked)
                both = [s for s in SNAPSHOT_SALE if s in chosen]
                if "mail" in chosen and both:
                    check.error(
                        f"sources: mail and {' and '.join(both)} together would notify twice", "sources",
                        hint="sale mails in b_event already give order.* and shipment.* events for every order "
                             "change; read b_sale_order / b_sale_order_delivery only when the shop's sale mail "
                             "events are off — then leave mail out (e.g. sources: [orders, shipments, users])")
        if check.problems:
            raise ConfigError(check.problems)
        return cls(dialect=settings.get("dialect") or "mysql", charset=charset, sites=sites, language=language,
                   sources=chosen, connector=settings.get("name"))

    def site_of(self, lid: Any) -> tuple[bool, str | None]:
        """(keep, Herald site id or None for the default site) for a Bitrix LID value
        ("s1", or "s1,s2" on b_event: the first)."""
        if isinstance(self.sites, str):
            return True, self.sites
        text = json_value(lid, self.charset)
        text = str(text).split(",")[0].strip() if text not in (None, "") else ""
        if not text:
            return True, None
        if isinstance(self.sites, dict) and text in self.sites:
            target = self.sites[text]
            return target is not None, target
        return True, text

    def fixed_site(self) -> str | None:
        """The site of rows that name none (users, subscriptions, tasks)."""
        return self.sites if isinstance(self.sites, str) else None


def _charset(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        name = codecs.lookup(value.strip()).name
    except LookupError:
        return None
    return CHARSETS.get(name)
