"""The reactor's missed-returns watch (``reactor_missing_returns: true``):
every event goes through the :class:`~.missing.ReturnTracker`, a timer fires
``saltbus/job/<jid>/missing`` when a job's time is up, and the open jobs are
kept in the journal's SQLite (:mod:`.missing_store`).

Off by default: every reactor of a bus that has it on fires its own
``missing`` events (two reactors, or one per federated node, would alert
twice), and the one timeout for every job is a guess only the operator can
make (Salt's CLI waits ``timeout``, 5 s, and then asks the minions whether
they still run the job; a reactor cannot ask, so it waits 60 s by default).

Restart: the state is saved with the seq it reflects (at most every
``SAVE_INTERVAL`` while it changes). At start the events between that seq and
the reactor's own position are read from the journal (the job events only),
and catch-up delivers the rest; events already reflected are ignored. Until
the reactor has caught up with the journal's last event at its start, no job
is judged by the clock: a return still in the backlog must not be reported
missing. A report is saved at once, so only a crash in that instant reports
a job twice. Deadlines count from Salt's ``_stamp`` on the master's clock:
a reactor on another host is off by the clocks' difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from saltbus.config import Config
from saltbus.errors import SaltbusError
from saltbus.event import Event
from saltbus.reactor.missing import MISSING_TAG, PREFIX, Dropped, OpenJob, ReturnTracker
from saltbus.reactor.progress import bus_journal

if TYPE_CHECKING:
    from saltbus.reactor import missing_store

log = logging.getLogger("saltbus.reactor")

SAVE_INTERVAL: Final = 0.5
TICK: Final = 1.0  # the longest the timer sleeps (a restored job's deadline may be near)

Publish = Callable[[str, dict[str, Any]], None]


class MissedReturns:
    def __init__(
        self, config: Config, publish: Publish, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.tracker = ReturnTracker(
            config.reactor_missing_returns_timeout, config.reactor_missing_returns_max_jobs, clock
        )
        self._publish = publish
        self._clock = clock
        self._store: missing_store.OpenJobStore | None = None
        self._epoch: int | None = None
        self._live_from: int | None = None  # judge by the clock once this seq is seen
        self._task: asyncio.Task[None] | None = None
        self._last_save = float("-inf")
        self._writing: asyncio.Future[None] | None = None
        self.save_errors = 0

    async def start(self, since: int | None) -> None:
        """Take back the saved state and what the journal has after it up to
        ``since`` (the reactor's position; None: it starts with new events)."""
        journal = bus_journal(self.config)
        if journal.exists():
            try:
                await asyncio.to_thread(self._restore, since)
            except SaltbusError as exc:
                log.warning("missed returns: open jobs are kept in memory only: %s", exc)
                self._close_store()
        else:
            log.info("missed returns: no journal; open jobs are kept in memory only")
        self._task = asyncio.create_task(self._run(), name="reactor-missing-returns")

    def _restore(self, since: int | None) -> None:
        from saltbus.journal import Journal  # noqa: PLC0415 (SQLite only with a journal)
        from saltbus.reactor.missing_store import OpenJobStore  # noqa: PLC0415
        from saltbus.wire import unpack_body  # noqa: PLC0415

        journal = bus_journal(self.config)
        self._store = OpenJobStore(journal, self.config.reactor_name)
        epoch, seq, jobs = self._store.load()
        with Journal.open(journal, readonly=True) as store:
            self._epoch = store.epoch()
            last = store.last_seq()
            if seq is not None and epoch not in (None, self._epoch):
                log.warning(
                    "missed returns: the journal numbers its events anew; open jobs dropped"
                )
                self._store.clear()
                seq, jobs = None, []
            self.tracker.restore(jobs, seq)
            until = last if since is None else since
            if seq is not None and seq < until:
                for record in store.iter_read(since=seq, until=until, tag=PREFIX):
                    tag, data = unpack_body(record.body)
                    self._dropped(self.tracker.observe(tag, data, record.seq))
                self.tracker.seq = until
        if since is not None and since < last:
            self._live_from = last
        if jobs:
            log.info("missed returns: %d open jobs taken back", len(self.tracker))

    def observe(self, event: Event) -> None:
        self._dropped(self.tracker.observe(event.tag, event.data, event.seq))
        if self._live_from is not None and event.seq is not None and event.seq >= self._live_from:
            self._live_from = None

    def stats(self) -> dict[str, Any]:
        t = self.tracker
        return {
            "missing_returns_open_jobs": len(t),
            "missing_returns_reported": t.reported,
            "missing_returns_completed": t.completed,
            "missing_returns_dropped": t.dropped,
            "missing_returns_save_errors": self.save_errors,
        }

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writing is not None:
            await asyncio.wait([self._writing])
        if self._store is not None:
            await self._save()
            self._close_store()

    # -- the timer -------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            wait = TICK
            deadline = self.tracker.next_deadline()
            if deadline is not None and self._live_from is None:
                wait = min(TICK, max(0.0, deadline - self._clock()))
            await asyncio.sleep(wait)
            try:
                reported = self.tracker.expire() if self._live_from is None else []
                for job in reported:
                    self._report(job)
                # Saved at once after a report: a crash then would report it again.
                if self._store is not None and (
                    reported or self._clock() - self._last_save >= SAVE_INTERVAL
                ):
                    await self._save()
            except Exception:  # a bug here must not end the watch unseen
                log.exception("missed returns: the timer failed; going on")

    def _report(self, job: OpenJob) -> None:
        data = job.report(self.tracker.timeout)
        log.warning(
            "job %s (%s on %r): no return from %s after %g s",
            job.jid,
            job.fun,
            job.tgt,
            ", ".join(data["missing"]),
            self.tracker.timeout,
        )
        self._publish(MISSING_TAG.format(jid=job.jid), data)

    def _dropped(self, dropped: list[Dropped]) -> None:
        for job in dropped:
            log.warning(
                "missed returns: job %s forgotten (%d minions not returned): more than "
                "reactor_missing_returns_max_jobs (%d) jobs are open; %d dropped so far",
                job.jid,
                job.waiting,
                self.tracker.max_jobs,
                self.tracker.dropped,
            )

    # -- saving ------------------------------------------------------------------

    async def _save(self) -> None:
        """Write what changed, one write at a time. The write runs on even if
        the timer is cancelled meanwhile (close() waits for it): the store's
        connection is never used by two threads, or closed under one."""
        store, seq = self._store, self.tracker.seq
        if store is None or seq is None or not self.tracker.dirty:
            return
        if self._writing is not None and not self._writing.done():
            return  # the next tick writes what is left
        changed, closed = self.tracker.take_changes()
        # Made here, in the loop's thread: the jobs change while the thread writes.
        rows = [job.to_dict() for job in changed]
        jids = [job.jid for job in changed]
        self._last_save = self._clock()
        write = asyncio.ensure_future(asyncio.to_thread(store.save, rows, closed, self._epoch, seq))
        write.add_done_callback(lambda done: self._written(done, jids, closed))
        self._writing = write
        await asyncio.wait([write])

    def _written(self, write: asyncio.Future[None], jids: list[str], closed: list[str]) -> None:
        error = "cancelled" if write.cancelled() else write.exception()
        if error is None:
            return
        self.save_errors += 1
        log.warning("missed returns: %s; trying again", error)
        self.tracker.unsaved(jids, closed)

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
