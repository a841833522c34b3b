"""The asyncio protocols: thin wrappers that feed the codec and the fan-out."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from saltbus.errors import RemoteProtocolError
from saltbus.server.fanout import FanOut, Subscriber
from saltbus.server.sockets import peer_label
from saltbus.wire import FrameDecoder, body_tag

log = logging.getLogger("saltbus.server")


class ConnectionRegistry:
    """The open connections of one server, so shutdown can close them all."""

    def __init__(self) -> None:
        self.pull: set[PullConnection] = set()
        self.subscribers: set[SubscriberConnection] = set()


class PullConnection(asyncio.Protocol):
    """A firing client: frames in, bodies to the fan-out. A bad frame closes
    this connection only, after the good frames before it were published."""

    def __init__(self, fanout: FanOut, registry: ConnectionRegistry, max_frame_size: int) -> None:
        self._fanout = fanout
        self._registry = registry
        self._decoder = FrameDecoder(max_frame_size=max_frame_size)
        self._transport: asyncio.Transport | None = None
        self.peer = "unknown peer"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.peer = peer_label(transport.get_extra_info("socket"))
        self._registry.pull.add(self)

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        bodies: list[bytes] = []
        try:
            decoder.receive_data(data)
            while (frame := decoder.next_frame()) is not None:
                body_tag(frame.body)  # a body Salt's listeners could not split is refused here
                bodies.append(frame.body)
        except RemoteProtocolError as exc:
            log.warning("closing pull connection from %s: %s", self.peer, exc)
            self.close()
        finally:
            if bodies:
                self._fanout.publish(bodies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.pull.discard(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class SubscriberConnection(asyncio.Protocol):
    """A listener on the publish socket. What it writes is read and ignored,
    as Salt's publisher does."""

    def __init__(
        self, fanout: FanOut, registry: ConnectionRegistry, max_events: int, max_bytes: int
    ) -> None:
        self._fanout = fanout
        self._registry = registry
        self._max_events = max_events
        self._max_bytes = max_bytes
        self.subscriber: Subscriber | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.subscriber = Subscriber(
            self._transport,
            peer_label(transport.get_extra_info("socket")),
            max_events=self._max_events,
            max_bytes=self._max_bytes,
        )
        self._fanout.add(self.subscriber)
        self._registry.subscribers.add(self)

    def data_received(self, data: bytes) -> None:
        pass

    def pause_writing(self) -> None:
        if self.subscriber is not None:
            self.subscriber.pause()

    def resume_writing(self) -> None:
        if self.subscriber is not None:
            self.subscriber.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.subscriber is not None:
            self._fanout.remove(self.subscriber)
        self._registry.subscribers.discard(self)

    @property
    def pending_bytes(self) -> int:
        if self._transport is None or self._transport.is_closing():
            return 0
        queued = self.subscriber.stats().queued_bytes if self.subscriber else 0
        return self._transport.get_write_buffer_size() + queued

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
