"""reactor_rules in a running reactor: real `saltbus serve` and `saltbus react`
processes. A `not` rule fires when its time runs out and not when the second
event came in time; accumulate_within fires once per group at the threshold;
a reactor killed with kill -9 in the middle of a 10-second window, and
restarted, fires once at the right time (catch-up feeds what it missed into
the windows with the journal's times); a burst through a correlation rule
keyed on 1,000 ids fires each expected firing once, in bounded memory; a
reload keeps the open windows of the rules it does not change. Also
the runner alone, on an injected clock: no time passes while it catches up."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from saltbus import Config, Listener, Sender
from saltbus.event import Event
from saltbus.journal import Journal
from saltbus.reactor.multi.defs import parse_rules
from saltbus.reactor.multi.runner import RuleRunner
from saltbus.reactor.progress import bus_journal
from tests.journal_support import build_journal
from tests.serve_support import ServeProcess
from tests.test_reactor_cli import Proc, collect, react, reactor_conf

WAIT = 30.0
ALERT = "alert:\n  event.send:\n    - tag: fired/{{ data['rule'] }}\n    - data: {key: {{ data['key'] | json }}, count: {{ data['count'] }}, at: {{ data['at'] }}, last: {{ events[-1].seq }}}\n"  # noqa: E501
# The full burst: SALTBUS_RULES_BURST_EVENTS=50000 (the suite runs a smaller one).
BURST_EVENTS = int(os.environ.get("SALTBUS_RULES_BURST_EVENTS", "10000"))
BURST_IDS = 1000
DONE = (
    "done:\n  event.send:\n    - tag: done\n"
    "    - data: {id: {{ events.a.data.id }}, r: {{ events.b.data.r }}}\n"
)


def conf_with_rules(tmp_path: Path, rules: str, files: dict[str, str] | None = None) -> Path:
    return reactor_conf(
        tmp_path,
        {"alert.sls": ALERT, **(files or {})},
        "  - 'saltbus/rule/*': [alert.sls]\n",
        "reactor_rules:\n" + rules,
    )


def journal_time(config: Config, seq: int) -> float:
    with Journal.open(bus_journal(config), readonly=True) as journal:
        return journal.read(since=seq - 1, until=seq, limit=1)[0].time


def fired_until(listener: Listener, key: Any, timeout: float = WAIT) -> list[Event]:
    """The rule events until the one for ``key`` (and any just after it)."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not any(e.data["key"] == key for e in events):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no firing for {key!r}: {events}"
        event = listener.receive(remaining)
        if event is not None:
            events.append(event)
    while (event := listener.receive(0.3)) is not None:
        events.append(event)
    return events


NOT_RULE = """\
  gone:
    not: [{name: up, tag: 'up'}, {tag: 'down'}]
    key: data['id']
    within: WINDOW
"""


def test_not_fires_when_its_time_runs_out_and_not_when_cancelled_in_time(
    bus_config: Config, tmp_path: Path
) -> None:
    conf = conf_with_rules(tmp_path, NOT_RULE.replace("WINDOW", "2s"))
    with ServeProcess.for_bus(bus_config), Listener(bus_config, "fired/") as fired:
        proc = react(bus_config, conf)
        try:
            with Sender(bus_config) as sender:
                # b's window ends first: had it fired, that came before a's.
                sender.fire("up", {"id": "b"}, ack=True)
                sender.fire("down", {"id": "b"}, ack=True)
                up_a = sender.fire("up", {"id": "a"}, ack=True)
            events = fired_until(fired, "a")
        finally:
            assert proc.stop() == 0
    assert [(e.tag, e.data["key"], e.data["count"]) for e in events] == [("fired/gone", "a", 1)]
    assert events[0].data["last"] == up_a.seq
    assert events[0].data["at"] == journal_time(bus_config, up_a.seq) + 2.0


def test_accumulate_fires_once_per_group_at_the_threshold(
    bus_config: Config, tmp_path: Path
) -> None:
    conf = conf_with_rules(
        tmp_path,
        "  storm:\n    tag: 'auth/*'\n    accumulate_within: 1m\n    threshold: 5\n"
        "    key: tag.split('/')[1]\n",
    )
    with ServeProcess.for_bus(bus_config), Listener(bus_config, "fired/") as fired:
        proc = react(bus_config, conf)
        try:
            fifth: dict[str, int] = {}
            with Sender(bus_config) as sender:
                for n in range(9):
                    for minion, many in (("x", 7), ("y", 4), ("z", 5)):
                        if n < many:
                            event = sender.fire(f"auth/{minion}", {"n": n}, ack=True)
                            if n == 4 and event.seq is not None:
                                fifth[minion] = event.seq
            events = collect(fired, 2)
            while (more := fired.receive(0.5)) is not None:
                events.append(more)
        finally:
            assert proc.stop() == 0
    got = sorted((e.data["key"], e.data["count"], e.data["last"]) for e in events)
    assert got == [("x", 5, fifth["x"]), ("z", 5, fifth["z"])]


def test_kill_9_in_the_middle_of_a_window_still_fires_once_on_time(
    bus_config: Config, tmp_path: Path
) -> None:
    conf = conf_with_rules(tmp_path, NOT_RULE.replace("WINDOW", "10s"))
    with ServeProcess.for_bus(bus_config), Listener(bus_config, "fired/") as fired:
        proc = react(bus_config, conf)
        with Sender(bus_config) as sender:
            up_b = sender.fire("up", {"id": "b"}, ack=True)
            up_a = sender.fire("up", {"id": "a"}, ack=True)
        time.sleep(1.0)  # the open windows are saved (every 50 ms)
        proc.stop(signal.SIGKILL)
        with Sender(bus_config) as sender:
            sender.fire("down", {"id": "b"}, ack=True)  # missed: catch-up cancels b
        time.sleep(1.0)
        proc = react(bus_config, conf)
        try:
            assert "rules: 2 open windows restored" in proc.stderr
            events = fired_until(fired, "a")
            while (more := fired.receive(1.0)) is not None:
                events.append(more)
        finally:
            assert proc.stop() == 0
    assert [e.data["key"] for e in events] == ["a"], events
    due = journal_time(bus_config, up_a.seq) + 10.0
    assert events[0].data["at"] == due
    late = journal_time(bus_config, events[0].seq) - due
    assert 0 <= late < 1.0, f"fired {late:.3f} s after its time"
    assert up_b.seq is not None
    print(f"after kill -9: fired {late:.3f} s after the window ended")


def test_a_burst_through_a_correlation_rule_keyed_on_1000_ids(
    bus_config: Config, tmp_path: Path
) -> None:
    rounds = max(1, BURST_EVENTS // (10 * BURST_IDS))
    conf = reactor_conf(
        tmp_path,
        {"done.sls": DONE},
        "  - 'saltbus/rule/pair': [done.sls]\n",
        "reactor_rules:\n  pair:\n    all:\n"
        "      - {name: a, tag: 'burst/*', when: \"data['k'] == 'a'\"}\n"
        "      - {name: b, tag: 'burst/*', when: \"data['k'] == 'b'\"}\n"
        "    key: data['id']\n    within: 1h\n",
    )
    with ServeProcess.for_bus(bus_config), Listener(bus_config, "done") as done:
        proc = react(bus_config, conf)
        try:
            started = time.monotonic()
            with Sender(bus_config) as sender:
                for r in range(rounds):
                    for k in ["a"] + ["n"] * 8 + ["b"]:
                        for i in range(BURST_IDS):
                            sender.fire(f"burst/{i}", {"id": i, "k": k, "r": r})
            sent = time.monotonic() - started
            events = collect(done, rounds * BURST_IDS, 120)
            took = time.monotonic() - started
            while (more := done.receive(0.5)) is not None:
                events.append(more)
            peak = peak_rss(proc)
        finally:
            assert proc.stop() == 0
    pairs = sorted((e.data["id"], e.data["r"]) for e in events)
    assert pairs == [(i, r) for i in range(BURST_IDS) for r in range(rounds)]
    assert peak < 200 * 2**20
    print(
        f"{rounds * BURST_IDS * 10} events (sent in {sent:.1f} s), {len(events)} firings "
        f"in {took:.1f} s; "
        f"reactor peak RSS {peak / 2**20:.0f} MB"
    )


def peak_rss(proc: Proc) -> int:
    for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# -- the runner alone, on an injected clock ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_no_time_passes_while_catching_up_and_saved_events_are_not_fed_twice(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "j.sqlite"
    records = build_journal(journal, 3)  # times 1000.25, 1000.5, 1000.75
    rules = parse_rules({"gone": {"not": ["salt/job/*/ret", "x"], "within": 5}})
    clock = Clock()
    runner = RuleRunner(rules, clock)
    runner.open(journal, "reactor", None)
    runner.event(Event(records[0].tag, {}, 1))
    assert runner.save(None)
    runner.close(None)

    clock.now = 5_000.0  # a restart long after the window
    again = RuleRunner(rules, clock)
    again.open(journal, "reactor", None)
    again.catching_up(3)
    assert again.event(Event(records[0].tag, {}, 1)) == []  # reflected in the saved state
    assert again.tick(None) == []  # catching up: the clock does not end windows
    assert again.event(Event(records[1].tag, {}, 2)) == []  # within the window
    assert again.tick(None) == []  # seq 3 is still to come
    assert again.event(Event(records[2].tag, {}, 3)) == []
    assert again.ruleset.counts()["gone"]["open"] == 1
    # Caught up: the clock moves time now, and the window ended long ago.
    fired = again.tick(None)
    assert [(f.tag, f.data["at"], f.data["key"]) for f in fired] == [
        ("saltbus/rule/gone", records[0].time + 5, None)
    ]
    again.close(None)


def test_evictions_and_failing_keys_are_logged_once_a_tick(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = parse_rules(
        {
            "capped": {"not": ["up", "down"], "key": "data['n']", "within": 60, "max_groups": 2},
            "broken": {"all": ["up", "x"], "key": "data['a']['b']", "within": 60},
        }
    )
    runner = RuleRunner(rules, Clock())
    with caplog.at_level(logging.WARNING, "saltbus.reactor"):
        runner.open(None, "reactor", None)
        assert caplog.messages == [
            "no journal: the rules' windows and counters live in memory only"
        ]
        caplog.clear()
        for n in range(5):
            runner.event(Event("up", {"n": n}, n + 1))
        runner.tick(None)
        runner.tick(None)  # nothing new: nothing said
    assert caplog.messages == [
        "rule capped: 3 open windows evicted (3 in all; max_groups 2): the oldest were "
        "dropped unfired",
        "rule broken: when:/key: failed on 5 events, last on up (seq 5): UndefinedError: "
        "'dict object' has no attribute 'a'",
    ]
    assert runner.counts()["rules"]["capped"]["evicted"] == 3


def test_a_reload_keeps_the_windows_of_unchanged_rules(bus_config: Config, tmp_path: Path) -> None:
    conf = conf_with_rules(tmp_path, NOT_RULE.replace("WINDOW", "3s"))
    with (
        ServeProcess.for_bus(bus_config),
        Listener(bus_config, "fired/") as fired,
        Listener(bus_config, "saltbus/reactor/reload") as reloads,
    ):
        proc = react(bus_config, conf)
        try:
            with Sender(bus_config) as sender:
                sender.fire("up", {"id": "kept"}, ack=True)
            # Another rule added, `gone` as it was: its open window stays.
            conf.write_text(conf.read_text() + "  other:\n    tag: 'x'\n    once_after: 1s\n")
            proc.popen.send_signal(signal.SIGHUP)
            (reload,) = collect(reloads, 1)
            assert reload.data["success"], reload.data
            events = fired_until(fired, "kept")
        finally:
            assert proc.stop() == 0
    assert [(e.tag, e.data["key"]) for e in events] == [("fired/gone", "kept")]
