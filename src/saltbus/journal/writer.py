"""Group commit on a dedicated thread, so that the publisher's event loop never
waits for the disk.

The publisher numbers events, :meth:`JournalWriter.submit`s them in batches,
and fans a batch out only when its ``on_committed`` callback has run. The
writer thread takes *everything* queued while its previous commit ran and
appends it in one transaction: under load the groups grow by themselves and
the per-transaction cost (an fsync under ``"fsync"``) is shared by all their
events; when idle, a lone batch is committed at once, with no timer to wait for.

Callbacks run on the writer thread, in submission order, after the commit
returned: an asyncio caller wraps them with ``loop.call_soon_threadsafe``.

Error path: each batch ends in exactly one of its two callbacks. When a group
fails to commit, its batches are retried one transaction each, so that one
bad batch (a seq not above the journal's last, a tag SQLite cannot store)
fails alone: it gets ``on_failed(records, error)`` and is not in the journal;
the batches around it are committed as usual, and the writer goes on with
later batches. The journal's last seq does not move for a failed batch, so
the publisher may resubmit the same records, or give up on them (not fan them
out, answer an acked fire with an error). A callback that raises is logged
and does not stop the writer.

When the writer is idle (nothing queued, no commit running) and durability is
``"batch"``, :meth:`JournalWriter.commit_inline` commits a batch on the caller's
thread at once: at low rates an event then costs no hand-off to the writer
thread and back, which was most of the journal's latency. SQLite's automatic
checkpoints, which copy the WAL into the database inside some commit (a spike
of milliseconds), run instead on a checkpointer thread with its own
connection, PASSIVE, once a second while there are commits.

When the journal itself cannot commit (the disk is full, read-only or failing:
:class:`JournalWriteError`), a later batch must not be committed either, or
the journal would hold seqs with a hole below them that a resuming reader
could never be told of. So the failure sticks: every batch after it fails
with the same error, untried, until a batch submitted with ``probe=True``
commits. The publisher renumbers what failed after the journal's last seq and
resubmits it as the probe, so numbering goes on without a gap.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from saltbus.errors import JournalError, JournalWriteError
from saltbus.journal.background import lower_this_thread
from saltbus.journal.checkpoint import Checkpointer
from saltbus.journal.failures import as_journal_error
from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Durability, Journal

log = logging.getLogger(__name__)

CommittedCallback = Callable[[Sequence[JournalRecord]], None]
FailedCallback = Callable[[Sequence[JournalRecord], JournalError], None]
# Per consumer that must not miss events, the last seq it has taken (see
# Journal.enforce_retention's ``hold``). Called on the writer thread.
HoldsCallback = Callable[[], Mapping[str, int]]

# A bound on one transaction, so that a large backlog (after a stall of the
# disk) is committed, and its callbacks run, in steps rather than all at the end.
DEFAULT_MAX_GROUP_RECORDS: Final = 65_536
# Retention deletes at most this many events per transaction, serving queued
# batches in between, so that a large first clean-up never stalls appends.
RETENTION_STEP_ROWS: Final = 20_000
# The size limit deleting events a consumer has not taken is logged at most this often.
LOSS_WARNING_INTERVAL: Final = 60.0
START_TIMEOUT: Final = 30.0
# How long a lazy batch (one durable elsewhere: the tail's) waits for others to
# share its transaction. At a low rate each event was a transaction of its own,
# and a wake-up of this thread competing for the GIL with the publisher's
# writes: grouped, both are paid once per group.
DEFAULT_LINGER: Final = 0.01


# Not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, and one of these is made per event at a low rate.
@dataclass(slots=True)
class _Batch:
    records: Sequence[JournalRecord]
    on_committed: CommittedCallback
    on_failed: FailedCallback
    probe: bool = False
    lazy: bool = False


# What close() puts on the queue: everything before it is committed first.
_CLOSE: Final = None


class _Wake:
    """What retain_now() puts on the queue: the thread wakes and applies retention."""


_WAKE: Final = _Wake()
_Item = _Batch | _Wake | None


class JournalWriter:
    """Appends submitted batches to the journal at ``path`` from its own thread.

    ``start()`` opens the journal and returns its last seq; ``submit()``
    queues a batch; ``close()`` commits everything queued and stops. Also a
    context manager (entering starts it unless already started).
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: Durability,
        max_age: float | None = None,
        max_bytes: int | None = None,
        retention_interval: float = 60.0,
        max_group_records: int = DEFAULT_MAX_GROUP_RECORDS,
        holds: HoldsCallback | None = None,
        linger: float = DEFAULT_LINGER,
        background: bool = False,
    ) -> None:
        """``background``: the thread (and the checkpointer's) runs at a lower
        CPU priority, for a journal nothing but acked fires waits for (the
        tail's index: see background.py)."""
        if not retention_interval > 0:
            raise JournalError(f"retention_interval must be positive, not {retention_interval}")
        if max_group_records < 1:
            raise JournalError(f"max_group_records must be at least 1, not {max_group_records}")
        self.path = path
        self._durability: Durability = durability
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._retention_interval = retention_interval
        self._max_group = max_group_records
        self._holds = holds
        self._background = background
        self._loss_warned_at = -math.inf
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._linger = linger
        # Set by whatever must not wait for a lazy batch's company: a batch
        # that is not lazy, retention's wake-up, close.
        self._urgent = threading.Event()
        self._retention_due = threading.Event()
        # Guards the state against submit() racing close(): nothing can be
        # queued after the close marker, so nothing is left without a callback.
        self._lock = threading.Lock()
        self._state = "new"  # new -> running -> closed
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._last_seq = 0
        # The error the journal failed with, until a probe batch commits.
        self._failure: JournalWriteError | None = None
        # Held while a commit or retention runs, on whichever thread: an
        # inline commit takes it without waiting, or leaves the batch to the thread.
        self._busy = threading.Lock()
        self._journal: Journal | None = None
        self._checkpointer: Checkpointer | None = None
        self._transactions = 0
        self._records_committed = 0
        # Told how many seconds each successful append took (the metrics'
        # histogram); set before start(). Runs on whichever thread committed.
        self.commit_observer: Callable[[float], None] | None = None

    # -- what callers may read (written only by the writer thread) ----------

    @property
    def last_seq(self) -> int:
        """The last seq committed (after start(): the journal's last seq)."""
        return self._last_seq

    @property
    def transactions(self) -> int:
        """How many append transactions have committed: fewer than the batches
        submitted whenever group commit has grouped them."""
        return self._transactions

    @property
    def records_committed(self) -> int:
        return self._records_committed

    # -- lifetime -------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> int:
        """Open the journal on the writer thread and return its last seq, so
        that the publisher numbers new events after it. Raises JournalError
        when the journal cannot be opened (within ``timeout`` seconds)."""
        with self._lock:
            if self._state != "new":
                raise JournalError(f"journal writer for {self.path} was already started")
            self._state = "running"
            self._thread = threading.Thread(
                target=self._run, name=f"saltbus-journal:{self.path.name}", daemon=True
            )
            self._thread.start()
        if not self._opened.wait(timeout):
            # The thread may still open the journal later; the close marker
            # makes it close it again and exit.
            with self._lock:
                self._queue.put(_CLOSE)
                self._state = "closed"
            raise JournalError(f"journal {self.path} did not open within {timeout} s")
        if self._open_error is not None:
            with self._lock:
                self._state = "closed"
            error = JournalError(f"cannot start the journal writer: {self._open_error}")
            self._fail_queued(error)  # batches another thread raced in
            raise error from self._open_error
        return self._last_seq

    def submit(
        self,
        records: Sequence[JournalRecord],
        on_committed: CommittedCallback,
        *,
        on_failed: FailedCallback,
        probe: bool = False,
        lazy: bool = False,
    ) -> None:
        """Queue ``records`` (seqs strictly increasing, above every seq
        submitted before) to be committed. Exactly one callback will be called
        for them, from the writer thread, in submission order among all
        batches: ``on_committed(records)`` once they are committed, or
        ``on_failed(records, error)`` if they could not be. Never blocks on
        the disk. Raises JournalError if the writer is not running.

        A ``lazy`` batch that finds the writer idle waits up to the writer's
        ``linger`` for more batches to commit with (until one that is not
        lazy comes): for records kept durable elsewhere meanwhile.

        After a :class:`JournalWriteError`, batches fail untried until one
        with ``probe`` commits (see the module's docstring)."""
        batch = _Batch(records, on_committed, on_failed, probe, lazy)
        with self._lock:
            if self._state != "running":
                raise JournalError(f"journal writer for {self.path} is {self._state}, not running")
            self._queue.put(batch)
        if not lazy:
            self._urgent.set()

    def commit_inline(self, records: Sequence[JournalRecord], *, defer_index: bool = False) -> bool:
        """Commit ``records`` on the calling thread, now, if the writer is idle
        (nothing queued or committing, no failure) and durability is
        ``"batch"``. True when committed; False when the caller is to
        :meth:`submit` them instead. (``defer_index`` changes nothing here:
        SQLite is the index.) Raises JournalError (JournalWriteError
        when the file failed, which sticks as for a batch) when the commit fails.

        The caller must not have batches submitted and not yet called back:
        those would commit after these, out of order."""
        journal = self._journal
        if journal is None or self._durability != "batch" or self._state != "running":
            return False
        if not self._busy.acquire(blocking=False):
            return False
        try:
            if self._failure is not None or not self._queue.empty():
                return False
            started = time.perf_counter()
            try:
                journal.append(records)
            except Exception as exc:
                error = as_journal_error(exc)
                if isinstance(error, JournalWriteError):
                    self._failure = error
                raise error from exc
            self._committed(len(records), records, time.perf_counter() - started)
            return True
        finally:
            self._busy.release()

    def when_indexed(self, seq: int, callback: Callable[[], None]) -> bool:
        """True: what this writer reports committed is in SQLite already
        (``callback`` is not kept). The same question asked of
        :class:`~saltbus.journal.tailed.TailedWriter` may answer later."""
        return True

    def retain_now(self) -> None:
        """Apply retention as soon as what is queued now is committed, rather
        than at the next interval (the consumers holding it have changed)."""
        with self._lock:
            if self._state == "running":
                self._retention_due.set()
                self._queue.put(_WAKE)
        self._urgent.set()

    def close(self, timeout: float | None = None) -> None:
        """Commit everything submitted so far, run its callbacks, close the
        journal and join the thread. Idempotent. Raises JournalError if the
        thread has not finished within ``timeout`` seconds (None: wait)."""
        with self._lock:
            if self._state == "running":
                self._queue.put(_CLOSE)
            self._state = "closed"
        self._urgent.set()
        if self._thread is None or self._thread is threading.current_thread():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise JournalError(f"journal writer for {self.path} did not stop within {timeout} s")
        if self._checkpointer is not None:
            self._checkpointer.close()

    def __enter__(self) -> JournalWriter:
        if self._state == "new":
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the writer thread ----------------------------------------------------

    def _run(self) -> None:
        if self._background:
            lower_this_thread()
        try:
            journal = Journal.open(
                self.path,
                durability=self._durability,
                max_age=self._max_age,
                max_bytes=self._max_bytes,
            )
            self._last_seq = journal.last_seq()
            if self._durability == "batch":
                journal.checkpoint_in_background()
                self._checkpointer = Checkpointer(self.path, background=self._background)
        except BaseException as exc:  # reported to start(), which raises it
            self._open_error = exc
            self._opened.set()
            return
        self._journal = journal
        self._opened.set()
        try:
            self._serve(journal)
        except BaseException as exc:
            # A bug here must not leave submitters waiting for ever: refuse new
            # batches and fail those already queued.
            log.exception("journal writer for %s stopped", self.path)
            with self._lock:
                self._state = "closed"
            self._fail_queued(JournalError(f"journal writer stopped: {exc!r}"))
        finally:
            with self._busy:
                self._journal = None
            journal.close()

    def _serve(self, journal: Journal) -> None:
        retains = journal.max_age is not None or journal.max_bytes is not None
        next_retention = time.monotonic() if retains else math.inf
        closing = False
        while not closing:
            due = self._retention_due.is_set()
            if retains and (due or next_retention <= time.monotonic()):
                self._retention_due.clear()
                with self._busy:
                    next_retention = self._retention_step(journal)
            wait = None if next_retention == math.inf else next_retention - time.monotonic()
            try:
                first = self._queue.get(timeout=None if wait is None else max(wait, 0.0))
            except queue.Empty:
                continue
            if isinstance(first, _Batch) and first.lazy and self._linger > 0:
                # Woken once for the group, not per batch: later lazy batches
                # wait in the queue, unseen until the linger ends.
                self._urgent.wait(self._linger)
                self._urgent.clear()
            group, closing = self._take_group(first)
            if group:
                with self._busy:
                    self._commit(journal, group)

    def _take_group(self, first: _Item) -> tuple[list[_Batch], bool]:
        """``first`` and whatever else is queued now (up to the group bound);
        True once the close marker was taken."""
        if first is _CLOSE:
            return [], True
        if isinstance(first, _Wake):
            return [], False
        group = [first]
        size = len(first.records)
        while size < self._max_group:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _CLOSE:
                return group, True
            if isinstance(item, _Wake):
                continue  # the loop checks _retention_due after this group
            group.append(item)
            size += len(item.records)
        return group, False

    def _commit(self, journal: Journal, group: list[_Batch]) -> None:
        if self._failure is not None:
            # Only a probe may try again; what comes before it fails untried.
            while group and not group[0].probe:
                self._finish(group.pop(0), self._failure)
            if not group:
                return
        records = list(itertools.chain.from_iterable(batch.records for batch in group))
        started = time.perf_counter()
        try:
            journal.append(records)
        except Exception as exc:
            if len(group) == 1:
                self._fail(group[0], exc)
                return
            # Find the culprit(s): one transaction per batch, in order.
            for batch in group:
                if self._failure is not None and not batch.probe:
                    self._finish(batch, self._failure)
                    continue
                try:
                    journal.append(batch.records)
                except Exception as batch_exc:
                    self._fail(batch, batch_exc)
                else:
                    self._committed(len(batch.records), batch.records)
                    self._finish(batch, None)
            return
        self._committed(len(records), records, time.perf_counter() - started)
        for batch in group:
            self._finish(batch, None)

    def _fail(self, batch: _Batch, exc: Exception) -> None:
        error = as_journal_error(exc)
        if isinstance(error, JournalWriteError):
            self._failure = error
        self._finish(batch, error)

    def _committed(
        self, count: int, records: Sequence[JournalRecord], seconds: float | None = None
    ) -> None:
        # A commit went through: the file works, whatever failed before.
        self._failure = None
        if seconds is not None and self.commit_observer is not None:
            self.commit_observer(seconds)
        self._transactions += 1
        self._records_committed += count
        if records:
            self._last_seq = records[-1].seq
        if self._checkpointer is not None:
            self._checkpointer.poke()

    def _finish(self, batch: _Batch, error: JournalError | None) -> None:
        try:
            if error is None:
                batch.on_committed(batch.records)
            else:
                batch.on_failed(batch.records, error)
        except Exception:
            log.exception("journal callback for seqs %s failed", _seq_range(batch.records))

    def _retention_step(self, journal: Journal) -> float:
        """Delete one step of expired events; return when to run again."""
        try:
            holds = dict(self._holds()) if self._holds is not None else {}
            hold = min(holds.values(), default=None)
            deleted = journal.enforce_retention(max_rows=RETENTION_STEP_ROWS, hold=hold)
            if deleted and hold is not None:
                self._warn_of_loss(journal, holds)
        except JournalError as exc:
            # A full disk or a damaged file: said in one line, not a traceback
            # every interval (the commit path reports the same trouble).
            log.error(
                "journal retention failed; retrying in %.0f s: %s", self._retention_interval, exc
            )
            deleted = 0
        except Exception:
            log.exception("journal retention on %s failed; retrying later", self.path)
            deleted = 0
        if deleted >= RETENTION_STEP_ROWS:
            # More to delete: go on right after serving what is queued.
            return time.monotonic()
        return time.monotonic() + self._retention_interval

    def _warn_of_loss(self, journal: Journal, holds: Mapping[str, int]) -> None:
        """Say which consumers the size limit has just cost events."""
        first = journal.first_seq()
        deleted_to = self._last_seq if first is None else first - 1
        behind = sorted(name for name, seq in holds.items() if seq < deleted_to)
        now = time.monotonic()
        if behind and now - self._loss_warned_at >= LOSS_WARNING_INTERVAL:
            self._loss_warned_at = now
            log.warning(
                "journal %s is at its size limit (journal_max_bytes): deleted events up to "
                "seq %d that %s had not taken yet",
                self.path,
                deleted_to,
                ", ".join(behind),
            )

    def _fail_queued(self, error: JournalError) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Batch):
                self._finish(item, error)


def _seq_range(records: Sequence[JournalRecord]) -> str:
    if not records:
        return "(none)"
    return f"{records[0].seq}..{records[-1].seq}"
