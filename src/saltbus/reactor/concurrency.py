"""``lock:`` and ``concurrency:``: reactions that must not all run at once.

Reactions whose rendered ``lock`` is the same text (across files and rules)
run one at a time, in the order of their events; different texts run side by
side. ``concurrency: N`` caps how many runs of one reaction (its file and
name) are under way at once. A reaction with neither goes to the worker queue
as before.

Gated reactions wait here, not in the worker queue, so a reaction waiting
for a lock never holds a worker: other keys and ungated reactions keep
running. What waits here is bounded by ``capacity`` (the reactor's
``reactor_worker_hwm``): when it is full the reactor stops reading events
until one finishes (backpressure on its intake, never a drop), so it may
hold one event's reactions more than ``capacity``. Events then wait in the
reactor's subscription (its bounded queue); past that the reactor falls
behind the bus as any slow reactor does, and says so.

Restarts: a waiting reaction is in flight for :class:`~.progress.Progress`,
so the saved low-water mark stays below its event and a restart (with
catch-up) queues it again, in the same order. Locks live in this process's
memory only, and that is enough: a lock serialises what one reactor runs, a
dead reactor runs nothing and so holds nothing, and the lock table is rebuilt
by the replay. Two reactors do not share locks: with federation,
``reactor_scope: leader`` makes one node run the reactions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("saltbus.reactor")


@dataclass(eq=False, slots=True)
class Ticket(Generic[T]):
    """One admitted item and what gates it."""

    item: T
    rule: Hashable
    lock: str | None
    limit: int | None
    started: bool = field(default=False)


class Gate(Generic[T]):
    """Decides which admitted items may start (sans-I/O): ``start`` is
    called for each item when its lock is free and its rule is under its
    limit; :meth:`finished` frees both."""

    def __init__(self, start: Callable[[Ticket[T]], None]) -> None:
        self._start = start
        # Per lock: the holder first (running, or waiting for its rule's
        # limit), then the items waiting for it, in order of admission.
        self._locks: dict[str, deque[Ticket[T]]] = {}
        self._running: dict[Hashable, int] = {}
        self._over_limit: dict[Hashable, deque[Ticket[T]]] = {}
        self.size = 0  # admitted and not finished
        self.started = 0

    @property
    def running(self) -> int:
        return sum(self._running.values())

    @property
    def waiting(self) -> int:
        return self.size - self.running

    def admit(self, item: T, rule: Hashable, lock: str | None, limit: int | None) -> Ticket[T]:
        ticket = Ticket(item, rule, lock, limit)
        self.size += 1
        if lock is not None:
            queue = self._locks.setdefault(lock, deque())
            queue.append(ticket)
            if len(queue) > 1:
                return ticket
        self._try_rule(ticket)
        return ticket

    def finished(self, ticket: Ticket[T]) -> None:
        if not ticket.started:
            raise ValueError("finished() for an item that never started")
        self.size -= 1
        left = self._running[ticket.rule] - 1
        if left:
            self._running[ticket.rule] = left
        else:
            del self._running[ticket.rule]
        following = None
        if ticket.lock is not None:
            queue = self._locks[ticket.lock]
            queue.popleft()
            if queue:
                following = queue[0]
            else:
                del self._locks[ticket.lock]
        # Those already waiting for the rule's limit go before the lock's next.
        waiting = self._over_limit.get(ticket.rule)
        while waiting and self._under_limit(waiting[0]):
            self._begin(waiting.popleft())
        if waiting is not None and not waiting:
            del self._over_limit[ticket.rule]
        if following is not None:
            self._try_rule(following)

    def _under_limit(self, ticket: Ticket[T]) -> bool:
        return ticket.limit is None or self._running.get(ticket.rule, 0) < ticket.limit

    def _try_rule(self, ticket: Ticket[T]) -> None:
        if self._under_limit(ticket) and ticket.rule not in self._over_limit:
            self._begin(ticket)
        else:
            self._over_limit.setdefault(ticket.rule, deque()).append(ticket)

    def _begin(self, ticket: Ticket[T]) -> None:
        ticket.started = True
        self._running[ticket.rule] = self._running.get(ticket.rule, 0) + 1
        self.started += 1
        self._start(ticket)


class Concurrency(Generic[T]):
    """The gate in an event loop: each started item runs as a task of
    ``run``; the reactor's intake waits on :meth:`room`."""

    def __init__(self, capacity: int, run: Callable[[T], Coroutine[Any, Any, None]]) -> None:
        self.capacity = capacity
        self._run = run
        self._gate: Gate[T] = Gate(self._spawn)
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._cancelled = False
        self.full_waits = 0  # times the intake waited for room
        self.peak_waiting = 0

    def admit(self, item: T, rule: Hashable, lock: str | None, limit: int | None) -> None:
        self._gate.admit(item, rule, lock, limit)
        self.peak_waiting = max(self.peak_waiting, self._gate.waiting)

    async def room(self) -> None:
        """Return when fewer than ``capacity`` reactions wait or run here."""
        if self._gate.size < self.capacity:
            return
        self.full_waits += 1
        log.warning(
            "%d reactions wait for their lock or concurrency limit "
            "(reactor_worker_hwm %d): reading no events until one finishes",
            self._gate.size,
            self.capacity,
        )
        while self._gate.size >= self.capacity:
            self._changed.clear()
            await self._changed.wait()

    async def join(self) -> None:
        """Return when nothing waits or runs here."""
        while self._gate.size:
            self._changed.clear()
            await self._changed.wait()

    def cancel(self) -> None:
        """Cancel what runs; what waits stays unstarted (the saved position
        is below it, so a restart runs it)."""
        self._cancelled = True
        for task in list(self._tasks):
            task.cancel()

    def stats(self) -> dict[str, Any]:
        return {
            "gated_waiting": self._gate.waiting,
            "gated_running": self._gate.running,
            "gated_peak_waiting": self.peak_waiting,
            "gated_full_waits": self.full_waits,
        }

    def _spawn(self, ticket: Ticket[T]) -> None:
        if self._cancelled:
            return
        task = asyncio.create_task(self._run(ticket.item))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, ticket))

    def _done(self, task: asyncio.Task[None], ticket: Ticket[T]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gated reaction failed unexpectedly", exc_info=task.exception())
        self._gate.finished(ticket)
        self._changed.set()
