"""The local bus's committed events, read in the daemon's own process.

Inside ``saltbus serve`` the export has no need of a client of its own bus:
no framing, no socket, no msgpack decoding of every body. It reads the
journal by position, as the returners do, and is woken by the server after
each commit (:meth:`JournalFeed.committed` and :meth:`JournalFeed.indexed`,
registered by ``Bridge.attach``); a poll now and then covers a wake-up missed.
The journal is also the backlog after an outage, so the live path and the
catch-up are one path, and the records come in seq order with nothing
dropped in between (a seq that never committed is simply absent).

The records a commit reports are also kept in memory (a bounded window of
the latest), and a read that starts right where they do is answered from
there: while the export keeps up, it never reads back from SQLite what the
intake had in hand (that read, and a record object per row, cost an
exporting node about an eighth of its CPU in a burst; an importing node
reads back every import). Memory answers only an unbroken run of seqs that
starts right after the position; anything else (a gap, the window passed
by, a record reported by no commit) goes to the journal, so a missed report
costs a read, never an event.

A commit is reported once it is journaled and delivered, in the journal's
tail as a rule, before SQLite indexes it (on a busy machine the index
thread ran tens of milliseconds behind, and the export waited for it).
What the tail took survives a kill -9 as SQLite's commits do (the next
start indexes the tail first), and a listener has the events already, so
exporting them then promises nothing more than their delivery did. SQLite
itself is read only up to what the index was reported to show
(:meth:`JournalFeed.indexed`).

Reads of the journal run on one thread of their own, so they never block the
bus's event loop and never overlap on the journal's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Journal

T = TypeVar("T")

# In case a commit's report is missed (or nobody registered the feed).
POLL_INTERVAL: Final = 1.0
# The window of committed records kept for reads: past either bound the
# oldest go, and a read behind them is a read of the journal.
KEPT_RECORDS: Final = 16_384
KEPT_BYTES: Final = 16 * 1024 * 1024


class JournalFeed:
    """Committed records of the journal at ``path``, after a position, as they commit."""

    def __init__(
        self,
        path: Path,
        poll_interval: float = POLL_INTERVAL,
        kept_records: int = KEPT_RECORDS,
        kept_bytes: int = KEPT_BYTES,
    ) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.latest = 0  # the last seq SQLite was reported to show
        self.kept_records = kept_records
        self.kept_bytes = kept_bytes
        self._kept: deque[JournalRecord] = deque()
        self._kept_size = 0
        self.from_memory = 0  # records a read took from the kept window
        self.from_journal = 0  # records a read took from SQLite
        self._looked_at = -math.inf  # when the journal was last read
        self._journal: Journal | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="saltbus-export-read")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None

    def indexed(self, last_seq: int) -> None:
        """SQLite shows the events up to ``last_seq``. Cheap; any thread."""
        self.latest = max(self.latest, last_seq)
        self._wake_reader()

    def _wake_reader(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # nobody waits yet: the first read looks anyway
        if threading.get_ident() == self._loop_thread:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def committed(self, records: Sequence[JournalRecord]) -> None:
        """A commit's ``records`` (in seq order, journaled, perhaps not yet in
        SQLite): keep them for the next read, and wake it. On the event
        loop's thread; from another, they are left to the journal."""
        if not records or self._loop_thread not in (None, threading.get_ident()):
            return
        self._kept.extend(records)
        self._kept_size += sum(len(record.body) for record in records)
        while self._kept and (
            len(self._kept) > self.kept_records or self._kept_size > self.kept_bytes
        ):
            self._drop_oldest()
        self._wake_reader()

    @property
    def kept(self) -> int:
        """How many committed records are kept for reads."""
        return len(self._kept)

    async def epoch(self) -> int | None:
        """The journal's numbering of its seqs."""
        return await self._run(lambda journal: journal.epoch())

    async def read(self, since: int, limit: int) -> list[JournalRecord]:
        """Up to ``limit`` records after ``since``; waits until there is one.

        The journal is read when SQLite was reported to show a seq past
        ``since`` that memory cannot answer, or when it was not read for a
        poll interval (the first read, a commit nobody reported); otherwise
        the read waits for the next report. SQLite shows a commit a moment
        before the loop is told of it: a read then would take from SQLite
        what memory is about to hold."""
        wake = self._waker()
        while True:
            wake.clear()  # a commit during the read below sets it again
            look = time.monotonic() - self._looked_at >= self.poll_interval
            records = await self._read(since, limit, look)
            if records:
                return records
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.poll_interval)

    async def read_announced(self, since: int, limit: int) -> list[JournalRecord]:
        """Up to ``limit`` records after ``since`` without waiting: those
        memory holds, or SQLite if it was reported to show one after ``since``."""
        return await self._read(since, limit)

    async def _read(self, since: int, limit: int, look: bool = False) -> list[JournalRecord]:
        """From memory if it can; else from the journal if ``look`` or SQLite
        was reported to show a seq past ``since``; else nothing."""
        kept = self._remembered(since, limit)
        if kept:
            self.from_memory += len(kept)
            return kept
        if not look and self.latest <= since:
            return []
        self._looked_at = time.monotonic()
        records = await self._run(lambda journal: journal.read(since=since, limit=limit))
        self.from_journal += len(records)
        return records

    def _remembered(self, since: int, limit: int) -> list[JournalRecord]:
        """The kept records after ``since`` if they start right after it, up
        to the first gap in their seqs (the journal may hold what a gap lacks)."""
        kept = self._kept
        while kept and kept[0].seq <= since:  # read already: the export moves forward
            self._drop_oldest()
        if not kept or kept[0].seq != since + 1:
            return []
        run: list[JournalRecord] = []
        expected = since + 1
        for record in kept:
            if record.seq != expected or len(run) >= limit:
                break
            run.append(record)
            expected += 1
        return run

    def _drop_oldest(self) -> None:
        self._kept_size -= len(self._kept.popleft().body)

    def _waker(self) -> asyncio.Event:
        if self._wake is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._wake = asyncio.Event()
        return self._wake

    async def _run(self, action: Callable[[Journal], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_thread, action)

    def _on_thread(self, action: Callable[[Journal], T]) -> T:
        if self._journal is None:
            self._journal = Journal.open(self.path, readonly=True)
        return action(self._journal)

    async def close(self) -> None:
        """Close the journal on the reading thread (after any read still on it)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_journal)
        finally:
            self._executor.shutdown(wait=False)

    def _close_journal(self) -> None:
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()
