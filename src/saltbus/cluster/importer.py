"""Events of the other nodes in from the stream, fired on the local bus.

The node reads through its durable pull consumer (named after it) in stream
order. For each message: its own events are skipped (NATS 2.9 cannot filter
on a header); what the import patterns do not select is skipped; the rest is
fired on the local bus with ``_saltbus_origin: {node, seq, epoch, stamp}``
added, as an acknowledged fire, and only then acknowledged to NATS.

Exactly once, in order per origin: per origin (node and epoch) the highest
origin seq delivered here is kept (state.py), and a message at or below it
is a duplicate (a redelivery after a crash or a lost acknowledgement, a
resend after the duplicate window) and is dropped. The alternative, one
message in flight per consumer (``max_ack_pending=1``), would cost a round
trip to NATS per event and still not catch a resend that JetStream no longer
recognises. Dropping at-or-below is right only if an origin's events reach
this node in order: the exporter publishes them in order (exporter.py), the
consumer delivers in stream order, every fetched message is handled before
the next fetch, and messages left unacknowledged by an earlier subscription
are delivered again before any newer one (link.py rewinds the consumer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Final

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from saltbus.client.aio import AsyncClient
from saltbus.cluster.envelope import Envelope
from saltbus.cluster.link import Backoff, Link
from saltbus.cluster.settings import ClusterSettings
from saltbus.cluster.state import ORIGIN_KEY, ImportState, Origin, origin_marker
from saltbus.cluster.subjects import subject_filter
from saltbus.config import Config
from saltbus.errors import BusError, LocalProtocolError, RemoteProtocolError
from saltbus.event import tag_matcher
from saltbus.wire import unpack_body

log = logging.getLogger("saltbus.cluster")

FETCH_BATCH: Final = 256
FETCH_WAIT: Final = 1.0
FIRE_TIMEOUT: Final = 10.0


class Importer:
    def __init__(
        self, config: Config, settings: ClusterSettings, link: Link, journal: Path
    ) -> None:
        self.config = config
        self.settings = settings
        self.link = link
        self.journal = journal
        self.node = settings.node_name
        self.filter = subject_filter(settings.import_, settings.subject_prefix)
        self._matchers = [tag_matcher(p.pattern, p.match_type) for p in settings.import_]
        self.state = ImportState.load(
            journal.with_suffix(".positions") / f"cluster.{settings.stream}.import"
        )
        self.client = AsyncClient(config, reconnect=False)
        self.bound = asyncio.Event()
        self.imported = 0
        self.duplicates = 0
        self.own = 0
        self.filtered = 0
        self.rejected = 0
        self.failures = 0
        self.last_error: str | None = None

    async def start(self) -> None:
        """Learn, from the local journal, what was delivered here before."""
        found = await asyncio.to_thread(self.state.catch_up, self.journal)
        if found:
            log.debug("found %d imported events in the journal after the saved state", found)
        self.state.save()

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.state.save()
        await self.client.close()

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            await self.link.wait_up()
            subscription: JetStreamContext.PullSubscription | None = None
            try:
                subscription = await self.link.bind_consumer(self.filter.subject)
                self.bound.set()
                await self._consume(subscription, backoff)
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
            await backoff.sleep()

    async def _consume(
        self, subscription: JetStreamContext.PullSubscription, backoff: Backoff
    ) -> None:
        while True:
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
            except TimeoutError:  # nats-py raises its own and asyncio's: nothing to fetch
                if not self.link.connected:
                    raise
                continue
            # Every fetched message is handled before the next fetch, whatever
            # happens to NATS meanwhile: one skipped here and delivered again
            # later would come after newer ones and be taken for a duplicate.
            for message in messages:
                await self._handle(message)
            self.state.save()
            backoff.reset()
            self.last_error = None

    async def _handle(self, message: Msg) -> None:
        try:
            envelope = Envelope.from_headers(message.headers)
            tag, data = unpack_body(message.data)
        except RemoteProtocolError as exc:
            log.warning("skipping a message on %s: %s", message.subject, exc)
            self.rejected += 1
            await _ack(message)
            return
        origin = (envelope.node, envelope.epoch)
        delivered = self.state.delivered(origin)
        if envelope.node == self.node:
            self.own += 1
        elif delivered is not None and envelope.seq <= delivered:
            self.duplicates += 1
        elif self._matchers and not any(match(tag) for match in self._matchers):
            self.filtered += 1
            self.state.record(origin, envelope.seq)
        else:
            await self._deliver(origin, envelope, tag, data)
        await _ack(message)

    async def _deliver(
        self, origin: Origin, envelope: Envelope, tag: str, data: dict[str, Any]
    ) -> None:
        data[ORIGIN_KEY] = origin_marker(
            envelope.node, envelope.epoch, envelope.seq, data.pop("_stamp", None)
        )
        backoff = Backoff()
        while True:
            try:
                event = await self.client.fire(tag, data, FIRE_TIMEOUT, ack=True)
            except LocalProtocolError as exc:  # too large with the marker, say
                log.error("cannot fire %r from %s here: %s", tag, envelope.node, exc)
                self.rejected += 1
                self.state.record(origin, envelope.seq)
                return
            except BusError as exc:
                self._report(f"import: firing on the local bus: {exc}")
                await backoff.sleep()
                # It may have been fired and its acknowledgement lost: the journal knows.
                await asyncio.to_thread(self.state.catch_up, self.journal)
                delivered = self.state.delivered(origin)
                if delivered is not None and delivered >= envelope.seq:
                    self.imported += 1
                    return
                continue
            self.state.record(origin, envelope.seq, event.seq)
            self.imported += 1
            return

    def _report(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s; retrying", message)
        self.last_error = message


async def _ack(message: Msg) -> None:
    # A lost acknowledgement costs a redelivery, which is dropped as a duplicate.
    with contextlib.suppress(nats.errors.Error, OSError):
        await message.ack()
