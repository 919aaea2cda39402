"""The documentation's examples work.

- Every ```rules block in docs/*.md and README.md compiles with no errors and holds at
  least one rule.
- Every ```yaml block in docs/rules.md is a templates file that loads with no errors.
- The complete example of docs/rule-tests.md (its blocks whose first line is
  `# PATH`) is a project whose `herald test` passes.

A doc example that stops compiling fails here, named by its file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from herald.grammar.compiler import compile_text
from herald.engine.rules.templates import load_templates

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RULES_DOC = DOCS / "rules.md"
RULE_TESTS_DOC = DOCS / "rule-tests.md"
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")


@dataclass(frozen=True)
class Block:
    file: str          # relative to the repository, e.g. docs/rules.md
    line: int          # line of the block's first content line (1-based)
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def fenced_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced code block of a Markdown file, with its info-string language."""
    name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang = opening.group(1), opening.group(2).lower()
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body, j = [], i + 1
        while j < len(lines) and not closing.match(lines[j]):
            body.append(lines[j])
            j += 1
        blocks.append(Block(name, i + 2, lang, "\n".join(body)))
        i = j + 1
    return blocks


def doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def blocks_of(lang: str, files: list[Path]) -> list[Block]:
    return [b for f in files if f.exists() for b in fenced_blocks(f) if b.lang == lang]


def compile_problems(block: Block) -> list[str]:
    """Why a ```rules block does not compile ([] when it does). Line numbers are the doc's."""
    padded = "\n" * (block.line - 1) + block.text
    compiled = compile_text(padded, block.file)
    problems = [d.format() for d in compiled.diagnostics if d.is_error]
    if not problems and not compiled.rules:
        problems.append(f"{block.where}: the block holds no rule")
    return problems


RULES_BLOCKS = blocks_of("rules", doc_files())
TEMPLATE_BLOCKS = blocks_of("yaml", [RULES_DOC])


def test_the_docs_have_examples() -> None:
    per_file = {f.name: len(blocks_of("rules", [f])) for f in doc_files() if f.exists()}
    assert RULES_DOC.exists() and per_file.get("rules.md", 0) >= 15, per_file
    assert per_file.get("events.md", 0) >= 1 and per_file.get("rule-tests.md", 0) >= 1, per_file
    assert len(TEMPLATE_BLOCKS) >= 1


@pytest.mark.parametrize("block", RULES_BLOCKS, ids=[b.where for b in RULES_BLOCKS])
def test_rules_block_compiles(block: Block) -> None:
    problems = compile_problems(block)
    assert not problems, (f"the ```rules block at {block.where} does not compile:\n"
                          + "\n".join(problems))


@pytest.mark.parametrize("block", TEMPLATE_BLOCKS, ids=[b.where for b in TEMPLATE_BLOCKS])
def test_template_block_loads(block: Block, tmp_path: Path) -> None:
    file = tmp_path / "templates.yaml"
    file.write_text(block.text + "\n", encoding="utf-8")
    loaded = load_templates(file)
    errors = [d.format() for d in loaded.diagnostics if d.is_error]
    assert not errors, f"the ```yaml template block at {block.where} does not load:\n" + "\n".join(errors)
    assert loaded.templates, f"the ```yaml template block at {block.where} defines no template"


def test_a_broken_example_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "broken.md"
    doc.write_text('# Doc\n\nText.\n\n```rules\non order.created\nsend sms to customer.phone\n```\n\n'
                   '```rules\n# only a comment\n```\n', encoding="utf-8")
    broken, empty = blocks_of("rules", [doc])
    assert broken.line == 6 and empty.line == 11
    problems = compile_problems(broken)
    assert problems and problems[0].startswith(f"{broken.file}:7:")
    assert compile_problems(empty) == [f"{empty.where}: the block holds no rule"]


def test_the_rule_tests_example_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/rule-tests.md's blocks starting `# PATH` form a project whose tests pass."""
    from herald.engine.rules.loader import load_project
    from herald.engine.rules.ruletest import format_results, run_tests

    written = []
    for block in fenced_blocks(RULE_TESTS_DOC):
        first = block.text.split("\n", 1)[0]
        match = re.fullmatch(r"#\s*((?:[\w.-]+/)*[\w.-]+\.(?:yaml|rules))\s*", first)
        if block.lang in ("yaml", "rules") and match:
            target = tmp_path / match.group(1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text + "\n", encoding="utf-8")
            written.append(match.group(1))
    assert "herald.yaml" in written and any(w.startswith("rules/tests/") for w in written), written
    monkeypatch.chdir(tmp_path)
    project = load_project("herald.yaml")
    results, seconds = run_tests(project, Path("rules/tests"))
    assert results, "the example has no tests"
    assert all(r.passed for r in results), format_results(results, seconds)
