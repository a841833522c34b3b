"""ReturnerRunner on a real journal file: batching, filters, notify, retry
with backoff from the cursor, and positions kept across restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saltbus.config import Config
from saltbus.journal import Journal, JournalRecord
from saltbus.returners import ReturnerRunner
from saltbus.returners.worker import MAX_BATCH
from tests.returners_support import WAIT, Recorder, append
from tests.waiting import wait_until


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "bus.journal"
    append(path, [("old/event", {"n": -1})])  # before any returner: never returned
    return path


def make_config(tmp_path: Path, names: tuple[str, ...] = ("rec",), **options: Any) -> Config:
    overrides = {"sock_dir": tmp_path, "event_return": list(names), **options}
    return Config.load(env={}, overrides=overrides)


def events(count: int, tag: str = "app/evt", start: int = 0) -> list[tuple[str, dict[str, Any]]]:
    return [(tag, {"n": n}) for n in range(start, start + count)]


class Runner:
    """Starts runners over one journal, each with the given returners."""

    def __init__(self, tmp_path: Path, journal: Path) -> None:
        self.tmp_path = tmp_path
        self.journal = journal
        self.running: list[ReturnerRunner] = []

    def __call__(
        self, returners: dict[str, Recorder], *, poll: float = 30.0, **options: Any
    ) -> ReturnerRunner:
        options.setdefault("event_return_retry_max_seconds", 0.4)
        config = make_config(self.tmp_path, tuple(returners), **options)
        factories = {name: (lambda opts, r=r: r) for name, r in returners.items()}
        runner = ReturnerRunner(
            config, self.journal, factories=factories, retry_initial=0.05, poll_interval=poll
        )
        runner.start()
        self.running.append(runner)
        return runner

    def fire(self, runner: ReturnerRunner, batch: list[tuple[str, dict[str, Any]]]) -> list[int]:
        seqs = append(self.journal, batch)
        runner.notify(seqs[-1])
        return seqs

    def close_all(self) -> None:
        for runner in self.running:
            runner.close()


@pytest.fixture
def run(tmp_path: Path, journal: Path) -> Iterator[Runner]:
    runner = Runner(tmp_path, journal)
    yield runner
    runner.close_all()


def test_new_returner_starts_after_the_journal_end_and_gets_salts_dicts(run: Runner):
    rec = Recorder()
    runner = run({"rec": rec})
    seqs = run.fire(runner, [("app/a", {"x": 1, "y": [1, 2]})])
    wait_until(lambda: len(rec.events) == 1, "the event returned", WAIT)
    (event,) = rec.events
    assert event["tag"] == "app/a" and event["data"] == {"x": 1, "y": [1, 2]}
    assert event["seq"] == seqs[0] and abs(event["time"] - time.time()) < 60


def test_notify_wakes_the_returner_at_once(run: Runner):
    rec = Recorder()
    runner = run({"rec": rec}, poll=30.0)  # the poll would take 30 s
    time.sleep(0.1)
    started = time.monotonic()
    run.fire(runner, events(1))
    wait_until(lambda: len(rec.events) == 1, "the event returned", timeout=5)
    assert time.monotonic() - started < 1.0


def test_without_notify_the_poll_finds_new_events(run: Runner):
    rec = Recorder()
    run({"rec": rec}, poll=0.05)
    append(run.journal, events(3))
    wait_until(lambda: len(rec.events) == 3, "the polled events returned", timeout=5)


def test_queue_size_makes_batches_and_close_flushes_the_rest(run: Runner):
    rec = Recorder()
    runner = run({"rec": rec}, event_return_queue=3)
    for n in range(7):
        run.fire(runner, events(1, start=n))
    wait_until(lambda: len(rec.batches) == 2, "two full batches", WAIT)
    time.sleep(0.3)
    assert [len(b) for b in rec.batches] == [3, 3]  # the 7th waits for two more
    assert runner.stats()[0]["lag"] == 1
    runner.close()
    assert [len(b) for b in rec.batches] == [3, 3, 1]  # as Salt flushes its queue at exit
    assert [e["data"]["n"] for e in rec.events] == list(range(7))


def test_max_seconds_sends_a_partial_batch(run: Runner):
    rec = Recorder()
    runner = run({"rec": rec}, event_return_queue=100, event_return_queue_max_seconds=0.3)
    started = time.monotonic()
    run.fire(runner, events(2))
    wait_until(lambda: len(rec.batches) == 1, "a partial batch", timeout=5)
    waited = time.monotonic() - started
    assert 0.25 <= waited < 2.0
    assert [len(b) for b in rec.batches] == [2]


def test_queue_zero_sends_a_backlog_in_bounded_batches(run: Runner):
    first = run({"rec": Recorder()})
    first.close()  # the cursor now exists
    append(run.journal, events(2 * MAX_BATCH + 10))
    rec = Recorder()
    run({"rec": rec})
    wait_until(lambda: len(rec.events) == 2 * MAX_BATCH + 10, "the backlog returned", WAIT)
    assert max(len(b) for b in rec.batches) == MAX_BATCH
    assert [e["data"]["n"] for e in rec.events] == list(range(2 * MAX_BATCH + 10))


def test_filters_apply_and_filtered_events_move_the_cursor(run: Runner):
    rec = Recorder()
    runner = run(
        {"rec": rec},
        event_return_whitelist=["salt/job/*"],
        event_return_blacklist=["salt/job/*/new"],
    )
    seqs = run.fire(
        runner,
        [
            ("salt/job/1/new", {}),
            ("salt/job/1/ret/m1", {"ok": True}),
            ("salt/auth", {}),
            ("other", {}),
        ],
    )
    wait_until(
        lambda: runner.stats()[0]["cursor"] == seqs[-1], "the cursor at the last event", WAIT
    )
    assert [e["tag"] for e in rec.events] == ["salt/job/1/ret/m1"]
    stats = runner.stats()[0]
    assert stats["filtered"] == 3 and stats["lag"] == 0 and stats["returned"] == 1


def test_failing_returner_is_retried_with_backoff_and_loses_nothing(run: Runner):
    rec = Recorder(failures=5)
    runner = run({"rec": rec})
    seqs = run.fire(runner, events(10))
    seqs += run.fire(runner, events(10, start=10))
    wait_until(lambda: len(rec.events) == 20, "every event returned after retries", timeout=20)
    assert rec.seqs == seqs, "an event was lost, duplicated or reordered"
    gaps = [b - a for a, b in zip(rec.attempts, rec.attempts[1:6], strict=False)]
    # 0.05, 0.1, 0.2, then the 0.4 cap
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.4, 0.4], strict=False):
        assert expected * 0.8 <= gap < expected + 1.0, gaps
    stats = runner.stats()[0]
    assert stats["failures"] == 5 and stats["consecutive_failures"] == 0
    assert stats["last_error"] == "ConnectionError: database unavailable"
    assert stats["state"] == "running" and stats["lag"] == 0


def test_stats_show_a_failing_returner_falling_behind(run: Runner):
    rec = Recorder(failures=10**9)
    runner = run({"rec": rec})
    run.fire(runner, events(5))
    wait_until(lambda: runner.stats()[0]["failures"] >= 2, "two failures", WAIT)
    stats = runner.stats()[0]
    assert stats["state"] == "retrying" and stats["lag"] == 5 and stats["returned"] == 0
    assert stats["retry_in"] is not None and stats["retry_in"] <= 0.4


def test_a_retry_gets_the_events_as_journaled(run: Runner):
    class Mangler(Recorder):
        def event_return(self, events: list[dict[str, Any]]) -> None:
            for event in events:
                event["data"]["n"] = "changed"  # as some Salt returners do
            super().event_return(events)

    rec = Mangler(failures=1)
    runner = run({"rec": rec})
    run.fire(runner, events(3))
    wait_until(lambda: len(rec.events) == 3, "the retried events returned", WAIT)
    assert rec.seqs == sorted(set(rec.seqs))


def test_each_returner_keeps_its_own_position(run: Runner):
    good, bad = Recorder(), Recorder(failures=10**9)
    runner = run({"good": good, "bad": bad})
    run.fire(runner, events(4))
    wait_until(lambda: len(good.events) == 4, "the good returner's events", WAIT)
    wait_until(lambda: runner.stats()[1]["failures"] >= 1, "the bad returner to fail", WAIT)
    by_name = {s["name"]: s for s in runner.stats()}
    assert by_name["good"]["lag"] == 0 and by_name["bad"]["lag"] == 4


def test_position_survives_a_restart_and_a_failed_batch_is_returned_next_time(run: Runner):
    rec = Recorder()
    runner = run({"rec": rec})
    first = run.fire(runner, events(5))
    wait_until(lambda: len(rec.events) == 5, "the first events returned", WAIT)
    runner.close()
    assert rec.closed

    down = Recorder(failures=10**9)
    runner = run({"rec": down})
    second = run.fire(runner, events(5, start=5))
    wait_until(lambda: down.attempts != [], "a failing attempt", WAIT)
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 2.0, "close waited for a failing returner"

    append(run.journal, events(5, start=10))  # while no runner runs
    again = Recorder()
    run({"rec": again})
    wait_until(lambda: len(again.events) == 10, "the events after the restart", WAIT)
    time.sleep(0.2)
    assert again.seqs == second + [second[-1] + i for i in range(1, 6)]
    assert not set(again.seqs) & set(first)
    with Journal.open(run.journal) as journal:
        assert journal.get_cursor("returner:rec") == again.seqs[-1]


def test_undecodable_event_is_skipped_not_retried_for_ever(run: Runner):
    rec = Recorder()
    runner = run({"rec": rec})
    with Journal.open(run.journal) as journal:
        seq = journal.last_seq() + 1
        journal.append([JournalRecord(seq, time.time(), "bad", b"bad\n\n\xc1")])
    good = run.fire(runner, events(1))
    wait_until(lambda: len(rec.events) == 1, "the good event returned", WAIT)
    assert rec.seqs == good and runner.stats()[0]["undecodable"] == 1


def test_events_deleted_by_retention_before_they_were_returned_are_counted(run: Runner):
    run({"rec": Recorder()}).close()
    append(run.journal, events(4))
    with Journal.open(run.journal, max_bytes=0) as journal:
        assert journal.enforce_retention() > 0
    rec = Recorder()
    runner = run({"rec": rec})
    kept = run.fire(runner, events(2, start=4))
    wait_until(lambda: len(rec.events) == 2, "the kept events returned", WAIT)
    assert rec.seqs == kept and runner.stats()[0]["missed"] == 4
