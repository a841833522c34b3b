"""reactor_rules: read and checked: each mistake is one line naming the rule."""

from __future__ import annotations

from typing import Any

import pytest

from saltbus import Config
from saltbus.errors import ConfigError
from saltbus.reactor.multi.defs import parse_rules


def test_a_rule_of_each_kind_is_read() -> None:
    rules = parse_rules(
        {
            "a": {"all": ["x", {"tag": "y", "name": "why"}], "within": "5m"},
            "s": {"sequence": ["x", "y"], "within": 1, "key": "data['id']"},
            "n": {"not": ["x", "y", "z"], "within": "500ms", "group_by": ["id"]},
            "c": {"tag": "t/*", "accumulate_within": "1m", "threshold": 5},
            "q": {"tag": "t/*", "once_after": "30s", "when": "data['n'] > 1"},
        }
    )
    assert [(r.name, r.kind, len(r.steps), r.window) for r in rules] == [
        ("a", "all", 2, 300.0),
        ("s", "sequence", 2, 1.0),
        ("n", "not", 3, 0.5),
        ("c", "accumulate_within", 1, 60.0),
        ("q", "once_after", 1, 30.0),
    ]
    assert [s.name for s in rules[0].steps] == ["step1", "why"]
    assert rules[0].tag == "saltbus/rule/a"
    assert rules[2].steps[0].key("x", {"id": "m1"}) == '"m1"'


def test_a_changed_definition_has_another_fingerprint() -> None:
    one = parse_rules({"r": {"all": ["x", "y"], "within": 5}})[0]
    same = parse_rules({"r": {"within": 5, "all": ["x", "y"]}})[0]
    other = parse_rules({"r": {"all": ["x", "y"], "within": 6}})[0]
    assert one.fingerprint == same.fingerprint != other.fingerprint


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"all": ["x", "y"]}, "all needs within:"),
        ({"all": ["x"], "within": 5}, "two or more steps"),
        ({"all": ["x", "y"], "not": ["x", "y"], "within": 5}, "exactly one of"),
        ({"all": ["x", {"when": "1"}], "within": 5}, "step 2 needs tag:"),
        ({"all": ["x", {"tag": "y", "when": "data["}], "within": 5}, "step 2: when:"),
        ({"all": ["x", "y"], "within": "soon"}, "within:"),
        ({"all": ["x", "y"], "within": 5, "key": "a", "group_by": ["b"]}, "not both"),
        ({"all": ["x", {"tag": "y", "name": "x y"}], "within": 5}, "identifier"),
        ({"all": [{"tag": "x", "name": "a"}, {"tag": "y", "name": "a"}], "within": 5}, "differ"),
        ({"tag": "t", "accumulate_within": 5}, "threshold: N"),
        ({"tag": "t", "accumulate_within": 5, "threshold": 5000}, "1 to 1000"),
        ({"once_after": 5}, "give tag:"),
        ({"tag": "t", "once_after": 5, "within": 5}, "within goes with"),
        ({"all": ["x", "y"], "within": 5, "max_groups": 0}, "max_groups"),
        ({"all": ["x", "y"], "within": 5, "colour": 1}, "unknown key colour"),
    ],
)
def test_mistakes_are_one_line_naming_the_rule(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rules({"myrule": body})
    text = str(caught.value)
    assert text.startswith("reactor_rules: rule 'myrule': ") and message in text, text
    assert "\n" not in text


def test_the_config_file_keeps_them_and_refuses_another_shape(tmp_path: Any) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("reactor_rules:\n  r: {all: [x, y], within: 5}\n")
    assert Config.load(conf).reactor_rules == {"r": {"all": ["x", "y"], "within": 5}}
    conf.write_text("reactor_rules: [x]\n")
    with pytest.raises(ConfigError, match="reactor_rules must map rule names to rules"):
        Config.load(conf)
