"""Matching and compiling benchmark: the Matcher index against a naive scan of every rule.

    .venv/bin/python bench/match.py [--events N] [--quick] [--seed S]

Prints rates and ratios; never asserts a time (this machine is noisy, ±35% between
runs: compare the ratios within one run). Exits 1 only when the index and the naive
loop disagree on which rules an event fires — a benchmark of wrong answers is worthless.

Two rule sets, each at 100, 1,000 and 10,000 rules:
  eq   every rule is an equality state trigger: on order.status == "S{i}"
  mix  90% equality, 4% `in [3 values]`, 3% event type, 2% `==` and `==` (conjunction),
       1% `order.price > N` (nothing to index on)
Events: 90% order.updated, 5% order.created, 5% order.paid; order.status is a value some
rule indexes (50%) or a value no rule has (50%); `previous` is None (1/3), the same state
(1/3) or a different one (1/3).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herald.engine.events import Event, EventScope  # noqa: E402
from herald.engine.rules.matcher import Matcher  # noqa: E402
from herald.grammar.compiler import compile_text  # noqa: E402
from herald.grammar.model import EventTrigger, StateTrigger  # noqa: E402

SIZES = (100, 1_000, 10_000)
REPEATS = 3
ACTION = 'send sms to customer.phone text "x"'
TYPES = [f"{entity}.{verb}" for entity in ("order", "customer", "shipment", "payment")
         for verb in ("created", "updated", "paid", "cancelled", "shipped")] + ["shipment.*", "*.paid"]
EVENT_TYPES = (("order.updated", 0.90), ("order.created", 0.05), ("order.paid", 0.05))

FULL_RULE = ('rule "order r{i}" on order.status == "S{i}" if order.total > 100 and customer.city == "Moscow" '
             'once per order.id within 1d send sms to customer.phone using "tpl_{i}" from "Shop" '
             'between 09:00-21:00 stale after 2h')

TARGET_RATE = 200_000          # events/s at 10,000 equality-triggered rules
TARGET_RATIO = 100             # × the naive loop at 10,000 rules
TARGET_COMPILE = 1.0           # s for 10,000 rules

MIX_DOC = ('mix: 90% `order.status == "S{i}"`, 4% `order.status in ["S{i}", "T{i}", "U{i}"]`, '
           "3% event type (20 types, `shipment.*`, `*.paid`), "
           '2% `order.status == "C{i}" and order.priority == "high"`, 1% `order.price > N` (unindexed)')


# ---- rule sets ---------------------------------------------------------------------------

def rule_text(n: int, kind: str) -> tuple[str, dict[str, list[str]], Counter]:
    """Rule file text, the status values rules index (by category), and the rule count per category."""
    lines, mix = [], Counter()
    values: dict[str, list[str]] = {"eq": [], "in": [], "and": []}
    types_used = 0
    for i in range(n):
        slot = i % 100 if kind == "mix" else 99
        if slot == 0:
            trigger, cat = f"order.price > {1000 + (i // 100) * 10}", "gt"
        elif slot <= 3:
            trigger, cat = TYPES[types_used % len(TYPES)], "type"
            types_used += 1
        elif slot <= 5:
            trigger, cat = f'order.status == "C{i}" and order.priority == "high"', "and"
            values["and"].append(f"C{i}")
        elif slot <= 9:
            trigger, cat = f'order.status in ["S{i}", "T{i}", "U{i}"]', "in"
            values["in"] += [f"S{i}", f"T{i}", f"U{i}"]
        else:
            trigger, cat = f'order.status == "S{i}"', "eq"
            values["eq"].append(f"S{i}")
        mix[cat] += 1
        lines.append(f'rule "r{i}" on {trigger} {ACTION}')
    return "\n".join(lines) + "\n", values, mix


def category(rule) -> str:
    trigger = rule.trigger
    if isinstance(trigger, EventTrigger):
        return "type"
    text = str(trigger)
    return "gt" if ">" in text else "and" if " and " in text else "in" if " in " in text else "eq"


# ---- events ------------------------------------------------------------------------------

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)


def make_events(count: int, groups: dict[str, list[str]], rng: random.Random, balanced: bool = False) -> list[Event]:
    """Events; a hit draws from all rule values alike, or (balanced) a category first."""
    types, weights = zip(*EVENT_TYPES)
    groups = [g for g in groups.values() if g]
    values = [v for g in groups for v in g]
    events = []
    for k in range(count):
        hit = rng.choice(rng.choice(groups)) if balanced else rng.choice(values)
        status = hit if rng.random() < 0.5 else f"Z{k}"
        price = rng.randint(0, 999) if rng.random() < 0.85 else rng.randint(1000, 2100)
        order = {"id": k, "status": status, "price": price,
                 "priority": "high" if rng.random() < 0.5 else "low"}
        data = {"order": order, "customer": {"phone": "+79990000000"}}
        roll = rng.random()
        if roll < 1 / 3:
            previous = None
        elif roll < 2 / 3:
            previous = {"order": dict(order), "customer": dict(data["customer"])}
        else:
            pick = rng.random()
            old_status = status if pick < 1 / 3 else rng.choice(values) if pick < 2 / 3 else f"Y{k}"
            previous = {"order": {"id": k, "status": old_status, "price": rng.randint(0, 2100),
                                  "priority": rng.choice(("high", "low"))},
                        "customer": dict(data["customer"])}
        event_type = rng.choices(types, weights)[0]
        events.append(Event(event_type, data, "main", f"e{k}", NOW, previous))
    return events


def cycled(pool: list[Event], count: int) -> list[Event]:
    return (pool * (count // len(pool) + 1))[:count]


# ---- the two ways to match ---------------------------------------------------------------

def naive_match(rules, event: Event, previous) -> list:
    """Every rule's trigger, one by one: the reference semantics and the baseline."""
    fired = []
    event_type = event.type
    entity = event_type.split(".", 1)[0]
    for rule in rules:
        trigger = rule.trigger
        if isinstance(trigger, EventTrigger):
            if trigger.matches_type(event_type):
                fired.append(rule)
        elif isinstance(trigger, StateTrigger) and trigger.entity == entity:
            condition = trigger.condition
            if condition.test(EventScope(event)).value and (
                    previous is None or not condition.test(EventScope(event, data=previous)).value):
                fired.append(rule)
    return fired


def run_index(matcher: Matcher, events: list[Event]) -> float:
    match = matcher.match
    start = time.perf_counter()
    for event in events:
        match(event, event.previous)
    return time.perf_counter() - start


def run_naive(rules, events: list[Event]) -> float:
    start = time.perf_counter()
    for event in events:
        naive_match(rules, event, event.previous)
    return time.perf_counter() - start


def best_rate(run, target, pool: list[Event], cap: int, budget: float, floor: int) -> tuple[float, int]:
    """Events/s, best of REPEATS, over as many events as fit `budget` seconds (≤ cap)."""
    probe = pool[: max(floor // 2, 5)]
    run(target, probe)                                      # warm-up
    per_event = run(target, probe) / len(probe)
    count = max(floor, min(cap, int(budget / max(per_event, 1e-9))))
    events = cycled(pool, count)
    best = min(run(target, events) for _ in range(REPEATS))
    return count / best, count


# ---- agreement ---------------------------------------------------------------------------

def check_agreement(label: str, rules, matcher: Matcher, events: list[Event], seen: Counter) -> int:
    bad = 0
    for event in events:
        naive = naive_match(rules, event, event.previous)
        want = sorted(r.id for r in naive)
        got = sorted(r.id for r in matcher.match(event, event.previous))
        if want != got:
            bad += 1
            if bad <= 5:
                print(f"  DISAGREE {label} {event.type} data={event.data['order']} previous="
                      f"{event.previous and event.previous['order']}\n    naive: {want}\n    index: {got}")
        for rule in naive:
            seen[category(rule)] += 1
    return bad


# ---- main ---------------------------------------------------------------------------------

def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000,
                        help="events per timed index run (fewer when a run would take too long)")
    parser.add_argument("--quick", action="store_true", help="smaller runs: a smoke test, not figures")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    events_cap = min(args.events, 10_000) if args.quick else args.events
    budget = 0.08 if args.quick else 0.5            # s per timed run, index loop
    naive_budget = 0.08 if args.quick else 0.4      # s per timed run, naive loop
    compile_repeats = 1 if args.quick else 3
    agree_events = {100: 400, 1_000: 300, 10_000: 60} if args.quick else {100: 1500, 1_000: 600, 10_000: 150}
    rng = random.Random(args.seed)

    wall = time.perf_counter()
    print(f"Herald matcher benchmark  {time.strftime('%Y-%m-%d %H:%M')}  (Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, best of {REPEATS}"
          f"{', --quick' if args.quick else ''})")
    print(f"rule sets: eq: 100% `order.status == \"S{{i}}\"`;  {MIX_DOC}")
    print("events: 90% order.updated / 5% order.created / 5% order.paid; status hits a rule value 50% "
          "(agreement sample: a category first, then a value); "
          "previous None / same / different, 1/3 each")
    start = time.perf_counter()
    compile_text('on order.created send sms to customer.phone text "x"\n', "<warm-up>")
    print(f"parser construction + first compile (once per process): {time.perf_counter() - start:.3f} s\n")

    header = (f"{'set':<4} {'rules':>6} {'compile s':>9} {'build ms':>8} {'index ev/s':>11} {'(events)':>9} "
              f"{'naive ev/s':>10} {'(events)':>8} {'index/naive':>11} {'fired/ev':>8}")
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, int], dict] = {}
    seen: Counter = Counter()
    disagreements = 0
    texts = {}
    for kind in ("eq", "mix"):
        for n in SIZES:
            text, values, mix = rule_text(n, kind)
            texts[(kind, n)] = text
            start = time.perf_counter()
            compiled = compile_text(text, f"<{kind}-{n}>")
            compile_s = time.perf_counter() - start
            if compiled.diagnostics or len(compiled.rules) != n:
                print(f"compile of the {kind}-{n} rule set failed: {compiled.diagnostics[:3]}")
                return 1
            rules = compiled.rules
            start = time.perf_counter()
            matcher = Matcher(rules)
            build_ms = (time.perf_counter() - start) * 1000
            pool = make_events(min(max(events_cap, 1_000), 20_000), values, rng)
            sample = make_events(agree_events[n], values, rng, balanced=True)
            gc.collect()
            gc.freeze()

            index_rate, index_n = best_rate(run_index, matcher, pool, events_cap, budget, 1_000)
            naive_rate, naive_n = best_rate(run_naive, rules, pool, events_cap, naive_budget, 20)
            bad = check_agreement(f"{kind}-{n}", rules, matcher, sample, seen)
            disagreements += bad
            fired = sum(len(matcher.match(e, e.previous)) for e in sample) / len(sample)
            results[(kind, n)] = dict(index=index_rate, naive=naive_rate, compile=compile_s,
                                      build=build_ms, mix=mix, agree_bad=bad, agree_n=len(sample))
            print(f"{kind:<4} {n:>6,} {compile_s:>9.3f} {build_ms:>8.1f} {fmt_rate(index_rate):>11} "
                  f"{index_n:>9,} {fmt_rate(naive_rate):>10} {naive_n:>8,} {index_rate / naive_rate:>10,.0f}× "
                  f"{fired:>8.2f}")
            del matcher, compiled, rules, pool, sample
    mix_counts = results[("mix", 10_000)]["mix"]
    print(f"\nmix at 10,000 rules: " + ", ".join(f"{cat} {mix_counts[cat]:,}" for cat in ("eq", "in", "type", "and", "gt")))

    checked = sum(r["agree_n"] for r in results.values())
    print(f"agreement sample: {checked:,} events over the 6 rule sets; rules fired in it by category: "
          + ", ".join(f"{cat} {seen[cat]:,}" for cat in ("eq", "in", "type", "and", "gt")))
    if disagreements:
        print(f"agreement: FAILED — {disagreements} events where the index and the naive loop disagree")
        return 1
    missing = [cat for cat in ("eq", "in", "type", "and", "gt") if not seen[cat]]
    if missing:
        print(f"agreement: FAILED — the sample never fired a rule of category {missing}: it proves nothing")
        return 1
    print("agreement: ok")

    # ---- compile and build at 10,000 rules ----
    text = texts[("eq", 10_000)]
    times = []
    for _ in range(compile_repeats):
        gc.collect()
        start = time.perf_counter()
        compiled = compile_text(text, "<eq-10000>")
        times.append(time.perf_counter() - start)
        del compiled
    compile_best = min(times)
    full_text = "\n".join(FULL_RULE.format(i=i) for i in range(10_000)) + "\n"
    full_times = []
    for _ in range(compile_repeats):
        gc.collect()
        start = time.perf_counter()
        full = compile_text(full_text, "<full-10000>")
        full_times.append(time.perf_counter() - start)
        assert len(full.rules) == 10_000 and not full.diagnostics, full.diagnostics[:3]
        del full
    compiled = compile_text(text, "<eq-10000>")
    builds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        Matcher(compiled.rules)
        builds.append(time.perf_counter() - start)
    mix_rules = compile_text(texts[("mix", 10_000)], "<mix-10000>").rules
    mix_builds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        Matcher(mix_rules)
        mix_builds.append(time.perf_counter() - start)
    print(f"\ncompile 10,000 equality rules ({len(text) / 1e6:.2f} MB, one file): best of {compile_repeats} "
          f"{compile_best:.3f} s = {compile_best / 10_000 * 1e6:.0f} µs a rule "
          f"(all runs: {', '.join(f'{t:.3f}' for t in times)}); {compile_best / len(text) * 1e6:.2f} s/MB")
    full_best = min(full_times)
    print(f"compile 10,000 full rules (if … and …, once per … within, using, from, between, stale after; "
          f"{len(full_text) / 1e6:.2f} MB): best of {compile_repeats} {full_best:.3f} s = "
          f"{full_best / 10_000 * 1e6:.0f} µs a rule; {full_best / len(full_text) * 1e6:.2f} s/MB")
    print(f"build Matcher for 10,000 rules: eq {min(builds) * 1000:.1f} ms, mix {min(mix_builds) * 1000:.1f} ms "
          f"(best of {REPEATS})")

    # ---- summary ----
    eq, mx = results[("eq", 10_000)], results[("mix", 10_000)]
    rows = [
        ("≥ 200,000 events/s, 10,000 equality rules", f"{fmt_rate(eq['index'])} ev/s", eq["index"] >= TARGET_RATE),
        ("≥ 100× naive loop, 10,000 equality rules", f"{eq['index'] / eq['naive']:,.0f}×",
         eq["index"] / eq["naive"] >= TARGET_RATIO),
        ("  same two with the 1% mix (informative):", "", None),
        ("  ≥ 200,000 events/s, 10,000 mixed rules", f"{fmt_rate(mx['index'])} ev/s", mx["index"] >= TARGET_RATE),
        ("  ≥ 100× naive loop, 10,000 mixed rules", f"{mx['index'] / mx['naive']:,.0f}×",
         mx["index"] / mx["naive"] >= TARGET_RATIO),
        ("10,000 rules compiled in < 1 s", f"{compile_best:.3f} s", compile_best < TARGET_COMPILE),
        ("  same with full rules (informative)", f"{full_best:.3f} s", full_best < TARGET_COMPILE),
    ]
    print(f"\n{'target':<44} {'measured':>16}  result")
    print("-" * 72)
    for name, figure, ok in rows:
        print(f"{name:<44} {figure:>16}  {'' if ok is None else 'met' if ok else 'NOT met'}")
    print(f"\ntotal {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
