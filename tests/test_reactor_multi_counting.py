"""Counting rules (accumulate_within + threshold, once_after) as state
machines on an injected clock."""

from __future__ import annotations

from typing import Any

from saltbus.reactor.multi.defs import parse_rules
from saltbus.reactor.multi.ruleset import RuleSet


def ruleset(**rules: Any) -> RuleSet:
    return RuleSet(parse_rules(rules))


def storm() -> RuleSet:
    return ruleset(
        storm={
            "tag": "salt/auth",
            "when": "not data['result']",
            "accumulate_within": "1m",
            "threshold": 3,
            "group_by": ["id"],
        }
    )


def test_accumulate_fires_once_per_group_at_the_threshold_then_resets() -> None:
    rules = storm()
    fired = []
    for n, (minion, t) in enumerate([("a", 0), ("b", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 5)]):
        fired += rules.feed("salt/auth", {"id": minion, "result": False}, n, float(t))
    assert [(f.key, f.at, f.count) for f in fired] == [('"a"', 3.0, 3)]
    assert [e["seq"] for e in fired[0].events] == [0, 2, 3]
    # Reset: a's fourth event counts one; two more make the next firing.
    fired = rules.feed("salt/auth", {"id": "a", "result": False}, 9, 6.0)
    fired += rules.feed("salt/auth", {"id": "a", "result": False}, 10, 7.0)
    assert [f.at for f in fired] == [7.0]


def test_accumulate_window_slides() -> None:
    rules = storm()
    auth = {"id": "a", "result": False}
    assert rules.feed("salt/auth", auth, 1, 0.0) == []
    assert rules.feed("salt/auth", auth, 2, 50.0) == []
    assert rules.feed("salt/auth", auth, 3, 70.0) == []  # the one at 0 is out of the window
    assert [f.at for f in rules.feed("salt/auth", auth, 4, 100.0)] == [100.0]
    assert rules.feed("salt/auth", {"id": "a", "result": True}, 5, 101.0) == []  # when: false


def test_accumulate_forgets_a_group_a_window_after_its_newest_event() -> None:
    rules = storm()
    rules.feed("salt/auth", {"id": "a", "result": False}, 1, 0.0)
    rules.feed("salt/auth", {"id": "a", "result": False}, 2, 30.0)
    assert rules.advance(89.0) == [] and rules.counts()["storm"]["open"] == 1
    assert rules.advance(90.0) == [] and rules.counts()["storm"]["open"] == 0


def test_once_after_fires_at_the_end_of_a_quiet_period_with_the_count() -> None:
    rules = ruleset(quiet={"tag": "batch/*", "once_after": 30, "key": "tag.split('/')[1]"})
    for n, t in enumerate([0.0, 10.0, 25.0, 50.0]):
        rules.feed("batch/one", {"n": n}, n, t)
    rules.feed("batch/two", {"n": 9}, 9, 60.0)
    assert rules.advance(79.9) == []
    fired = rules.advance(80.0)
    assert [(f.key, f.at, f.count) for f in fired] == [('"one"', 80.0, 4)]
    assert [e["data"]["n"] for e in fired[0].events] == [0, 3]  # the first and the last
    assert [(f.key, f.count) for f in rules.advance(90.0)] == [('"two"', 1)]
    assert rules.advance(1000.0) == []  # once
