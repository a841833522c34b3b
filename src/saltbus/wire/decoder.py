"""Reading frames from a byte stream in any chunking, in either framing."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

import msgpack

from saltbus.errors import RemoteProtocolError
from saltbus.wire.body import DEFAULT_MAX_EVENT_SIZE
from saltbus.wire.frames import FRAME_OVERHEAD, LENGTH, Frame, plain_frame_body, to_frame
from saltbus.wire.generations import Framing

_T = TypeVar("_T")


def detect_framing(first_byte: int) -> Framing:
    """Tell the framing of a stream from its first byte (WIRE.md): a length
    prefix of a frame under 16 MiB starts with 0x00, a bare frame with a map."""
    if first_byte == 0x00:
        return Framing.LENGTH_PREFIXED
    if 0x80 <= first_byte <= 0x8F or first_byte in (0xDE, 0xDF):
        return Framing.BARE
    raise RemoteProtocolError(
        f"stream starts with byte 0x{first_byte:02x}: neither a msgpack map "
        "(Salt 3007 framing) nor a 4-byte length (Salt 3006/3008 framing)"
    )


class FrameDecoder:
    """Incremental frame reader: ``receive_data(bytes)``, then ``next_frame()``
    until it returns None.

    With ``framing=None`` the framing is detected from the first byte of the
    stream. A frame over ``max_frame_size`` raises :class:`RemoteProtocolError`
    before it is buffered whole. After any error the decoder is unusable: the
    stream has lost its place.
    """

    def __init__(
        self,
        framing: Framing | None = None,
        max_frame_size: int = DEFAULT_MAX_EVENT_SIZE + FRAME_OVERHEAD,
    ) -> None:
        self.max_frame_size = max_frame_size
        self._framing = framing
        self._chunks: deque[bytes] = deque()
        self._buffer = bytearray()  # length-prefixed: all; bare: a partial frame
        self._unpacker: msgpack.Unpacker | None = None  # bare framing: fed whole frames only
        self._scanner: msgpack.Unpacker | None = None  # bare framing: finds where frames end
        self._scanned = 0  # the scanner's tell() at the start of the buffer
        self._scan_error: RemoteProtocolError | None = None  # raised after the frames before it
        self._failed: RemoteProtocolError | None = None

    @property
    def framing(self) -> Framing | None:
        """The framing in use, once known."""
        return self._framing

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        in_unpacker = self._scanned - self._unpacker.tell() if self._unpacker is not None else 0
        return len(self._buffer) + sum(len(c) for c in self._chunks) + in_unpacker

    def receive_data(self, data: bytes) -> None:
        if self._failed is not None:
            # The stream has lost its place: buffering more would only grow memory.
            raise self._failed
        if not data:
            return
        if self._framing is None:
            self._framing = self._fail_on(lambda: detect_framing(data[0]))
        self._chunks.append(bytes(data))

    def plain_body(self, data: bytes) -> bytes | None:
        """The body of ``data`` when it is exactly one whole frame with an
        empty head (Salt 3007's framing) and nothing received before it is
        pending: the frame is then taken, as ``receive_data`` and
        ``next_frame`` would take it, without buffering it. None otherwise,
        and nothing taken. An idle publisher's every read is such a frame."""
        if (
            self._failed is not None
            or self._framing is not Framing.BARE
            or self._chunks
            or not self._nothing_pending()
            or len(data) > self.max_frame_size
        ):
            return None
        return plain_frame_body(data)

    def _nothing_pending(self) -> bool:
        """Bare framing: no part of a frame is held, nor whole frames the
        unpacker has not returned yet (chunks not yet scanned aside)."""
        unpacker = self._unpacker
        return (
            not self._buffer
            and self._scan_error is None
            and (unpacker is None or unpacker.tell() == self._scanned)
        )

    def next_frame(self) -> Frame | None:
        if self._failed is not None:
            raise self._failed
        try:
            if self._framing is Framing.BARE:
                return self._next_bare()
            if self._framing is Framing.LENGTH_PREFIXED:
                return self._next_prefixed()
        except RemoteProtocolError as exc:
            self._failed = exc
            raise
        return None

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def _fail_on(self, step: Callable[[], _T]) -> _T:
        try:
            return step()
        except RemoteProtocolError as exc:
            self._failed = exc
            raise

    def _next_prefixed(self) -> Frame | None:
        buffer = self._buffer
        while self._chunks:
            buffer += self._chunks.popleft()
        if len(buffer) < 4:
            return None
        (size,) = LENGTH.unpack_from(buffer)
        if size > self.max_frame_size:
            raise RemoteProtocolError(
                f"frame of {size} bytes declared, over the limit of {self.max_frame_size}"
            )
        if len(buffer) < 4 + size:
            return None
        payload = bytes(buffer[4 : 4 + size])
        del buffer[: 4 + size]
        if (body := plain_frame_body(payload)) is not None:
            return Frame(body, {})
        try:
            value = msgpack.unpackb(payload, raw=False)
        except Exception as exc:
            raise RemoteProtocolError(
                f"length-prefixed frame is not one msgpack value: {exc}"
            ) from None
        return to_frame(value)

    def _next_bare(self) -> Frame | None:
        unpacker = self._unpacker
        chunks = self._chunks
        if (
            len(chunks) == 1
            and self._nothing_pending()
            and len(chunks[0]) <= self.max_frame_size
            and (body := plain_frame_body(chunks[0])) is not None
        ):
            # One whole plain frame and nothing pending before it (an idle
            # publisher's every read): no msgpack, neither scanner nor unpacker.
            chunks.clear()
            return Frame(body, {})
        if (
            not chunks
            and self._scan_error is None
            and (unpacker is None or unpacker.tell() == self._scanned)
        ):
            # Nothing received is left (after each read's last frame): no
            # unpacker to build or OutOfData to raise to say so.
            return None
        if unpacker is None:
            limit = self.max_frame_size
            # Buffers start small and grow to what the stream needs (msgpack's
            # default allocates up to 1 MiB at once, per connection).
            start = min(2 * limit, 65536)
            self._scanner = msgpack.Unpacker(max_buffer_size=2 * limit, read_size=start)
            unpacker = self._unpacker = msgpack.Unpacker(
                raw=False,
                max_buffer_size=2 * limit,
                read_size=start,
                max_bin_len=limit,
                max_str_len=limit,
            )
        while True:
            try:
                value = unpacker.unpack()
            except msgpack.OutOfData:
                if not self._scan():
                    return None
                continue
            except Exception as exc:
                # msgpack reports size-limit breaches and malformed data as ValueError
                # (FormatError, StackError and ExtraData are subclasses), and more.
                raise RemoteProtocolError(f"invalid frame: {exc}") from None
            return to_frame(value)

    def _scan(self) -> bool:
        """Hand the unpacker the next whole frames; False until one is whole.

        The scanner skips values without building them. msgpack builds a value's
        objects as its bytes arrive, and those of a frame that never ends (arrays
        of arrays of one-byte items, nested containers declaring huge counts)
        would grow far beyond its bytes, which are what max_frame_size bounds:
        the unpacker, which builds them, only ever sees whole frames."""
        assert self._scanner is not None and self._unpacker is not None
        scanner, buffer, limit = self._scanner, self._buffer, self.max_frame_size
        if self._scan_error is not None:
            raise self._scan_error
        while self._chunks:
            chunk = self._chunks.popleft()
            if len(chunk) > limit:
                self._chunks.appendleft(chunk[limit:])
                chunk = chunk[:limit]
            try:
                scanner.feed(chunk)
            except msgpack.BufferFull:
                raise RemoteProtocolError(f"frame larger than the limit of {limit} bytes") from None
            end = start = self._scanned
            fed = start + len(buffer) + len(chunk)
            try:
                while end < fed:  # a chunk of whole frames ends without OutOfData's cost
                    scanner.skip()
                    end = scanner.tell()
            except msgpack.OutOfData:
                pass
            except Exception as exc:  # malformed, or nested deeper than msgpack's stack
                # The whole frames before this one are still handed over first.
                self._scan_error = RemoteProtocolError(f"invalid frame: {exc}")
                self._chunks.clear()
            self._scanned = end
            if not buffer and end - start == len(chunk):
                self._unpacker.feed(chunk)  # the common case: a chunk of whole frames
                return True
            buffer += chunk
            if end > start:
                self._unpacker.feed(buffer[: end - start])
                del buffer[: end - start]
            if self._scan_error is not None:
                buffer.clear()  # what follows a bad frame is never read
            elif len(buffer) > limit:  # what is left is one partial frame
                raise RemoteProtocolError(f"frame larger than the limit of {limit} bytes")
            if end > start:
                return True
            if self._scan_error is not None:
                raise self._scan_error
        return False
