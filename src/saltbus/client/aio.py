"""The asyncio client, for programs that live in an event loop.

    async with AsyncClient(config) as bus:
        async for event in bus.subscribe("salt/auth"):
            ...
        await bus.fire("app/ready", {"ok": True})

Each subscription has its own bounded queue (as in nats.py): a subscription
that is not read fast enough drops events and its next read raises
:class:`SlowConsumerError` once, saying how many, instead of growing without
bound or slowing the other subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final

from saltbus.client.firing import FiringSession
from saltbus.client.session import SubscriberSession
from saltbus.client.sockets import RETRY_INTERVAL, auth_frame, describe, read_secret
from saltbus.config import Address, Config
from saltbus.errors import (
    AccessDeniedError,
    BusClosedError,
    BusTimeoutError,
    JournalUnavailableError,
    LaggedError,
    NoPublisherError,
    RemoteProtocolError,
    SaltbusError,
    SlowConsumerError,
)
from saltbus.event import Event, MatchType, tag_matcher
from saltbus.wire import FrameDecoder

log = logging.getLogger("saltbus.client")

READ_SIZE: Final = 256 * 1024
DEFAULT_MAX_PENDING: Final = 65_536
SUBSCRIBE_TIMEOUT: Final = 2.0


class Subscription:
    """Events matching one tag filter. Read with ``await sub.next(timeout)`` or
    ``async for event in sub``."""

    def __init__(
        self, client: AsyncClient, pattern: tuple[str, MatchType], max_pending: int
    ) -> None:
        self._client = client
        self.pattern = pattern
        self._matcher = tag_matcher(*pattern)
        self._queue: asyncio.Queue[Event] = asyncio.Queue(max_pending)
        self._dropped = 0
        self._closed: BaseException | None = None
        self._wakeup = asyncio.Event()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _offer(self, event: Event) -> None:
        if not self._matcher(event.tag):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._dropped += 1
        self._wakeup.set()

    def _close(self, reason: BaseException) -> None:
        self._closed = reason
        self._wakeup.set()

    async def next(self, timeout: float | None = None) -> Event:
        """The next event. Raises :class:`BusTimeoutError` after ``timeout``
        seconds, :class:`SlowConsumerError` once after events were dropped, and
        :class:`BusClosedError` when the connection is gone and the queue empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                raise SlowConsumerError(
                    f"subscription dropped {dropped} events: its queue of "
                    f"{self._queue.maxsize} was full"
                )
            if not self._queue.empty():
                return self._queue.get_nowait()
            if self._closed is not None:
                raise BusClosedError(str(self._closed)) from self._closed
            self._wakeup.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BusTimeoutError(f"no event within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.next()
        except BusClosedError:
            raise StopAsyncIteration from None

    def unsubscribe(self) -> None:
        self._client._subscriptions.discard(self)
        self._client._update_filter()
        self._close(BusClosedError("unsubscribed"))


class AsyncClient:
    """A connection to one bus: subscriptions on its publish socket, firing on
    its pull socket (opened on the first :meth:`fire`)."""

    def __init__(self, config: Config, *, reconnect: bool = True, since: int | None = None) -> None:
        self.config = config
        self.reconnect = reconnect
        self.session = SubscriberSession(
            [("", MatchType.STARTSWITH)], config.generation.pub_framing, since=since
        )
        self._subscriptions: set[Subscription] = set()
        self._reader_task: asyncio.Task[None] | None = None
        self._pub_writer: asyncio.StreamWriter | None = None
        self._pull_reader: asyncio.StreamReader | None = None
        self._pull_writer: asyncio.StreamWriter | None = None
        self._fire_lock = asyncio.Lock()
        self._subscribed = asyncio.Event()
        self.firing = FiringSession.for_config(config)

    async def connect(self, timeout: float = 0.0) -> None:
        """Connect to the publish socket, retrying for ``timeout`` seconds."""
        if self._reader_task is not None:
            return
        reader, writer = await _open(self.config.pub_address, timeout)
        saltbus = self.config.served_by_saltbus()
        if saltbus:
            writer.write(
                (auth_frame(self.config, self.session.framing) or b"") + self.session.hello()
            )
        self._pub_writer = writer
        self._subscribed.clear()
        self._reader_task = asyncio.create_task(self._run(reader), name="saltbus-reader")
        if saltbus:
            # A saltbus publisher confirms the subscription (a Salt one does
            # not): after that, no event fired is missed for want of an accept.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), max(timeout, SUBSCRIBE_TIMEOUT))

    def subscribe(
        self,
        tag: str = "",
        match_type: MatchType | str | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> Subscription:
        """A new subscription; events received from now on that match are queued for it."""
        pattern = (tag, MatchType.parse(match_type, self.config.event_match_type))
        subscription = Subscription(self, pattern, max_pending)
        self._subscriptions.add(subscription)
        self._update_filter()
        return subscription

    def _update_filter(self) -> None:
        """Tell the publisher the union of what the subscriptions want."""
        frame = self.session.set_patterns([s.pattern for s in self._subscriptions])
        writer = self._pub_writer
        if writer is not None and not writer.is_closing() and self.config.served_by_saltbus():
            writer.write(frame)

    async def fire(
        self, tag: str, data: Mapping[str, Any], timeout: float = 1.0, *, ack: bool = False
    ) -> Event:
        """Fire one event (``_stamp`` added to a copy of ``data``) and return it
        as sent. With ``ack``, wait until the publisher journaled it and return
        it with its sequence number (:class:`BusTimeoutError` after ``timeout``,
        :class:`JournalUnavailableError` at once when it cannot journal it).
        Raises :class:`LocalProtocolError` (a ValueError) for bad input."""
        async with self._fire_lock:
            frame, request_id, event = self.firing.event(tag, data, ack)
            await self._send(frame, timeout)
            if request_id is None:
                return event
            try:
                seq = await asyncio.wait_for(self._ack(request_id), timeout)
            except TimeoutError:
                await self._close_pull()
                raise self.firing.ack_timeout(
                    timeout, served_by_saltbus=self.config.served_by_saltbus()
                ) from None
            return Event(event.tag, event.data, seq)

    async def _send(self, frame: bytes, timeout: float) -> None:
        if self._pull_reader is not None and self._pull_reader.at_eof():
            # The publisher closed this connection (it writes on it only to
            # answer); a write now would be taken by the kernel and lost.
            await self._close_pull()
        for attempt in (1, 2):
            if self._pull_writer is None:
                await self._open_pull(timeout)
            assert self._pull_writer is not None
            try:
                self._pull_writer.write(frame)
                await asyncio.wait_for(self._pull_writer.drain(), timeout)
                return
            except TimeoutError:
                await self._close_pull()
                raise self.firing.send_timeout(timeout) from None
            except OSError as exc:
                await self._close_pull()
                if attempt == 2:
                    raise NoPublisherError(f"cannot send to the publisher: {exc}") from None

    async def _open_pull(self, timeout: float) -> None:
        """Open the pull connection; on a tcp-mode bus, present the secret and
        wait to be admitted (a refused connection would lose what is written)."""
        secret = read_secret(self.config)
        reader, writer = await _open(self.config.pull_address, timeout)
        self._pull_reader, self._pull_writer = reader, writer
        hello = self.firing.connect(secret)
        if not hello:
            return
        writer.write(hello)
        wait = max(timeout, 1.0)
        try:
            await asyncio.wait_for(self._read_until(reader, self.firing.welcomed), wait)
        except TimeoutError:
            await self._close_pull()
            raise self.firing.welcome_timeout(wait) from None
        except SaltbusError:
            await self._close_pull()
            raise

    async def _ack(self, request_id: int) -> int:
        reader = self._pull_reader
        assert reader is not None
        seq: int | None = None

        def answered() -> bool:
            nonlocal seq
            seq = self.firing.acked(request_id)
            return seq is not None

        try:
            await self._read_until(reader, answered)
        except JournalUnavailableError:
            raise  # the connection is sound: the publisher answered
        except SaltbusError:
            await self._close_pull()
            raise
        assert seq is not None
        return seq

    async def _read_until(self, reader: asyncio.StreamReader, done: Callable[[], bool]) -> None:
        """Feed the firing session what the publisher writes until ``done()``."""
        while not done():
            try:
                data = await reader.read(65536)
            except OSError as exc:
                raise NoPublisherError(f"the publisher went away: {exc}") from None
            self.firing.receive_data(data)

    def drop_connection(self) -> None:
        """Close the publish connection as a publisher going away would: with
        ``reconnect`` it is reopened and resumed from the last seq (the cure
        of a reactor's watchdog for a subscription gone silent)."""
        if self._pub_writer is not None:
            self._pub_writer.transport.abort()

    async def close(self) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pub_writer is not None:
            self._pub_writer.close()
            self._pub_writer = None
        await self._close_pull()
        for subscription in list(self._subscriptions):
            subscription._close(BusClosedError("client closed"))

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _close_pull(self) -> None:
        writer, self._pull_writer = self._pull_writer, None
        self._pull_reader = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _run(self, reader: asyncio.StreamReader) -> None:
        """Read events; with ``reconnect``, reopen a lost connection and resume."""
        while True:
            reason = await self._read(reader)
            if not self.reconnect or isinstance(reason, AccessDeniedError):
                break
            log.info("%s; reconnecting", reason)
            reader = await self._reopen()
        for subscription in list(self._subscriptions):
            subscription._close(reason)

    async def _reopen(self) -> asyncio.StreamReader:
        if self._pub_writer is not None:
            self._pub_writer.close()
        while True:
            try:
                reader, writer = await _open(self.config.pub_address, 0.0)
            except NoPublisherError:
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            if self.config.served_by_saltbus():
                auth = auth_frame(self.config, self.session.framing) or b""
                writer.write(auth + self.session.hello())
            self._pub_writer = writer
            return reader

    async def _read(self, reader: asyncio.StreamReader) -> BaseException:
        """Dispatch events until the connection ends; returns why it ended."""
        decoder = FrameDecoder(max_frame_size=self.config.max_frame_size)
        session = self.session
        try:
            while data := await reader.read(READ_SIZE):
                decoder.receive_data(data)
                while (frame := decoder.next_frame()) is not None:
                    event = session.handle(frame)
                    if session.subscribed:
                        self._subscribed.set()
                    if event is not None:
                        for subscription in self._subscriptions:
                            subscription._offer(event)
        except (OSError, RemoteProtocolError, LaggedError, AccessDeniedError) as exc:
            return exc
        return BusClosedError(
            f"the publisher at {describe(self.config.pub_address)} closed the connection"
        )


async def _open(
    address: Address, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if isinstance(address, tuple):
                return await asyncio.open_connection(*address, limit=READ_SIZE)
            return await asyncio.open_unix_connection(os.fspath(address), limit=READ_SIZE)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            if time.monotonic() + RETRY_INTERVAL > deadline:
                raise NoPublisherError(
                    f"no publisher listening at {describe(address)} ({exc.strerror}); "
                    "is `saltbus serve` (or a Salt daemon) running with this sock_dir?"
                ) from None
            await asyncio.sleep(RETRY_INTERVAL)
