"""Golden files: each tests/golden/*.rules compiles to exactly the objects in its .golden.

Regenerate after an intended change with `UPDATE_GOLDEN=1 make test` and review the diff.
"""

import dataclasses
import os
from pathlib import Path

import pytest

from herald.grammar.compiler import compile_text
from herald.grammar.model import Rule

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(GOLDEN.glob("*.rules"))


def dump(rule: Rule) -> str:
    lines = [f"rule {rule.id}", f"  location: {rule.location}", f"  canonical: {rule.canonical()}"]
    for f in dataclasses.fields(rule):
        if f.name not in ("id", "location"):
            lines.append(f"  {f.name}: {getattr(rule, f.name)!r}")
    return "\n".join(lines)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_compiles_to_golden(path: Path) -> None:
    compiled = compile_text(path.read_text(encoding="utf-8"), path.name)
    assert [d.format() for d in compiled.diagnostics] == []
    actual = "\n\n".join(dump(r) for r in compiled.rules) + "\n"
    golden = path.with_suffix(".golden")
    if os.environ.get("UPDATE_GOLDEN") or not golden.exists():
        golden.write_text(actual, encoding="utf-8")
    assert actual == golden.read_text(encoding="utf-8")


def test_one_liner_and_named_form_compile_to_the_same_rule() -> None:
    one = compile_text((GOLDEN / "oneliner.rules").read_text(), "a").rules[0]
    named = compile_text((GOLDEN / "named_multiline.rules").read_text(), "b").rules[0]
    assert (one.trigger, one.condition, one.actions) == (named.trigger, named.condition, named.actions)
    assert named.id == "shipped"


def test_unnamed_rule_identity_survives_moving_and_reformatting() -> None:
    a = compile_text('on order.created send sms to customer.phone text "x"', "a.rules").rules[0]
    b = compile_text('\n\n# moved\non   order.created\n  send sms\n to customer.phone   text "x"  ', "b.rules").rules[0]
    c = compile_text('on order.created send sms to customer.phone text "y"', "a.rules").rules[0]
    assert a.id == b.id and a.location != b.location
    assert a.id != c.id


def test_compiled_rules_are_immutable() -> None:
    rule = compile_text((GOLDEN / "oneliner.rules").read_text(), "a").rules[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.name = "other"  # type: ignore[misc]
