"""The presets of the SQL connector: a name under `preset:` → the factory of its sources.

Presets live beside the connector (connectors/sql/bitrix/ for `preset: bitrix`) and are
imported plainly: a preset's module costs little to load, and an import here keeps the
dependency visible (no module loaded by name at run time).
"""

from __future__ import annotations

from herald.connectors.sql import bitrix
from herald.connectors.sql.core import PresetFactory

PRESETS: dict[str, PresetFactory] = {"bitrix": bitrix.sources}
"""Preset name → factory(config, settings) returning a list of `Source`s. `settings`:
`{"name": the connector's name option or None, "dialect": "mysql" | "mariadb" |
"postgresql" | "sqlite", "charset": …, "batch": …, "start": "end" | "beginning",
"options": the mapping under the key named like the preset (e.g. `bitrix:`), or {},
"location": where that mapping is (or the entry)}`. A factory raises ConfigError with
located diagnostics for its own options. Tests and plug-ins may add entries."""
