"""What a soak run found: faults by kind, events, each check, each violation
with the faults around it, RSS/FD trends; and the same as JSON."""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks.soak.reconcile import SHOWN, around
from benchmarks.soak.run import Outcome
from benchmarks.soak.topology import SPARED


def text(outcome: Outcome) -> str:
    o = outcome.options
    lines = [
        f"soak: seed {o.seed}, {o.minutes:g} min of load ({outcome.duration:.0f} s), "
        f"{o.rate:g} events/s steady, bursts of {o.burst}"
        + (f", BREAK {o.breaks}" if o.breaks else ""),
        f"events: {len(outcome.acked)} acked, {outcome.unacked} fires not acked (not checked)",
        "faults: "
        + ", ".join(f"{k} {n}" for k, n in sorted(Counter(f.kind for f in outcome.faults).items())),
    ]
    for fault in outcome.faults:
        if fault.error:
            lines.append(f"  fault failed: {fault.describe()}")
    not_injected = sorted(set(outcome.kinds) - {f.kind for f in outcome.faults})
    if not_injected:
        lines.append(f"  not injected (run too short): {', '.join(not_injected)}")
    lines.append(
        f"{'check':<34} {'promise':<14} {'expected':>9} {'missing':>8} {'dupes':>6} {'bad':>5}"
    )
    for check in outcome.checks:
        lines.append(
            f"{check.name:<34} {check.promise:<14} {check.expected:>9} "
            f"{len(check.missing):>8} {check.duplicates:>6} {len(check.violations):>5}"
        )
    for check in outcome.checks:
        for event_id, what in check.violations[:SHOWN]:
            acked = outcome.acked.get(event_id)
            when = f" acked seq {acked.seq} at {acked.time:.3f}" if acked else ""
            faults = "; ".join(f.describe() for f in around(acked, outcome.faults)) or "none"
            lines.append(
                f"VIOLATION {check.name}: {event_id}{when} {what}; faults around: {faults}"
            )
        if len(check.violations) > SHOWN:
            lines.append(f"VIOLATION {check.name}: ... {len(check.violations) - SHOWN} more")
    for died in outcome.died:
        lines.append(f"VIOLATION {died}")
    lines.append(
        f"resources (median RSS/FDs, first quarter -> last quarter of each life; lives "
        f"shorter than 40 % of the run not judged; {SPARED}'s processes spared from kills):"
    )
    for role in outcome.resources:
        restarts = role.starts - 1
        life = "one life" if restarts <= 0 else f"restarted {restarts}x"
        judged = "" if role.saltbus else " (not judged: not saltbus)"
        for one in role.judged:
            mark = f"  VIOLATION grew: {one.problem}" if one.problem else ""
            lines.append(
                f"  {role.name:<15} {life:<14} pid {one.pid:<8} {one.usage()}{judged}{mark}"
            )
        if role.short:
            lines.append(
                f"  {role.name:<15} {life:<14} {role.short} "
                f"{'life' if role.short == 1 else 'lives'} too short to judge "
                f"(longest {role.longest_short:.0f} s)"
            )
    lines.append(f"violations: {outcome.violations}")
    return "\n".join(lines)


def document(outcome: Outcome) -> dict[str, Any]:
    return {
        "seed": outcome.options.seed,
        "minutes": outcome.options.minutes,
        "break": outcome.options.breaks,
        "duration": round(outcome.duration, 1),
        "acked": len(outcome.acked),
        "unacked": outcome.unacked,
        "kinds": list(outcome.kinds),
        "faults": dict(Counter(f.kind for f in outcome.faults)),
        "fault_failures": [f.describe() for f in outcome.faults if f.error],
        "fault_list": [
            {
                "kind": f.kind,
                "target": f.target,
                "start": round(f.start, 3),
                "seconds": round(f.end - f.start, 2),
                "error": f.error,
            }
            for f in outcome.faults
        ],
        "checks": [
            {
                "name": c.name,
                "promise": c.promise,
                "expected": c.expected,
                "missing": len(c.missing),
                "duplicates": c.duplicates,
                "violations": [list(v) for v in c.violations[:100]],
                "violation_count": len(c.violations),
            }
            for c in outcome.checks
        ],
        "died": outcome.died,
        "resources": [
            {
                "role": r.name,
                "judged": r.saltbus,
                "starts": r.starts,
                "restarted": r.starts > 1,
                "lives_too_short": r.short,
                "lives": [
                    {
                        "pid": life.pid,
                        "seconds": round(life.seconds, 1),
                        "rss_mib": [round(life.rss[0], 1), round(life.rss[1], 1)],
                        "fds": [life.fds[0], life.fds[1]],
                        "problem": life.problem,
                    }
                    for life in r.judged
                ],
            }
            for r in outcome.resources
        ],
        "violations": outcome.violations,
    }
