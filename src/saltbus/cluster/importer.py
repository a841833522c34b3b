"""Events of the other nodes in from the stream, fired on the local bus.

The node reads through its durable pull consumer (named after it) in stream
order. For each message: its own events are skipped (NATS 2.9 cannot filter
on a header); what the import patterns do not select is skipped; the rest is
fired on the local bus with ``_saltbus_origin: {node, seq, epoch, stamp}``
added, and acknowledged to NATS only once the local publisher has journaled
it. Inside ``saltbus serve`` a fetched batch goes to the daemon's intake in
one call, each event acknowledged with its local seq (direct.py); as a client
of a bus elsewhere, it is fired in order, the last fire acknowledged by the
publisher, and the journal confirms each event (see :meth:`Importer._deliver`).

A message may carry a batch of an origin's events (envelope.py); each is
handled as if it had come alone, in order.

Exactly once, in order per origin: per origin (node and epoch) the highest
origin seq delivered here is kept (state.py), and a message at or below it
is a duplicate (a redelivery after a crash or a lost acknowledgement, a
resend after the duplicate window, or one cut into other batches, which
no ``Nats-Msg-Id`` finds) and is dropped. The alternative, one
message in flight per consumer (``max_ack_pending=1``), would cost a round
trip to NATS per event and still not catch a resend that JetStream no longer
recognises. Dropping at-or-below is right only if an origin's events reach
this node in order: the exporter publishes them in order (exporter.py), the
consumer delivers in stream order, every fetched message is handled before
the next fetch, and a message delivered but never received (left with an
earlier subscription, or lost with a NATS server) is delivered again before
any newer one: a gap in the consumer's delivery numbers stops the importer
before it handles anything after the gap, and link.py rewinds the consumer
to its acknowledgement floor. A consumer found missing (a rewind cut short
between its delete and its add) is made again after the last stream message
handled here (kept in state.py), never from ``import_start``'s choice;
so is one deleted while the node runs (pull.py tells it from NATS's status
replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Final, NamedTuple

import nats.errors
from nats.aio.msg import Msg

from saltbus.client.aio import AsyncClient
from saltbus.cluster.direct import DirectFire
from saltbus.cluster.envelope import BATCH, ORIGIN, Envelope, batch_size, unpack_batch
from saltbus.cluster.link import Backoff, Link
from saltbus.cluster.pull import ConsumerLostError, Puller, delivery_number, stream_number
from saltbus.cluster.settings import ClusterSettings
from saltbus.cluster.state import ORIGIN_KEY, ImportState, Origin, origin_marker
from saltbus.cluster.subjects import patterns_matcher, subject_filter
from saltbus.config import Config
from saltbus.errors import BusError, LocalProtocolError, RemoteProtocolError, SaltbusError
from saltbus.event import utc_stamp
from saltbus.server.intake import Intake
from saltbus.wire import check_event_size, pack_body, unpack_body

log = logging.getLogger("saltbus.cluster")

# One fetch is one request to NATS and one journal check of what it fired
# (see _deliver): a large batch spreads both (link.MAX_ACK_PENDING bounds it).
FETCH_BATCH: Final = 1000
FETCH_WAIT: Final = 1.0
# Events handed to one delivery at most (a fetched batch of batches is cut).
DELIVER_EVENTS: Final = 4096
FIRE_TIMEOUT: Final = 10.0
# The state is saved at most this often (and at stop): the journal has what
# a crash keeps the file from recording, so saving late only lengthens the scan.
SAVE_INTERVAL: Final = 0.5
# What the origin marker and a new _stamp can add to a received body, at most
# (a node name is at most 64 characters; numbers and stamp are short).
MARKER_ROOM: Final = 512


class _MissedDeliveryError(SaltbusError):
    """A message the consumer delivered never arrived."""


class _Import(NamedTuple):  # a tuple: one per imported event, made fast
    origin: Origin
    seq: int
    tag: str
    data: dict[str, Any]


class Importer:
    def __init__(
        self,
        config: Config,
        settings: ClusterSettings,
        link: Link,
        journal: Path,
        intake: Intake | None = None,
    ) -> None:
        """``intake``: the daemon's, when the bridge runs in its event loop
        (imported events then skip the client and its framing)."""
        self.config = config
        self.settings = settings
        self.link = link
        self.journal = journal
        self.node = settings.node_name
        self.filter = subject_filter(settings.import_, settings.subject_prefix)
        self._selects = patterns_matcher(settings.import_)  # None: every tag
        self.state = ImportState.load(
            journal.with_suffix(".positions") / f"cluster.{settings.stream}.import"
        )
        self.client = AsyncClient(config, reconnect=False)
        self.direct = None if intake is None else DirectFire(config, intake)
        self.bound = asyncio.Event()
        # Between two tries to bind the consumer (its ``until``: stats).
        self.retry = Backoff()
        self.imported = 0
        self.duplicates = 0
        self.own = 0
        self.filtered = 0
        self.rejected = 0
        self.failures = 0
        self.rewinds = 0
        self.last_error: str | None = None
        self._saved_at = 0.0
        # Set by the bridge's stop: nats-py may swallow a cancellation (a
        # message and the cancel arriving together), so the loops also look here.
        self.stopping = False

    async def start(self) -> None:
        """Learn, from the local journal, what was delivered here before."""
        found = await asyncio.to_thread(self.state.catch_up, self.journal)
        if found:
            log.debug("found %d imported events in the journal after the saved state", len(found))
        self.state.save()

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.state.save()
        await self.client.close()

    async def run(self) -> None:
        backoff = self.retry
        while not self.stopping:
            await self.link.wait_up()
            subscription: Puller | None = None
            again = False
            try:
                subscription, next_delivery = await self.link.bind_consumer(
                    self.filter.subject, self._resume_at()
                )
                self.bound.set()
                backoff.reset()  # a failure after a bind is retried soon again
                await self._consume(subscription, next_delivery, backoff)
            except _MissedDeliveryError as exc:
                self.rewinds += 1
                log.info("%s; delivering again from the last acknowledged", exc)
                again = True
            except ConsumerLostError as exc:
                # Bound again after a pause (a consumer leader may be moving):
                # a missing consumer is made again after what was handled here.
                self.failures += 1
                self._report(f"import: {exc}")
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                self.failures += 1
                self._report(f"import: {exc!r}")
                self.link.stream_failed()
            except Exception as exc:  # a bug here must not end the federation
                self.failures += 1
                log.exception("import failed unexpectedly")
                self.last_error = f"import: {exc!r}"
            finally:
                self.bound.clear()
                if subscription is not None:
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()
            if not self.stopping and not again:
                await backoff.sleep()

    async def _consume(
        self,
        subscription: Puller,
        next_delivery: int,
        backoff: Backoff,
    ) -> None:
        while not self.stopping:
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
            except TimeoutError:  # nats-py raises its own and asyncio's: nothing to fetch
                if not self.link.connected:
                    raise
                continue
            # A delivery lost on the way (a NATS server gone, a reconnect) is
            # delivered again only after ack_wait, behind what follows it: at
            # the first gap in the consumer's numbers, stop and have it rewound.
            missed = None
            for index, message in enumerate(messages):
                delivery = delivery_number(message)
                if delivery != next_delivery:
                    missed = f"delivery {next_delivery} went missing (got {delivery})"
                    messages = messages[:index]
                    break
                next_delivery += 1
            # Every fetched message (up to a gap) is handled before the next
            # fetch, whatever happens to NATS meanwhile: one skipped here and
            # delivered again later would come after newer ones and be taken
            # for a duplicate.
            for part in _parts(messages):
                batch, skipped = self._sort(part)
                await self._deliver(batch)
                if self.stopping:
                    return  # unacknowledged ones come again (link.py rewinds)
                for origin, seq in skipped:  # only now: a mark covers all before it
                    self.state.record(origin, seq)
                for message in part:
                    await _ack(message)
                # In stream order, from the floor on: all before it is handled too.
                self.state.stream_seq = stream_number(part[-1])
            if time.monotonic() - self._saved_at >= SAVE_INTERVAL:
                self.state.save()
                self._saved_at = time.monotonic()
            if missed is not None:
                raise _MissedDeliveryError(missed)
            backoff.reset()
            self.last_error = None

    def _resume_at(self) -> int | None:
        """Where a lost consumer is made again from; None: this node never imported."""
        if self.state.stream_seq:
            return self.state.stream_seq + 1
        if self.state.marks:
            return 1  # imported by a version that kept no stream seq: the duplicates are dropped
        return None

    def _sort(self, messages: list[Msg]) -> tuple[list[_Import], list[tuple[Origin, int]]]:
        """What of a fetched batch is to be fired here, and what is skipped."""
        batch: list[_Import] = []
        skipped: list[tuple[Origin, int]] = []
        planned: dict[Origin, int] = {}
        # A body this much under the limit fits with the marker and a new
        # _stamp, without being encoded once more to know (see _fits).
        room = self.config.max_event_size - MARKER_ROOM
        for message in messages:
            # Own events first, from one header: a node reads its own
            # exports back, as many as it imports, and needs nothing else of them.
            if message.headers is not None and message.headers.get(ORIGIN) == self.node:
                self.own += _events_in(message)
                continue
            try:
                envelope = Envelope.from_headers(message.headers)
                count = batch_size(message.headers)
                events = (
                    [(envelope.seq, message.data)]
                    if count is None
                    else unpack_batch(envelope, count, message.data)
                )
            except RemoteProtocolError as exc:
                log.warning("skipping a message on %s: %s", message.subject, exc)
                self.rejected += 1
                continue
            origin = (envelope.node, envelope.epoch)
            delivered = planned.get(origin, self.state.delivered(origin))
            for seq, body in events:
                # Duplicates before the body is decoded: also the part of a
                # resent backlog that was cut into batches differently.
                if delivered is not None and seq <= delivered:
                    self.duplicates += 1
                    continue
                try:
                    tag, data = unpack_body(body)
                except RemoteProtocolError as exc:
                    log.warning("skipping an event on %s: %s", message.subject, exc)
                    self.rejected += 1
                    continue
                if self._selects is not None and not self._selects(tag):
                    self.filtered += 1
                    skipped.append((origin, seq))
                    continue
                # The marker first: the exporter knows an imported event by it
                # without decoding the data (state.marked_first).
                marker = origin_marker(envelope.node, envelope.epoch, seq, data.pop("_stamp", None))
                data.pop(ORIGIN_KEY, None)  # the marker replaces any the data had
                data = {ORIGIN_KEY: marker, **data}
                planned[origin] = delivered = seq
                if len(body) <= room or self._fits(tag, data):
                    batch.append(_Import(origin, seq, tag, data))
                else:
                    self.rejected += 1
                    skipped.append((origin, seq))
        return batch, skipped

    def _fits(self, tag: str, data: dict[str, Any]) -> bool:
        # Checked before firing: the fire adds only its _stamp, and a batch
        # must end with a fire that is sent (its acknowledgement covers the batch).
        try:
            body = pack_body(tag, {**data, "_stamp": utc_stamp(True)})
            check_event_size(body, self.config.max_event_size)
        except LocalProtocolError as exc:
            log.error("cannot fire %r from %s here: %s", tag, data[ORIGIN_KEY]["node"], exc)
            return False
        return True

    async def _deliver(self, batch: list[_Import]) -> None:
        """Fire ``batch`` in order: all but the last without waiting, the last
        acknowledged. The publisher commits one connection's events in order,
        so that acknowledgement covers the others, unless the connection was
        replaced in between (a restarted publisher); so for a batch of more
        than one the journal confirms each, and what it lacks is fired again."""
        if self.direct is not None:
            await self._deliver_direct(self.direct, batch)
            return
        backoff = Backoff()
        while batch and not self.stopping:
            acked: int | None = None
            try:
                for index, item in enumerate(batch):
                    last = index == len(batch) - 1
                    event = await self.client.fire(item.tag, item.data, FIRE_TIMEOUT, ack=last)
                    acked = event.seq if last else None
            except BusError as exc:
                self._report(f"import: firing on the local bus: {exc}")
                await backoff.sleep()  # what the publisher took is committed by then
            if acked is not None and len(batch) == 1:
                self.state.record(batch[0].origin, batch[0].seq, acked)
                landed = {(batch[0].origin, batch[0].seq)}
            else:
                landed = set(await asyncio.to_thread(self.state.catch_up, self.journal))
            left = [i for i in batch if (i.origin, i.seq) not in landed]
            self.imported += len(batch) - len(left)
            batch = left

    async def _deliver_direct(self, direct: DirectFire, batch: list[_Import]) -> None:
        """Hand ``batch`` to the intake until all of it is journaled. The
        intake takes one call as one journal batch, so a refusal is of all of
        it: what is fired again never lands behind a later event of its origin."""
        backoff = Backoff()
        while batch and not self.stopping:
            landed = await direct.fire([(item.tag, item.data) for item in batch])
            left: list[_Import] = []
            for item, seq in zip(batch, landed.seqs, strict=True):
                if seq is None:
                    left.append(item)
                else:
                    self.state.record(item.origin, item.seq, seq)
            self.imported += len(batch) - len(left)
            batch = left
            if landed.refused is not None:
                self._report(f"import: the local journal refused {len(left)}: {landed.refused}")
                await backoff.sleep()

    def _report(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s; retrying", message)
        self.last_error = message


def _parts(messages: list[Msg]) -> list[list[Msg]]:
    """``messages`` in runs of about DELIVER_EVENTS events (batches count as
    what they carry), so one delivery's memory and journal batch stay bounded."""
    parts: list[list[Msg]] = []
    part: list[Msg] = []
    events = 0
    for message in messages:
        count = _events_in(message)
        if part and events + count > DELIVER_EVENTS:
            parts.append(part)
            part, events = [], 0
        part.append(message)
        events += count
    if part:
        parts.append(part)
    return parts


def _events_in(message: Msg) -> int:
    """How many events a message says it carries (without checking it)."""
    headers = message.headers
    if headers is None or BATCH not in headers:
        return 1
    try:
        return max(int(headers[BATCH]), 1)
    except ValueError:
        return 1  # rejected when sorted


async def _ack(message: Msg) -> None:
    # A lost acknowledgement costs a redelivery, which is dropped as a duplicate.
    with contextlib.suppress(nats.errors.Error, OSError):
        await message.ack()
