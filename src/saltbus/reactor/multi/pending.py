"""Rule firings whose reactions have not finished, kept with the rules' state.

A firing ends its group, and the state saved next no longer has it, before
its reactions have run. Kept nowhere else, a firing would be lost to a
crash between that save and the end of its reactions: the restored state
does not fire again, a timer's firing (``not``, ``once_after``) has no seq
to hold the reactor's position back, and an event's firing is not fed
again because the saved state already reflects that event. So every firing
is kept here until its reactions finish, and written in the same
transaction as the group it ended (one that finishes before the next save,
every 50 ms, is never written). A restarted reactor runs again the ones it
finds: at least once, like every other reaction (twice when the crash came
after they finished but before their row was deleted).

Why here and not as an event ``saltbus/rule/<name>`` fired onto the bus and
reacted to with its seq: the group could only be saved as ended once the
bus acknowledged the firing, which holds back the whole state (and the
reactor's position behind it) while any firing is unacknowledged, for ever
under a steady stream of firings; a bus that refuses it (journal
unavailable) would need its own retry; and every reactor on the bus, and
every node with ``reactor_scope: all``, would see the others' firings and
need a marker to react only to its own. The row here costs nothing in the
usual case and keeps a firing's reactions where the rule ran.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from saltbus.reactor.templates import MatchedEvents

# (id, tag, data as JSON): one row of the state store.
FiringRow = tuple[str, str, str]


@dataclass(slots=True)
class Unfinished:
    tag: str
    data: dict[str, Any]
    jobs: int = 0  # reactions queued and not finished
    saved: bool = False


class PendingFirings:
    def __init__(self) -> None:
        self._open: dict[str, Unfinished] = {}
        self._gone: set[str] = set()  # saved, then finished: rows to delete
        # Ids stay unique across restarts: a restored row keeps its own.
        self._prefix = secrets.token_hex(4)
        self._next = 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, tag: str, data: dict[str, Any]) -> str:
        """A firing whose reactions are about to be queued: its id."""
        self._next += 1
        firing = f"{self._prefix}-{self._next}"
        self._open[firing] = Unfinished(tag, data)
        return firing

    def queued(self, firing: str, jobs: int) -> None:
        """``jobs`` reactions were queued for it (none: it is done)."""
        found = self._open.get(firing)
        if found is None:
            return
        found.jobs += jobs
        if found.jobs <= 0:
            self._end(firing)

    def finished(self, firing: str) -> None:
        """One of its reactions finished (or gave up, or was dropped)."""
        found = self._open.get(firing)
        if found is None:
            return
        found.jobs -= 1
        if found.jobs <= 0:
            self._end(firing)

    def _end(self, firing: str) -> None:
        if self._open.pop(firing).saved:
            self._gone.add(firing)

    def writes(self, *, everything: bool = False) -> tuple[list[FiringRow], list[str]]:
        """The rows to write and the ids to delete (``everything``: every
        open firing, for a store that replaces the whole set)."""
        rows = [
            (firing, pending.tag, json.dumps(pending.data, default=str))
            for firing, pending in self._open.items()
            if everything or not pending.saved
        ]
        return rows, sorted(self._gone)

    def saved(self, rows: Iterable[FiringRow], deleted: Iterable[str]) -> None:
        """What :meth:`writes` gave is in the store now."""
        for firing, _, _ in rows:
            if firing in self._open:
                self._open[firing].saved = True
        self._gone.difference_update(deleted)

    def restore(self, rows: Iterable[FiringRow]) -> list[tuple[str, str, dict[str, Any]]]:
        """Saved firings of a reactor that stopped before their reactions
        finished, as ``(id, tag, data)`` to react to again."""
        found = []
        for firing, tag, text in rows:
            data = json.loads(text)
            data["events"] = MatchedEvents(data.get("events") or [])
            self._open[firing] = Unfinished(tag, data, saved=True)
            found.append((firing, tag, data))
        return found
