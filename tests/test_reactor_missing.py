"""saltbus.reactor.missing: the tracker of Salt jobs' returns, on its own
with an injected clock: jobs opened by ``salt/job/<jid>/new`` in the shape
Salt 3006, 3007 and 3008 fire it, closed by every minion's return or reported
when their time is up, a bounded number open, and events seen again after a
restart ignored."""

from __future__ import annotations

from typing import Any

import pytest

from saltbus.reactor.missing import OpenJob, ReturnTracker


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def new(jid: str, *minions: str, **more: Any) -> tuple[str, dict[str, Any]]:
    # Salt's _prep_pub: the same keys in 3006, 3007 and 3008.
    data = {
        "jid": jid,
        "tgt_type": "glob",
        "tgt": "*",
        "user": "root",
        "fun": "test.ping",
        "arg": [],
        "minions": list(minions),
        "missing": [],
    }
    data.update(more)
    return f"salt/job/{jid}/new", data


def ret(jid: str, minion: str) -> tuple[str, dict[str, Any]]:
    return f"salt/job/{jid}/ret/{minion}", {"id": minion, "jid": jid, "return": True}


def test_a_minion_that_does_not_return_in_time_is_reported() -> None:
    clock = Clock()
    tracker = ReturnTracker(5.0, 100, clock)
    tracker.observe(*new("1", "web1", "web2", "db1"), 1)
    tracker.observe(*ret("1", "web1"), 2)
    tracker.observe(*ret("1", "db1"), 3)
    clock.now += 4.9
    assert tracker.expire() == []
    assert tracker.next_deadline() == pytest.approx(1_000_005.0)
    clock.now += 0.2
    (job,) = tracker.expire()
    report = job.report(tracker.timeout)
    assert report["missing"] == ["web2"]
    assert (report["jid"], report["fun"], report["tgt"], report["returned"]) == (
        "1",
        "test.ping",
        "*",
        2,
    )
    assert sorted(report["minions"]) == ["db1", "web1", "web2"]
    assert len(tracker) == 0 and tracker.reported == 1
    assert tracker.expire(clock.now + 100) == []  # reported once


def test_every_minion_returning_closes_the_job() -> None:
    clock = Clock()
    tracker = ReturnTracker(5.0, 100, clock)
    tracker.observe(*new("1", "a", "b"), 1)
    tracker.observe(*ret("1", "a"), 2)
    tracker.observe(*ret("1", "a"), 3)  # twice: still waiting for b
    assert len(tracker) == 1
    tracker.observe(*ret("1", "b"), 4)
    assert len(tracker) == 0 and tracker.completed == 1
    assert tracker.expire(clock.now + 10) == []
    assert tracker.next_deadline() is None


def test_the_deadline_counts_from_salts_stamp() -> None:
    clock = Clock(1_800_000_000.0)
    tracker = ReturnTracker(60.0, 100, clock)
    tracker.observe(*new("1", "a", _stamp="2027-01-15T08:00:00.000000"), 1)
    assert tracker.jobs["1"].deadline == pytest.approx(1_800_000_000.0 + 60.0)
    tracker.observe(*new("2", "a", _stamp="not a time"), 2)
    assert tracker.jobs["2"].deadline == clock.now + 60.0


def test_jobs_without_minions_find_job_returns_of_unknown_jobs_and_others_are_ignored() -> None:
    tracker = ReturnTracker(5.0, 100, Clock())
    tracker.observe(*new("1"), 1)
    tracker.observe(*ret("9", "a"), 2)
    tracker.observe("salt/auth", {"id": "a"}, 3)
    tracker.observe("salt/run/5/new", {"minions": ["a"]}, 4)
    # Salt's CLI asking a silent minion about the job: the job is watched, not this.
    tracker.observe(*new("2", "a", fun="saltutil.find_job"), 5)
    assert len(tracker) == 0 and tracker.seq == 5


def test_events_seen_before_a_restart_are_ignored() -> None:
    clock = Clock()
    tracker = ReturnTracker(5.0, 100, clock)
    tracker.restore([], 10)
    tracker.observe(*new("1", "a"), 9)  # replayed: already reflected
    assert len(tracker) == 0
    tracker.observe(*new("2", "a"), 11)
    assert list(tracker.jobs) == ["2"]


def test_open_jobs_are_bounded_the_oldest_dropped_and_counted() -> None:
    clock = Clock()
    tracker = ReturnTracker(5.0, 3, clock)
    for n in range(3):
        assert tracker.observe(*new(str(n), "a"), n + 1) == []
    (dropped,) = tracker.observe(*new("3", "a", "b"), 4)
    assert (dropped.jid, dropped.waiting) == ("0", 1)
    assert list(tracker.jobs) == ["1", "2", "3"]
    assert tracker.dropped == 1
    clock.now += 10
    assert sorted(job.jid for job in tracker.expire()) == ["1", "2", "3"]


def test_changes_for_the_store_and_a_failed_save_kept() -> None:
    tracker = ReturnTracker(5.0, 100, Clock())
    tracker.observe(*new("1", "a", "b"), 1)
    tracker.observe(*new("2", "a"), 2)
    tracker.observe(*ret("2", "a"), 3)
    changed, closed = tracker.take_changes()
    assert [job.jid for job in changed] == ["1"] and closed == ["2"]
    assert not tracker.dirty
    tracker.unsaved(["1"], ["2"])
    assert tracker.dirty
    changed, closed = tracker.take_changes()
    assert [job.jid for job in changed] == ["1"] and closed == ["2"]


def test_a_job_round_trips_through_its_dict() -> None:
    tracker = ReturnTracker(5.0, 100, Clock())
    tracker.observe(*new("1", "a", "b", missing=["gone"]), 1)
    job = tracker.jobs["1"]
    again = OpenJob.from_dict(job.to_dict())
    assert again == job
    assert again.report(5.0)["salt_missing"] == ["gone"]


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReturnTracker(0, 10)
