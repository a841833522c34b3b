"""benchmarks/cluster.py's short form runs end to end (it would otherwise rot
between full runs). No speed is asserted (the machine is shared): it
completes, delivers every event exactly once, and prints the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(600)


def test_the_short_cluster_benchmark_runs_and_delivers_each_event_once() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster", "--short", "--json"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    table, _, document = proc.stdout.partition("\n{")
    for line in ("(a) nats-py alone", "(b) saltbus bus -> NATS -> bus", "ratio (b)/(a)"):
        assert line in table
    assert "every event delivered exactly once in every round" in table
    results = json.loads("{" + document)
    assert results["exactly_once"] is True
    assert results["rounds"] == 2 and results["events"] == 2000
    for key in ("reference_events_per_second", "saltbus_events_per_second", "ratio"):
        spread = results[key]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"], key
    assert 0 < results["latency_ms_p50"] <= results["latency_ms_p99"] <= results["latency_ms_max"]
    print(table)
