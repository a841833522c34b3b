"""The rule set: its state taken as changes and restored (what the journal
keeps), reloads, and the event a firing is handled as (what reaction files see)."""

from __future__ import annotations

import json
from pathlib import Path

from saltbus.reactor.causes import CAUSE_KEY, Cause, cause_of, with_cause
from saltbus.reactor.multi.defs import parse_rules
from saltbus.reactor.multi.ruleset import RuleSet, firing_event
from saltbus.reactor.templates import ReactionTemplate

RULES = {
    "nohs": {
        "not": [{"name": "start", "tag": "up/*"}, "down/*"],
        "key": "data['id']",
        "within": 10,
    },
    "pair": {"all": ["a", "b"], "key": "data['id']", "within": 10},
}


def rows_of(rules: RuleSet) -> list[tuple[str, str, str, str]]:
    changes, _dropped = rules.take_changes()
    return [(c.rule, c.fingerprint, c.key, c.state) for c in changes if c.state]


def test_a_restored_state_goes_on_as_if_never_stopped() -> None:
    first = RuleSet(parse_rules(RULES))
    first.feed("up/1", {"id": "m1"}, 1, 0.0)
    first.feed("up/2", {"id": "m2"}, 2, 1.0)
    first.feed("a", {"id": "x"}, 3, 2.0)
    saved = rows_of(first)
    assert sorted((rule, key) for rule, _, key, _ in saved) == [
        ("nohs", '"m1"'),
        ("nohs", '"m2"'),
        ("pair", '"x"'),
    ]
    again = RuleSet(parse_rules(RULES))
    assert again.restore(saved) == 3
    again.feed("down/2", {"id": "m2"}, 4, 5.0)
    assert [f.key for f in again.feed("b", {"id": "x"}, 5, 6.0)] == ['"x"']
    assert [(f.key, f.at) for f in again.advance(20.0)] == [('"m1"', 10.0)]
    changes, _ = again.take_changes()
    assert {c.key: c.state for c in changes} == {'"m1"': None, '"m2"': None, '"x"': None}


def test_state_of_a_changed_definition_is_dropped() -> None:
    first = RuleSet(parse_rules(RULES))
    first.feed("up/1", {"id": "m1"}, 1, 0.0)
    saved = rows_of(first)
    changed = RuleSet(parse_rules({**RULES, "nohs": {**RULES["nohs"], "within": 20}}))
    assert changed.restore(saved) == 0
    assert changed.take_changes()[1] == {"nohs"}


def test_a_reload_keeps_unchanged_rules_and_drops_the_others() -> None:
    rules = RuleSet(parse_rules(RULES))
    rules.feed("up/1", {"id": "m1"}, 1, 0.0)
    rules.feed("a", {"id": "x"}, 2, 0.0)
    rules.take_changes()
    rules.replace(parse_rules({"nohs": RULES["nohs"]}))
    assert rules.counts()["nohs"]["open"] == 1 and "pair" not in rules.counts()
    assert rules.take_changes() == ([], {"pair"})


def test_a_firing_is_an_event_whose_matched_events_templates_see(tmp_path: Path) -> None:
    rules = RuleSet(parse_rules(RULES))
    cause = Cause().then("r", "t", 1).then("r", "t", 2)
    rules.feed("up/1", with_cause({"id": "m1"}, cause), 7, 100.0)
    (firing,) = rules.advance(200.0)
    tag, data = firing_event(firing)
    assert tag == "saltbus/rule/nohs"
    assert {k: data[k] for k in ("rule", "kind", "key", "count", "at")} == {
        "rule": "nohs",
        "kind": "not",
        "key": "m1",
        "count": 1,
        "at": 110.0,
    }
    assert cause_of(data).depth == 2  # the loop guard follows the chain
    assert data["events"][0]["seq"] == 7 and CAUSE_KEY in data["events"][0]["data"]
    sls = tmp_path / "r.sls"
    sls.write_text(
        "page:\n  event.send:\n    - tag: t/{{ events.start.data.id }}\n"
        "    - data: {n: {{ events[0].seq }}, key: {{ data['key'] }}}\n"
    )
    (reaction,) = ReactionTemplate(sls).render(tag, data)
    assert reaction.options == {"tag": "t/m1", "data": {"n": 7, "key": "m1"}}
    json.dumps(data)  # JSON-ready as it is: the events are a list
