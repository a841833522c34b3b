"""Medians, spreads, ratios, the printed table and the JSON document."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from benchmarks.scenarios import BUSES, Bus


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    metric: str
    label: str
    kind: str  # rate | count | ms | mb | bool


ROWS: Final = (
    Row("throughput", "events_per_s", "1→1 events/s", "rate"),
    Row("throughput", "lost", "1→1 lost", "count"),
    Row("throughput", "out_of_order", "1→1 out of order", "count"),
    Row("fanout", "events_per_s", "1→8 events/s per listener", "rate"),
    Row("fanout", "lost", "1→8 lost (8 listeners)", "count"),
    Row("fanout", "out_of_order", "1→8 out of order", "count"),
    Row("fanout", "fire_per_s", "1→8 fired events/s", "rate"),
    Row("latency", "p50_ms", "latency p50 ms", "ms"),
    Row("latency", "p99_ms", "latency p99 ms", "ms"),
    Row("latency", "max_ms", "latency max ms", "ms"),
    Row("latency", "lost", "latency lost", "count"),
    Row("stuck", "peak_rss_mb", "stuck: publisher peak RSS MiB", "mb"),
    Row("stuck", "listener_lost", "stuck: normal listener lost", "count"),
)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "values": list(values)}
    return {
        "median": statistics.median(clean),
        "min": min(clean),
        "max": max(clean),
        "values": list(values),
    }


def spread(summary: dict[str, Any]) -> float:
    """Half the range, relative to the median."""
    median = summary["median"]
    if not median or math.isnan(median):
        return 0.0
    return float((summary["max"] - summary["min"]) / 2 / abs(median))


def _number(value: float, kind: str) -> str:
    if math.isnan(value):
        return "-"
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "count":
        return f"{value:,.0f}"
    if kind == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.1f}"


def cell(summary: dict[str, Any] | None, kind: str) -> str:
    if summary is None:
        return ""
    text = _number(summary["median"], kind)
    if len(summary["values"]) > 1 and not math.isnan(summary["median"]):
        if kind == "count":
            if summary["max"] != summary["median"]:
                text += f" (max {_number(summary['max'], kind)})"
        else:
            text += f" ±{spread(summary) * 100:.0f}%"
    return text


def ratio(results: dict[str, Any], row: Row) -> str:
    ours = results.get(row.scenario, {}).get("saltbus", {}).get(row.metric)
    salt = results.get(row.scenario, {}).get("salt", {}).get(row.metric)
    if ours is None or salt is None or row.kind == "count":
        return ""
    if not salt["median"] or math.isnan(salt["median"]) or math.isnan(ours["median"]):
        return ""
    value = ours["median"] / salt["median"]
    return f"{value:.1f}x" if value >= 1 else f"{value:.3f}x"


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on ``metric`` of ``scenario``: ours / base <= ``most``."""

    label: str
    scenario: str
    metric: str
    ours: str
    base: str
    most: float


# The latency targets the journal issue holds saltbus to, with the journal at
# its default (issue 13): the publishers with the same raw clients, and each
# library end to end through its own publisher.
TARGETS: Final = (
    Target(
        "publisher p50 (raw clients) <= 0.6x Salt's",
        "latency",
        "p50_ms",
        "saltbus-raw",
        "salt-raw",
        0.6,
    ),
    Target(
        "publisher p99 (raw clients) <= Salt's", "latency", "p99_ms", "saltbus-raw", "salt-raw", 1.0
    ),
    Target("library end to end p99 <= 1/5 of Salt's", "latency", "p99_ms", "saltbus", "salt", 0.2),
    Target(
        "journal-on p99 <= 1.5x journal-off (raw clients)",
        "latency",
        "p99_ms",
        "saltbus-raw",
        "saltbus-nojournal-raw",
        1.5,
    ),
    Target(
        "journal-on p99 <= 1.5x journal-off (saltbus clients)",
        "latency",
        "p99_ms",
        "saltbus",
        "saltbus-nojournal",
        1.5,
    ),
)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the medians it compares, its ratio and whether it is met."""
    checked = []
    for target in TARGETS:
        per_bus = results.get(target.scenario, {})
        ours = per_bus.get(target.ours, {}).get(target.metric)
        base = per_bus.get(target.base, {}).get(target.metric)
        if ours is None or base is None or not base["median"]:
            continue
        value = ours["median"] / base["median"]
        checked.append(
            {
                "target": target.label,
                "ours": ours["median"],
                "base": base["median"],
                "ratio": value,
                "met": value <= target.most,
            }
        )
    return checked


def targets_table(checked: list[dict[str, Any]]) -> str:
    lines = ["targets (medians):"]
    for t in checked:
        verdict = "met" if t["met"] else "NOT MET"
        lines.append(
            f"  {t['target']:55} {t['ours']:.3f} / {t['base']:.3f} ms = "
            f"{t['ratio']:.2f}x  {verdict}"
        )
    return "\n".join(lines)


def table(results: dict[str, Any], buses: Sequence[Bus] = BUSES) -> str:
    shown = [b for b in buses if any(b.key in per_bus for per_bus in results.values())]
    keys = [b.key for b in shown]
    # The ratio saltbus/Salt stands right after the saltbus column.
    at = keys.index("saltbus") + 1 if "saltbus" in keys and "salt" in keys else None
    headers = [b.label for b in shown]
    if at is not None:
        headers.insert(at, "saltbus/Salt")
    headers.insert(0, "metric")
    lines: list[list[str]] = []
    for row in ROWS:
        per_bus = results.get(row.scenario)
        if not per_bus:
            continue
        cells = [cell(per_bus.get(b.key, {}).get(row.metric), row.kind) for b in shown]
        if not any(cells):
            continue
        if at is not None:
            cells.insert(at, ratio(results, row))
        lines.append([row.label, *cells])
    widths = [max(len(r[i]) for r in [headers, *lines]) for i in range(len(headers))]

    def fmt(values: list[str]) -> str:
        first = values[0].ljust(widths[0])
        return "  ".join(
            [first, *(v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))]
        )

    rule = "-" * len(fmt(headers))
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in lines)])


def machine() -> dict[str, Any]:
    def run(argv: list[str]) -> str:
        try:
            return subprocess.run(
                argv, check=False, capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "lscpu": run(["lscpu"]).splitlines()[:10],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
    }
