"""Firing events, without I/O: the one firing path both senders drive.

As :class:`~saltbus.client.session.SubscriberSession` on the listening side
(and h11's ``Connection``), :class:`FiringSession` makes the bytes to write and
reads the bytes received, and never touches a socket. The blocking
:class:`~saltbus.client.sender.Sender` and the asyncio client drive it:

- after opening the pull socket, write :meth:`FiringSession.connect` (the
  bus's secret on a tcp-mode bus), and read until :meth:`~FiringSession.welcomed`;
- for each event, write the frame :meth:`~FiringSession.event` makes; when it
  asked for an acknowledgement, read until :meth:`~FiringSession.acked` gives
  its sequence number;
- give every byte read to :meth:`~FiringSession.receive_data`, and ``b""`` at
  end of stream.

Checking the input, stamping, packing, the size limit, numbering the
acknowledgement requests, reading the replies and the errors they mean are
written here once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, assert_never

from saltbus.config import Config
from saltbus.control import (
    Ack,
    Auth,
    Lagged,
    Nack,
    Refused,
    Stats,
    StatsRequest,
    Subscribe,
    Subscribed,
    Welcome,
    ack_request_head,
    decode_control,
    encode_control,
)
from saltbus.errors import (
    AccessDeniedError,
    BusTimeoutError,
    JournalUnavailableError,
    LocalProtocolError,
    NoPublisherError,
)
from saltbus.event import Event
from saltbus.wire import (
    DEFAULT_MAX_EVENT_SIZE,
    FrameDecoder,
    Framing,
    check_event_size,
    data_packer,
    encode_frame,
    pack_body,
)

# What a publisher writes on a pull connection.
Reply = Welcome | Refused | Ack | Nack

# Replies are a few dozen bytes; a larger frame on a pull connection is not one.
MAX_REPLY_SIZE = 65536


class FiringSession:
    """One firing client's side of the pull socket, across reconnects.

    Not thread-safe (one msgpack packer is reused for every event, which
    halves the cost of packing); a client that fires from several threads
    needs a session per thread.
    """

    def __init__(
        self,
        framing: Framing = Framing.BARE,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        *,
        stamp_has_offset: bool = False,
    ) -> None:
        self.framing = framing
        self.max_event_size = max_event_size
        self._stamp = UtcStamper(stamp_has_offset)
        self._packer = data_packer()
        self._next_request_id = 1
        self._decoder = FrameDecoder(max_frame_size=MAX_REPLY_SIZE)
        self._closed = False
        self.awaiting_welcome = False
        # A Welcome or an Ack came: the publisher is saltbus's (Salt's never answers).
        self.heard_saltbus = False

    @classmethod
    def for_config(cls, config: Config) -> FiringSession:
        """A session firing into the bus ``config`` describes."""
        generation = config.generation
        return cls(
            generation.pull_framing,
            config.max_event_size,
            stamp_has_offset=generation.stamp_has_offset,
        )

    def connect(self, secret: str | None = None) -> bytes:
        """A new connection: what the last one left unread is forgotten.
        Returns the bytes to write first: the :class:`Auth` frame when the bus
        has a ``secret`` (then :meth:`welcomed` is False until it answers)."""
        self._decoder = FrameDecoder(max_frame_size=MAX_REPLY_SIZE)
        self._closed = False
        self.awaiting_welcome = secret is not None
        return b"" if secret is None else encode_control(Auth(secret), self.framing)

    def event(
        self, tag: str, data: Mapping[str, Any], ack: bool = False
    ) -> tuple[bytes, int | None, Event]:
        """The frame firing ``tag`` and ``data`` (stamped: a copy gets
        ``_stamp``), the id of its acknowledgement request (None without
        ``ack``), and the event as sent.

        Raises :class:`LocalProtocolError` (a ValueError) for data that is not
        a mapping or cannot be packed, a tag that is not a non-empty one-line
        str, and :class:`FrameTooLargeError` (one) for data over ``max_event_size``.
        """
        if type(data) is not dict and not isinstance(data, Mapping):
            raise LocalProtocolError(f"event data must be a mapping, not {type(data).__name__}")
        stamped = dict(data)
        stamped["_stamp"] = self._stamp()
        body = pack_body(tag, stamped, self._packer)
        if len(body) > self.max_event_size:  # the data alone may still fit
            check_event_size(body, self.max_event_size)
        if not ack:
            return encode_frame(body, None, self.framing), None, Event(tag, stamped)
        request_id = self._next_request_id
        self._next_request_id += 1
        head = ack_request_head(request_id)
        return encode_frame(body, head, self.framing), request_id, Event(tag, stamped)

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the connection; ``b""`` when it ended. Raises
        :class:`RemoteProtocolError` for bytes that are not frames."""
        if not data:
            self._closed = True
            return
        self._decoder.receive_data(data)

    def next_reply(self) -> Reply | None:
        """The next reply received, or None until one is complete. What a
        publisher never says on a pull connection is skipped."""
        while (frame := self._decoder.next_frame()) is not None:
            message = decode_control(frame)
            match message:
                case Welcome():
                    self.awaiting_welcome = False
                    self.heard_saltbus = True
                    return message
                case Ack() | Nack():
                    self.heard_saltbus = True
                    return message
                case Refused():
                    return message
                case None | Subscribe() | Subscribed() | Lagged() | Stats() | StatsRequest():
                    continue
                case Auth():
                    continue
                case _:
                    assert_never(message)
        return None

    def welcomed(self) -> bool:
        """Whether the publisher admitted this connection (at once without a
        secret); False until its answer is read. Raises
        :class:`AccessDeniedError` when it refused, or closed the connection."""
        while self.awaiting_welcome and (reply := self.next_reply()) is not None:
            if isinstance(reply, Refused):
                raise AccessDeniedError(f"the publisher refused this client: {reply.reason}")
        if self.awaiting_welcome and self._closed:
            raise AccessDeniedError("the publisher closed the connection during authentication")
        return not self.awaiting_welcome

    def acked(self, request_id: int) -> int | None:
        """The sequence number the publisher gave request ``request_id``, or
        None until its answer is read. Raises :class:`JournalUnavailableError`
        when the publisher could not journal it, :class:`AccessDeniedError`
        when it refused this client, :class:`NoPublisherError` when it closed
        the connection first."""
        while (reply := self.next_reply()) is not None:
            match reply:
                case Ack(id=replied, seq=seq) if replied == request_id:
                    return seq
                case Nack(id=replied, reason=reason) if replied == request_id:
                    raise JournalUnavailableError(
                        f"the publisher did not take the event: its journal cannot commit "
                        f"({reason})"
                    )
                case Refused(reason=reason):
                    raise AccessDeniedError(f"the publisher refused this client: {reason}")
                case Welcome() | Ack() | Nack():
                    continue  # an earlier request's answer
                case _:
                    assert_never(reply)
        if self._closed:
            raise NoPublisherError("the publisher closed the connection before acknowledging")
        return None

    def ack_timeout(self, timeout: float, *, served_by_saltbus: bool) -> BusTimeoutError:
        """The error for an acknowledgement that did not come in ``timeout``
        seconds; ``served_by_saltbus``: the bus's publisher is saltbus's."""
        if served_by_saltbus or self.heard_saltbus:
            return BusTimeoutError(
                f"no acknowledgement within {timeout} s: saltbus's publisher is busy or its "
                "journal slow; the event may still be journaled (a longer timeout waits for it)"
            )
        return BusTimeoutError(
            f"no acknowledgement within {timeout} s; a Salt publisher never "
            "acknowledges (acknowledged fire needs saltbus's publisher)"
        )

    @staticmethod
    def welcome_timeout(timeout: float) -> BusTimeoutError:
        return BusTimeoutError(f"no answer to authentication within {timeout} s")

    @staticmethod
    def send_timeout(timeout: float) -> BusTimeoutError:
        return BusTimeoutError(f"the publisher did not take the event within {timeout} s")


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
