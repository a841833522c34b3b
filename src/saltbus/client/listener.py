"""The blocking listener: plain sockets and ``selectors``, no event loop, no thread.

It raises :class:`~saltbus.errors.SaltbusError` subclasses;
:mod:`saltbus.client.saltstyle` turns those into Salt's return conventions.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Final

from saltbus.client.session import SubscriberSession
from saltbus.client.sockets import (
    RETRY_INTERVAL,
    auth_frame,
    connect,
    describe,
    refused_reason,
)
from saltbus.config import Config
from saltbus.errors import AccessDeniedError, BusClosedError, NoPublisherError, RemoteProtocolError
from saltbus.event import Event, MatchType
from saltbus.wire import FrameDecoder

RECV_SIZE: Final = 256 * 1024
SUBSCRIBE_TIMEOUT: Final = 2.0


class Listener:
    """Receives events from a bus's publish socket, one at a time.

    ``receive(timeout)`` returns the next matching :class:`Event`, or None when
    ``timeout`` passes; the connection and everything already received stay in
    place across timeouts, so polling with short timeouts loses nothing.

    The tag filter is sent to a saltbus publisher, which then sends only
    matching events (a Salt publisher ignores it; the filter also applies
    here). With ``reconnect`` (the default), a lost connection is reopened
    within the time ``receive`` was given, and with ``resume`` the publisher
    replays from its journal what was fired meanwhile: nothing is lost or
    delivered twice. ``since`` (with the publisher's ``epoch``, when known)
    starts the first connection after that sequence number.
    """

    def __init__(
        self,
        config: Config,
        tag: str = "",
        match_type: MatchType | str | None = None,
        *,
        resume: bool = True,
        reconnect: bool = True,
        since: int | None = None,
        epoch: int | None = None,
        name: str | None = None,
    ) -> None:
        self.config = config
        self.reconnect = reconnect
        pattern = (tag, MatchType.parse(match_type, config.event_match_type))
        self.session = SubscriberSession(
            [pattern],
            config.generation.pub_framing,
            resume=resume,
            since=since,
            epoch=epoch,
            salt_version=config.salt_version,
            name=name,
        )
        self._sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._decoder = FrameDecoder(max_frame_size=config.max_frame_size)
        self._ready: deque[Event] = deque()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def last_seq(self) -> int | None:
        """The sequence number of the last event received (None from a Salt publisher)."""
        return self.session.last_seq

    def connect(self, timeout: float = 0.0) -> None:
        """Connect to the publish socket (retrying for ``timeout`` seconds)."""
        if self._sock is not None:
            return
        sock = connect(self.config.pub_address, timeout)
        saltbus = self.config.served_by_saltbus()
        self.session.publisher_is_saltbus = saltbus
        if saltbus:
            try:
                auth = auth_frame(self.config, self.session.framing)
                sock.sendall((auth or b"") + self.session.hello())
            except OSError as exc:
                # A publisher that refuses us says why before it closes.
                refused_reason(sock)
                sock.close()
                raise BusClosedError(f"the publisher closed the connection: {exc}") from None
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        self._sock, self._selector = sock, selector
        self._decoder = FrameDecoder(max_frame_size=self.config.max_frame_size)
        if saltbus:
            # A saltbus publisher confirms the subscription; waiting for that
            # means an event fired after connect() returns is not missed because
            # the publisher had not yet accepted this connection. (A Salt
            # publisher confirms nothing, and has that race.)
            self._await_subscribed(max(timeout, SUBSCRIBE_TIMEOUT))

    def _await_subscribed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.session.subscribed:
            self._drain_frames()
            remaining = deadline - time.monotonic()
            if self.session.subscribed or remaining <= 0:
                return
            self._fill(remaining)

    def receive(
        self, timeout: float | None = None, *, reconnect: bool | None = None
    ) -> Event | None:
        """The next matching event; None after ``timeout`` seconds (None: wait
        for ever, 0: only what has already arrived). Without ``reconnect``,
        raises :class:`BusClosedError` when the publisher goes away."""
        if self._ready and self._sock is not None:
            return self._ready.popleft()  # decoded from an earlier read
        reconnect = self.reconnect if reconnect is None else reconnect
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if self._sock is None:
                    self.connect()
                event = self._receive(remaining)
            except AccessDeniedError:
                self.close()
                raise
            except (NoPublisherError, BusClosedError):
                self.close()
                if not reconnect:
                    raise
                if remaining is not None and remaining <= 0:
                    return None
                time.sleep(RETRY_INTERVAL if remaining is None else min(RETRY_INTERVAL, remaining))
                continue
            if event is not None or (remaining is not None and remaining <= 0):
                return event

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.receive(None)
            if event is not None:
                yield event

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Listener:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _receive(self, timeout: float | None) -> Event | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready:
                return self._ready.popleft()
            self._drain_frames()
            if self._ready:
                return self._ready.popleft()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._fill(remaining) and remaining is not None and remaining <= 0:
                return None

    def _drain_frames(self) -> None:
        """Turn every complete frame received into events ready to return."""
        decoder, handle, ready = self._decoder, self.session.handle, self._ready
        while True:
            try:
                frame = decoder.next_frame()
            except RemoteProtocolError as exc:
                self.close()
                raise RemoteProtocolError(
                    f"publisher at {describe(self.config.pub_address)} sent an invalid frame: {exc}"
                ) from None
            if frame is None:
                return
            event = handle(frame)
            if event is not None:
                ready.append(event)

    def _fill(self, timeout: float | None) -> bool:
        """Read what the socket has within ``timeout``; False when nothing came."""
        assert self._selector is not None and self._sock is not None
        try:
            # Whatever has arrived, without a select() first: behind a busy
            # publisher there nearly always is something.
            data = self._sock.recv(RECV_SIZE)
        except BlockingIOError:
            if not self._selector.select(timeout):
                return False
            try:
                data = self._sock.recv(RECV_SIZE)
            except BlockingIOError:
                return False
            except OSError as exc:
                raise BusClosedError(f"connection to the publisher failed: {exc}") from None
        except OSError as exc:
            raise BusClosedError(f"connection to the publisher failed: {exc}") from None
        if not data:
            raise BusClosedError(
                f"the publisher at {describe(self.config.pub_address)} closed the connection"
            )
        self._decoder.receive_data(data)
        self.session.observe_framing(self._decoder.framing)
        return True
