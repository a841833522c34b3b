"""``saltbus react --test-events FILE``: run ``reactor_rules:`` on a simulated
clock over a file of events with times, and print what fires when."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saltbus.reactor import Rules

HELP = (
    "run the rules (reactor_rules:) over FILE, a YAML/JSON list of {at, tag, data} "
    "events with times (seconds or ISO), on a simulated clock; print what fires when, "
    "running nothing, exit"
)


def run_test_events(rules: Rules, path: Path) -> int:
    from saltbus.reactor.multi.trial import load_events, simulate  # noqa: PLC0415

    events, iso = load_events(path)
    for line in simulate(rules, events, iso):
        print(line)
    return 0


def describe_rules(rules: Rules) -> list[str]:
    """`saltbus react --check`'s lines for reactor_rules."""
    lines = []
    for rule in rules.multi:
        steps = ", ".join(step.pattern for step in rule.steps)
        more = f", threshold {rule.threshold}" if rule.threshold else ""
        globs = [r.pattern for r in rules.rules if r.matcher(rule.tag)]
        handled = f"handled by {', '.join(map(repr, globs))}" if globs else "NO reactor: glob"
        lines.append(
            f"rule {rule.name}: {rule.kind} {rule.window:g} s{more} over {steps}; "
            f"fires {rule.tag} ({handled})"
        )
    return lines


def describe_stats(stats: dict[str, Any]) -> list[str]:
    """The rules' part of `saltbus stats` (the reactor's stats_dict()['rules'])."""
    rules = stats.get("rules")
    if not rules:
        return []
    parts = [
        f"{name} {c['open']} open"
        + "".join(
            f", {c[k]} {k}" for k in ("evicted", "expired", "cancelled", "errors") if c.get(k)
        )
        for name, c in sorted(rules["rules"].items())
    ]
    return [f"  rules: {rules['fired']} fired; {'; '.join(parts)}"]
