"""Rule firings kept until their reactions finish: a reactor killed with
kill -9 while the reaction of a `not` or `once_after` firing (a timer's) or
of an `all` firing (an event's) runs, and restarted, runs that reaction to
completion (real `saltbus serve` and `saltbus react` processes); the same
with the runner alone on an injected clock; and the bookkeeping itself:
a firing whose reactions finish before the next save is never written."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from saltbus import Config, Sender
from saltbus.event import Event
from saltbus.reactor.multi.defs import parse_rules
from saltbus.reactor.multi.pending import PendingFirings
from saltbus.reactor.multi.runner import RuleRunner
from saltbus.reactor.progress import bus_journal
from saltbus.reactor.templates import MatchedEvents
from tests.journal_support import build_journal
from tests.serve_support import ServeProcess
from tests.test_reactor_cli import react, reactor_conf
from tests.waiting import wait_until

WAIT = 30.0
# Its pid when it starts, and again when it has slept and finished.
SLOW = (
    'slow:\n  cmd.run:\n    - cmd: ["sh", "-c", "echo $$ >> STARTS; sleep 2 && echo $$ >> DONE"]\n'
)
RULES = {
    "not": "  r:\n    not: [{tag: 'up'}, {tag: 'down'}]\n    key: data['id']\n    within: 1s\n",
    "once_after": "  r:\n    tag: 'up'\n    once_after: 1s\n    key: data['id']\n",
    "all": "  r:\n    all: [{tag: 'up'}, {tag: 'down'}]\n    key: data['id']\n    within: 1m\n",
}


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def unfinished_rows(config: Config) -> int:
    """The firings the reactor has saved as not finished, read as another process would."""
    uri = f"file:{bus_journal(config)}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        (count,) = conn.execute("SELECT count(*) FROM reactor_rule_firings").fetchone()
    finally:
        conn.close()
    return int(count)


@pytest.mark.parametrize("kind", ["not", "once_after", "all"])
def test_kill_9_while_a_firing_reacts_runs_the_reaction_again_after_a_restart(
    bus_config: Config, tmp_path: Path, kind: str
) -> None:
    starts, done = tmp_path / "starts", tmp_path / "done"
    slow = SLOW.replace("STARTS", str(starts)).replace("DONE", str(done))
    conf = reactor_conf(
        tmp_path, {"slow.sls": slow}, "  - 'saltbus/rule/r': [slow.sls]\n", "reactor_rules:\n"
    )
    conf.write_text(conf.read_text() + RULES[kind])
    with ServeProcess.for_bus(bus_config):
        proc = react(bus_config, conf)
        try:
            with Sender(bus_config) as sender:
                sender.fire("up", {"id": "a"}, ack=True)
                if kind == "all":
                    sender.fire("down", {"id": "a"}, ack=True)
            wait_until(lambda: lines(starts), "the reaction to start", WAIT)
            wait_until(lambda: unfinished_rows(bus_config) == 1, "the firing saved", WAIT)
        finally:
            proc.stop(signal.SIGKILL)
        # The host went down with the reactor: its command too (it runs in a
        # session of its own, which kill -9 of the reactor does not reach).
        (first,) = lines(starts)
        with contextlib.suppress(ProcessLookupError):  # then it finished: said just below
            os.kill(int(first), signal.SIGKILL)
        assert first not in lines(done), "the first run finished before the kill"
        proc = react(bus_config, conf)
        try:
            assert "rules: 1 firings whose reactions had not finished run again" in proc.stderr
            wait_until(lambda: lines(done), "the reaction to finish after the restart", WAIT)
            wait_until(lambda: unfinished_rows(bus_config) == 0, "the firing's row deleted", WAIT)
        finally:
            assert proc.stop() == 0
    completed = lines(done)
    assert 1 <= len(completed) <= 2
    assert first not in completed
    print(f"{kind}: killed mid-reaction, completed {len(completed)} time(s) after the restart")


# -- the runner alone, on an injected clock -------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_timer_firing_cut_short_is_handed_back_once_and_forgotten_when_finished(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "j.sqlite"
    records = build_journal(journal, 1)  # time 1000.25
    rules = parse_rules({"gone": {"not": [records[0].tag, "x"], "within": 5}})
    clock = Clock()
    runner = RuleRunner(rules, clock)
    runner.open(journal, "reactor", None)
    runner.event(Event(records[0].tag, {"n": 1}, 1))
    clock.now = 1_010.0
    (fired,) = runner.tick(None)  # saved at once, with the group it ended
    assert fired.seq is None
    runner.queued(fired.firing, 2)
    runner.finished(fired.firing)  # one of two: still unfinished (then a crash)

    again = RuleRunner(rules, clock)
    again.open(journal, "reactor", None)
    assert again.ruleset.counts()["gone"]["open"] == 0  # it will not fire by itself
    (rerun,) = again.unfinished()
    assert again.unfinished() == []  # handed back once
    assert (rerun.tag, rerun.data["at"], rerun.firing) == (fired.tag, 1005.25, fired.firing)
    assert isinstance(rerun.data["events"], MatchedEvents)  # events.<step name> works
    assert rerun.data["events"].step1["data"] == {"n": 1}
    again.queued(rerun.firing, 1)
    again.finished(rerun.firing)
    assert again.save(None)
    again.close(None)

    third = RuleRunner(rules, clock)
    third.open(journal, "reactor", None)
    assert third.unfinished() == []
    third.close(None)


def test_an_event_firing_cut_short_is_run_again_though_its_event_is_not_fed_again(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "j.sqlite"
    records = build_journal(journal, 2)
    rules = parse_rules({"pair": {"all": [records[0].tag, records[1].tag], "within": 60}})
    runner = RuleRunner(rules, Clock())
    runner.open(journal, "reactor", None)
    assert runner.event(Event(records[0].tag, {}, 1)) == []
    (fired,) = runner.event(Event(records[1].tag, {}, 2))
    assert fired.seq == 2
    runner.queued(fired.firing, 1)
    assert runner.save(None)  # the state now reflects seq 2; the reaction runs on

    again = RuleRunner(rules, Clock())
    again.open(journal, "reactor", None)
    again.catching_up(2)  # the position was held before seq 1
    (rerun,) = again.unfinished()
    assert rerun.tag == "saltbus/rule/pair" and rerun.seq is None
    assert again.event(Event(records[0].tag, {}, 1)) == []
    assert again.event(Event(records[1].tag, {}, 2)) == []  # so once, not twice
    again.close(None)


def test_firings_saved_under_rules_since_removed_come_back_with_them(tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite"
    records = build_journal(journal, 1)
    rules = parse_rules({"gone": {"not": [records[0].tag, "x"], "within": 5}})
    clock = Clock()
    runner = RuleRunner(rules, clock)
    runner.open(journal, "reactor", None)
    runner.event(Event(records[0].tag, {}, 1))
    clock.now = 1_010.0
    (fired,) = runner.tick(None)
    runner.queued(fired.firing, 1)  # and a crash

    without = RuleRunner((), clock)  # restarted with no reactor_rules: nothing is read
    without.open(journal, "reactor", None)
    assert without.unfinished() == []
    without.replace(rules)  # a reload adds them back
    assert [f.firing for f in without.unfinished()] == [fired.firing]
    without.close(None)


# -- the bookkeeping ---------------------------------------------------------------


def test_a_firing_finished_before_a_save_is_never_written() -> None:
    pending = PendingFirings()
    quick = pending.add("saltbus/rule/a", {"n": 1})
    none = pending.add("saltbus/rule/b", {"n": 2})
    pending.queued(quick, 1)
    pending.queued(none, 0)  # no reaction queued: nothing to keep
    pending.finished(quick)
    assert len(pending) == 0
    assert pending.writes() == ([], [])


def test_a_saved_firing_is_deleted_when_its_last_reaction_finishes() -> None:
    pending = PendingFirings()
    firing = pending.add("saltbus/rule/a", {"n": 1})
    pending.queued(firing, 2)
    rows, deleted = pending.writes()
    assert rows == [(firing, "saltbus/rule/a", '{"n": 1}')] and deleted == []
    pending.saved(rows, deleted)
    assert pending.writes() == ([], [])  # written once
    assert pending.writes(everything=True) == (rows, [])
    pending.finished(firing)
    assert pending.writes() == ([], [])  # one reaction still runs
    pending.finished(firing)
    assert pending.writes() == ([], [firing])
    pending.saved([], [firing])
    assert pending.writes() == ([], [])
    pending.finished(firing)  # a late or unknown id changes nothing
    assert len(pending) == 0
