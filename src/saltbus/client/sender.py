"""The blocking sender: fires events into a bus's pull socket."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from saltbus.client.sockets import auth_frame, connect, expect_welcome, refusal_pending
from saltbus.config import Config
from saltbus.control import Ack, ack_request_head, decode_control
from saltbus.errors import BusTimeoutError, NoPublisherError, RemoteProtocolError
from saltbus.event import Event
from saltbus.wire import FrameDecoder, check_event_size, data_packer, encode_frame, pack_body

# A publisher that refuses a connection says so at once; this is how long a
# client of another user's bus waits to hear it before it sends.
REFUSAL_WAIT = 0.2


class Sender:
    """Fires events over one kept-open connection to the pull socket.

    It writes the pull framing of the configured Salt generation, and adds
    ``_stamp`` to each event (to a copy: the caller's dict is left alone).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder()
        self._next_ack_id = 1
        self._stamp = UtcStamper(config.generation.stamp_has_offset)
        self._packer = data_packer()
        # The connection last made ready for sending, and whether it is TCP.
        self._ready: socket.socket | None = None
        self._tcp = False

    def fire(
        self, tag: str, data: Mapping[str, Any], timeout: float = 1.0, *, ack: bool = False
    ) -> Event:
        """Send one event and return it as sent (with its ``_stamp``).

        With ``ack``, wait until the publisher has journaled it, and return it
        with the sequence number it was given. Raises :class:`NoPublisherError`
        when no publisher listens, :class:`BusTimeoutError` when it does not take
        (or acknowledge) the event in ``timeout`` seconds, ``ValueError`` (a
        LocalProtocolError) for bad input.
        """
        if type(data) is not dict and not isinstance(data, Mapping):
            raise TypeError(f"event data must be a mapping, not {type(data).__name__}")
        stamped = dict(data)
        stamped["_stamp"] = self._stamp()
        body = pack_body(tag, stamped, self._packer)
        check_event_size(body, self.config.max_event_size)
        framing = self.config.generation.pull_framing
        if not ack:
            self.send_frame(encode_frame(body, framing=framing), timeout)
            return Event(tag, stamped)
        request_id = self._next_ack_id
        self._next_ack_id += 1
        self.send_frame(encode_frame(body, ack_request_head(request_id), framing), timeout)
        return Event(tag, stamped, self._wait_for_ack(request_id, timeout))

    def send_frame(self, frame: bytes, timeout: float = 1.0) -> None:
        """Send an encoded frame, reconnecting once if the publisher was restarted."""
        if self._sock is not None and self._tcp and _peer_closed(self._sock):
            # Over TCP, a write to a connection the publisher already closed is
            # taken by the kernel without error and lost; reconnect before writing
            # instead. (Over a unix socket that write fails, with EPIPE, and the
            # loop below reconnects: no check, and no system call, needed.)
            self.close()
        for attempt in (1, 2):
            if self._sock is None:
                self._sock = self._connect(timeout)
                self._decoder = FrameDecoder()
            if self._sock is not self._ready:
                self._make_ready(self._sock)
            try:
                _send_all(self._sock, frame, timeout)
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

    def _connect(self, timeout: float) -> socket.socket:
        """A new pull connection the publisher has admitted."""
        address = self.config.pull_address
        sock = connect(address, timeout)
        try:
            auth = auth_frame(self.config, self.config.generation.pull_framing)
            if auth is not None:
                sock.settimeout(timeout)
                sock.sendall(auth)
                expect_welcome(sock, max(timeout, 1.0))
            else:
                refusal_pending(sock, address, REFUSAL_WAIT)
        except BaseException:
            sock.close()
            raise
        return sock

    def _make_ready(self, sock: socket.socket) -> None:
        # Blocking mode without a timeout: a socket with a timeout polls before
        # every send, a system call more per event; _send_all keeps the deadline.
        sock.settimeout(None)
        self._tcp = sock.family != socket.AF_UNIX
        self._ready = sock

    def _wait_for_ack(self, request_id: int, timeout: float) -> int:
        assert self._sock is not None
        deadline = time.monotonic() + timeout
        while True:
            for frame in self._decoder:
                message = decode_control(frame)
                if isinstance(message, Ack) and message.id == request_id:
                    return message.seq
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise BusTimeoutError(
                    f"no acknowledgement within {timeout} s; a Salt publisher never "
                    "acknowledges (acknowledged fire needs saltbus's publisher)"
                )
            if not _wait_for(self._sock, select.POLLIN, remaining):
                continue
            try:
                data = self._sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as exc:
                self.close()
                raise NoPublisherError(
                    f"the publisher went away before acknowledging: {exc}"
                ) from None
            if not data:
                self.close()
                raise NoPublisherError("the publisher closed the connection before acknowledging")
            try:
                self._decoder.receive_data(data)
            except RemoteProtocolError:
                self.close()
                raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._ready = None

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
    """Whether the publisher has closed this pull connection. It writes on one
    only to acknowledge, and those are read at once, so a readable pull socket
    means end of stream (or an error)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _wait_for(sock: socket.socket, events: int, timeout: float | None) -> bool:
    """Whether ``sock`` became ready for ``events`` within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))


def _send_all(sock: socket.socket, data: bytes, timeout: float | None) -> None:
    """``sendall`` within ``timeout`` seconds (TimeoutError), on a blocking
    socket without a timeout: one system call when the kernel takes it all."""
    try:
        sent = sock.send(data, socket.MSG_DONTWAIT)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    view = memoryview(data)[sent:]
    deadline = None if timeout is None else time.monotonic() + timeout
    while view:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError("timed out")
        if not _wait_for(sock, select.POLLOUT, remaining):
            continue
        try:
            view = view[sock.send(view, socket.MSG_DONTWAIT) :]
        except BlockingIOError:
            continue


class UtcStamper:
    """``saltbus.event.utc_stamp`` for a stream of events: the same text
    (ISO 8601 UTC, microseconds unless 0, ``+00:00`` when asked), with the date
    and time formatted once a second instead of a ``datetime`` per event."""

    def __init__(self, with_offset: bool = False) -> None:
        self._suffix = "+00:00" if with_offset else ""
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        second, nanos = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        micros = nanos // 1000
        if micros:
            return f"{self._prefix}.{micros:06d}{self._suffix}"
        return self._prefix + self._suffix
