"""The open groups of one rule, and what a rule gives when it fires.

A group is one key's progress through a rule: the events matched so far
and the time it ends (its deadline). Groups are kept in deadline order (a
rule's window is the same for every group, and events come in time order,
so a group opened or moved later ends later): expiring is taking groups
from the front, and the cap on open groups evicts the oldest, counted.
Every change is remembered by key until :meth:`GroupTable.take_changes`,
so the state store writes only what changed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# One matched event as the reaction file sees it: name (the step's), tag,
# data, seq and time (when the publisher received it).
Record = dict[str, Any]


@dataclass(slots=True)
class Group:
    deadline: float
    # all: one slot per step (None until matched); others: in arrival order.
    events: list[Record | None] = field(default_factory=list)
    count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"deadline": self.deadline, "events": self.events, "count": self.count}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Group:
        return cls(float(raw["deadline"]), list(raw["events"]), int(raw["count"]))


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule fired for one group: at ``at`` (event time), with its events."""

    rule: str
    kind: str
    key: str  # the group's key, as JSON text
    at: float
    events: tuple[Record, ...]
    count: int
    seq: int | None  # the event that completed it; None when its time ran out


class GroupTable:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: OrderedDict[str, Group] = OrderedDict()
        self._changed: set[str] = set()
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[tuple[str, Group]]:
        return iter(self._open.items())

    def get(self, key: str) -> Group | None:
        return self._open.get(key)

    def add(self, key: str, group: Group) -> None:
        """Open a group; at the cap, the oldest open group is evicted first."""
        if len(self._open) >= self.cap:
            old, _ = self._open.popitem(last=False)
            self._changed.add(old)
            self.evicted += 1
        self._open[key] = group
        self._changed.add(key)

    def changed(self, key: str) -> None:
        self._changed.add(key)

    def moved(self, key: str, deadline: float) -> None:
        """Its deadline moved later: it goes to the back."""
        self._open[key].deadline = deadline
        self._open.move_to_end(key)
        self._changed.add(key)

    def remove(self, key: str) -> Group | None:
        self._changed.add(key)
        return self._open.pop(key, None)

    def due(self, now: float, *, inclusive: bool) -> Iterator[tuple[str, Group]]:
        """Take the groups whose deadline is before ``now`` (or at it)."""
        while self._open:
            key, group = next(iter(self._open.items()))
            if group.deadline > now or (group.deadline == now and not inclusive):
                return
            del self._open[key]
            self._changed.add(key)
            yield key, group

    def take_changes(self) -> list[tuple[str, Group | None]]:
        """What changed since the last call: each key with its group now
        (None: gone)."""
        changes = [(key, self._open.get(key)) for key in self._changed]
        self._changed = set()
        return changes

    def restore(self, groups: list[tuple[str, Group]]) -> None:
        """Saved groups, in deadline order (not marked as changes)."""
        for key, group in sorted(groups, key=lambda item: item[1].deadline):
            self._open[key] = group
