"""The reactor's side of ``reactor_rules:``: times, catch-up, saving, reporting.

The engine hands every event to :meth:`RuleRunner.event` and calls
:meth:`RuleRunner.tick` a few times a second; both return firings as
:class:`Fired` for the engine to react to. The engine says how many
reactions it queued for each (:meth:`RuleRunner.queued`) and when each
finished (:meth:`RuleRunner.finished`): until then the firing is kept with
the rules' state (:mod:`.pending`), and a restarted reactor reacts to the
ones it finds again (:meth:`RuleRunner.unfinished`). An event's time is the
journal's (when the publisher received it); without a journal (a Salt
master's bus) it is the time the event reaches the reactor.

While catching up after a restart, only the events move time forward: the
clock would end windows that a missed event, still to come, closes. Live,
time moves with the clock less ``GRACE``: an event the publisher received
just before a window ended may still be on its way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, NamedTuple

from saltbus.errors import SaltbusError
from saltbus.event import Event
from saltbus.reactor.multi.defs import RuleDef
from saltbus.reactor.multi.groups import Firing
from saltbus.reactor.multi.pending import PendingFirings
from saltbus.reactor.multi.ruleset import Change, RuleSet, firing_event
from saltbus.reactor.multi.store import RuleStateStore

log = logging.getLogger("saltbus.reactor")

TICK: Final = 0.1
GRACE: Final = 0.2
SAVE_INTERVAL: Final = 0.05
# Catching up, but no event came for this long: what was to come is not.
CATCH_UP_IDLE: Final = 2.0


class Fired(NamedTuple):
    """A firing as the event to react to, and its id among the unfinished."""

    tag: str
    data: dict[str, Any]
    seq: int | None  # the event that completed it; None: a timer's, or run again
    firing: str


class RuleRunner:
    def __init__(self, rules: Iterable[RuleDef], clock: Callable[[], float] = time.time) -> None:
        self.ruleset = RuleSet(rules)
        self._clock = clock
        self._store: RuleStateStore | None = None
        self._journal: Path | None = None
        self._reactor: str | None = None
        self._epoch: int | None = None
        self._skip_through: int | None = None
        self._catch_up_until: int | None = None
        self._last_event = clock()
        self._last_save = float("-inf")
        self._resave_all = False
        self._saved_seq: int | None = None
        self._reported: dict[str, tuple[int, int]] = {}
        self._pending = PendingFirings()
        self._restored: list[Fired] = []
        self.fired = 0

    def __bool__(self) -> bool:
        return bool(self.ruleset)

    def open(self, journal: Path | None, reactor: str, epoch: int | None) -> None:
        """Take the saved state from ``journal`` (None: kept in memory only).
        Without rules, nothing is read or written until a reload adds some."""
        self._journal, self._reactor, self._epoch = journal, reactor, epoch
        self._open_store()

    def _open_store(self) -> None:
        if not self.ruleset or self._store is not None or self._reactor is None:
            return
        if self._journal is None:
            log.warning("no journal: the rules' windows and counters live in memory only")
            self._reactor = None
            return
        self._store = RuleStateStore(self._journal, self._reactor)
        saved_epoch, seq, rows = self._store.load()
        restored = self.ruleset.restore(rows)
        # Run again without their event's seq: catch-up counts that event's
        # own reactions anew, and a job with its seq would count one of them
        # as done when it finished (the position could then pass the event).
        self._restored = [
            Fired(tag, data, None, firing)
            for firing, tag, data in self._pending.restore(self._store.load_firings())
        ]
        if seq is not None and (saved_epoch == self._epoch or self._epoch is None):
            self._skip_through = seq
            self.ruleset.seq = seq
        log.info(
            "rules: %d open windows restored%s",
            restored,
            f" (the state reflects the events up to seq {seq})" if seq is not None else "",
        )
        if self._restored:
            log.warning(
                "rules: %d firings whose reactions had not finished run again",
                len(self._restored),
            )

    def unfinished(self) -> list[Fired]:
        """Firings saved before the last stop whose reactions had not finished
        (once: the engine reacts to them at start)."""
        restored, self._restored = self._restored, []
        return restored

    def queued(self, firing: str, jobs: int) -> None:
        """The engine queued ``jobs`` reactions for ``firing``."""
        self._pending.queued(firing, jobs)

    def finished(self, firing: str) -> None:
        """One reaction of ``firing`` finished, gave up or was dropped."""
        self._pending.finished(firing)

    def catching_up(self, until: int | None) -> None:
        """Events up to seq ``until`` are missed ones, to be fed before time moves."""
        self._catch_up_until = until
        self._last_event = self._clock()

    def replace(self, rules: Iterable[RuleDef]) -> None:
        self.ruleset.replace(rules)
        self._open_store()

    def event(self, event: Event, *, feed: bool = True) -> list[Fired]:
        """An event read from the bus; ``feed`` false: not one for this
        reactor's rules (reactor_scope), but it still moves catch-up on."""
        seq = event.seq
        if self._catch_up_until is not None:
            self._last_event = self._clock()
            if seq is None or seq >= self._catch_up_until:
                self._catch_up_until = None
        if seq is not None and self._skip_through is not None and seq <= self._skip_through:
            return []  # the saved state already reflects it
        self._skip_through = None
        if not feed or not self.ruleset.wants(event.tag):
            if seq is not None:
                self.ruleset.seq = seq
            return []
        t = self._time(seq)
        return self._fired(self.ruleset.feed(event.tag, event.data, seq, t))

    def _time(self, seq: int | None) -> float:
        if self._store is not None and seq is not None:
            found = self._store.time_of(seq)
            if found is not None:
                return found
        return self._clock()

    def tick(self, epoch: int | None) -> list[Fired]:
        """Let time pass (not while catching up); save the state if it is due."""
        now = self._clock()
        fired: list[Fired] = []
        if self._catch_up_until is not None and now - self._last_event > CATCH_UP_IDLE:
            self._catch_up_until = None
        if self._catch_up_until is None:
            fired = self._fired(self.ruleset.advance(now - GRACE))
        if now - self._last_save >= SAVE_INTERVAL:
            self.save(epoch)
        self._report()
        return fired

    def _fired(self, firings: list[Firing]) -> list[Fired]:
        out = []
        for firing in firings:
            tag, data = firing_event(firing)
            log.info(
                "rule %s fired (%s, key %s, %d events)",
                firing.rule,
                firing.kind,
                firing.key,
                firing.count,
                extra={"tag": tag, "seq": firing.seq},
            )
            out.append(Fired(tag, data, firing.seq, self._pending.add(tag, data)))
        self.fired += len(out)
        return out

    def save(self, epoch: int | None) -> bool:
        """Write what changed; False if it could not be (the position must
        not move past the state: the engine saves it only after this)."""
        if self._store is None:
            return True
        everything, self._resave_all = self._resave_all, False
        changes, dropped = self.ruleset.take_changes()
        if everything:
            changes = self._all_groups()
        firings, finished = self._pending.writes(everything=everything)
        self._last_save = self._clock()
        if not (changes or dropped or everything or firings or finished) and (
            self._saved_seq_current()
        ):
            return True
        try:
            self._store.save(
                epoch,
                self.ruleset.seq,
                changes,
                dropped,
                everything=everything,
                now=self._last_save,
                firings=firings,
                finished=finished,
            )
        except SaltbusError as exc:
            log.error("%s; retrying (the reactor's position waits for it)", exc)
            self._resave_all = True
            return False
        self._pending.saved(firings, finished)
        self._saved_seq = self.ruleset.seq
        return True

    def _saved_seq_current(self) -> bool:
        return self._saved_seq == self.ruleset.seq

    def _all_groups(self) -> list[Change]:
        return [
            Change(name, m.rule.fingerprint, key, json.dumps(group.to_json(), default=str))
            for name, m in self.ruleset.machines.items()
            for key, group in m.groups
        ]

    def _report(self) -> None:
        """Evictions and failed when:/key: expressions, at most once a tick each."""
        for name, machine in self.ruleset.machines.items():
            evicted, errors = machine.groups.evicted, self.ruleset.errors.get(name, 0)
            was_evicted, was_errors = self._reported.get(name, (0, 0))
            if evicted > was_evicted:
                log.warning(
                    "rule %s: %d open windows evicted (%d in all; max_groups %d): "
                    "the oldest were dropped unfired",
                    name,
                    evicted - was_evicted,
                    evicted,
                    machine.rule.max_groups,
                )
            if errors > was_errors:
                log.warning(
                    "rule %s: when:/key: failed on %d events, last on %s",
                    name,
                    errors - was_errors,
                    self.ruleset.last_error.get(name),
                )
            self._reported[name] = (evicted, errors)

    def counts(self) -> dict[str, Any]:
        return {
            "fired": self.fired,
            "unfinished": len(self._pending),
            "rules": self.ruleset.counts(),
        }

    def close(self, epoch: int | None) -> None:
        self.save(epoch)
        if self._store is not None:
            self._store.close()
            self._store = None
