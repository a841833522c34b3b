"""saltbus.reactor.causes: what an event fired by a reaction records about its cause."""

from __future__ import annotations

from typing import Any

import pytest

from saltbus.reactor.causes import (
    CAUSE_KEY,
    CHAIN_KEPT,
    Cause,
    cause_of,
    origin_node,
    with_cause,
)


def test_an_outside_event_has_depth_zero() -> None:
    assert cause_of({"x": 1}) == Cause(0, ())


def test_each_reaction_adds_one_link() -> None:
    first = Cause().then("notify", "app/x", 7)
    data = with_cause({"v": 1}, first)
    assert data == {
        "v": 1,
        CAUSE_KEY: {"depth": 1, "chain": [{"reaction": "notify", "tag": "app/x", "seq": 7}]},
    }
    second = cause_of(data).then("again", "app/y", 8)
    assert second.depth == 2 and [c["reaction"] for c in second.chain] == ["notify", "again"]


def test_chain_is_bounded_but_depth_counts_on() -> None:
    cause = Cause()
    for n in range(CHAIN_KEPT + 5):
        cause = cause.then(f"r{n}", "t", n)
    assert cause.depth == CHAIN_KEPT + 5
    assert len(cause.chain) == CHAIN_KEPT and cause.chain[-1]["reaction"] == f"r{CHAIN_KEPT + 4}"


@pytest.mark.parametrize(
    "raw", ["x", {"depth": "3"}, {"depth": -1}, {"depth": True}, {"chain": []}, None]
)
def test_malformed_causes_count_as_none(raw: Any) -> None:
    assert cause_of({CAUSE_KEY: raw}).depth == 0


def test_does_not_change_the_data_given() -> None:
    data = {"a": 1}
    with_cause(data, Cause(1))
    assert data == {"a": 1}


def test_origin_node_of_imported_events() -> None:
    assert origin_node({"_saltbus_origin": {"node": "b", "seq": 3, "epoch": 1}}) == "b"
    assert origin_node({"x": 1}) is None
    assert origin_node({"_saltbus_origin": "not a marker"}) is None
