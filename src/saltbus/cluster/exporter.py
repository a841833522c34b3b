"""Local events out to the JetStream stream.

Out of the daemon, the exporter reads the local bus as a resuming listener
(inside it, the journal: see below) and publishes each event the export
patterns select, one batch at a time: it sends up to
``max_in_flight`` publishes without waiting, then waits for their
acknowledgements together. Its position (saved next to the journal) is the
highest local seq such that every event up to it was either acknowledged by
JetStream or not for export; it reads from there after a restart, a lost
local connection, or a NATS failure, so what was fired while NATS was away
is exported from the journal when it returns.

Why one batch at a time, and why a failed batch is sent again from its first
unacknowledged event: importers keep, per origin, the highest origin seq
they delivered and drop anything at or below it (importer.py). That is
exactly-once only if each origin's events reach the stream in order. A batch
is written at once, on one connection that never buffers across reconnects
(link.py), so the events the stream got from it are a prefix of it; the rest
are sent again after it, never overtaken by a later batch. A resend of what
the stream already has is dropped by its ``Nats-Msg-Id`` (within the
duplicate window) or, later, by the importers' check.

A batch read with a backlog goes out as few messages: runs of up to
``export_batch`` events in one message each (envelope.py), cut where a
subject differs from the run's in more than its last token or the run would
pass the byte cap; a message per NATS publish and acknowledgement was most
of the export's cost. A lone event (an idle bus) goes in the one-event form,
so batching adds no latency. A run is one message, so the stream has all of
it or none: the order argument above holds for runs as for events.

Inside ``saltbus serve`` (given a :class:`~saltbus.cluster.feed.JournalFeed`)
it reads the committed records straight from the journal instead, from the
same position: a record is decoded only when it is exported and the redact
rules must be applied (also with redact_journal: what was journaled before
that was turned on is not redacted); otherwise its body, exactly as
journaled, is the message. An imported event is told by its origin key's
bytes before any decoding (a match in a value is checked by decoding that one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import nats.errors
import nats.js.errors

from saltbus.client.aio import AsyncClient, Subscription
from saltbus.client.positions import PositionStore
from saltbus.cluster.envelope import ENTRY_OVERHEAD, Batch, Envelope
from saltbus.cluster.feed import JournalFeed
from saltbus.cluster.link import Backoff, Link
from saltbus.cluster.settings import ClusterSettings
from saltbus.cluster.state import ORIGIN_KEY, marked_first, may_carry_marker
from saltbus.cluster.subjects import (
    MAX_SUBJECT,
    batch_subject,
    patterns_matcher,
    tag_to_subject,
)
from saltbus.config import Config
from saltbus.errors import BusError, RemoteProtocolError, SaltbusError, SlowConsumerError
from saltbus.event import Event, MatchType
from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Journal
from saltbus.returners.redact import redactor_for
from saltbus.wire import pack_body, unpack_body

log = logging.getLogger("saltbus.cluster")

CONNECT_TIMEOUT: Final = 5.0
# Events the local listener may hold while a batch is out; past that it
# drops, and the exporter reads again from its position (nothing is lost).
LOCAL_QUEUE: Final = 20_000
# JetStream's error for a message over the stream's size limit: resending never helps.
TOO_LARGE_CODES: Final = frozenset((10054,))
# The position is saved at most this often (and at stop): a file replace per
# batch would cost more than the batch on a slow disk, and a position saved a
# little late only means events sent again after a crash, which are dropped.
SAVE_INTERVAL: Final = 0.5
# Records read from the journal at once, at most, when events go in batches.
MAX_READ: Final = 4096
# A batch's bytes at most: well under NATS's default max_payload (1 MiB), and
# under the server's and the stream's limits with room for the headers.
BATCH_BYTES: Final = 256 * 1024
HEADER_ROOM: Final = 4096


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One local event of a batch: its message, or None when it is not for export."""

    seq: int | None  # None: from a bus that numbers nothing (never exported)
    tag: str
    payload: bytes | None


class ExportFailedError(SaltbusError):
    """A batch was not (wholly) acknowledged; it is sent again from its first gap."""


class Exporter:
    def __init__(
        self,
        config: Config,
        settings: ClusterSettings,
        link: Link,
        journal: Path,
        feed: JournalFeed | None = None,
    ) -> None:
        """``feed``: the journal read in the daemon's process; without it the
        exporter is a resuming listener of the bus."""
        self.config = config
        self.feed = feed
        self.settings = settings
        self.link = link
        self.journal = journal
        self.store = PositionStore(journal, f"cluster.{settings.stream}.export")
        self.epoch: int | None = None
        self.position: int | None = None
        self._selects = patterns_matcher(settings.export)  # None: every tag
        # The config's redact rules: no value they match leaves the host
        # through the export (with redact_journal the events are redacted already).
        self._redactor = redactor_for(config.redact)
        self.exported = 0
        self.not_exported = 0  # not matching, or imported
        self.dropped = 0  # refused by NATS for good (too large)
        self.resent = 0  # sent again after a failure, and found already in the stream
        self.batches = 0
        self.failures = 0
        self.in_flight = 0
        self.last_error: str | None = None
        self._saved: tuple[int | None, int | None] = (None, None)
        self._saved_at = 0.0
        self.stopping = False  # see Importer.stopping
        self._overflowed = False
        self._last_read: int | None = None
        # Events up to this seq are sent one per message (a batch of them was too large).
        self._unbatched_through = 0

    async def start(self) -> None:
        """Load the position; a first run starts at the journal's end."""
        saved = self.store.load()
        if saved is None:
            saved = await asyncio.to_thread(_journal_end, self.journal)
            self.store.save(*saved)
        self.epoch, self.position = saved
        self._saved = saved

    def save(self, *, force: bool = True) -> None:
        """Keep the position (at most every SAVE_INTERVAL unless ``force``)."""
        now = time.monotonic()
        if self.position is None or (self.epoch, self.position) == self._saved:
            return
        if force or now - self._saved_at >= SAVE_INTERVAL:
            self.store.save(self.epoch, self.position)
            self._saved, self._saved_at = (self.epoch, self.position), now

    async def run(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            await self.link.wait_up()
            again = False
            try:
                await self.link.ensure_stream()
                again = await self._export(backoff)
            except (
                OSError,
                TimeoutError,
                BusError,
                ExportFailedError,
                nats.errors.Error,
            ) as exc:
                self.failures += 1
                self._report(f"export: {exc}" if str(exc) else f"export: {exc!r}")
                if isinstance(exc, nats.js.errors.NoStreamResponseError):
                    self.link.stream_failed()
            except Exception as exc:  # a bug here must not end the federation
                self.failures += 1
                log.exception("export failed unexpectedly")
                self.last_error = f"export: {exc!r}"
            if not self.stopping and not again:
                await backoff.sleep()

    async def _export(self, backoff: Backoff) -> bool:
        """Export until something fails; True: read again from the position at once."""
        if self.feed is not None:
            return await self._export_journal(self.feed, backoff)
        client = AsyncClient(self.config, since=self.position)
        client.session.epoch = self.epoch
        # Every event, also those not for export: a gap in the numbers then
        # shows where the local queue dropped some (see _collect).
        subscription = client.subscribe("", MatchType.STARTSWITH, LOCAL_QUEUE)
        self._overflowed, self._last_read = False, None
        try:
            await client.connect(CONNECT_TIMEOUT)
            if self.epoch is not None and client.session.epoch not in (None, self.epoch):
                log.warning("the local bus numbers events anew (new journal): exporting all of it")
                self.epoch, self.position = client.session.epoch, 0
                self.save()
                return True
            while not self.stopping:
                batch, again = await self._collect(subscription)
                if batch:
                    await self._publish([self._from_event(event) for event in batch])
                if again:
                    return True
                backoff.reset()
                self.last_error = None
            return False
        finally:
            await client.close()

    async def _export_journal(self, feed: JournalFeed, backoff: Backoff) -> bool:
        epoch = await feed.epoch()
        if self.epoch is None:
            self.epoch = epoch
        elif epoch not in (None, self.epoch):
            log.warning("the local bus numbers events anew (new journal): exporting all of it")
            self.epoch, self.position = epoch, 0
            self.save()
            return True
        limit = self.settings.max_in_flight
        if self.settings.export_batch > 1:
            limit = max(limit, min(limit * self.settings.export_batch, MAX_READ))
        records = await feed.read(self.position or 0, limit)
        while not self.stopping:
            # The next batch is read while this one waits for its acknowledgements;
            # it is published only after this one is wholly done (see the module's doc).
            following = asyncio.create_task(feed.read(records[-1].seq, limit))
            try:
                await self._publish([self._from_record(record) for record in records])
            except BaseException:
                following.cancel()
                raise
            backoff.reset()
            self.last_error = None
            records = await following
            if len(records) < limit:
                # That read may have been made long before the acknowledgements
                # came (a burst, a slow NATS): what committed since goes out in
                # this batch too, not one round trip later.
                records += await feed.read_announced(records[-1].seq, limit - len(records))
        return False

    async def _collect(self, subscription: Subscription) -> tuple[list[Event], bool]:
        """The next batch: the first event waited for, then what is queued.

        A backlog (after an outage) comes from the journal faster than NATS
        takes it, and the local queue drops what does not fit. Then the
        events queued before the drop are exported, up to the first gap in
        the numbers, and the rest is read again from the position (the
        second value: True)."""
        batch: list[Event] = []
        while len(batch) < self.settings.max_in_flight:
            if (batch or self._overflowed) and not subscription.pending:
                return batch, self._overflowed
            try:
                event = await subscription.next(0 if batch or self._overflowed else None)
            except SlowConsumerError as exc:
                log.info("export fell behind the local bus (%s); reading it again", exc)
                self._overflowed = True
                continue
            previous = batch[-1].seq if batch else self._last_read
            if self._overflowed and previous is not None and event.seq != previous + 1:
                return batch, True
            self._last_read = event.seq
            batch.append(event)
        return batch, False

    def wanted(self, event: Event) -> bool:
        if event.seq is None or ORIGIN_KEY in event.data:
            return False  # an imported event never goes back out
        return self._selects is None or self._selects(event.tag)

    def _outgoing(self, data: Any) -> Any:
        return data if self._redactor is None else self._redactor.redact(data)

    def _from_event(self, event: Event) -> Outgoing:
        if not self.wanted(event):
            return Outgoing(event.seq, event.tag, None)
        return Outgoing(event.seq, event.tag, pack_body(event.tag, self._outgoing(event.data)))

    def _from_record(self, record: JournalRecord) -> Outgoing:
        body = record.body
        if marked_first(body):
            return Outgoing(record.seq, record.tag, None)  # imported: never goes back out
        if self._selects is not None and not self._selects(record.tag):
            return Outgoing(record.seq, record.tag, None)
        data: Any = None
        if may_carry_marker(body):
            data = self._decoded(record)
            if data is None or ORIGIN_KEY in data:
                return Outgoing(record.seq, record.tag, None)  # imported: never goes back out
        if self._redactor is None:
            return Outgoing(record.seq, record.tag, body)
        if data is None:
            data = self._decoded(record)
            if data is None:
                return Outgoing(record.seq, record.tag, None)
        return Outgoing(record.seq, record.tag, pack_body(record.tag, self._redactor.redact(data)))

    def _decoded(self, record: JournalRecord) -> Any:
        try:
            _, data = unpack_body(record.body)
        except RemoteProtocolError as exc:
            # The bus accepted it, so this is not expected; a listener would not get it either.
            log.warning(
                "event %d (%s) is undecodable, not exported: %s", record.seq, record.tag, exc
            )
            return None
        return data

    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        """Publish ``batch`` (in order, one message per run of events; see
        :meth:`_runs`), wait for the acknowledgements, move the position."""
        sent: dict[int, asyncio.Future[Any]] = {}  # index in batch -> its message's
        refused: set[int | None] = set()
        failure: BaseException | None = None
        stop_at = len(batch)
        for run in self._runs(batch):
            events = [batch[index] for index in run]
            try:
                # A batch is the bound on what is in flight.
                future = await self._send(events)
            except nats.errors.MaxPayloadError as exc:
                if len(events) > 1:  # limits lowered since the runs were cut: one by one
                    self._unbatched_through = events[-1].seq or 0
                    failure, stop_at = exc, run[0]
                    break
                log.error(
                    "event %d (%s) is over NATS's max_payload: not exported",
                    events[0].seq,
                    events[0].tag,
                )
                self.dropped += 1
                refused.add(events[0].seq)
                continue
            except (nats.errors.Error, OSError) as exc:
                failure, stop_at = exc, run[0]
                break
            sent.update((index, future) for index in run)
        outcome = [(batch[index], sent.get(index)) for index in range(stop_at)]
        self.in_flight = len({id(future) for future in sent.values()})
        try:
            failure = await self._settle(outcome, refused) or failure
        finally:
            self.in_flight = 0
        if failure is not None:
            raise ExportFailedError(f"{type(failure).__name__}: {failure}".rstrip(": "))

    def _runs(self, batch: Sequence[Outgoing]) -> list[list[int]]:
        """The exported events of ``batch`` (by index) cut into messages: each
        a run of up to ``export_batch`` events, in order, whose subjects differ
        in their last token at most (one subject selects them all: see
        subjects.batch_subject), under the byte cap. Events not exported
        between them do not cut a run; a run never spans another's events."""
        limit = self.settings.export_batch
        cap = min(BATCH_BYTES, self.link.max_message - HEADER_ROOM)
        prefix = self.settings.subject_prefix
        # Below this length a tag's subject is never cut (an escaped character
        # takes 12 characters at most).
        uncut = (MAX_SUBJECT - len(prefix) - 1) // 12
        runs: list[list[int]] = []
        run: list[int] = []
        parent, size = "", 0
        here, here_from = "", None
        for index, event in enumerate(batch):
            if event.payload is None:
                continue
            tag = event.tag
            # Tags equal up to their last "/" have subjects equal but for the
            # last token (tokens are the segments, escaped one to one): the
            # subject is made again only where that part changes.
            upto_last = tag[: tag.rfind("/") + 1]
            if upto_last != here_from or len(tag) > uncut:
                here = tag_to_subject(tag, prefix).rpartition(".")[0]
                here_from = upto_last if len(tag) <= uncut else None
            length = len(event.payload) + ENTRY_OVERHEAD
            alone = event.seq is None or event.seq <= self._unbatched_through
            if run and (alone or len(run) >= limit or here != parent or size + length > cap):
                runs.append(run)
                run = []
            run.append(index)
            parent, size = here, (length if len(run) == 1 else size + length)
            if alone:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        return runs

    async def _send(self, events: Sequence[Outgoing]) -> asyncio.Future[Any]:
        """One message: a lone event in the first form, more as a batch (envelope.py)."""
        node, epoch = self.settings.node_name, self.epoch or 0
        subject = tag_to_subject(events[0].tag, self.settings.subject_prefix)
        if len(events) == 1:
            event = events[0]
            assert event.payload is not None
            headers = Envelope(node, epoch, event.seq or 0, event.tag).headers()
            return await self.link.publisher.publish(subject, event.payload, headers)
        message = Batch(node, epoch, [(e.seq or 0, e.payload or b"") for e in events])
        return await self.link.publisher.publish(
            batch_subject(subject), message.body(), message.headers()
        )

    async def _settle(
        self, sent: Sequence[tuple[Outgoing, asyncio.Future[Any] | None]], refused: set[int | None]
    ) -> BaseException | None:
        """Wait for the acknowledgements; move the position over the prefix
        of the batch that is done; return what stopped it, if anything."""
        futures = [pending for _, pending in sent if pending is not None]
        if futures:
            _, late = await asyncio.wait(futures, timeout=self.settings.ack_timeout)
            for unanswered in late:
                unanswered.cancel()  # frees its slot in nats-py's bound on pending publishes
            for answered in futures:
                if not answered.cancelled():
                    answered.exception()  # retrieved: those after a failure are not looked at
        position = self.position
        failure: BaseException | None = None
        sizes: dict[int, int] = {}
        for _, pending in sent:
            if pending is not None:
                sizes[id(pending)] = sizes.get(id(pending), 0) + 1
        # The events of a run share their message's future: its outcome is read once.
        outcome_of: asyncio.Future[Any] | None = None
        error: BaseException | None = None
        too_large = duplicate = False
        for event, future in sent:
            if future is not None:
                if future is not outcome_of:
                    outcome_of, error = future, _outcome(future)
                    too_large = (
                        isinstance(error, nats.js.errors.APIError)
                        and error.err_code in TOO_LARGE_CODES
                    )
                    duplicate = error is None and future.result().duplicate
                if too_large and sizes[id(future)] > 1:
                    # A batch over a limit lowered meanwhile: its events go one by one.
                    last = max(e.seq or 0 for e, f in sent if f is future)
                    self._unbatched_through = max(self._unbatched_through, last)
                    failure = error
                    break
                if too_large:
                    log.error(
                        "event %d (%s) refused by the stream: %s", event.seq, event.tag, error
                    )
                    self.dropped += 1
                elif error is not None:
                    failure = error
                    break
                elif duplicate:
                    self.resent += 1  # the stream had it already: its ack was lost
                else:
                    self.exported += 1
            elif event.seq not in refused:
                self.not_exported += 1
            position = event.seq
        if position is not None and position != self.position:
            self.position = position
            self.save(force=False)
        self.batches += 1
        return failure

    def _report(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s; retrying", message)
        self.last_error = message


def _outcome(future: asyncio.Future[Any]) -> BaseException | None:
    if future.cancelled():
        return TimeoutError("no acknowledgement from JetStream in time")
    return future.exception()


def _journal_end(journal: Path) -> tuple[int | None, int]:
    """The local numbering and last seq now (where a first run starts)."""
    with Journal.open(journal, readonly=True) as store:
        return store.epoch(), store.last_seq()
