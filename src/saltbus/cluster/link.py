"""The node's connection to NATS, its JetStream stream and its durable consumer.

nats-py reconnects by itself once connected; the first connection is
retried here, so a node starts (and its bus works) while NATS is away.
Publishes are not buffered across a reconnect (``pending_size=0``): a
publish while disconnected fails at once, so the exporter never has a later
event reach the stream ahead of an earlier one that was lost with the old
connection (exporter.py relies on this for the per-origin order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Final, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from saltbus.cluster.publisher import Publisher
from saltbus.cluster.pull import Puller
from saltbus.cluster.settings import ClusterSettings

log = logging.getLogger("saltbus.cluster")

T = TypeVar("T")

RETRY_MIN: Final = 0.5
RETRY_MAX: Final = 5.0
RECONNECT_WAIT: Final = 1.0
API_TIMEOUT: Final = 5.0
# Delivered and not yet acknowledged, per consumer: a bound on what a node
# holds in memory and on what is delivered again after a crash.
MAX_ACK_PENDING: Final = 2048
# Only a stalled bus takes this long: the importer acknowledges each event
# as soon as its local fire is, and a redelivery is dropped as a duplicate.
ACK_WAIT: Final = 60.0


class Backoff:
    def __init__(self, low: float = RETRY_MIN, high: float = RETRY_MAX) -> None:
        self.low, self.high, self.delay = low, high, low
        self.until: float | None = None  # while sleeping: when it ends (monotonic)

    def reset(self) -> None:
        self.delay = self.low

    async def sleep(self) -> None:
        self.until = time.monotonic() + self.delay
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.until = None
        self.delay = min(self.delay * 2, self.high)


class Link:
    """One NATS connection, shared by the exporter and the importer."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._publisher: Publisher | None = None
        self._up = asyncio.Event()
        self._stream_checked = False
        self.last_error: str | None = None
        self.connects = 0
        # The JetStream requests NATS has not answered yet, and since when (stats).
        self._asking: dict[object, tuple[str, float]] = {}
        # The stream's own limit on a message's size (None: none), for the export's batches.
        self.max_msg_size: int | None = None

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "wait_up() first"
        return self._js

    @property
    def publisher(self) -> Publisher:
        """The export's publishes (see publisher.py)."""
        assert self._publisher is not None, "wait_up() first"
        return self._publisher

    @property
    def max_message(self) -> int:
        """The largest message NATS takes now: the server's max_payload, or
        the stream's max_msg_size when that is smaller."""
        payload = self.nc.max_payload if self.nc is not None else 0
        if self.max_msg_size is not None and 0 < self.max_msg_size < payload:
            return self.max_msg_size
        return payload

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def server(self) -> str | None:
        if self.nc is None or not self.nc.is_connected or self.nc.connected_url is None:
            return None
        url = self.nc.connected_url
        return f"{url.scheme}://{url.netloc}"

    async def wait_up(self) -> None:
        await self._up.wait()

    async def run(self) -> None:
        """Connect, retrying until it works (nats-py reconnects after that)."""
        backoff = Backoff()
        while self.nc is None:
            try:
                self.nc = await nats.connect(
                    servers=list(self.settings.servers),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT,
                    pending_size=0,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_disconnected,
                    **self.settings.connect_kwargs(),
                )
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                self._report(f"cannot connect to NATS ({', '.join(self.settings.servers)}): {exc}")
                await backoff.sleep()
        self._js = self.nc.jetstream(timeout=API_TIMEOUT)
        self._publisher = Publisher(self.nc)
        await self._publisher.start()
        self.connects += 1
        log.info("connected to NATS at %s", self.server)
        self._up.set()

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        self._up.clear()
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), API_TIMEOUT)

    # -- the stream and the consumer ------------------------------------------

    async def ensure_stream(self) -> None:
        """Create the stream when it is missing (once per connection, or after a failure)."""
        if self._stream_checked:
            return
        settings = self.settings
        try:
            info = await self._stream_info()
        except nats.js.errors.NotFoundError:
            stream = StreamConfig(
                name=settings.stream,
                subjects=[f"{settings.subject_prefix}.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                num_replicas=settings.replicas,
                duplicate_window=settings.duplicate_window,
                max_age=settings.max_age,
                max_bytes=settings.max_bytes,
            )
            await self._ask(f"stream create {settings.stream}", self.js.add_stream(stream))
            log.info("created the JetStream stream %s", settings.stream)
        else:
            config = info.config
            size = config.max_msg_size
            self.max_msg_size = size if size is not None and size > 0 else None
            await self._apply_limits(config)
            if config.num_replicas not in (None, settings.replicas):
                log.warning(
                    "stream %s has %s replicas, not the %d configured: it is left as it is",
                    settings.stream,
                    config.num_replicas,
                    settings.replicas,
                )
        self._stream_checked = True

    async def _apply_limits(self, config: StreamConfig) -> None:
        """Give an existing stream the configured retention (``max_age``,
        ``max_bytes``) when it has other limits: the configuration wins."""
        settings = self.settings
        age = config.max_age or 0.0  # 0: no limit
        if abs(age - settings.max_age) < 0.001 and (config.max_bytes or -1) == settings.max_bytes:
            return
        old = f"max_age {age:g} s, max_bytes {config.max_bytes or -1}"
        config.max_age, config.max_bytes = settings.max_age, settings.max_bytes
        try:
            await self._ask(f"stream update {settings.stream}", self.js.update_stream(config))
        except nats.js.errors.APIError as exc:
            log.warning(
                "stream %s keeps %s: NATS refused the change: %s", settings.stream, old, exc
            )
            return
        log.info(
            "stream %s now keeps max_age %g s, max_bytes %d (was %s)",
            settings.stream,
            settings.max_age,
            settings.max_bytes,
            old,
        )

    async def stream_state(self) -> dict[str, Any]:
        """The stream's size and limits, for the statistics."""
        info = await self.js.stream_info(self.settings.stream)
        return {
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "first_seq": info.state.first_seq,
            "last_seq": info.state.last_seq,
            "max_age": info.config.max_age or 0,
            "max_bytes": info.config.max_bytes or -1,
        }

    def stream_failed(self) -> None:
        """Check the stream again next time (it may have been deleted)."""
        self._stream_checked = False

    async def bind_consumer(
        self, filter_subject: str, resume_at: int | None = None
    ) -> tuple[Puller, int]:
        """The node's durable pull consumer, created, adjusted or rewound, and
        bound; with the consumer sequence number its next delivery will have.

        ``resume_at``: for a node that imported before, the first stream seq
        it has not handled. A missing consumer is then made again from there:
        ``import_start`` chooses only a node's first consumer. (A rewind below
        deletes the consumer before making it again; when NATS fails between
        the two, as when its leader is killed, the next bind finds none, and
        starting from the stream's end would skip what came after the floor.)

        Messages delivered to an earlier subscription and never acknowledged
        (a crash, a lost connection, a delivery lost in a failover) would come
        back only after ``ack_wait``, behind newer ones; per-origin order needs
        them first. So when any are pending, the consumer is made again from
        its acknowledgement floor: everything after it comes again, in stream
        order, and what was delivered already is dropped by the importer's
        per-origin check. The importer asks for this again when a delivery
        goes missing (a gap in the consumer sequence numbers)."""
        await self.ensure_stream()
        stream, name = self.settings.stream, self.settings.node_name
        try:
            info: ConsumerInfo | None = await self._ask(
                f"consumer info {stream} {name}", self.js.consumer_info(stream, name)
            )
        except nats.js.errors.NotFoundError:
            info = None
        next_delivery = 1
        if info is None and resume_at is not None:
            await self._add_lost_consumer(filter_subject, resume_at)
        elif info is None:
            await self._add_first_consumer(filter_subject)
        elif info.num_ack_pending:
            start = _rewind_point(info)
            await self._ask(
                f"consumer delete {stream} {name}", self.js.delete_consumer(stream, name)
            )
            await self._add_consumer(filter_subject, start, info.config)
            log.info(
                "consumer %s had %d unacknowledged; delivering again from %s",
                name,
                info.num_ack_pending,
                "where it started" if start is None else f"stream seq {start}",
            )
        else:
            delivered = info.delivered.consumer_seq if info.delivered is not None else None
            next_delivery = (delivered or 0) + 1
            if info.config.filter_subject != filter_subject:
                config = info.config
                config.filter_subject = filter_subject
                # An update: same name.
                await self._ask(
                    f"consumer update {stream} {name}", self.js.add_consumer(stream, config)
                )
                log.info("consumer %s now filters %s", name, filter_subject)
        assert self.nc is not None
        puller = Puller(self.nc, stream, name)
        await puller.start()
        return puller, next_delivery

    async def _add_first_consumer(self, filter_subject: str) -> None:
        """The node's first consumer, starting as ``import_start`` says."""
        name, start = self.settings.node_name, self.settings.import_start
        if start.mode == "all":
            await self._add_consumer(filter_subject, 1)
            log.info("created the consumer %s (the stream's history: from its start)", name)
        elif start.mode == "since":
            moment = start.start_time()
            await self._add_consumer(filter_subject, None, since=moment)
            log.info("created the consumer %s (from %s)", name, moment)
        else:
            last = (await self._stream_info()).state.last_seq
            await self._add_consumer(filter_subject, last + 1)
            log.info("created the consumer %s (from stream seq %d)", name, last + 1)

    async def _add_lost_consumer(self, filter_subject: str, resume_at: int) -> None:
        """The consumer of a node that imported before, made again from ``resume_at``."""
        last = (await self._stream_info()).state.last_seq
        # Beyond the stream's end: the stream was made anew, all of it is new here.
        start = resume_at if resume_at <= last + 1 else 1
        await self._add_consumer(filter_subject, start)
        log.warning(
            "consumer %s was missing; made again from stream seq %d, after what was imported",
            self.settings.node_name,
            start,
        )

    async def _add_consumer(
        self,
        filter_subject: str,
        start: int | None,
        old: ConsumerConfig | None = None,
        since: datetime | None = None,
    ) -> None:
        """Make the consumer from stream seq ``start``; with None, from
        ``since``, else from where ``old`` started (nothing acknowledged yet)."""
        name = self.settings.node_name
        policy, start_seq, start_time = DeliverPolicy.BY_START_SEQUENCE, start, None
        if start is None:
            if since is None and old is not None:
                since = old.opt_start_time
            if since is not None:
                policy, start_time = DeliverPolicy.BY_START_TIME, since
            else:
                start_seq = (old.opt_start_seq if old is not None else None) or 1
        config = ConsumerConfig(
            name=name,
            durable_name=name,
            description=f"saltbus node {name}",
            deliver_policy=policy,
            opt_start_seq=None if start_seq is None else max(start_seq, 1),
            opt_start_time=start_time,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT if old is None else old.ack_wait,
            max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING if old is None else old.max_ack_pending,
            filter_subject=filter_subject,
        )
        stream = self.settings.stream
        await self._ask(f"consumer create {stream} {name}", self.js.add_consumer(stream, config))

    async def _ask(self, what: str, request: Awaitable[T]) -> T:
        """``request``'s answer; until it comes, ``saltbus stats`` says the
        link waits for ``what``."""
        token = object()
        self._asking[token] = (what, time.monotonic())
        try:
            return await request
        finally:
            del self._asking[token]

    @property
    def asking(self) -> tuple[str, float] | None:
        """The oldest JetStream request not answered yet, and when it was made."""
        return min(self._asking.values(), key=lambda asked: asked[1], default=None)

    async def _stream_info(self) -> StreamInfo:
        stream = self.settings.stream
        info: StreamInfo = await self._ask(f"stream info {stream}", self.js.stream_info(stream))
        return info

    async def consumer_info(self) -> ConsumerInfo:
        info: ConsumerInfo = await self.js.consumer_info(
            self.settings.stream, self.settings.node_name
        )
        return info

    # -- callbacks ---------------------------------------------------------

    def _report(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s", message)
        self.last_error = message

    async def _on_error(self, exc: Exception) -> None:
        if self.nc is None:  # nats-py retries the first connection by itself too
            servers = ", ".join(self.settings.servers)
            self._report(f"cannot connect to NATS ({servers}): {exc}")
        else:
            self._report(f"NATS: {exc!r}")

    async def _on_disconnected(self, *_: Any) -> None:
        if self.nc is not None:
            log.warning("disconnected from NATS; reconnecting")
        self._up.clear()

    async def _on_reconnected(self, *_: Any) -> None:
        self.connects += 1
        self._stream_checked = False
        log.info("reconnected to NATS at %s", self.server)
        self._up.set()


def _rewind_point(info: ConsumerInfo) -> int | None:
    """The first stream seq not known to be acknowledged; None: nothing was
    acknowledged yet, so from where the consumer started (a seq or a time)."""
    floor = info.ack_floor
    if floor is not None and floor.consumer_seq:
        return (floor.stream_seq or 0) + 1
    return None
