"""The default journal (durability ``"batch"``): the tail file first, SQLite behind it.

:meth:`TailedWriter.commit_inline` appends a batch to the tail
(:mod:`saltbus.journal.tail`, one copy into a mapped file) and returns: the publisher
delivers it at once, and the batch is queued to the
:class:`~saltbus.journal.writer.JournalWriter`, whose thread inserts it into
SQLite behind, grouped. SQLite stays what every reader reads (history,
replay, returners, export, recover, retention), so what waits for SQLite
asks :meth:`TailedWriter.when_indexed`: acknowledgements of acked fires, the
returners' wake-up, and a replay (which reads up to what was delivered).

Under load, or while the index is far behind (more than
:data:`MAX_UNINDEXED_RECORDS` or :data:`MAX_UNINDEXED_BYTES`), ``commit_inline``
declines and the publisher :meth:`submit`s batches: they go to SQLite first
and are delivered once committed, as without the tail; the writer thread
groups them, and the publisher's in-flight bound slows the firing side.

When SQLite fails behind the tail (disk full, I/O error), the records the
tail took are kept to be inserted again (they were delivered: they must not
be lost), and the failure is reported to the next commit, so the publisher
holds new events and probes (see :mod:`saltbus.server.intake`). A probe
inserts the kept records and the probe's own in one transaction; while any
batch of ours is still queued, a probe goes behind it as a plain batch. The
writer also tries the kept records again by itself once a second
(:data:`RETRY_INTERVAL`), so that they reach SQLite when no event comes to
probe. A tail that cannot be written fails like SQLite (nothing of the batch
is left in it). At start-up, records in the tail that SQLite
lacks (the publisher was killed before they were indexed) are inserted before
anything is served.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from saltbus.errors import JournalError, JournalWriteError
from saltbus.journal.failures import as_journal_error
from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Journal
from saltbus.journal.tail import TailLog, tail_path
from saltbus.journal.writer import (
    DEFAULT_LINGER,
    START_TIMEOUT,
    CommittedCallback,
    FailedCallback,
    JournalWriter,
)

log = logging.getLogger(__name__)

# Past this, the tail is emptied as soon as SQLite holds all of it.
RESET_BYTES: Final = 256 * 1024
# How far the index may fall behind the tail before commits go to SQLite first.
MAX_UNINDEXED_RECORDS: Final = 20_000
MAX_UNINDEXED_BYTES: Final = 4 * 1024 * 1024
# While SQLite fails behind the tail, how often the records it lacks are tried again.
RETRY_INTERVAL: Final = 1.0

IndexedCallback = Callable[[], None]


class TailedWriter:
    """A :class:`~saltbus.server.commits.JournalSink` for the journal at ``path``:
    the tail in front, a :class:`JournalWriter` behind. ``start()``, then
    ``commit_inline()``/``submit()`` from one thread (the event loop's);
    ``close()`` indexes what is queued and empties the tail."""

    def __init__(
        self,
        path: Path,
        *,
        max_age: float | None = None,
        max_bytes: int | None = None,
        holds: Callable[[], Mapping[str, int]] | None = None,
        reset_bytes: int = RESET_BYTES,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        self.path = path
        self.writer = JournalWriter(
            path,
            durability="batch",
            max_age=max_age,
            max_bytes=max_bytes,
            holds=holds,
            linger=linger,
            background=True,  # nothing but acked fires waits for the index
        )
        self._reset_bytes = reset_bytes
        # Guards everything below: the event loop appends, the writer thread
        # reports what SQLite committed.
        self._lock = threading.Lock()
        self._tail: TailLog | None = None
        self._last_seq = 0  # the last seq durable (in the tail or in SQLite)
        self._indexed = 0  # the last seq in SQLite
        self._unindexed = 0  # records in the tail not yet in SQLite
        self._unindexed_bytes = 0
        self._queued = 0  # our batches in the writer's queue (or about to be)
        # Appended to the tail (commit_inline with defer_index), not yet handed
        # to the writer: handed over by the next call (when_indexed, as a rule,
        # once the batch is delivered),
        # so that waking the writer's thread, which then competes for the GIL,
        # comes after the subscribers' writes, not between append and delivery.
        self._unhanded: list[Sequence[JournalRecord]] = []
        self._direct = 0  # of which submitted to SQLite first (not in the tail)
        self._failure: JournalWriteError | None = None
        self._retry: list[JournalRecord] = []  # in the tail, failed in SQLite
        # Tries them again when no probe of the publisher's does (it probes
        # only once a commit told it of the failure, and may have no events).
        self._retry_timer: threading.Timer | None = None
        self._closing = False
        self._waiters: list[tuple[int, int, IndexedCallback]] = []
        self._order = itertools.count()
        self.recovered = 0  # records indexed from the tail at start-up

    @property
    def commit_observer(self) -> Callable[[float], None] | None:
        return self.writer.commit_observer

    @commit_observer.setter
    def commit_observer(self, observer: Callable[[float], None] | None) -> None:
        self.writer.commit_observer = observer

    @property
    def last_seq(self) -> int:
        """The last seq journaled: in the tail or in SQLite."""
        return self._last_seq

    @property
    def indexed_seq(self) -> int:
        """The last seq SQLite holds."""
        return self._indexed

    # -- lifetime -------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> int:
        """Index what the tail holds beyond SQLite, start the writer, and
        return the last seq. Raises JournalError (one line) when either file
        cannot be used."""
        with Journal.open(self.path) as journal:  # made first, with its directories
            tail, records = TailLog.open(tail_path(self.path))
            try:
                self.recovered = self._catch_up(journal, records)
            except BaseException:
                tail.close()
                raise
        try:
            tail.reset()
            last = self.writer.start(timeout)
        except BaseException:
            tail.close()
            raise
        with self._lock:
            self._tail = tail
            self._last_seq = self._indexed = last
        return last

    def _catch_up(self, journal: Journal, records: list[JournalRecord]) -> int:
        last = journal.last_seq()
        missing = [record for record in records if record.seq > last]
        if not missing:
            return 0
        journal.append(missing)
        log.warning(
            "journal %s: indexed %d events (seqs %d to %d) from its tail, "
            "written before the publisher stopped",
            self.path,
            len(missing),
            missing[0].seq,
            missing[-1].seq,
        )
        return len(missing)

    def retain_now(self) -> None:
        self.writer.retain_now()

    def close(self, timeout: float | None = None) -> None:
        """Index everything queued, stop the writer, and empty the tail if
        SQLite holds all of it (else the next start indexes the rest)."""
        with self._lock:
            self._hand_over()
            self._closing = True
            timer, self._retry_timer = self._retry_timer, None
        if timer is not None:
            timer.cancel()
        self.writer.close(timeout)
        with self._lock:
            tail, self._tail = self._tail, None
            complete = not self._retry and self._indexed >= self._last_seq
        if tail is None:
            return
        try:
            if complete:
                tail.reset()
        except OSError as exc:
            log.error("journal tail %s: cannot empty it: %s", tail.path, exc)
        finally:
            tail.close()

    def __enter__(self) -> TailedWriter:
        if self._tail is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- committing -------------------------------------------------------------

    def commit_inline(self, records: Sequence[JournalRecord], *, defer_index: bool = False) -> bool:
        """Append ``records`` to the tail and queue them for SQLite. True when
        appended (they may be delivered now); False when they are to be
        :meth:`submit`\\ ted (the index is far behind, or SQLite-first batches
        are queued). Raises JournalWriteError while the journal fails, and
        JournalError for a batch that cannot be stored. With ``defer_index``
        they are handed to SQLite's thread by the next call instead (the
        publisher's :meth:`when_indexed`, once it has delivered them)."""
        if not records:
            return True
        with self._lock:
            self._hand_over()
            if self._failure is not None:
                raise self._failure
            tail = self._tail
            if (
                tail is None
                or self._direct
                or self._unindexed >= MAX_UNINDEXED_RECORDS
                or self._unindexed_bytes >= MAX_UNINDEXED_BYTES
            ):
                return False
            if records[0].seq <= self._last_seq:
                raise JournalError(
                    f"seq {records[0].seq} is not after the journal's last seq {self._last_seq}"
                )
            self._reset_if_indexed(tail)
            try:
                tail.append(records)
            except OSError as exc:
                error = as_journal_error(exc)
                assert isinstance(error, JournalWriteError)  # an OSError is the file's
                self._failure = error
                raise error from exc
            self._last_seq = records[-1].seq
            self._unindexed += len(records)
            self._unindexed_bytes += _body_bytes(records)
            self._queued += 1
            self._unhanded.append(records)
            if not defer_index:
                self._hand_over()
        return True

    def _hand_over(self) -> None:
        """(Under the lock.) Queue what the tail took for SQLite, in order."""
        if self._unhanded:
            batches, self._unhanded = self._unhanded, []
            for records in batches:
                # Lazy: durable in the tail already, they wait a moment for
                # company, and SQLite indexes a group per transaction.
                self.writer.submit(
                    records, self._indexed_tail, on_failed=self._tail_index_failed, lazy=True
                )

    def submit(
        self,
        records: Sequence[JournalRecord],
        on_committed: CommittedCallback,
        *,
        on_failed: FailedCallback,
        probe: bool = False,
    ) -> None:
        """Commit ``records`` to SQLite first (not through the tail): at once on
        this thread when the writer is idle, else on its thread. Exactly one
        callback runs, on whichever thread committed (or at once, when the
        journal is failing and this is no probe it can try now)."""
        ready: list[IndexedCallback] = []
        with self._lock:
            self._hand_over()
            failure = self._failure
            error: JournalError | None = None
            if self._queued:
                # Behind what is queued, so that callbacks keep their order.
                # A probe may go as one only if no retried records must come
                # first: otherwise it fails untried, or commits after a probe
                # ahead of it has taken them.
                probe = probe and not self._retry
                self._submit_direct(records, 0, on_committed, on_failed, probe)
                return
            if failure is not None and not probe:
                error = failure
            elif failure is None and self._tail is not None:
                try:
                    committed = self.writer.commit_inline(records)
                except JournalError as exc:
                    error = exc
                    if isinstance(exc, JournalWriteError):
                        self._failure = exc
                else:
                    if not committed:  # busy after all (retention): its thread commits
                        self._submit_direct(records, 0, on_committed, on_failed, probe)
                        return
                    self._last_seq = max(self._last_seq, records[-1].seq)
                    ready = self._advance(records[-1].seq)
            else:
                self._submit_direct(records, len(self._retry), on_committed, on_failed, probe)
                return
        self._wake(ready)
        if error is None:
            on_committed(records)
        else:
            on_failed(records, error)

    def _submit_direct(
        self,
        records: Sequence[JournalRecord],
        kept: int,
        on_committed: CommittedCallback,
        on_failed: FailedCallback,
        probe: bool,
    ) -> None:
        """Queue ``records`` behind the first ``kept`` of the retried ones
        (under the lock)."""
        batch = [*self._retry[:kept], *records]
        self._queued += 1
        self._direct += 1

        # The callbacks run under the lock: one submitted next on the event
        # loop, seeing nothing queued, must not be called back before them.
        def committed(_: Sequence[JournalRecord]) -> None:
            with self._lock:
                ready = self._indexed_direct(batch, kept)
                on_committed(records)
            self._wake(ready)

        def failed(_: Sequence[JournalRecord], error: JournalError) -> None:
            with self._lock:
                self._direct_failed(error)
                on_failed(records, error)

        self.writer.submit(batch, committed, on_failed=failed, probe=probe)

    def when_indexed(self, seq: int, callback: IndexedCallback) -> bool:
        """True when SQLite holds ``seq`` already; else False, and ``callback``
        runs (on the writer thread) once it does."""
        with self._lock:
            self._hand_over()
            if seq <= self._indexed:
                return True
            heapq.heappush(self._waiters, (seq, next(self._order), callback))
            return False

    # -- the writer thread's reports ------------------------------------------------

    def _indexed_tail(self, records: Sequence[JournalRecord]) -> None:
        with self._lock:
            self._queued -= 1
            self._unindexed -= len(records)
            self._unindexed_bytes -= _body_bytes(records)
            ready = self._advance(records[-1].seq)
        self._wake(ready)

    def _tail_index_failed(self, records: Sequence[JournalRecord], error: JournalError) -> None:
        # Delivered already: kept until a probe inserts them.
        with self._lock:
            self._queued -= 1
            self._retry.extend(records)
            first = self._failure is None
            self._failure = _sticky(error)
            self._arm_retry()
        if first:
            log.error(
                "journal %s: events %d to %d are in its tail but SQLite did not take them "
                "(%s); holding new events until it does",
                self.path,
                records[0].seq,
                records[-1].seq,
                error,
            )

    def _indexed_direct(self, batch: Sequence[JournalRecord], kept: int) -> list[IndexedCallback]:
        """(Under the lock.) The callbacks now due."""
        self._queued -= 1
        self._direct -= 1
        if kept:
            self._unindexed -= kept
            self._unindexed_bytes -= sum(len(record.body) for record in batch[:kept])
            del self._retry[:kept]
        self._failure = None
        self._last_seq = max(self._last_seq, batch[-1].seq)
        return self._advance(batch[-1].seq)

    def _direct_failed(self, error: JournalError) -> None:
        """(Under the lock.)"""
        self._queued -= 1
        self._direct -= 1
        if isinstance(error, JournalWriteError) or self._retry:
            self._failure = _sticky(error)
        if self._retry:
            self._arm_retry()

    def _arm_retry(self) -> None:
        """(Under the lock.) Try the kept records again in a while."""
        if self._retry_timer is None and not self._closing:
            timer = threading.Timer(RETRY_INTERVAL, self._retry_now)
            timer.daemon = True
            self._retry_timer = timer
            timer.start()

    def _retry_now(self) -> None:
        with self._lock:
            self._hand_over()
            self._retry_timer = None
            if self._closing or not self._retry:
                return
            if self._queued:  # a batch ahead says how SQLite is doing first
                self._arm_retry()
                return
            self._submit_direct([], len(self._retry), _ignore, _ignore, probe=True)

    def _advance(self, seq: int) -> list[IndexedCallback]:
        """SQLite holds up to ``seq``: the callbacks now due (under the lock)."""
        self._indexed = max(self._indexed, seq)
        ready = []
        while self._waiters and self._waiters[0][0] <= self._indexed:
            ready.append(heapq.heappop(self._waiters)[2])
        if self._tail is not None:
            self._reset_if_indexed(self._tail)
        return ready

    def _reset_if_indexed(self, tail: TailLog) -> None:
        if tail.size >= self._reset_bytes and self._indexed >= tail.last_seq and not self._retry:
            try:
                tail.reset()
            except OSError as exc:
                log.error("journal tail %s: cannot empty it: %s", tail.path, exc)

    def _wake(self, ready: list[IndexedCallback]) -> None:
        for callback in ready:
            try:
                callback()
            except Exception:
                log.exception("journal index callback failed")


def _body_bytes(records: Sequence[JournalRecord]) -> int:
    if len(records) == 1:
        return len(records[0].body)
    return sum(len(record.body) for record in records)


def _ignore(*_: object) -> None:
    """The callback of a retry of our own: its records were delivered already."""


def _sticky(error: JournalError) -> JournalWriteError:
    """The failure to report to later commits. A batch SQLite refuses although
    the tail took it (which the tail's checks should make impossible) is held
    like a failing file: it was delivered, so it is retried, never dropped."""
    if isinstance(error, JournalWriteError):
        return error
    sticky = JournalWriteError("the journal refused a batch", str(error))
    sticky.__cause__ = error
    return sticky
