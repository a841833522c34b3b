"""``reactor_rules:``: rules over several events, read and checked.

A rule is a condition over events that come from different tags, joined on
a key taken from each event. Correlation: ``all`` (each step, in any order,
within ``within``), ``sequence`` (the steps in this order within
``within``) and ``not`` (the first step, then none of the others within
``within``: it fires when the time runs out). Counting (one ``tag:``, and
``when:``): ``accumulate_within`` with ``threshold`` (N events within a
window that slides) and ``once_after`` (at the end of a quiet period, with
the count). When a rule fires, the reactor handles the event
``saltbus/rule/<name>`` as it handles any other, through its ``reactor:``
globs: see :mod:`.ruleset` for what that event's data holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jinja2

from saltbus.errors import ConfigError
from saltbus.event import MatchType, TagMatcher, tag_matcher
from saltbus.reactor.spec import parse_duration
from saltbus.reactor.templates import compile_condition, compile_expression
from saltbus.reactor.throttle import group_values

CORRELATIONS: Final = ("all", "sequence", "not")
COUNTINGS: Final = ("accumulate_within", "once_after")
KINDS: Final = CORRELATIONS + COUNTINGS
RULE_TAG_PREFIX: Final = "saltbus/rule/"
DEFAULT_MAX_GROUPS: Final = 10_000
MAX_THRESHOLD: Final = 1000
_STEP_KEYS: Final = frozenset(("tag", "when", "key", "group_by", "name"))
_RULE_KEYS: Final = frozenset(
    ("within", "key", "group_by", "max_groups", "tag", "when", "threshold", *KINDS)
)

# The group key of an event for a step: its text (JSON), or raises.
KeyOf = Callable[[str, Mapping[str, Any]], str]


@dataclass(frozen=True, slots=True)
class Step:
    """One kind of event a rule waits for."""

    name: str
    pattern: str
    matcher: TagMatcher
    when: str | None
    key_of: KeyOf

    def key(self, tag: str, data: Mapping[str, Any]) -> str | None:
        """The group key of the event if it is one of this step's, else
        None. Raises what ``when:`` or ``key:`` raise."""
        if not self.matcher(tag):
            return None
        if self.when is not None and not compile_condition(self.when)(tag, data):
            return None
        return self.key_of(tag, data)


@dataclass(frozen=True, slots=True)
class RuleDef:
    name: str
    kind: str
    steps: tuple[Step, ...]
    window: float  # within, accumulate_within or once_after, in seconds
    threshold: int
    max_groups: int
    # Changes when the rule's definition does: saved state of another
    # definition is not restored into this one.
    fingerprint: str

    @property
    def tag(self) -> str:
        return RULE_TAG_PREFIX + self.name

    def wants(self, tag: str) -> bool:
        return any(step.matcher(tag) for step in self.steps)

    def matches(self, tag: str, data: Mapping[str, Any]) -> list[tuple[int, str]]:
        """(step index, group key) of each step the event is one of."""
        found = []
        for index, step in enumerate(self.steps):
            key = step.key(tag, data)
            if key is not None:
                found.append((index, key))
        return found


def parse_rules(raw: Mapping[str, Any]) -> tuple[RuleDef, ...]:
    """The rules of a ``reactor_rules:`` mapping; ConfigError naming the rule."""
    return tuple(_rule(str(name), body) for name, body in raw.items())


def _rule(name: str, body: Any) -> RuleDef:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"reactor_rules: rule {name!r}: {message}")

    if not name or "/" in name or name.strip() != name:
        raise fail("a rule's name is one word (its event is saltbus/rule/<name>)")
    if not isinstance(body, Mapping):
        raise fail(f"must be a mapping (all/sequence/not, or tag with a counting), not {body!r}")
    unknown = sorted(map(str, body.keys() - _RULE_KEYS))
    if unknown:
        raise fail(f"unknown key {', '.join(unknown)} (known: {', '.join(sorted(_RULE_KEYS))})")
    kinds = [k for k in KINDS if k in body]
    if len(kinds) != 1:
        raise fail(f"needs exactly one of {', '.join(KINDS)} (found: {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    rule_key = _key_of(body.get("key"), body.get("group_by"), fail)
    threshold = 0
    if kind in CORRELATIONS:
        for extra in ("tag", "when", "threshold"):
            if extra in body:
                raise fail(f"{extra} goes in each step of {kind}, not beside it")
        steps_raw = body[kind]
        if not isinstance(steps_raw, list) or len(steps_raw) < 2:
            raise fail(f"{kind} must be a list of two or more steps, not {steps_raw!r}")
        steps = tuple(_step(n, s, rule_key, fail) for n, s in enumerate(steps_raw, 1))
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise fail(f"step names must differ: {names}")
        if body.get("within") is None:
            raise fail(f"{kind} needs within: (how long the steps may take, e.g. 5m)")
        window = _duration(body["within"], "within", fail)
    else:
        if "within" in body:
            raise fail(f"within goes with all, sequence or not; {kind} is its own window")
        if not isinstance(body.get("tag"), str) or not body["tag"]:
            raise fail(f"{kind} counts the events of one tag: give tag: '<glob>'")
        step = {"tag": body["tag"], "when": body.get("when"), "name": "event"}
        steps = (_step(1, step, rule_key, fail),)
        window = _duration(body[kind], kind, fail)
        if kind == "accumulate_within":
            given = body.get("threshold")
            if isinstance(given, bool) or not isinstance(given, int):
                raise fail(f"accumulate_within needs threshold: N (1 to {MAX_THRESHOLD})")
            threshold = given
            if not 1 <= threshold <= MAX_THRESHOLD:
                raise fail(f"threshold must be 1 to {MAX_THRESHOLD}, not {threshold}")
        elif "threshold" in body:
            raise fail("threshold goes with accumulate_within")
    max_groups = body.get("max_groups", DEFAULT_MAX_GROUPS)
    if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 1:
        raise fail(f"max_groups must be a positive integer, not {max_groups!r}")
    text = json.dumps(body, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    return RuleDef(name, kind, steps, window, threshold, max_groups, fingerprint)


def _step(number: int, raw: Any, rule_key: KeyOf, fail: Callable[[str], ConfigError]) -> Step:
    if isinstance(raw, str):
        raw = {"tag": raw}
    if not isinstance(raw, Mapping):
        raise fail(f"step {number} must be a tag glob or a mapping with tag:, not {raw!r}")
    unknown = sorted(map(str, raw.keys() - _STEP_KEYS))
    if unknown:
        raise fail(f"step {number}: unknown key {', '.join(unknown)} (tag, when, key, name)")
    pattern = raw.get("tag")
    if not isinstance(pattern, str) or not pattern:
        raise fail(f"step {number} needs tag: '<glob>'")
    when = raw.get("when")
    if isinstance(when, bool):
        when = str(when)
    if when is not None:
        if not isinstance(when, str) or not when.strip():
            raise fail(f"step {number}: when must be a Jinja2 expression, not {when!r}")
        _compile(compile_condition, when, f"step {number}: when", fail)
    name = raw.get("name", f"step{number}")
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise fail(f"step {number}: name must be an identifier (events.<name>), not {name!r}")
    has_own_key = raw.get("key") is not None or raw.get("group_by") is not None
    key_of = _key_of(raw.get("key"), raw.get("group_by"), fail) if has_own_key else rule_key
    return Step(name, pattern, tag_matcher(pattern, MatchType.FNMATCH), when, key_of)


def _key_of(key: Any, group_by: Any, fail: Callable[[str], ConfigError]) -> KeyOf:
    """The key an event joins its group on: a Jinja2 expression over tag and
    data (``key:``), or data keys (``group_by:``, as once_within's); none:
    one group."""
    if key is not None and group_by is not None:
        raise fail("give key: or group_by:, not both")
    if key is not None:
        if not isinstance(key, str) or not key.strip():
            raise fail(f"key must be a Jinja2 expression (e.g. data['id']), not {key!r}")
        expression = _compile(compile_expression, key, "key", fail)

        def by_expression(tag: str, data: Mapping[str, Any]) -> str:
            return _text(expression(tag, data))

        return by_expression
    if group_by is not None:
        keys: Sequence[Any] = [group_by] if isinstance(group_by, str) else group_by
        if not isinstance(keys, list | tuple) or not all(isinstance(k, str) for k in keys):
            raise fail(f"group_by must be a list of data keys, not {group_by!r}")
        names = tuple(keys)

        def by_data(tag: str, data: Mapping[str, Any]) -> str:
            values = [json.loads(v) for v in group_values(data, names)]
            return _text(values[0] if len(values) == 1 else values)

        return by_data
    return lambda tag, data: "null"


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _compile(
    compiler: Callable[[str], Any], text: str, what: str, fail: Callable[[str], ConfigError]
) -> Any:
    try:
        return compiler(text)
    except jinja2.TemplateSyntaxError as exc:
        raise fail(f"{what}: {text!r}: {exc.message}") from None


def _duration(value: Any, what: str, fail: Callable[[str], ConfigError]) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise fail(f"{what}: {exc}") from None
