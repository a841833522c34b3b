"""One returner fed from the journal, on its own thread.

The returner's position is a journal cursor (``returner:<name>``): the last
seq it has dealt with (returned, or filtered out). The thread reads the
events after it, filters them, gathers a batch, calls ``event_return`` and
only then moves the cursor. When ``event_return`` raises, nothing moves: the
batch is read again from the cursor (so a returner that changed the dicts it
was given gets fresh ones) and retried after a backoff that doubles up to a
cap. So no event is lost, and a returner that stores each event under its
seq (as pgjsonb does) never stores one twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from saltbus.errors import JournalError, RemoteProtocolError
from saltbus.journal.store import Journal
from saltbus.returners.filters import TagFilter
from saltbus.returners.plugins import Returner, close_returner
from saltbus.returners.redact import Redactor
from saltbus.wire import unpack_body

log = logging.getLogger("saltbus.returners")

CURSOR_PREFIX: Final = "returner:"
# With event_return_queue 0 (no batching asked for), what is available goes
# out at once, in batches of at most this many: a backlog after an outage is
# caught up a batch at a time, not an event at a time.
MAX_BATCH: Final = 1000
# Whatever event_return_queue says, a batch is full at this many bytes of
# events (as journaled): memory stays bounded with 1 MB events.
MAX_BATCH_BYTES: Final = 16 * 1024 * 1024
READ_CHUNK: Final = 1000
START_TIMEOUT: Final = 10.0
RETRY_AFTER_MAX: Final = 600.0


@dataclass(frozen=True, slots=True)
class Batching:
    """``queue``: events per batch (0: whatever is there, up to MAX_BATCH,
    at once); ``max_seconds``: a partial batch goes out when its oldest event
    has waited this long (0: only full batches go out)."""

    queue: int = 0
    max_seconds: float = 0.0
    retry_initial: float = 0.5
    retry_max: float = 30.0
    poll_interval: float = 1.0  # in case a commit's notify() is missed

    @property
    def limit(self) -> int:
        return self.queue if self.queue > 0 else MAX_BATCH

    def retry_delay(self, failures: int) -> float:
        return float(min(self.retry_max, self.retry_initial * 2 ** min(failures - 1, 62)))


class ReturnerWorker:
    """Feeds the returner ``name`` from the journal at ``path``."""

    def __init__(
        self,
        name: str,
        returner: Returner,
        path: Path,
        *,
        tag_filter: TagFilter,
        batching: Batching,
        redactor: Redactor | None = None,
    ) -> None:
        self.name = name
        self.returner = returner
        self.path = path
        self.cursor_name = CURSOR_PREFIX + name
        self._filter = tag_filter
        self._batching = batching
        self._redactor = redactor
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reopen = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        # Written by the worker thread only (latest also by notify()), read by stats().
        self.cursor = 0
        self.latest = 0
        self.returned = 0
        self.batches = 0
        self.filtered = 0
        self.undecodable = 0
        self.missed = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self._retry_at: float | None = None
        self._counted = 0  # counters cover seqs up to here (rescans count nothing twice)
        self._unsaved = False
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self._pending_since = 0.0  # when the oldest pending event was gathered (monotonic)

    def journal_position(self) -> int:
        """The last seq returned (or filtered out): the journal must keep what follows."""
        return self.cursor

    # -- lifetime -----------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Open the journal on the thread and load the cursor (created at
        the journal's last seq the first time: a new returner gets the events
        from now on, as a Salt returner does). Raises JournalError."""
        if self._thread is not None:
            raise JournalError(f"returner {self.name!r} was already started")
        self._thread = threading.Thread(
            target=self._run, name=f"saltbus-returner:{self.name}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self._stop.set()
            raise JournalError(f"returner {self.name!r} did not start within {timeout} s")
        if self._start_error is not None:
            raise JournalError(
                f"returner {self.name!r} cannot read the journal: {self._start_error}"
            ) from self._start_error

    def notify(self, last_seq: int) -> None:
        """Events up to ``last_seq`` are committed: wake up. Cheap, any thread."""
        self.latest = max(self.latest, last_seq)
        self._wake.set()

    def reopen(self) -> None:
        """Have the returner reopen its files (SIGHUP, after logrotate), on
        its own thread, before its next batch. Cheap, any thread."""
        self._reopen.set()
        self._wake.set()

    def close(self, timeout: float | None = None) -> bool:
        """Stop: one last attempt at what is gathered (as Salt flushes its
        queue at exit; what fails stays in the journal for next time), then
        ``close()`` the returner. False if the thread did not end in time."""
        self._stop.set()
        self._wake.set()
        if self._thread is None or self._thread is threading.current_thread():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        retry_at = self._retry_at
        own = getattr(self.returner, "stats", None)
        state = "stopped" if self._stop.is_set() else "running"
        if self.consecutive_failures and state == "running":
            state = "retrying"
        return {
            "name": self.name,
            "state": state,
            "cursor": self.cursor,
            "lag": max(0, self.latest - self.cursor),
            "returned": self.returned,
            "batches": self.batches,
            "filtered": self.filtered,
            "undecodable": self.undecodable,
            "missed": self.missed,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "retry_in": None
            if retry_at is None
            else round(max(0.0, retry_at - time.monotonic()), 3),
            # The returner's own counters (rotations, dead letters...), when it keeps any.
            "details": own() if callable(own) else {},
        }

    # -- the thread ---------------------------------------------------------

    def _run(self) -> None:
        journal: Journal | None = None
        try:
            try:
                journal = Journal.open(self.path)
                cursor = journal.get_cursor(self.cursor_name)
                self.latest = max(self.latest, journal.last_seq())
                if cursor is None:
                    cursor = self.latest
                    journal.set_cursor(self.cursor_name, cursor)
                self.cursor = self._counted = cursor
            except BaseException as exc:
                self._start_error = exc
                return
            finally:
                self._ready.set()
            self._serve(journal)
        except BaseException:
            log.exception("returner %r stopped", self.name)
        finally:
            if journal is not None:
                journal.close()
            try:
                close_returner(self.returner)
            except Exception:
                log.exception("closing returner %r failed", self.name)

    def _serve(self, journal: Journal) -> None:
        batching = self._batching
        pending = self._pending
        scanned = self.cursor
        while True:
            stopping = self._stop.is_set()
            self._wake.clear()
            more = False
            try:
                if self._reopen.is_set():
                    self._reopen.clear()
                    reopen = getattr(self.returner, "reopen", None)
                    if callable(reopen):
                        reopen()
                if not self._full():
                    scanned, more = self._scan(journal, scanned)
                if pending and (stopping or self._due()):
                    self._return()
                if not pending and scanned > self.cursor:
                    self.cursor = scanned  # the events after the last returned were filtered out
                    self._unsaved = True
                if self._unsaved:
                    journal.set_cursor(self.cursor_name, self.cursor)
                    self._unsaved = False
            except Exception as exc:
                delay = self._failed(exc)
                self._clear()
                scanned = self.cursor
                if stopping or self._stop.wait(delay):
                    return  # what failed is still in the journal after the cursor
                continue
            if stopping:
                return
            if more or self._full():
                continue
            wait = batching.poll_interval
            if pending and batching.max_seconds > 0:
                due = self._pending_since + batching.max_seconds - time.monotonic()
                wait = min(wait, max(0.0, due))
            self._wake.wait(wait)

    def _full(self) -> bool:
        return len(self._pending) >= self._batching.limit or self._pending_bytes >= MAX_BATCH_BYTES

    def _due(self) -> bool:
        b = self._batching
        if b.queue == 0 or self._full():
            return True
        return b.max_seconds > 0 and time.monotonic() - self._pending_since >= b.max_seconds

    def _clear(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0

    def _scan(self, journal: Journal, scanned: int) -> tuple[int, bool]:
        """Gather the events after ``scanned`` that pass the filter (until the
        batch is full); return the seq read up to, and whether more may be
        waiting right now."""
        pending = self._pending
        room = self._batching.limit - len(pending)
        # Without a filter every event read is gathered: read no more than fit.
        size = READ_CHUNK if self._filter.active else min(READ_CHUNK, room)
        records = journal.read(since=scanned, limit=size)
        self.latest = max(self.latest, journal.last_seq())
        if records and records[0].seq > scanned + 1 and scanned >= self._counted:
            self._check_retention(journal, scanned, records[0].seq)
        for record in records:
            if self._full():
                return scanned, True
            scanned = record.seq
            fresh = record.seq > self._counted
            if fresh:
                self._counted = record.seq
            if not self._filter(record.tag):
                self.filtered += fresh
                continue
            try:
                tag, data = unpack_body(record.body)
            except RemoteProtocolError as exc:
                if fresh:
                    self.undecodable += 1
                    log.warning(
                        "returner %r skips seq %d: %s",
                        self.name,
                        record.seq,
                        exc,
                        extra={"tag": record.tag, "seq": record.seq},
                    )
                continue
            if not pending:
                self._pending_since = time.monotonic()
            pending.append({"tag": tag, "data": data, "seq": record.seq, "time": record.time})
            self._pending_bytes += len(record.body)
        return scanned, len(records) == size

    def _check_retention(self, journal: Journal, scanned: int, next_seq: int) -> None:
        # Seqs may have gaps (a batch the journal failed to commit); only a
        # gap before the oldest event retained means retention deleted events.
        if journal.first_seq() == next_seq:
            lost = next_seq - scanned - 1
            self.missed += lost
            log.error(
                "returner %r: up to %d events (seqs %d..%d) were deleted by journal "
                "retention before it returned them",
                self.name,
                lost,
                scanned + 1,
                next_seq - 1,
            )

    def _return(self) -> None:
        pending = self._pending
        redactor = self._redactor
        # Redacted here, on the worker's copy: every returner, built in or a
        # plugin, gets the same redacted events.
        batch = list(pending) if redactor is None else [redactor.redact_event(e) for e in pending]
        self.returner.event_return(batch)
        self.cursor = pending[-1]["seq"]
        self._unsaved = True
        self.returned += len(pending)
        self.batches += 1
        self._clear()
        if self.consecutive_failures:
            log.warning(
                "returner %r works again after %d failures", self.name, self.consecutive_failures
            )
        self.consecutive_failures = 0
        self._retry_at = None

    def _failed(self, exc: Exception) -> float:
        """Count the failure; how long to wait before the retry."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_time = time.time()
        delay = self._batching.retry_delay(self.consecutive_failures)
        # A returner may say when the store wants the batch again (HTTP's
        # Retry-After): never sooner, and never beyond RETRY_AFTER_MAX.
        asked = getattr(exc, "retry_after", None)
        if isinstance(asked, int | float) and not isinstance(asked, bool):
            delay = max(delay, min(float(asked), RETRY_AFTER_MAX))
        self._retry_at = time.monotonic() + delay
        # Once per outage at error level, then quietly: a database that is
        # down for an hour must not flood the log.
        level = logging.ERROR if self.consecutive_failures == 1 else logging.DEBUG
        log.log(
            level,
            "returner %r failed (%s); retrying from seq %d in %.1f s",
            self.name,
            self.last_error,
            self.cursor + 1,
            delay,
        )
        return delay
