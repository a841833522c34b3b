"""From the pull socket to the subscribers: number, journal, then deliver and acknowledge.

With a journal, an event is delivered only after it is committed: a listener
that saw sequence number N can resume after N from the journal even if the
publisher is killed the next instant, and a restarted publisher never gives N
to another event. Commits happen on the journal's own thread, in groups; the
event loop only hands batches over and gets them back in order.

When the journal cannot commit (disk full, read-only, I/O error), nothing is
delivered that a resuming reader would later miss. The intake *holds* what
failed and what arrives meanwhile, in arrival order: a connection whose event
is held is not read again (a Salt client's ``fire_event`` then times out and
returns False, as with a publisher that takes nothing), and an event that asks
for an acknowledgement is refused at once with a :class:`~saltbus.control.Nack`
naming the cause. Once a second, the held events are renumbered after the
journal's last seq and tried again as the writer's probe; when they commit,
they are delivered and the connections read again: numbering goes on with no
gap. ``saltbus/journal/failed`` (held first, so it is delivered, journaled,
when the journal recovers) and ``saltbus/journal/recovered`` mark the span.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from saltbus.errors import JournalError, JournalWriteError
from saltbus.event import utc_stamp
from saltbus.journal.records import JournalRecord
from saltbus.journal.writer import JournalWriter
from saltbus.server.fanout import FanOut
from saltbus.wire import pack_body

log = logging.getLogger("saltbus.server")

# Events handed to the journal and not yet committed: past the high mark the
# pull connections stop being read (firing clients then block in their sends)
# until the journal is back under the low mark. Memory stays bounded.
IN_FLIGHT_HIGH: Final = 50_000
IN_FLIGHT_LOW: Final = 10_000
IN_FLIGHT_HIGH_BYTES: Final = 4 * 1024 * 1024
IN_FLIGHT_LOW_BYTES: Final = 1024 * 1024
# Without a journal, events that arrive within this long of the last delivery
# are delivered together: one write and one wake-up per listener for a burst
# instead of one per event. An event after a quiet spell goes out at once, so
# this adds no latency at low rates. (With a journal, group commit batches.)
COALESCE_SECONDS: Final = 0.0005
# While the journal cannot commit, how often the held events are tried again.
PROBE_INTERVAL: Final = 1.0
JOURNAL_FAILED_TAG: Final = "saltbus/journal/failed"
JOURNAL_RECOVERED_TAG: Final = "saltbus/journal/recovered"


class PausableReader(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class AckTarget(PausableReader, Protocol):
    """A firing connection: told which of its events were journaled (or not),
    and not read while its events wait for the journal."""

    def send_acks(self, acks: Sequence[tuple[int, int]]) -> None: ...

    def send_nacks(self, request_ids: Sequence[int], reason: str) -> None: ...


class Intake:
    def __init__(
        self,
        fanout: FanOut,
        writer: JournalWriter | None,
        readers: set[PausableReader],
        *,
        stamp_has_offset: bool = False,
    ) -> None:
        self.fanout = fanout
        self.writer = writer
        self.readers = readers
        self._stamp_has_offset = stamp_has_offset
        self.in_flight = 0
        self.in_flight_bytes = 0
        self.received = 0
        self.commit_failures = 0
        # Acked fires answered with a Nack, since the start.
        self.refused = 0
        # Set while the journal cannot commit (see the module's docstring).
        self.journal_failure: JournalWriteError | None = None
        self.failing_since: float | None = None
        self._held: list[tuple[bytes, str]] = []  # failed in the journal, in order
        self._held_late: list[tuple[bytes, str]] = []  # arrived while failing
        self._held_sources: set[AckTarget] = set()
        self._refused_while_failing = 0
        self._probe: asyncio.TimerHandle | None = None
        # Told the last committed seq after each commit (the returner runner).
        self.on_commit: Callable[[int], None] | None = None
        # Why the pull connections are not read now: "journal" (too much in
        # flight) and "subscribers" (a Salt listener that reads, but slower
        # than events come); they are read again once no reason is left.
        self._pause_reasons: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        # Numbered, encoded events waiting for the next coalesced delivery.
        self._pending_frames: list[bytes] = []
        self._pending_tags: list[str] = []
        self._pending_acks: list[tuple[AckTarget, list[tuple[int, int]]]] = []
        self._pending_last = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_flush = float("-inf")

    def accept(
        self,
        bodies: Sequence[bytes],
        tags: Sequence[str],
        acks: Sequence[tuple[int, int]] = (),
        source: AckTarget | None = None,
    ) -> None:
        """Take a batch from one connection. ``acks`` pairs an index in the
        batch with the client's request id."""
        if self.writer is None:
            # What _committed does, without the records only a journal needs,
            # the delivery coalesced with the events around it. Nothing is
            # settled: in_flight counts only events handed to the journal.
            first, frames = self.fanout.number_frames(bodies, tags)
            self.received += len(bodies)
            if not frames:
                return
            self._pending_frames += frames
            self._pending_tags += tags
            self._pending_last = first + len(frames) - 1
            if acks and source is not None:
                pairs = [(request_id, first + index) for index, request_id in acks]
                self._pending_acks.append((source, pairs))
            self._schedule_flush()
            return
        self.received += len(bodies)
        if self.journal_failure is not None:
            self._hold(bodies, tags, acks, source, self._held_late)
            return
        self._submit(self.fanout.number(bodies, tags), acks, source)

    def _submit(
        self,
        records: list[JournalRecord],
        acks: Sequence[tuple[int, int]],
        source: AckTarget | None,
        *,
        probe: bool = False,
    ) -> None:
        assert self.writer is not None
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        self.in_flight += len(records)
        size = sum(len(r.body) for r in records)
        self.in_flight_bytes += size
        self._drained.clear()
        if self.in_flight > IN_FLIGHT_HIGH or self.in_flight_bytes > IN_FLIGHT_HIGH_BYTES:
            self.pause("journal")
        if not probe and self.in_flight == len(records):
            # Nothing else in flight: an idle writer commits on this thread,
            # now, with no hand-off to its thread and back (the latency).
            try:
                inline = self.writer.commit_inline(records)
            except JournalError as exc:
                self._failed(records, exc, acks, source, size)
                return
            if inline:
                self._committed(records, acks, source, size, probe)
                return

        def committed(batch: Sequence[JournalRecord]) -> None:
            loop.call_soon_threadsafe(self._committed, batch, acks, source, size, probe)

        def failed(batch: Sequence[JournalRecord], error: JournalError) -> None:
            loop.call_soon_threadsafe(self._failed, batch, error, acks, source, size)

        self.writer.submit(records, committed, on_failed=failed, probe=probe)

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None:
            return  # this batch joins the delivery already due
        try:
            loop = self._loop or asyncio.get_running_loop()
        except RuntimeError:
            self._flush()  # no event loop (a direct caller): nothing to wait for
            return
        self._loop = loop
        due = self._last_flush + COALESCE_SECONDS
        if loop.time() >= due:
            self._flush()
        else:
            self._drained.clear()
            self._flush_handle = loop.call_at(due, self._flush)

    def _flush(self) -> None:
        """Deliver the pending events, then acknowledge those that asked."""
        self._flush_handle = None
        frames, tags, acks = self._pending_frames, self._pending_tags, self._pending_acks
        self._pending_frames, self._pending_tags, self._pending_acks = [], [], []
        if self._loop is not None:
            self._last_flush = self._loop.time()
        if frames:
            self.fanout.offer(frames, tags)
            if self.on_commit is not None:
                self.on_commit(self._pending_last)
        for source, pairs in acks:
            source.send_acks(pairs)
        self._drained.set()

    def _committed(
        self,
        records: Sequence[JournalRecord],
        acks: Sequence[tuple[int, int]],
        source: AckTarget | None,
        size: int,
        probe: bool,
    ) -> None:
        self._settle(len(records), size)
        self.fanout.deliver(records)
        if self.on_commit is not None and records:
            self.on_commit(records[-1].seq)
        if acks and source is not None:
            source.send_acks([(request_id, records[index].seq) for index, request_id in acks])
        if probe:
            self._recovered(records)

    def _failed(
        self,
        records: Sequence[JournalRecord],
        error: JournalError,
        acks: Sequence[tuple[int, int]],
        source: AckTarget | None,
        size: int,
    ) -> None:
        self.commit_failures += 1
        self._settle(len(records), size)
        bodies = [r.body for r in records]
        tags = [r.tag for r in records]
        if not isinstance(error, JournalWriteError):
            # This batch alone cannot be stored (the journal is fine): it is
            # refused, and never delivered as if it had been journaled.
            log.error("refused %d events the journal cannot store: %s", len(records), error)
            self._refuse(acks, source, str(error))
            return
        if self.journal_failure is None:
            self._start_failing(error)
        self._hold(bodies, tags, acks, source, self._held)
        if self.in_flight == 0 and self.writer is not None:
            # Every numbered batch is back: the next seq is the journal's, so
            # statistics and new subscribers see the seq readers can resume from.
            self.fanout.next_seq = self.writer.last_seq + 1
        self._schedule_probe()

    # -- while the journal cannot commit ----------------------------------------

    def _start_failing(self, error: JournalWriteError) -> None:
        assert self.writer is not None
        self.journal_failure = error
        self.failing_since = time.time()
        self._refused_while_failing = 0
        log.error(
            "journal cannot commit (%s): %s; holding events until it can (acked fires "
            "are refused, firing connections wait)",
            error.reason,
            error,
        )
        notice = {
            "reason": error.reason,
            "error": str(error),
            "last_seq": self.writer.last_seq,
            "since": self.failing_since,
            "_stamp": utc_stamp(self._stamp_has_offset),
        }
        self._held.append((pack_body(JOURNAL_FAILED_TAG, notice), JOURNAL_FAILED_TAG))

    def _hold(
        self,
        bodies: Sequence[bytes],
        tags: Sequence[str],
        acks: Sequence[tuple[int, int]],
        source: AckTarget | None,
        into: list[tuple[bytes, str]],
    ) -> None:
        assert self.journal_failure is not None
        self._refuse(acks, source, f"journal cannot commit: {self.journal_failure.reason}")
        acked = {index for index, _ in acks}
        kept = [pair for i, pair in enumerate(zip(bodies, tags, strict=True)) if i not in acked]
        if not kept:
            return
        into += kept
        if source is not None and source not in self._held_sources:
            self._held_sources.add(source)
            source.pause_reading()

    def _refuse(self, acks: Sequence[tuple[int, int]], source: AckTarget | None, why: str) -> None:
        if not acks:
            return
        self.refused += len(acks)
        self._refused_while_failing += len(acks)
        if source is not None:
            source.send_nacks([request_id for _, request_id in acks], why)

    def _schedule_probe(self) -> None:
        if self._probe is None and self.in_flight == 0 and self._loop is not None:
            self._probe = self._loop.call_later(PROBE_INTERVAL, self._run_probe)

    def _run_probe(self) -> None:
        """Renumber the held events after the journal's last seq and try them."""
        self._probe = None
        if self.journal_failure is None or self.writer is None or self.in_flight:
            return
        held = self._held + self._held_late
        self._held, self._held_late = [], []
        self.fanout.next_seq = self.writer.last_seq + 1
        bodies = [body for body, _ in held]
        tags = [tag for _, tag in held]
        self._submit(self.fanout.number(bodies, tags), (), None, probe=True)

    def _recovered(self, records: Sequence[JournalRecord]) -> None:
        error, since = self.journal_failure, self.failing_since
        assert error is not None and since is not None
        self.journal_failure = None
        self.failing_since = None
        seconds = time.time() - since
        log.warning(
            "journal commits again after %.1f s (%s): %d held events journaled and delivered, "
            "%d acked fires refused",
            seconds,
            error.reason,
            len(records),
            self._refused_while_failing,
        )
        sources, self._held_sources = self._held_sources, set()
        if not self.paused:
            for source in sources:
                source.resume_reading()
        notice: dict[str, Any] = {
            "reason": error.reason,
            "seconds": round(seconds, 3),
            "held": len(records) - 1,  # the failed notice is one of them
            "refused": self._refused_while_failing,
            "_stamp": utc_stamp(self._stamp_has_offset),
        }
        self.accept([pack_body(JOURNAL_RECOVERED_TAG, notice)], [JOURNAL_RECOVERED_TAG])

    @property
    def held(self) -> int:
        """Events waiting for the journal to commit again."""
        return len(self._held) + len(self._held_late)

    def close(self) -> None:
        """Stop trying the journal; say what is lost with the held events."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self.held:
            log.error(
                "%d events held while the journal could not commit are lost at shutdown",
                self.held,
            )

    def _settle(self, count: int, size: int) -> None:
        self.in_flight -= count
        self.in_flight_bytes -= size
        if self.in_flight < IN_FLIGHT_LOW and self.in_flight_bytes < IN_FLIGHT_LOW_BYTES:
            self.resume("journal")
        if self.in_flight == 0:
            self._drained.set()

    @property
    def paused(self) -> bool:
        """Whether the pull connections are not being read now."""
        return bool(self._pause_reasons)

    def pause(self, reason: str) -> None:
        """Stop reading the pull connections (firing clients then block in
        their sends) until :meth:`resume` with every reason given."""
        if not self._pause_reasons:
            for reader in self.readers:
                reader.pause_reading()
        self._pause_reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        if not self._pause_reasons:
            for reader in self.readers:
                if reader not in self._held_sources:
                    reader.resume_reading()

    async def drained(self) -> None:
        """Wait until every event handed to the journal was delivered."""
        await self._drained.wait()
