"""Correlation rules (``all``, ``sequence``, ``not``) as sans-I/O state
machines: fed an event's matches with its time, and advanced to a time;
both return what fired. A group opens with its first event and lasts the
rule's window from then. An event takes at most one step in each group.

- ``all``: each step once, in any order; a step matched again keeps its
  first event. Fires when the last step comes; a group whose window ends
  first is dropped (counted as expired).
- ``sequence``: the steps in their order; only the first step opens a
  group, and an event for a step other than the next one is ignored.
- ``not``: the first step opens a group (one per key at a time); any other
  step with the same key within the window cancels it; it fires when the
  window ends. At one instant, cancelling is done before opening.
"""

from __future__ import annotations

from saltbus.reactor.multi.defs import RuleDef
from saltbus.reactor.multi.groups import Firing, Group, GroupTable, Record

Matches = list[tuple[int, str]]


class Machine:
    """A rule's groups; subclasses say what an event and a deadline do."""

    def __init__(self, rule: RuleDef) -> None:
        self.rule = rule
        self.groups = GroupTable(rule.max_groups)
        self.cancelled = 0

    def feed(self, matches: Matches, event: Record, t: float, seq: int | None) -> list[Firing]:
        raise NotImplementedError

    def due(self, key: str, group: Group) -> Firing | None:
        """A group's window ended: what fires (None: it expired unfired)."""
        self.groups.expired += 1
        return None

    def advance(self, now: float, *, inclusive: bool = True) -> list[Firing]:
        fired = []
        for key, group in self.groups.due(now, inclusive=inclusive):
            firing = self.due(key, group)
            if firing is not None:
                fired.append(firing)
        return fired

    def fire(self, key: str, at: float, group: Group, seq: int | None) -> Firing:
        events = tuple(e for e in group.events if e is not None)
        count = group.count or len(events)
        return Firing(self.rule.name, self.rule.kind, key, at, events, count, seq)


def named(event: Record, name: str) -> Record:
    return {**event, "name": name}


class AllOf(Machine):
    def feed(self, matches: Matches, event: Record, t: float, seq: int | None) -> list[Firing]:
        fired = []
        taken: set[str] = set()
        steps = self.rule.steps
        for index, key in matches:
            if key in taken:
                continue
            group = self.groups.get(key)
            if group is None:
                group = Group(t + self.rule.window, [None] * len(steps))
                self.groups.add(key, group)
            if group.events[index] is not None:
                continue
            taken.add(key)
            group.events[index] = named(event, steps[index].name)
            self.groups.changed(key)
            if all(e is not None for e in group.events):
                self.groups.remove(key)
                fired.append(self.fire(key, t, group, seq))
        return fired


class Sequence(Machine):
    def feed(self, matches: Matches, event: Record, t: float, seq: int | None) -> list[Firing]:
        fired = []
        taken: set[str] = set()
        steps = self.rule.steps
        for index, key in matches:
            if key in taken:
                continue
            group = self.groups.get(key)
            if group is None:
                if index != 0:
                    continue
                group = Group(t + self.rule.window, [])
                self.groups.add(key, group)
            elif index != len(group.events):
                continue
            taken.add(key)
            group.events.append(named(event, steps[index].name))
            self.groups.changed(key)
            if len(group.events) == len(steps):
                self.groups.remove(key)
                fired.append(self.fire(key, t, group, seq))
        return fired


class NotAfter(Machine):
    def feed(self, matches: Matches, event: Record, t: float, seq: int | None) -> list[Firing]:
        for index, key in matches:
            if index != 0 and self.groups.remove(key) is not None:
                self.cancelled += 1
        for index, key in matches:
            if index == 0 and self.groups.get(key) is None:
                opener = named(event, self.rule.steps[0].name)
                self.groups.add(key, Group(t + self.rule.window, [opener]))
        return []

    def due(self, key: str, group: Group) -> Firing | None:
        return self.fire(key, group.deadline, group, None)
