"""The blocking sender: fires events into a bus's pull socket."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from saltbus.client.sockets import connect
from saltbus.config import Config
from saltbus.control import Ack, ack_request_head, decode_control
from saltbus.errors import BusTimeoutError, NoPublisherError, RemoteProtocolError
from saltbus.event import Event, utc_stamp
from saltbus.wire import FrameDecoder, check_event_size, encode_frame, pack_body


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
        if not isinstance(data, Mapping):
            raise TypeError(f"event data must be a mapping, not {type(data).__name__}")
        stamped = dict(data)
        stamped["_stamp"] = utc_stamp(self.config.generation.stamp_has_offset)
        body = pack_body(tag, stamped)
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
        if self._sock is not None and _peer_closed(self._sock):
            # A write to a connection the publisher already closed is taken by
            # the kernel without error and lost; reconnect before writing instead.
            self.close()
        for attempt in (1, 2):
            if self._sock is None:
                self._sock = connect(self.config.pull_address, timeout)
                self._decoder = FrameDecoder()
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
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
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
