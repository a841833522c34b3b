"""saltbus.reactor.throttle: once_within windows, per group of data values."""

from __future__ import annotations

from saltbus.reactor.throttle import PRUNE_EVERY, Throttle, group_values


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_once_within_a_window_then_again_after_it() -> None:
    clock = Clock()
    throttle = Throttle(clock)
    assert [throttle.allow("r", 10.0) for _ in range(100)] == [True] + [False] * 99
    clock.now += 9.99
    assert not throttle.allow("r", 10.0)
    clock.now += 0.02
    assert throttle.allow("r", 10.0)
    assert throttle.skipped == 100


def test_each_key_has_its_own_window() -> None:
    throttle = Throttle(Clock())
    keys = [("r", group_values({"host": f"h{n % 5}"}, ["host"])) for n in range(100)]
    assert sum(throttle.allow(key, 60.0) for key in keys) == 5


def test_group_values() -> None:
    data = {"host": "web1", "a": {"b": 2}, "a.c": 3, "n": 1}
    assert group_values(data, ["host"]) == ('"web1"',)
    assert group_values(data, ["a.b", "a.c", "missing"]) == ("2", "3", "null")
    assert group_values({"m": {"y": 1, "x": 2}}, ["m"]) == group_values(
        {"m": {"x": 2, "y": 1}}, ["m"]
    )
    assert group_values({"n": 1}, ["n"]) != group_values({"n": "1"}, ["n"])


def test_expired_windows_are_forgotten() -> None:
    clock = Clock()
    throttle = Throttle(clock)
    for n in range(PRUNE_EVERY - 1):
        throttle.allow(n, 1.0)
    clock.now += 2
    throttle.allow("last", 1.0)
    assert len(throttle) == 1
