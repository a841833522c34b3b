"""Counting rules as sans-I/O state machines (see :mod:`.correlate`).

- ``accumulate_within`` + ``threshold``: fires when ``threshold`` events of
  a group came within the window of each other: the window slides (it is
  the last ``window`` seconds at each event, not fixed at the first one).
  Firing resets the group: the next event starts counting from one. A group
  is forgotten when its newest event is a window old.
- ``once_after``: every event of a group pushes its deadline to ``window``
  after it; when a group has been quiet that long, it fires once, with the
  count, its first and its last event.
"""

from __future__ import annotations

from saltbus.reactor.multi.correlate import Machine, Matches, named
from saltbus.reactor.multi.groups import Firing, Group, Record


class Accumulate(Machine):
    def feed(self, matches: Matches, event: Record, t: float, seq: int | None) -> list[Firing]:
        fired = []
        window = self.rule.window
        for _, key in matches[:1]:  # one step: at most one match
            group = self.groups.get(key)
            if group is None:
                group = Group(t + window, [])
                self.groups.add(key, group)
            else:
                self.groups.moved(key, t + window)
            kept = [e for e in group.events if e is not None and e["time"] >= t - window]
            kept.append(named(event, self.rule.steps[0].name))
            group.events = list(kept)
            group.count = len(kept)
            if group.count >= self.rule.threshold:
                self.groups.remove(key)
                fired.append(self.fire(key, t, group, seq))
        return fired


class OnceAfter(Machine):
    def feed(self, matches: Matches, event: Record, t: float, seq: int | None) -> list[Firing]:
        window = self.rule.window
        for _, key in matches[:1]:
            record = named(event, self.rule.steps[0].name)
            group = self.groups.get(key)
            if group is None:
                self.groups.add(key, Group(t + window, [record], 1))
                continue
            group.events = [group.events[0], record]
            group.count += 1
            self.groups.moved(key, t + window)
        return []

    def due(self, key: str, group: Group) -> Firing | None:
        return self.fire(key, group.deadline, group, None)
