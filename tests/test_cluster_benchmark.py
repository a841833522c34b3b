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


def run_benchmark(*args: str, timeout: float = 500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_short_cluster_benchmark_runs_and_delivers_each_event_once() -> None:
    proc = run_benchmark("--short", "--json")
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


def test_the_burst_alone_runs_the_rounds_asked_for() -> None:
    proc = run_benchmark("--burst-only", "--burst-rounds", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "burst: 1 rounds of 10000 events" in proc.stdout
    assert "(b) burst, first fire to last delivery" in proc.stdout
    assert "(a) nats-py alone" not in proc.stdout  # nor the latency: the burst alone


def test_a_bad_round_count_is_one_line() -> None:
    proc = run_benchmark("--burst-rounds", "0", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("must be 1 or more, not 0")
