"""``saltbus react --test-events FILE``: the rules on a simulated clock.

FILE is a YAML (or JSON) list of events with times, ``{at, tag, data}``:
``at`` is seconds (from any origin: the first event's is shown as 0) or an
ISO-8601 time (UTC unless it says otherwise). The events are fed in time
order to every ``reactor_rules:`` rule, windows end in between as they
would live, and what fires when is shown with the reactions its event
``saltbus/rule/<name>`` would run (rendered, nothing run). The reactions
of the events themselves are shown too. After the last event, time runs on
until every open window has ended.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from saltbus.errors import ConfigError
from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.multi.groups import Firing
from saltbus.reactor.multi.ruleset import RuleSet, firing_event
from saltbus.reactor.rules import Rules
from saltbus.reactor.templates import compile_condition
from saltbus.reactor.trial import describe_action


@dataclass(frozen=True, slots=True)
class TimedEvent:
    at: float
    tag: str
    data: dict[str, Any]


def load_events(path: Path) -> tuple[list[TimedEvent], bool]:
    """The events of ``path`` in time order, and whether times were ISO."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not YAML or JSON: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path} must be a list of {{at, tag, data}} events")
    events, iso = [], False
    for number, item in enumerate(raw, 1):
        if not isinstance(item, Mapping) or not isinstance(item.get("tag"), str):
            raise ConfigError(f"{path}: event {number} must be {{at, tag, data}}, not {item!r}")
        at, was_iso = _time(item.get("at"), f"{path}: event {number}")
        iso = iso or was_iso
        data = item.get("data") or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: event {number}: data must be a mapping, not {data!r}")
        events.append(TimedEvent(at, item["tag"], dict(data)))
    events.sort(key=lambda e: e.at)  # stable: events at one time keep their order
    return events, iso


def _time(value: Any, where: str) -> tuple[float, bool]:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), False
    if isinstance(value, datetime.datetime):  # YAML reads an unquoted ISO time itself
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{where}: at {value!r} is not seconds or an ISO time") from None
    else:
        raise ConfigError(f"{where}: at must be seconds or an ISO time, not {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp(), True


def simulate(rules: Rules, events: list[TimedEvent], iso: bool) -> Iterator[str]:
    """Lines saying what each event and each rule firing would run, and when."""
    ruleset = RuleSet(rules.multi)
    origin = events[0].at

    def when(t: float) -> str:
        stamp = f"+{t - origin:9.3f}s"
        if iso:
            moment = datetime.datetime.fromtimestamp(t, datetime.UTC)
            stamp += f" {moment.isoformat(timespec='milliseconds')}"
        return stamp

    def fired(firings: list[Firing]) -> Iterator[str]:
        for firing in firings:
            names = ", ".join(e["name"] for e in firing.events)
            yield (
                f"{when(firing.at)}  rule {firing.rule} FIRES ({firing.kind}, key "
                f"{firing.key}, count {firing.count}, events: {names})"
            )
            tag, data = firing_event(firing)
            yield from _reactions(rules, tag, data)

    for seq, event in enumerate(events, 1):
        before = ruleset.advance(event.at, inclusive=False)
        yield from fired(before)
        body = json.dumps(event.data, default=str, sort_keys=True)
        yield f"{when(event.at)}  event {event.tag} {body}"
        yield from _reactions(rules, event.tag, event.data)
        yield from fired(ruleset.feed(event.tag, event.data, seq, event.at))
    yield from fired(ruleset.advance(math.inf))
    for name, error in ruleset.last_error.items():
        yield f"rule {name}: when:/key: failed on {ruleset.errors[name]} events, last {error}"
    open_left = {n: c["open"] for n, c in ruleset.counts().items() if c["open"]}
    if open_left:
        yield f"(still open at the end: {open_left})"


def _reactions(rules: Rules, tag: str, data: Mapping[str, Any]) -> Iterator[str]:
    for template in rules.match(tag):
        try:
            reactions = template.render(tag, data)
        except ReactionFileError as exc:
            yield f"    render error: {exc}"
            continue
        for reaction in reactions:
            head = f"    {reaction.name} ({template.path.name}:{reaction.line}): "
            if reaction.when is not None:
                try:
                    passed = bool(compile_condition(reaction.when)(tag, data))
                except Exception as exc:  # the running reactor reports it as a failure
                    yield head + f"not run: when: failed: {type(exc).__name__}: {exc}"
                    continue
                if not passed:
                    yield head + f"not run: when: {reaction.when} is false"
                    continue
            yield head + "WOULD RUN " + describe_action(reaction)
