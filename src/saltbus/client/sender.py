"""The blocking sender: fires events into a bus's pull socket."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from saltbus.client.firing import FiringSession
from saltbus.client.sockets import connect, read_secret, refusal_pending
from saltbus.config import Config
from saltbus.errors import JournalUnavailableError, NoPublisherError, SaltbusError
from saltbus.event import Event

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
        self.session = FiringSession.for_config(config)
        self._sock: socket.socket | None = None
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
        (or acknowledge) the event in ``timeout`` seconds,
        :class:`JournalUnavailableError` when it cannot journal it, and
        :class:`LocalProtocolError` (a ValueError) for bad input.
        """
        frame, request_id, event = self.session.event(tag, data, ack)
        self.send_frame(frame, timeout)
        if request_id is None:
            return event
        return Event(event.tag, event.data, self._wait_for_ack(request_id, timeout))

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
            if self._sock is not self._ready:
                self._make_ready(self._sock)
            try:
                _send_all(self._sock, frame, timeout)
                return
            except TimeoutError:
                # Part of the frame may have gone: the stream has lost its place.
                self.close()
                raise self.session.send_timeout(timeout) from None
            except OSError as exc:
                self.close()
                if attempt == 2:
                    raise NoPublisherError(f"cannot send to the publisher: {exc}") from None

    def _connect(self, timeout: float) -> socket.socket:
        """A new pull connection the publisher has admitted."""
        address = self.config.pull_address
        sock = connect(address, timeout)
        try:
            hello = self.session.connect(read_secret(self.config))
            if hello:
                _send_all(sock, hello, timeout)
                wait = max(timeout, 1.0)
                if not self._read_until(sock, self.session.welcomed, wait):
                    raise self.session.welcome_timeout(wait)
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
        seq: int | None = None

        def answered() -> bool:
            nonlocal seq
            seq = self.session.acked(request_id)
            return seq is not None

        try:
            if not self._read_until(self._sock, answered, timeout):
                raise self.session.ack_timeout(
                    timeout, served_by_saltbus=self.config.served_by_saltbus()
                )
        except JournalUnavailableError:
            raise  # the connection is sound: the publisher answered
        except SaltbusError:
            self.close()
            raise
        assert seq is not None
        return seq

    def _read_until(self, sock: socket.socket, done: Callable[[], bool], timeout: float) -> bool:
        """Feed the session what arrives on ``sock`` until ``done()``; False
        when ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not _wait_for(sock, select.POLLIN, remaining):
                continue
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise NoPublisherError(f"the publisher went away: {exc}") from None
            self.session.receive_data(data)
        return True

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
