"""saltbus's own blocking clients: plain sockets and ``selectors``, no event
loop and no thread. They raise :class:`~saltbus.errors.SaltbusError` subclasses;
:mod:`saltbus.client.saltstyle` turns those into Salt's return conventions."""

from __future__ import annotations

import logging
import select
import selectors
import socket
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Final

from saltbus.client.sockets import connect, describe
from saltbus.config import Config
from saltbus.errors import BusClosedError, BusTimeoutError, NoPublisherError, RemoteProtocolError
from saltbus.event import Event, MatchType, TagMatcher, tag_matcher, utc_stamp
from saltbus.wire import FrameDecoder, check_event_size, encode_frame, pack_body, unpack_body

log = logging.getLogger("saltbus.client")

RECV_SIZE: Final = 256 * 1024


class Listener:
    """Receives events from a bus's publish socket, one at a time.

    ``receive(timeout)`` returns the next matching :class:`Event`, or None when
    ``timeout`` passes; the connection and everything already received stay in
    place across timeouts, so polling with short timeouts loses nothing.
    """

    def __init__(
        self,
        config: Config,
        tag: str = "",
        match_type: MatchType | str | None = None,
    ) -> None:
        self.config = config
        self._matcher: TagMatcher = tag_matcher(
            tag, MatchType.parse(match_type, config.event_match_type)
        )
        self._sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._decoder = FrameDecoder(max_frame_size=config.max_frame_size)

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, timeout: float = 0.0) -> None:
        """Connect to the publish socket (retrying for ``timeout`` seconds)."""
        if self._sock is not None:
            return
        sock = connect(self.config.pub_address, timeout)
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        self._sock, self._selector = sock, selector
        self._decoder = FrameDecoder(max_frame_size=self.config.max_frame_size)

    def receive(self, timeout: float | None = None) -> Event | None:
        """The next matching event; None after ``timeout`` seconds (None: wait
        for ever, 0: only what has already arrived). Raises
        :class:`BusClosedError` when the publisher goes away."""
        if self._sock is None:
            self.connect()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self._next_buffered()
            if event is not None:
                return event
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._fill(remaining) and remaining is not None and remaining <= 0:
                return None

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

    def _next_buffered(self) -> Event | None:
        while True:
            try:
                frame = self._decoder.next_frame()
            except RemoteProtocolError as exc:
                self.close()
                raise RemoteProtocolError(
                    f"publisher at {describe(self.config.pub_address)} sent an invalid frame: {exc}"
                ) from None
            if frame is None:
                return None
            try:
                tag, data = unpack_body(frame.body)
            except RemoteProtocolError as exc:
                log.warning("skipping an event that cannot be decoded: %s", exc)
                continue
            if self._matcher(tag):
                seq = frame.head.get("seq")
                return Event(tag, data, seq if isinstance(seq, int) else None)

    def _fill(self, timeout: float | None) -> bool:
        """Read what the socket has within ``timeout``; False when nothing came."""
        assert self._selector is not None and self._sock is not None
        if not self._selector.select(timeout):
            return False
        try:
            data = self._sock.recv(RECV_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            self.close()
            raise BusClosedError(f"connection to the publisher failed: {exc}") from None
        if not data:
            self.close()
            raise BusClosedError(
                f"the publisher at {describe(self.config.pub_address)} closed the connection"
            )
        self._decoder.receive_data(data)
        return True


class Sender:
    """Fires events into a bus's pull socket over one kept-open connection.

    It writes the pull framing of the configured Salt generation; ``_stamp`` is
    added to each event (to a copy: the caller's dict is left alone).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._sock: socket.socket | None = None

    def fire(self, tag: str, data: Mapping[str, Any], timeout: float = 1.0) -> Event:
        """Send one event and return it as sent (with its ``_stamp``).

        Raises :class:`NoPublisherError` when no publisher listens,
        :class:`BusTimeoutError` when it does not take the event in ``timeout``
        seconds, ``ValueError`` (a LocalProtocolError) for bad input."""
        if not isinstance(data, Mapping):
            raise TypeError(f"event data must be a mapping, not {type(data).__name__}")
        stamped = dict(data)
        stamped["_stamp"] = utc_stamp(self.config.generation.stamp_has_offset)
        body = pack_body(tag, stamped)
        check_event_size(body, self.config.max_event_size)
        self.send_frame(encode_frame(body, framing=self.config.generation.pull_framing), timeout)
        return Event(tag, stamped)

    def send_frame(self, frame: bytes, timeout: float = 1.0) -> None:
        """Send an encoded frame, reconnecting once if the publisher was restarted."""
        if self._sock is not None and _peer_closed(self._sock):
            # A write to a connection the publisher already closed is taken by
            # the kernel without error and lost; reconnect before writing instead.
            self.close()
        for attempt in (1, 2):
            if self._sock is None:
                self._sock = connect(self.config.pull_address, timeout)
            self._sock.settimeout(timeout)
            try:
                self._sock.sendall(frame)
                return
            except TimeoutError:
                # Part of the frame may have gone: the stream has lost its place.
                self.close()
                raise BusTimeoutError(
                    f"the publisher did not take the event within {timeout} s"
                ) from None
            except OSError as exc:
                self.close()
                if attempt == 2:
                    raise NoPublisherError(f"cannot send to the publisher: {exc}") from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Sender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the publisher has closed this pull connection. It never writes on
    one, so a readable pull socket means end of stream (or an error)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
