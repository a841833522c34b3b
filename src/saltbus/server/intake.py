"""From the pull socket to the subscribers: number, journal, then deliver and acknowledge.

One path for every event. The intake numbers it (the only place seqs are
given), hands it to the journal, and delivers it, and acknowledges it, when
the journal says it is committed. Without a journal, :class:`NoJournal`
"commits" at once, so that path is this one too.

An event is delivered only after it is committed: a listener that saw
sequence number N can resume after N even if the publisher is killed the next
instant, and a restarted publisher never gives N to another event. An idle
journal commits on this thread (``commit_inline``: by default one append to
its tail file, SQLite indexing behind); a busy one on its own thread, in
groups. Acknowledgements and the returners' wake-up wait until SQLite holds
the batch (``when_indexed``): an acknowledged event is in ``saltbus
history`` (the federation's importer asks for its answers at the commit
instead: see :meth:`Intake.accept`). Events arriving within
:data:`COALESCE_SECONDS` of the last flush wait for the next one: one commit
and one write per listener for a burst.

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

With ``journal_on_error: deliver`` (availability over durability, the
operator's choice) events go on being delivered while the journal fails, and
acked fires are still refused (they asked for the journal). Every batch is
then tried as a probe; the first that commits closes the gap with a journaled
``saltbus/journal/gap`` event naming the unjournaled seqs, which a resuming
reader is told of (``Subscribed.gaps``), never silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final

from saltbus.errors import JournalError, JournalWriteError
from saltbus.journal.records import JournalRecord
from saltbus.server.commits import AckTarget, JournalSink, PausableReader
from saltbus.server.fanout import FanOut
from saltbus.server.gaps import GapNotices
from saltbus.server.holding import JournalFailures

log = logging.getLogger("saltbus.server")

# Events handed to the journal and not yet committed: past the high mark the
# pull connections stop being read (firing clients then block in their sends)
# until the journal is back under the low mark. Memory stays bounded.
IN_FLIGHT_HIGH: Final = 50_000
IN_FLIGHT_LOW: Final = 10_000
IN_FLIGHT_HIGH_BYTES: Final = 4 * 1024 * 1024
IN_FLIGHT_LOW_BYTES: Final = 1024 * 1024
# Events that arrive within this long of the last flush are flushed together.
COALESCE_SECONDS: Final = 0.0005
# While the journal cannot commit, how often the held events are tried again.
PROBE_INTERVAL: Final = 1.0

# One accept(): bodies, tags, acks (index, request id), who sent them, and
# whether its acks are answered at commit (see accept()).
_Accepted = tuple[Sequence[bytes], Sequence[str], Sequence[tuple[int, int]], AckTarget | None, bool]


@dataclass(slots=True)
class _Batch:
    """Numbered events on their way to the journal, and who fired them."""

    records: list[JournalRecord]
    sources: list[AckTarget | None]  # per record
    acks: list[tuple[AckTarget, list[tuple[int, int]]]]  # (index in records, request id)
    size: int
    # Acks answered once committed (in the journal's tail), not once indexed.
    acks_at_commit: bool = False
    indexed: bool = False  # set on any thread once the journal's readers see it


class Intake(JournalFailures):
    def __init__(
        self,
        fanout: FanOut,
        journal: JournalSink,
        readers: Collection[PausableReader],
        *,
        on_journaled: Callable[[Sequence[JournalRecord]], None] | None = None,
        on_indexed: Callable[[Sequence[JournalRecord]], None] | None = None,
        stamp_has_offset: bool = False,
        on_error: str = "block",
        epoch: int | None = None,
        redact_body: Callable[[bytes], bytes] | None = None,
        on_delivered: Callable[[], None] | None = None,
    ) -> None:
        self.fanout = fanout
        # Called after events were written to subscribers (the busy poll, which
        # keeps the loop awake a moment after).
        self.on_delivered = on_delivered
        # redact_journal: applied first, so neither the journal nor any
        # subscriber ever holds a redacted value.
        self.redact_body = redact_body
        self.journal = journal
        self.readers = readers
        # Told each commit's records, in seq order, once they are delivered:
        # journaled (in the tail, as a rule), maybe not yet readable in SQLite
        # (the federation export, which must not wait for the index).
        self.on_journaled = on_journaled
        # Told each commit's records once the journal's readers see them, in
        # seq order (the returner runner; the export's reads of SQLite).
        self.on_indexed = on_indexed
        self._stamp_has_offset = stamp_has_offset
        self._deliver_on_error = on_error == "deliver"
        # journal_on_error: deliver: the seqs delivered unjournaled so far.
        self._gaps = GapNotices(epoch, stamp_has_offset=stamp_has_offset)
        self.next_seq = journal.last_seq + 1
        self._last_delivered = journal.last_seq
        self.in_flight = 0
        self.in_flight_bytes = 0
        # Delivered batches whose acknowledgements wait for the journal's index,
        # in order, and whether the loop is woken already to settle them.
        self._awaiting_index: deque[_Batch] = deque()
        self._index_wake_due = False
        self.received = 0
        self.commit_failures = 0
        # Acked fires answered with a Nack, since the start.
        self.refused = 0
        # Why the pull connections are not read now: "journal" (too much in
        # flight) and "subscribers" (a Salt listener that reads, but slower
        # than events come); they are read again once no reason is left.
        self._pause_reasons: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        # Accepted since the last flush.
        self._pending: list[_Accepted] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_flush = float("-inf")
        # Set while the journal cannot commit (see the module's docstring).
        self.journal_failure: JournalWriteError | None = None
        self.failing_since: float | None = None
        self._held: list[tuple[bytes, str]] = []  # failed in the journal, in order
        self._held_late: list[tuple[bytes, str]] = []  # arrived while failing
        self._held_sources: set[AckTarget] = set()
        self._refused_while_failing = 0
        self._probe: asyncio.TimerHandle | None = None

    @property
    def last_seq(self) -> int:
        """The last seq delivered: what a new subscriber is told it starts
        after, and where a replay ends (what is numbered but not yet delivered
        reaches a new subscriber live; and while the journal fails, numbers
        given to held events are given again)."""
        return self._last_delivered

    def accept(
        self,
        bodies: Sequence[bytes],
        tags: Sequence[str],
        acks: Sequence[tuple[int, int]] = (),
        source: AckTarget | None = None,
        *,
        acks_at_commit: bool = False,
    ) -> None:
        """Take a batch from one connection. ``acks`` pairs an index in the
        batch with the client's request id.

        An ack is answered once SQLite holds its event (it is then in
        ``saltbus history``), so an acked batch goes to SQLite before it is
        delivered: a Nack must mean "neither journaled nor delivered", and
        SQLite may fail behind the tail. With ``acks_at_commit`` the acks are
        answered once the batch is committed, in the tail as a rule, and the
        batch is delivered as unacked ones are: for a caller that needs the
        events kept, not visible in history (the federation's importer,
        whose NATS acknowledgement waits for this answer). What the tail took
        and SQLite then refuses is kept and indexed later, never lost."""
        if len(tags) != len(bodies):
            raise ValueError("as many tags as bodies are needed")
        self.received += len(bodies)
        if not bodies:
            return
        if self.redact_body is not None:
            bodies = [self.redact_body(body) for body in bodies]
        if self.journal_failure is not None and not self._deliver_on_error:
            self._hold(bodies, tags, acks, source, self._held_late)
            return
        loop = self._loop
        if (
            not self._pending
            and self._flush_handle is None
            and loop is not None
            and loop.time() >= self._last_flush + COALESCE_SECONDS
        ):
            # Idle (the common case at a low rate): this batch is the flush,
            # without the pending list's round trip.
            self._last_flush = loop.time()
            self._flush_one(bodies, tags, acks, source, acks_at_commit)
            return
        self._pending.append((bodies, tags, acks, source, acks_at_commit))
        self._drained.clear()
        self._schedule_flush()

    def _flush_one(
        self,
        bodies: Sequence[bytes],
        tags: Sequence[str],
        acks: Sequence[tuple[int, int]],
        source: AckTarget | None,
        acks_at_commit: bool,
    ) -> None:
        acked = [(source, list(acks))] if acks and source is not None else []
        size = len(bodies[0]) if len(bodies) == 1 else sum(map(len, bodies))
        records = self._number(bodies, tags)
        self._submit(_Batch(records, [source] * len(bodies), acked, size, acks_at_commit))

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None:
            return  # this batch joins the flush already due
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
            self._flush_handle = loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, []
        if self._loop is not None:
            self._last_flush = self._loop.time()
        if not pending:
            self._settled()
            return
        if self.journal_failure is not None and not self._deliver_on_error:
            # The journal failed while these waited: they wait behind what it holds.
            for bodies, tags, acks, source, _ in pending:
                self._hold(bodies, tags, acks, source, self._held_late)
            self._settled()
            return
        all_bodies: list[bytes] = []
        all_tags: list[str] = []
        sources: list[AckTarget | None] = []
        acked: list[tuple[AckTarget, list[tuple[int, int]]]] = []
        # One batch of ordinary acks among them makes every ack wait for the index.
        at_commit = True
        for bodies, tags, acks, source, acks_at_commit in pending:
            offset = len(all_bodies)
            all_bodies += bodies
            all_tags += tags
            sources += [source] * len(bodies)
            if acks and source is not None:
                acked.append((source, [(offset + index, rid) for index, rid in acks]))
                at_commit = at_commit and acks_at_commit
        records = self._number(all_bodies, all_tags)
        self._submit(_Batch(records, sources, acked, sum(map(len, all_bodies)), at_commit))

    def _number(self, bodies: Sequence[bytes], tags: Sequence[str]) -> list[JournalRecord]:
        """Give each body the next sequence number and the receive time."""
        seq = self.next_seq
        now = time.time()
        self.next_seq = seq + len(bodies)
        if len(bodies) == 1:
            return [JournalRecord(seq, now, tags[0], bodies[0])]
        return [
            JournalRecord(seq + i, now, tag, body)
            for i, (tag, body) in enumerate(zip(tags, bodies, strict=True))
        ]

    def _submit(self, batch: _Batch, *, probe: bool = False) -> None:
        # Delivering through a failure, every batch tries the journal again.
        probe = probe or (self._deliver_on_error and self.journal_failure is not None)
        count = len(batch.records)
        self.in_flight += count
        self.in_flight_bytes += batch.size
        self._drained.clear()
        if self.in_flight > IN_FLIGHT_HIGH or self.in_flight_bytes > IN_FLIGHT_HIGH_BYTES:
            self.pause("journal")
        if not probe and (batch.acks_at_commit or not batch.acks) and self.in_flight == count:
            # Nothing else in flight: an idle journal commits on this thread,
            # now, with no hand-off to its thread and back (the latency). A
            # batch with acked fires is submitted: it goes to SQLite before it
            # is delivered, so that a Nack still means "neither journaled nor
            # delivered" when SQLite fails behind the tail (see accept()).
            try:
                # Indexing is handed to the journal's thread after delivery
                # (by when_indexed): waking that thread first makes it compete
                # for the GIL with the writes to the subscribers.
                inline = self.journal.commit_inline(batch.records, defer_index=True)
            except JournalError as exc:
                self._failed(batch, exc)
                return
            if inline:
                self._committed(batch, probe)
                return
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop

        def committed(records: Sequence[JournalRecord]) -> None:
            loop.call_soon_threadsafe(self._committed, batch, probe)

        def failed(records: Sequence[JournalRecord], error: JournalError) -> None:
            loop.call_soon_threadsafe(self._failed, batch, error)

        self.journal.submit(batch.records, committed, on_failed=failed, probe=probe)

    def _committed(self, batch: _Batch, probe: bool) -> None:
        records = batch.records
        # Delivered first: the subscribers' writes are the latency; settling
        # (flow control, the drained flag) is nothing they wait for.
        self.fanout.deliver(records)
        if self.on_delivered is not None and self.fanout.subscribers:
            self.on_delivered()
        if batch.acks_at_commit:
            self._answer(batch)
        self._settle(batch)
        if records:
            self._last_delivered = records[-1].seq
            if self.on_journaled is not None:
                self.on_journaled(records)
            self._after_indexed(batch)
        if self._gaps.span is not None:
            self._close_gap()
        elif probe and self.journal_failure is not None:
            self._recovered(len(records))

    def _after_indexed(self, batch: _Batch) -> None:
        """Acknowledge ``batch`` and wake the returners once the journal's
        readers see it (an acked fire is then in ``saltbus history``), after
        the batches delivered before it."""
        seq = batch.records[-1].seq
        loop = self._loop
        if loop is None:
            self._indexed(batch)
            return

        def indexed() -> None:
            # On the journal's thread. The journal indexes a group of batches
            # at a time: the loop is woken once for the group, not per batch.
            batch.indexed = True
            if not self._index_wake_due:
                self._index_wake_due = True
                loop.call_soon_threadsafe(self._indexed_later)

        self._awaiting_index.append(batch)
        if self.journal.when_indexed(seq, indexed):
            batch.indexed = True
            self._settle_indexed()
        else:
            self._drained.clear()

    def _indexed_later(self) -> None:
        # Cleared before the flags are read: a batch flagged after this
        # posts a wake-up of its own.
        self._index_wake_due = False
        self._settle_indexed()
        self._settled()

    def _settle_indexed(self) -> None:
        awaiting = self._awaiting_index
        while awaiting and awaiting[0].indexed:
            self._indexed(awaiting.popleft())

    def _indexed(self, batch: _Batch) -> None:
        records = batch.records
        if self.on_indexed is not None:
            self.on_indexed(records)
        self._answer(batch)

    @staticmethod
    def _answer(batch: _Batch) -> None:
        """Send ``batch``'s acks with their seqs, once (at the commit or the index)."""
        acks, batch.acks = batch.acks, []
        for source, pairs in acks:
            source.send_acks([(rid, batch.records[index].seq) for index, rid in pairs])

    def _failed(self, batch: _Batch, error: JournalError) -> None:
        self.commit_failures += 1
        self._settle(batch)
        if not isinstance(error, JournalWriteError):
            # This batch alone cannot be stored (the journal is fine): it is
            # refused, and never delivered as if it had been journaled.
            first = batch.records[0]
            log.error(
                "refused %d events the journal cannot store: %s",
                len(batch.records),
                error,
                extra={"tag": first.tag, "seq": first.seq},
            )
            self._refuse_acked(batch, str(error))
            return
        if self._deliver_on_error:
            self._deliver_unjournaled(batch, error)
            return
        if self.journal_failure is None:
            self._start_failing(error)
        acked = {index for _, pairs in batch.acks for index, _ in pairs}
        self._refuse_acked(batch, self._failure_reason())
        for index, record in enumerate(batch.records):
            if index not in acked:
                self._keep(record.body, record.tag, batch.sources[index], self._held)
        if self.in_flight == 0:
            # Every numbered batch is back: the next seq is the journal's, so
            # statistics and new subscribers see the seq readers can resume from.
            self.next_seq = self.journal.last_seq + 1
        self._schedule_probe()

    # -- while the journal cannot commit (the rest in .holding) ------------------

    def _schedule_probe(self) -> None:
        if self._probe is None and self.in_flight == 0 and self._loop is not None:
            self._probe = self._loop.call_later(PROBE_INTERVAL, self._run_probe)

    def _run_probe(self) -> None:
        """Renumber the held events after the journal's last seq and try them."""
        self._probe = None
        if self.journal_failure is None or self.in_flight:
            return
        held = self._held + self._held_late
        self._held, self._held_late = [], []
        self.next_seq = self.journal.last_seq + 1
        bodies = [body for body, _ in held]
        records = self._number(bodies, [tag for _, tag in held])
        batch = _Batch(records, [None] * len(records), [], sum(map(len, bodies)))
        self._submit(batch, probe=True)

    # -- flow control and shutdown ------------------------------------------------

    def _settle(self, batch: _Batch) -> None:
        self.in_flight -= len(batch.records)
        self.in_flight_bytes -= batch.size
        if self.in_flight < IN_FLIGHT_LOW and self.in_flight_bytes < IN_FLIGHT_LOW_BYTES:
            self.resume("journal")
        self._settled()

    def _settled(self) -> None:
        if (
            self.in_flight == 0
            and not self._awaiting_index
            and not self._pending
            and self._flush_handle is None
        ):
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
        """Wait until every event accepted was delivered (or is held)."""
        await self._drained.wait()

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
