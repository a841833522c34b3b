"""From the pull socket to the subscribers: number, journal, then deliver and acknowledge.

With a journal, an event is delivered only after it is committed: a listener
that saw sequence number N can resume after N from the journal even if the
publisher is killed the next instant, and a restarted publisher never gives N
to another event. Commits happen on the journal's own thread, in groups; the
event loop only hands batches over and gets them back in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from saltbus.journal.records import JournalRecord
from saltbus.journal.writer import JournalWriter
from saltbus.server.fanout import FanOut

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


class AckTarget(Protocol):
    def send_acks(self, acks: Sequence[tuple[int, int]]) -> None: ...


class PausableReader(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Intake:
    def __init__(
        self,
        fanout: FanOut,
        writer: JournalWriter | None,
        readers: set[PausableReader],
    ) -> None:
        self.fanout = fanout
        self.writer = writer
        self.readers = readers
        self.in_flight = 0
        self.in_flight_bytes = 0
        self.received = 0
        self.commit_failures = 0
        # Told the last committed seq after each commit (the returner runner).
        self.on_commit: Callable[[int], None] | None = None
        self._paused = False
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
        records = self.fanout.number(bodies, tags)
        self.received += len(records)
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        self.in_flight += len(records)
        size = sum(len(body) for body in bodies)
        self.in_flight_bytes += size
        self._drained.clear()
        over = self.in_flight > IN_FLIGHT_HIGH or self.in_flight_bytes > IN_FLIGHT_HIGH_BYTES
        if over and not self._paused:
            self._paused = True
            for reader in self.readers:
                reader.pause_reading()

        def committed(batch: Sequence[JournalRecord]) -> None:
            loop.call_soon_threadsafe(self._committed, batch, acks, source, size)

        def failed(batch: Sequence[JournalRecord], error: BaseException) -> None:
            loop.call_soon_threadsafe(self._failed, batch, error, size)

        self.writer.submit(records, committed, on_failed=failed)

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
    ) -> None:
        self._settle(len(records), size)
        self.fanout.deliver(records)
        if self.on_commit is not None and records:
            self.on_commit(records[-1].seq)
        if acks and source is not None:
            source.send_acks([(request_id, records[index].seq) for index, request_id in acks])

    def _failed(self, records: Sequence[JournalRecord], error: BaseException, size: int) -> None:
        # The bus keeps working without durability rather than stopping: the
        # events go out, and their firing clients get no acknowledgement.
        self.commit_failures += 1
        log.error("journal commit of %d events failed: %s", len(records), error)
        self._settle(len(records), size)
        self.fanout.deliver(records)

    def _settle(self, count: int, size: int) -> None:
        self.in_flight -= count
        self.in_flight_bytes -= size
        if (
            self._paused
            and self.in_flight < IN_FLIGHT_LOW
            and self.in_flight_bytes < IN_FLIGHT_LOW_BYTES
        ):
            self._paused = False
            for reader in self.readers:
                reader.resume_reading()
        if self.in_flight == 0:
            self._drained.set()

    async def drained(self) -> None:
        """Wait until every event handed to the journal was delivered."""
        await self._drained.wait()
