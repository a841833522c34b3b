"""The soak and chaos run (benchmarks/soak), short: 3 minutes of load
(``SALTBUS_SOAK_MINUTES`` overrides) with at least one fault of every kind and
no violation; and the same harness shown to fail when a fault saltbus does not
survive is injected on purpose (journal none, a publisher killed with -9 while
a listener is behind): the reconciler must name the events lost.

They run as root, as the suite does (the journal's disk is a tmpfs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks.soak.faults import KINDS
from benchmarks.soak.monitor import RSS_SLACK_KIB, Monitor, Series
from benchmarks.soak.reconcile import Acked, Check, compare
from benchmarks.soak.topology import HTTP_SINK_NODE, MYSQL_NODE, SPARED

ROOT = Path(__file__).resolve().parents[1]
MINUTES = os.environ.get("SALTBUS_SOAK_MINUTES", "3")


def soak(
    tmp_path: Path, *args: str, timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = tmp_path / "soak.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--json", str(report), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert report.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc, json.loads(report.read_text())


@pytest.mark.timeout(1800)
def test_the_soak_injects_every_fault_and_finds_no_violation(tmp_path: Path) -> None:
    proc, report = soak(tmp_path, "--minutes", MINUTES, "--seed", "20", timeout=1700)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert report["violations"] == 0
    assert set(report["faults"]) == set(KINDS), report["faults"]
    assert report["acked"] > 0
    names = {check["name"].split(" (")[0] for check in report["checks"]}
    for node in "abc":
        for kind in (
            "journal",
            "imported into",
            "rawfile_json",
            "redis_stream",
            "pgjsonb",
            "listener",
            "reactor",
        ):
            assert f"{kind} {node}" in names
    assert {f"mysql {MYSQL_NODE}", f"http ndjson {HTTP_SINK_NODE}"} <= names
    # The spared node: no process fault on it, one life each, judged over the run.
    process_faults = {"serve-kill", "react-kill", "http-kill", "listener-kill", "listener-stop"}
    assert not [
        f for f in report["fault_list"] if f["kind"] in process_faults and f["target"] == SPARED
    ]
    assert any(f["kind"] == "hostile" and f["target"] == SPARED for f in report["fault_list"])
    resources = {r["role"]: r for r in report["resources"]}
    for role in ("serve", "react", "listener"):
        spared = resources[f"{role}-{SPARED}"]
        assert spared["judged"] and spared["starts"] == 1, spared
        assert len(spared["lives"]) == 1 and spared["lives"][0]["problem"] is None, spared
        assert resources[f"{role}-a"]["restarted"], resources[f"{role}-a"]


@pytest.mark.timeout(900)
def test_the_reconciler_reports_the_loss_of_a_journal_none_publisher_killed(
    tmp_path: Path,
) -> None:
    proc, report = soak(
        tmp_path, "--minutes", "0.5", "--seed", "20", "--break", "journal-none", timeout=800
    )
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert report["faults"] == {"serve-kill-behind": report["faults"]["serve-kill-behind"]}
    lost = [c for c in report["checks"] if c["missing"]]
    assert any(c["name"].startswith("listener") for c in lost), report["checks"]
    # Each lost event is named, with where it went missing.
    first = next(c for c in lost if c["name"].startswith("listener"))
    event_id, what = first["violations"][0]
    assert what == "missing"
    assert f"VIOLATION {first['name']}: {event_id}" in proc.stdout


def test_the_reconciler_names_missing_duplicated_and_reordered_events() -> None:
    acked = [Acked(f"a-{n}", "a", n, n, 0.0, "soak/ev/a") for n in (1, 2, 3, 4)]
    got = ["a-1", "a-3", "a-2", "a-3", "b-7"]
    exact = compare(Check("x", "exactly once"), acked, got, exactly_once=True)
    assert exact.missing == ["a-4"]
    assert exact.duplicates == 1
    assert sorted(exact.violations) == [
        ("a-2", "out of order (after a-3)"),
        ("a-3", "2 times (exactly once promised)"),
        ("a-4", "missing"),
    ]
    loose = compare(Check("y", "at least once"), acked, got, exactly_once=False, ordered=False)
    assert loose.duplicates == 1
    assert loose.violations == [("a-4", "missing")]


def test_the_monitor_judges_each_long_life_and_counts_the_short_ones() -> None:
    monitor = Monitor(dict)
    leak = 4 * RSS_SLACK_KIB
    # serve-a: a short first life, then one of the whole run whose RSS grows.
    monitor.series[("serve-a", 1)] = Series("serve-a", 1, [(t, 50_000, 20) for t in range(5)])
    monitor.series[("serve-a", 2)] = Series(
        "serve-a", 2, [(t, 50_000 + leak * t // 100, 20) for t in range(10, 110)]
    )
    # serve-c: one life, level, FDs growing; nats: grows, shown but not judged.
    monitor.series[("serve-c", 3)] = Series(
        "serve-c", 3, [(t, 60_000, 20 + t // 2) for t in range(100)]
    )
    monitor.series[("nats-n1", 4)] = Series(
        "nats-n1", 4, [(t, 50_000 + leak * t // 100, 9) for t in range(100)]
    )
    roles = {r.name: r for r in monitor.lives(100.0, {"serve-a": 3, "serve-c": 1}, ("serve-",))}
    serve_a, serve_c, nats = roles["serve-a"], roles["serve-c"], roles["nats-n1"]
    assert (serve_a.starts, serve_a.short, len(serve_a.judged)) == (3, 1, 1)
    assert serve_a.judged[0].pid == 2
    assert serve_a.problems and serve_a.problems[0].startswith("RSS ")
    assert (serve_c.starts, serve_c.short) == (1, 0)
    assert serve_c.problems == ["FDs 26 -> 63"]  # medians of t 0..24 and 75..99
    assert (nats.saltbus, nats.starts, nats.problems) == (False, 1, [])
