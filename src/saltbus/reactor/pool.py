"""The reactor's worker pool: queued reactions, and running them.

A job is one reaction for one event. The queue holds ``reactor_worker_hwm``
jobs, and a job that finds it full is dropped and reported
(``saltbus/reactor/overflow``, at most once an interval, with counts);
``reactor_worker_threads`` workers take them (blocking work runs on a thread
pool of that size). A reaction with ``lock:`` or ``concurrency:`` waits in
the gate of :mod:`.concurrency` instead, which drops nothing. With ``retry:``
(:mod:`.retry`) a failed run goes back on the queue after its wait without
holding a worker; a gated one waits inside its gate. Every outcome goes to
the :class:`~.outbox.Outbox`; a job that is done with its event goes back to
the reactor through ``release``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Final

from saltbus.config import Config
from saltbus.reactor import reports
from saltbus.reactor.actions import Actions, Outcome, Trigger
from saltbus.reactor.concurrency import Concurrency
from saltbus.reactor.errors import ActionError
from saltbus.reactor.leader import Origin
from saltbus.reactor.outbox import Outbox
from saltbus.reactor.reports import Stats
from saltbus.reactor.retry import Retries
from saltbus.reactor.saltside import SaltLinks
from saltbus.reactor.spec import Reaction

# The engine's logger: one name for everything the reactor logs.
log = logging.getLogger("saltbus.reactor")

OVERFLOW_REPORT_INTERVAL: Final = 1.0


@dataclass(frozen=True, slots=True)
class Job:
    reaction: Reaction
    trigger: Trigger
    origin: Origin | None = None  # with reactor_scope leader: (node, seq there)
    attempt: int = 1  # with retry:
    firing: str | None = None  # a rule's firing, kept until its reactions finish


class WorkerPool:
    """Runs the jobs :meth:`add` is given once :meth:`start` has started its
    workers; ``release`` is told of each job done with its event."""

    def __init__(
        self, config: Config, stats: Stats, outbox: Outbox, release: Callable[[Job], None]
    ) -> None:
        self._hwm = config.reactor_worker_hwm
        self._threads = config.reactor_worker_threads
        self._stats = stats
        self._outbox = outbox
        self._release = release
        self._queue: asyncio.Queue[Job] = asyncio.Queue(config.reactor_worker_hwm)
        self._executor = ThreadPoolExecutor(
            config.reactor_worker_threads, thread_name_prefix="saltbus-reactor"
        )
        self._actions = Actions(outbox.fire_strict, self._executor, SaltLinks(config))
        self._retries: Retries[Job] = Retries(
            lambda job: self._queue.put(replace(job, attempt=job.attempt + 1))
        )
        self._gate = Concurrency(config.reactor_worker_hwm, self._run_gated)
        self._workers: list[asyncio.Task[None]] = []
        self._drops: dict[str, int] = {}
        self._overflow_timer: asyncio.TimerHandle | None = None

    def start(self) -> list[asyncio.Task[None]]:
        """Start the workers; their tasks, for the reactor to watch."""
        self._workers = [
            asyncio.create_task(self._worker(), name=f"reactor-worker-{n}")
            for n in range(self._threads)
        ]
        return list(self._workers)

    def add(self, job: Job) -> bool:
        """Queue it (False: the queue was full, and it was dropped)."""
        reaction = job.reaction
        if reaction.lock is not None or reaction.concurrency is not None:
            rule = (reaction.path, reaction.name)
            self._gate.admit(job, rule, reaction.lock, reaction.concurrency)
            return True
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._overflowed(reaction)
            return False
        return True

    async def room(self) -> None:
        """Wait while the gate is full (gated reactions are never dropped)."""
        await self._gate.room()

    def empty(self) -> bool:
        """No job waits for a worker."""
        return self._queue.empty()

    def stats(self) -> dict[str, Any]:
        """The reactions waiting for a worker, for a retry or in the gate now."""
        return {
            "queue_depth": self._queue.qsize(),
            "retries_waiting": len(self._retries),
        } | self._gate.stats()

    async def drain(self, timeout: float) -> bool:
        """Report the retries still waiting as failed, then let what is queued
        finish; False if it had not after ``timeout`` (the gate's runs are
        cancelled then: see :meth:`kill_commands`)."""
        for job, attempt, error in self._retries.close():
            self._outbox.finished(
                job.reaction, job.trigger, Outcome(False, None, error), 0.0, attempt
            )
            self._release(job)
        try:
            await asyncio.wait_for(asyncio.gather(self._queue.join(), self._gate.join()), timeout)
        except TimeoutError:
            self._gate.cancel()
            return False
        return True

    def kill_commands(self) -> int:
        """Kill the commands still running; how many."""
        return self._actions.commands.kill_all()

    async def stop(self) -> None:
        """Stop the workers and report the last drops."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._overflow_timer is not None:
            self._overflow_timer.cancel()
        self._report_overflow()

    async def close(self) -> None:
        await self._actions.salt.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- a full queue ----------------------------------------------------------

    def _overflowed(self, reaction: Reaction) -> None:
        self._stats.dropped += 1
        self._drops[reaction.name] = self._drops.get(reaction.name, 0) + 1
        if self._overflow_timer is None:
            self._report_overflow()

    def _report_overflow(self) -> None:
        """Report the drops so far now, then at most once an interval."""
        drops, self._drops = self._drops, {}
        self._overflow_timer = None
        if not drops:
            return
        log.error(
            "reactor queue full (reactor_worker_hwm %d): dropped %s",
            self._hwm,
            ", ".join(f"{n} x {name}" for name, n in drops.items()),
        )
        data = reports.overflow_data(drops, self._stats.dropped, self._hwm, self._queue.qsize())
        self._outbox.report(reports.OVERFLOW_TAG, data)
        if self._workers:
            loop = asyncio.get_running_loop()
            self._overflow_timer = loop.call_later(OVERFLOW_REPORT_INTERVAL, self._report_overflow)

    # -- running -------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            keep = False  # a retry, or a run a stop cut short, keeps its event in flight
            try:
                keep = await self._execute(job) is not None
            except asyncio.CancelledError:
                # Cancelled by a stop past its drain time: the saved position
                # stays before its event, so a restart runs it again.
                keep = True
                raise
            finally:
                self._queue.task_done()
                if not keep:
                    self._release(job)

    async def _run_gated(self, job: Job) -> None:
        # A gated reaction's retries wait inside its gate, holding its lock, so
        # the next reaction with the same lock cannot overtake them.
        cancelled = False
        try:
            while (wait := await self._execute(job, in_gate=True)) is not None:
                await asyncio.sleep(wait)
                job = replace(job, attempt=job.attempt + 1)
        except asyncio.CancelledError:
            # Stopped while it waited: left in flight, so the saved position
            # stays before its event and a restart runs it again.
            cancelled = True
            raise
        finally:
            if not cancelled:
                self._release(job)

    async def _execute(self, job: Job, *, in_gate: bool = False) -> float | None:
        """Run it; the seconds until it runs again (retry:), or None. Out of
        a gate the retry is scheduled here; in one, the caller waits."""
        started = time.monotonic()
        try:
            outcome = await self._actions.run(job.reaction, job.trigger)
        except ActionError as exc:
            outcome = Outcome(False, None, str(exc))
        except Exception as exc:
            log.exception("reaction %s failed unexpectedly", job.reaction.name)
            outcome = Outcome(False, None, f"{type(exc).__name__}: {exc}")
        attempt = self._retries.after(job, outcome.success, schedule=not in_gate)
        self._outbox.finished(
            job.reaction, job.trigger, outcome, time.monotonic() - started, attempt
        )
        return None if attempt is None else attempt.retrying_in
