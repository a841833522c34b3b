"""Which consumers inside the daemon still need journaled events.

A returner whose database is down, or the federation export while NATS is
unreachable, falls behind the journal. Age retention must not delete what
they have not taken yet, or a long outage would lose events silently; the
size limit still applies, so the disk stays bounded (the journal writer
says so in the log when it deletes events a consumer had not taken).

Each consumer registers a callable giving the last seq it has taken. The
journal writer reads them on its own thread, so the table is replaced, never
changed in place: a reader always sees one whole version of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["Position", "RetentionHolds"]

log = logging.getLogger("saltbus.server")

# The last seq a consumer has taken; None while it does not know yet (it is
# starting), which holds every event.
Position = Callable[[], int | None]


def _everything() -> int | None:
    return None


class RetentionHolds:
    def __init__(self) -> None:
        self._positions: dict[str, Position] = {}
        # Set by the publisher once its journal writer runs: a changed table is
        # applied at once (a consumer that attached may let old events go).
        self.on_change: Callable[[], None] | None = None

    def hold(self, name: str, position: Position | None = None) -> None:
        """Keep the events after ``position()`` from age retention while
        ``name`` runs. Without ``position`` every event is held: register a
        consumer that attaches after the publisher starts this way before
        :meth:`Server.startup`, then again with its position once it knows it."""
        self._positions = {**self._positions, name: position or _everything}
        self._changed()

    def release(self, name: str) -> None:
        """``name`` stopped consuming (it was stopped or removed)."""
        positions = dict(self._positions)
        positions.pop(name, None)
        self._positions = positions
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def positions(self) -> dict[str, int]:
        """Each consumer's last seq taken (0 while it is starting). Called
        from the journal writer's thread."""
        taken: dict[str, int] = {}
        for name, position in self._positions.items():
            try:
                seq = position()
            except Exception:  # a consumer's bug must not unbound retention
                log.exception("retention hold %r failed; holding every event", name)
                seq = None
            taken[name] = 0 if seq is None else seq
        return taken
