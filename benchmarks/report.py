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
