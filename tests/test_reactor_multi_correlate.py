"""Correlation rules (all, sequence, not) as state machines, on an injected
clock: joins on keys from data and from the tag, windows, eviction."""

from __future__ import annotations

from typing import Any

from saltbus.reactor.multi.defs import parse_rules
from saltbus.reactor.multi.groups import Firing
from saltbus.reactor.multi.ruleset import RuleSet


def ruleset(**rules: Any) -> RuleSet:
    return RuleSet(parse_rules(rules))


def keys(firings: list[Firing]) -> list[tuple[str, str, float]]:
    return [(f.rule, f.key, f.at) for f in firings]


def test_all_fires_when_every_step_came_in_any_order_per_key() -> None:
    rules = ruleset(
        both={
            "all": [{"name": "web", "tag": "deploy/web"}, {"name": "db", "tag": "deploy/db"}],
            "key": "data['id']",
            "within": 60,
        }
    )
    assert rules.feed("deploy/db", {"id": "a"}, 1, 0.0) == []
    assert rules.feed("deploy/db", {"id": "b"}, 2, 1.0) == []
    assert rules.feed("deploy/db", {"id": "a"}, 3, 2.0) == []  # step already taken: first kept
    fired = rules.feed("deploy/web", {"id": "a"}, 4, 3.0)
    assert keys(fired) == [("both", '"a"', 3.0)]
    assert [(e["name"], e["seq"]) for e in fired[0].events] == [("web", 4), ("db", 1)]
    assert fired[0].seq == 4
    assert rules.counts()["both"]["open"] == 1  # b waits


def test_all_drops_a_group_whose_window_ended() -> None:
    rules = ruleset(pair={"all": ["a", "b"], "within": "10s"})
    rules.feed("a", {}, 1, 0.0)
    assert rules.advance(9.9) == []
    assert rules.counts()["pair"]["open"] == 1
    assert rules.feed("b", {}, 2, 10.5) == []  # too late: the window ended at 10
    assert rules.counts()["pair"]["expired"] == 1
    assert rules.counts()["pair"]["open"] == 1  # b opened a new group


def test_sequence_needs_the_order_and_joins_on_a_part_of_the_tag() -> None:
    rules = ruleset(
        job={
            "sequence": ["salt/job/*/new", "salt/job/*/ret/*"],
            "key": "tag.split('/')[2]",
            "within": "1m",
        }
    )
    assert rules.feed("salt/job/2/ret/m1", {}, 1, 0.0) == []  # not first: ignored
    assert rules.counts()["job"]["open"] == 0
    assert rules.feed("salt/job/1/new", {}, 2, 1.0) == []
    assert rules.feed("salt/job/2/ret/m1", {}, 3, 2.0) == []  # another jid
    fired = rules.feed("salt/job/1/ret/m1", {}, 4, 3.0)
    assert keys(fired) == [("job", '"1"', 3.0)]
    assert [e["tag"] for e in fired[0].events] == ["salt/job/1/new", "salt/job/1/ret/m1"]


def test_a_step_may_take_its_key_from_elsewhere() -> None:
    rules = ruleset(
        started={
            "sequence": [
                {"tag": "salt/job/*/new", "key": "data['jid']"},
                {"tag": "salt/job/*/ret/*", "key": "tag.split('/')[2]"},
            ],
            "within": 60,
        }
    )
    rules.feed("salt/job/77/new", {"jid": "77"}, 1, 0.0)
    assert keys(rules.feed("salt/job/77/ret/m", {}, 2, 1.0)) == [("started", '"77"', 1.0)]


def test_not_fires_when_the_time_runs_out_and_not_when_cancelled() -> None:
    rules = ruleset(
        nohs={
            "not": [
                {"name": "start", "tag": "salt/minion/*/start"},
                {"tag": "salt/job/*/ret/*", "when": "data['fun'] == 'state.highstate'"},
            ],
            "key": "data['id']",
            "within": "5m",
        }
    )
    rules.feed("salt/minion/web1/start", {"id": "web1"}, 1, 0.0)
    rules.feed("salt/minion/web2/start", {"id": "web2"}, 2, 10.0)
    rules.feed("salt/minion/web1/start", {"id": "web1"}, 3, 20.0)  # one window per key
    rules.feed("salt/job/1/ret/web2", {"id": "web2", "fun": "test.ping"}, 4, 30.0)  # when: false
    rules.feed("salt/job/2/ret/web1", {"id": "web1", "fun": "state.highstate"}, 5, 299.0)
    assert rules.advance(309.9) == []
    fired = rules.advance(310.0)
    assert keys(fired) == [("nohs", '"web2"', 310.0)]
    assert fired[0].seq is None and fired[0].events[0]["name"] == "start"
    assert rules.counts()["nohs"] == {
        "open": 0,
        "evicted": 0,
        "expired": 0,
        "cancelled": 1,
        "errors": 0,
    }


def test_feeding_an_event_first_ends_the_windows_before_its_time() -> None:
    rules = ruleset(gone={"not": ["up", "down"], "within": 5})
    rules.feed("up", {}, 1, 0.0)
    # The cancelling event comes after the window: the rule fired at 5 first.
    assert keys(rules.feed("down", {}, 2, 6.0)) == [("gone", "null", 5.0)]


def test_a_rule_keeps_at_most_max_groups_evicting_the_oldest() -> None:
    rules = ruleset(
        capped={"not": ["up", "down"], "key": "data['n']", "within": 100, "max_groups": 3}
    )
    for n in range(5):
        rules.feed("up", {"n": n}, n + 1, float(n))
    assert rules.counts()["capped"]["open"] == 3
    assert rules.counts()["capped"]["evicted"] == 2
    assert [f.key for f in rules.advance(1000.0)] == ["2", "3", "4"]


def test_a_failing_key_expression_is_counted_not_raised() -> None:
    rules = ruleset(bad={"all": ["a", "b"], "key": "data['x']['y']", "within": 5})
    assert rules.feed("a", {}, 1, 0.0) == []
    assert rules.errors == {"bad": 1}
    assert "UndefinedError" in rules.last_error["bad"]
