"""Every rule of ``reactor_rules:``, fed events and advanced in time: sans-I/O.

:meth:`RuleSet.feed` takes an event with its time (the journal's: when the
publisher received it) and first lets every window that ended before that
time end; :meth:`RuleSet.advance` lets time pass with no event. Both return
the firings in time order. Nothing here reads a clock: the reactor passes
the time, ``saltbus react --test-events`` a simulated one, and catch-up
after a restart feeds the missed events with their own times, so windows
end as if the reactor had never stopped.

A firing becomes the event ``saltbus/rule/<name>`` (:func:`firing_event`),
whose data holds ``rule``, ``kind``, ``key`` (the group's key), ``count``,
``at`` (when it fired, Unix time) and ``events``: the matched events, each
``{name, tag, data, seq, time}``. Reaction files see them as ``events``
too: ``events[0]``, ``events.<step name>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from saltbus.reactor.causes import CAUSE_KEY, cause_of
from saltbus.reactor.multi.correlate import AllOf, Machine, NotAfter, Sequence
from saltbus.reactor.multi.counting import Accumulate, OnceAfter
from saltbus.reactor.multi.defs import RuleDef
from saltbus.reactor.multi.groups import Firing, Group
from saltbus.reactor.templates import MatchedEvents

MACHINES: Final[Mapping[str, type[Machine]]] = {
    "all": AllOf,
    "sequence": Sequence,
    "not": NotAfter,
    "accumulate_within": Accumulate,
    "once_after": OnceAfter,
}


@dataclass(frozen=True, slots=True)
class Change:
    """One group to write (state None: to delete)."""

    rule: str
    fingerprint: str
    key: str
    state: str | None


class RuleSet:
    def __init__(self, rules: Iterable[RuleDef] = ()) -> None:
        self.machines: dict[str, Machine] = {r.name: MACHINES[r.kind](r) for r in rules}
        # The last event fed (its seq): the state reflects every event up to it.
        self.seq: int | None = None
        self.errors: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self._dropped: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.machines)

    def wants(self, tag: str) -> bool:
        return any(m.rule.wants(tag) for m in self.machines.values())

    def feed(self, tag: str, data: Mapping[str, Any], seq: int | None, t: float) -> list[Firing]:
        fired = self.advance(t, inclusive=False)
        record = {"tag": tag, "data": data, "seq": seq, "time": t}
        for name, machine in self.machines.items():
            if not machine.rule.wants(tag):
                continue
            try:
                matches = machine.rule.matches(tag, data)
            except Exception as exc:  # the rule's when:/key: failed on this event
                self.errors[name] = self.errors.get(name, 0) + 1
                self.last_error[name] = f"{tag} (seq {seq}): {type(exc).__name__}: {exc}"
                continue
            if matches:
                fired += machine.feed(matches, record, t, seq)
        if seq is not None:
            self.seq = seq
        return fired

    def advance(self, now: float, *, inclusive: bool = True) -> list[Firing]:
        fired: list[Firing] = []
        for machine in self.machines.values():
            fired += machine.advance(now, inclusive=inclusive)
        fired.sort(key=lambda f: f.at)
        return fired

    # -- state ---------------------------------------------------------------

    def replace(self, rules: Iterable[RuleDef]) -> None:
        """New definitions (a reload): a rule defined as before keeps its
        groups; a changed or removed rule's state is dropped."""
        machines: dict[str, Machine] = {}
        for rule in rules:
            old = self.machines.pop(rule.name, None)
            if old is not None and old.rule.fingerprint == rule.fingerprint:
                machines[rule.name] = old
            else:
                machines[rule.name] = MACHINES[rule.kind](rule)
                if old is not None:
                    self._dropped.add(rule.name)
        self._dropped.update(self.machines)
        self.machines = machines

    def take_changes(self) -> tuple[list[Change], set[str]]:
        """Groups changed since the last call, and rules whose state is all gone."""
        dropped, self._dropped = self._dropped, set()
        changes = []
        for name, machine in self.machines.items():
            fingerprint = machine.rule.fingerprint
            for key, group in machine.groups.take_changes():
                state = None if group is None else json.dumps(group.to_json(), default=str)
                changes.append(Change(name, fingerprint, key, state))
        return changes, dropped

    def restore(self, rows: Iterable[tuple[str, str, str, str]]) -> int:
        """Saved groups ``(rule, fingerprint, key, state)``; those of a rule
        defined otherwise now are dropped. The number restored."""
        found: dict[str, list[tuple[str, Group]]] = {}
        for rule, fingerprint, key, state in rows:
            machine = self.machines.get(rule)
            if machine is None or machine.rule.fingerprint != fingerprint:
                self._dropped.add(rule)
                continue
            found.setdefault(rule, []).append((key, Group.from_json(json.loads(state))))
        for rule, groups in found.items():
            self.machines[rule].groups.restore(groups)
        return sum(map(len, found.values()))

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "open": len(m.groups),
                "evicted": m.groups.evicted,
                "expired": m.groups.expired,
                "cancelled": m.cancelled,
                "errors": self.errors.get(name, 0),
            }
            for name, m in self.machines.items()
        }


def firing_event(firing: Firing) -> tuple[str, dict[str, Any]]:
    """The tag and data of the event a firing is handled as."""
    events = MatchedEvents(dict(e) for e in firing.events)
    data: dict[str, Any] = {
        "rule": firing.rule,
        "kind": firing.kind,
        "key": json.loads(firing.key),
        "count": firing.count,
        "at": firing.at,
        "events": events,
    }
    # The loop guard follows the chain of the deepest event matched.
    causes = [cause_of(e.get("data") or {}) for e in events]
    deepest = max(causes, key=lambda c: c.depth, default=None)
    if deepest is not None and deepest.depth:
        data[CAUSE_KEY] = deepest.as_data()
    return f"saltbus/rule/{firing.rule}", data
