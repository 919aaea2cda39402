"""Fuzz the rule compiler (issue #12 (a)): on generated and mutated rule text it returns rules
or located errors, never another exception.

The entry point is `compile_text`, which `herald check`, a start and every reload use (through
herald.engine.rules.loader.compile_rules); each compiled rule is then put through what the loader and the
runtime do with it: the static checks, the matcher, printing and evaluating its condition.
Inputs are bounded (a few KB, nesting and literals a little past the compiler's limits), so no
input can be slow; the slowest seen is printed at the end of a run (`-s` shows it).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from herald.engine.config import _load_text
from herald.engine.rules.loader import check_rules
from herald.engine.rules.matcher import Matcher
from herald.engine.rules.templates import load_templates
from herald.grammar.compiler import KEYWORDS, MAX_DEPTH, MAX_DIGITS, MAX_PATH_PARTS, compile_text
from tests.conftest import BASE_CONFIG, BASE_TEMPLATES
from tests.fuzz import fuzz

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "rules").rglob("*.rules"))]
FILE = "fuzz.rules"
slowest: list[tuple[float, str]] = [(0.0, "")]

# ---- what goes into the text ------------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_CHAR = st.one_of(st.characters(), SURROGATES, st.sampled_from('"\\\n\t()[],.*#:-=<>!'))
UNITS = ("ms", "s", "m", "h", "d", "w")

PIECES = st.one_of(
    st.sampled_from(KEYWORDS),
    st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "(", ")", "[", "]", ",", "*", ".", "=", "'", '"', "#",
                     "\n", "09:00-21:00", "10:00", "order.status", "customer.phone", "previous.order.status",
                     "event.site", "site.name", "order.*", "*", '"F"', '"+79001234567"', '"shipped"']),
    st.integers(1, 200).map(lambda n: "9" * n),                                   # long numbers
    st.integers(MAX_DIGITS - 2, MAX_DIGITS + 2).map(lambda n: "1" * n + ".5"),
    st.tuples(st.integers(0, 10**25), st.sampled_from(UNITS)).map(lambda t: f"{t[0]}{t[1]}"),  # durations
    st.tuples(st.integers(1, 40), st.sampled_from(UNITS)).map(lambda t: f"{'9' * t[0]}{t[1]}"),
    st.integers(MAX_DEPTH - 3, MAX_DEPTH + 40).map(lambda n: "not " * n),       # deep nesting
    st.integers(1, MAX_DEPTH + 40).map(lambda n: "(" * n),
    st.integers(1, MAX_DEPTH + 40).map(lambda n: ")" * n),
    st.integers(1, MAX_DEPTH + 40).map(lambda n: "[" * n),
    st.integers(1, MAX_DEPTH + 40).map(lambda n: "]" * n),
    st.integers(MAX_PATH_PARTS - 1, MAX_PATH_PARTS + 3).map(lambda n: ".".join(["order"] * n)),
    st.text(ANY_CHAR, max_size=12).map(lambda t: f'"{t}"'),                      # strings, unicode, surrogates
    st.text(ANY_CHAR, max_size=8),
)

TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\s+|[A-Za-z_][A-Za-z0-9_.*]*|\d[\w:.]*|.', re.S)


@st.composite
def mutated(draw) -> str:
    """A shipped rule file (or a slice of it) with a few token and character mutations."""
    text = draw(st.sampled_from(SEEDS))
    tokens = TOKEN.findall(text)
    if len(tokens) > 400:                       # a slice keeps every input small and fast
        start = draw(st.integers(0, len(tokens) - 400))
        tokens = tokens[start:start + 400]
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "duplicate", "insert", "replace", "char", "swap"]))
        at = draw(st.integers(0, max(len(tokens) - 1, 0)))
        if op == "delete" and tokens:
            del tokens[at:at + draw(st.integers(1, 5))]
        elif op == "duplicate" and tokens:
            tokens[at:at] = tokens[at:at + draw(st.integers(1, 20))]
        elif op == "insert":
            tokens.insert(at, " " + draw(PIECES) + " ")
        elif op == "replace" and tokens:
            tokens[at] = draw(PIECES)
        elif op == "char" and tokens:
            token = tokens[at]
            i = draw(st.integers(0, len(token)))
            tokens[at] = token[:i] + draw(ANY_CHAR) + token[i + 1:]
        elif op == "swap" and len(tokens) > 1:
            other = draw(st.integers(0, len(tokens) - 1))
            tokens[at], tokens[other] = tokens[other], tokens[at]
    return "".join(tokens)


# ---- rules from the grammar, some past the limits --------------------------------------------------------

PATHS = st.sampled_from(["order.status", "order.price", "order.paid", "customer.phone", "previous.order.status",
                         "event.site", "site.name", "order.props.CITY", "user.id", "task.status"])
SCALARS = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=10).map(lambda t: '"' + t.replace("\\", "\\\\").replace(
        '"', '\\"').replace("\n", "\\n").replace("\r", "") + '"'),
    st.integers(-10**12, 10**12).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=2).map(lambda d: format(d, "f")),
    st.sampled_from(["true", "false", "null"]),
)
LISTS = st.recursive(st.lists(SCALARS, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                     lambda inner: st.lists(inner, min_size=1, max_size=2).map(lambda xs: "[" + ", ".join(xs) + "]"),
                     max_leaves=40)
OPERAND = st.one_of(PATHS, SCALARS, LISTS)
TEST = st.one_of(
    st.tuples(OPERAND, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), OPERAND).map(" ".join),
    st.tuples(OPERAND, st.sampled_from(["in", "not in", "contains"]), OPERAND).map(" ".join),
    st.tuples(PATHS, st.sampled_from(['"^\\\\d+$"', '"(a|b)*"', '"["', '"' + "(" * 40 + ")" * 40 + '"'])).map(
        lambda t: f"{t[0]} matches {t[1]}"),
    st.tuples(PATHS, st.sampled_from(["is set", "is not set"])).map(" ".join),
)
EXPR = st.recursive(TEST, lambda inner: st.one_of(
    inner.map(lambda e: f"not {e}"),
    inner.map(lambda e: f"({e})"),
    st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
), max_leaves=MAX_DEPTH + 20)
DURATION = st.tuples(st.integers(0, 10**21), st.sampled_from(UNITS)).map(lambda t: f"{t[0]}{t[1]}")
TRIGGER = st.one_of(
    st.sampled_from(["order.created", "order.*", "*", "order.status changes", 'order.status changes to "F"',
                     "every 15m", "every day at 10:00, 22:30", 'cron "0 10 * * 1-5"', 'cron "99 * * * *"']),
    EXPR,
    DURATION.map(lambda d: f"every {d}"),
)
SEND = st.tuples(
    st.sampled_from(["", "sms ", "viber ", "omni "]),
    st.sampled_from(["customer.phone", '"+79001234567"', '"12"', "admins", 'department "Sales"', "user order.manager",
                     'subscribers "news"']),
    st.one_of(st.just('using "shipped"'), SCALARS.filter(lambda s: s.startswith('"')).map(lambda s: f"text {s}")),
    st.lists(st.one_of(DURATION.map(lambda d: f"stale after {d}"), DURATION.map(lambda d: f"fallback after {d}"),
                       st.sampled_from(['from "Shop"', "between 09:00-21:00", 'between "25:00-10:00"', "copy admins"])),
             max_size=2),
).map(lambda t: f"send {t[0]}to {t[1]} {t[2]} {' '.join(t[3])}")
RULE = st.tuples(
    st.one_of(st.just(""), SCALARS.filter(lambda s: s.startswith('"')).map(lambda s: f"rule {s} ")),
    TRIGGER,
    st.one_of(st.just(""), EXPR.map(lambda e: f" if {e}")),
    st.one_of(st.just(""), DURATION.map(lambda d: f" after {d}")),
    st.one_of(st.just(""), st.tuples(OPERAND, st.one_of(st.just(""), DURATION.map(lambda d: f" within {d}"))).map(
        lambda t: f" once per {t[0]}{t[1]}")),
    st.lists(st.one_of(SEND, PATHS.map(lambda p: f'subscribe {p} to "news"')), min_size=1, max_size=2),
).map(lambda t: f"{t[0]}on {t[1]}{t[2]}{t[3]}{t[4]} " + " ".join(t[5]))
GENERATED = st.lists(RULE, min_size=1, max_size=4).map("\n".join)


# ---- the property ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The config and templates `check` would use, read once."""
    root = tmp_path_factory.mktemp("fuzz-rules")
    (root / "templates.yaml").write_text(BASE_TEMPLATES, encoding="utf-8")
    config = _load_text(BASE_CONFIG, "herald.yaml", root / "herald.yaml", {})
    project = config, load_templates(root / "templates.yaml")
    compiles_or_locates(SEEDS[0], project)      # warm up: the parser is built on first use
    slowest[0] = (0.0, "")
    yield project
    kept = root / "slowest.rules"
    kept.write_text(slowest[0][1], encoding="utf-8", errors="surrogatepass")
    print(f"\nslowest rule input: {slowest[0][0] * 1000:.0f} ms ({len(slowest[0][1])} characters, kept in {kept})")


class _Scope:
    def get(self, path):
        return {"status": "F", "price": "1500.00", "paid": "Y"}.get(path[-1])


def compiles_or_locates(text: str, project) -> None:
    started = time.perf_counter()
    compiled = compile_text(text, FILE)
    for d in compiled.diagnostics:
        assert d.location is not None and d.location.file == FILE, d
        assert d.location.line >= 1 and d.location.col >= 1, d.headline()
        assert "internal error" not in d.message, d.headline()
        d.format()
    config, templates = project
    for rule in compiled.rules:
        rule.canonical()
        if rule.condition is not None:
            rule.condition.test(_Scope())
            rule.condition.paths()
    for d in check_rules(list(compiled.rules), config, templates):
        assert d.location is None or d.location.line >= 1, d.headline()
        d.format()
    Matcher(compiled.rules)
    elapsed = time.perf_counter() - started
    if elapsed > slowest[0][0]:
        slowest[0] = (elapsed, text)


@fuzz()
@given(text=mutated())
def test_mutated_shipped_rules_compile_or_give_located_errors(project, text):
    compiles_or_locates(text, project)


@fuzz()
@given(text=GENERATED)
def test_generated_rules_compile_or_give_located_errors(project, text):
    compiles_or_locates(text, project)


@fuzz()
@given(text=st.text(ANY_CHAR, max_size=300))
def test_any_text_compiles_or_gives_located_errors(project, text):
    compiles_or_locates(text, project)
