"""``python -m benchmarks [--short] [--json FILE]``: saltbus against Salt 3007's publisher.

Run with the project's python (``.venv/bin/python -m benchmarks``) from the
repository root; Salt's side runs in ``.venvs/salt-3007`` (``scripts/salt-venvs``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.procs import BenchError
from benchmarks.report import machine, summarize, table, targets, targets_table
from benchmarks.scenarios import BUS_KEYS, BUSES, FULL, SCENARIOS, SHORT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="saltbus's publisher and clients against Salt 3007's, same machine, "
        "same run, alternating; one table, optionally JSON",
    )
    parser.add_argument("--short", action="store_true", help="small counts, 1 repetition (CI)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--repeat", type=int, help="repetitions of every case (default 3, latency 9, stuck 1)"
    )
    parser.add_argument(
        "--scenario", action="append", choices=tuple(SCENARIOS), help="only these (repeatable)"
    )
    parser.add_argument("--bus", action="append", choices=BUS_KEYS, help="only these (repeatable)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every event count (e.g. 0.2)"
    )
    return parser.parse_args(argv)


def _stop(signum: int, frame: object) -> None:
    # Unwind, so that every case's processes are stopped on the way out.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    params = SHORT if args.short else FULL
    if args.repeat:
        params = replace(
            params, repeat=args.repeat, latency_repeat=args.repeat, stuck_repeat=args.repeat
        )
    if args.scale != 1.0:
        params = replace(
            params,
            throughput_events=max(1, int(params.throughput_events * args.scale)),
            fanout_events=max(1, int(params.fanout_events * args.scale)),
            latency_events=max(1, int(params.latency_events * args.scale)),
            stuck_events=max(1, int(params.stuck_events * args.scale)),
        )
    wanted_buses = set(args.bus or BUS_KEYS)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    errors: list[str] = []
    started = time.monotonic()
    for name in args.scenario or SCENARIOS:
        run, bus_keys = SCENARIOS[name]
        buses = [b for b in BUSES if b.key in bus_keys and b.key in wanted_buses]
        repeat = params.repeats(name)
        for rep in range(repeat):
            # Alternate the order, so that drifting load hits every bus alike.
            for bus in buses if rep % 2 == 0 else reversed(buses):
                t0 = time.monotonic()
                try:
                    result = run(bus, params)
                except BenchError as exc:
                    errors.append(f"{name}/{bus.key}: {exc}")
                    print(f"benchmarks: {name} {bus.key}: FAILED: {exc}", file=sys.stderr)
                    continue
                raw.setdefault(name, {}).setdefault(bus.key, []).append(result)
                shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
                print(
                    f"benchmarks: {name} run {rep + 1}/{repeat} {bus.key} "
                    f"({time.monotonic() - t0:.1f}s): {shown}",
                    file=sys.stderr,
                    flush=True,
                )
    summary = {
        name: {
            bus: {
                metric: summarize([float(run[metric]) for run in runs])
                for metric in runs[0]
                if isinstance(runs[0][metric], int | float)
            }
            for bus, runs in per_bus.items()
        }
        for name, per_bus in raw.items()
    }
    print(table(summary))
    checked = targets(summary)
    if checked:
        print()
        print(targets_table(checked))
    print(
        f"\n{'short' if args.short else 'full'} mode, {params.repeat} run(s) each "
        f"(latency {params.latency_repeat}, stuck reader {params.stuck_repeat}), "
        f"{time.monotonic() - started:.0f} s; median ±half-range; load now "
        f"{machine()['loadavg'][0]:.2f}"
    )
    if args.json is not None:
        document = {
            "machine": machine(),
            "mode": "short" if args.short else "full",
            "params": asdict(params),
            "buses": {b.key: asdict(b) for b in BUSES},
            "summary": summary,
            "targets": checked,
            "runs": raw,
            "errors": errors,
        }
        args.json.write_text(json.dumps(document, indent=1, default=str) + "\n")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
