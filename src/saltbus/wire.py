"""Salt's event protocol as a sans-I/O codec: no sockets, no asyncio.

Both bus sockets carry a stream of msgpack maps ``{"head": {...}, "body": bin}``;
``body`` is ``TAG + b"\\n\\n" + msgpack(DATA)``. Salt generations differ only in
how frames are delimited (WIRE.md): bare msgpack values one after another, or
each frame preceded by its 4-byte big-endian length. :class:`FrameDecoder`
takes bytes in any chunking and yields frames; :func:`encode_frame` makes them.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final, TypeVar

import msgpack

from saltbus.errors import (
    FrameTooLargeError,
    LocalProtocolError,
    RemoteProtocolError,
)

TAG_END: Final = b"\n\n"
DEFAULT_MAX_EVENT_SIZE: Final = 1_048_576
# Room for the tag and the frame's own keys on top of an event's data.
FRAME_OVERHEAD: Final = 65_536
_T = TypeVar("_T")
_LENGTH = struct.Struct(">I")
_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1


class Framing(enum.Enum):
    """How frames are delimited on a socket."""

    BARE = "bare"
    LENGTH_PREFIXED = "length-prefixed"


@dataclass(frozen=True, slots=True)
class Generation:
    """What one Salt release does on the wire (WIRE.md, "Salt generations")."""

    name: str
    pull_framing: Framing
    pub_framing: Framing
    stamp_has_offset: bool
    pub_mode: int
    pull_mode: int


GENERATIONS: Final[Mapping[str, Generation]] = {
    "3006": Generation(
        "3006", Framing.LENGTH_PREFIXED, Framing.LENGTH_PREFIXED, False, 0o600, 0o600
    ),
    "3007": Generation("3007", Framing.BARE, Framing.BARE, False, 0o660, 0o600),
    "3008": Generation("3008", Framing.LENGTH_PREFIXED, Framing.BARE, True, 0o660, 0o600),
}
DEFAULT_GENERATION: Final = "3007"


def generation(name: str) -> Generation:
    try:
        return GENERATIONS[str(name)]
    except KeyError:
        known = ", ".join(GENERATIONS)
        raise LocalProtocolError(f"unknown Salt generation {name!r}; use one of: {known}") from None


# -- body --------------------------------------------------------------------


def _to_msgpack_safe(value: Any) -> Any:
    """Replace what msgpack cannot carry the way Salt's serialiser does."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)
    if isinstance(value, Mapping):
        return {_to_msgpack_safe(k): _to_msgpack_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_to_msgpack_safe(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def _default(value: Any) -> Any:
    converted = _to_msgpack_safe(value)
    if converted is value:
        raise TypeError(f"cannot serialise {type(value).__name__} in event data")
    return converted


def data_packer() -> msgpack.Packer:
    """A reusable packer for :func:`pack_data` (one per thread: it is not thread-safe).
    Packing with it costs about half of ``msgpack.packb``, which makes a packer per call."""
    return msgpack.Packer(use_bin_type=True, default=_default)


def pack_data(data: Mapping[str, Any], packer: msgpack.Packer | None = None) -> bytes:
    """msgpack an event's data as Salt does (str as str, bytes as bin)."""
    if packer is None:
        packer = data_packer()
    try:
        return packer.pack(data)  # type: ignore[no-any-return]
    except OverflowError:
        # Ints beyond 64 bits travel as decimal strings, as in Salt.
        return packer.pack(_to_msgpack_safe(data))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"event data cannot be encoded: {exc}") from exc


def _check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not tag:
        raise LocalProtocolError("an event needs a non-empty str tag")
    if "\n\n" in tag:
        raise LocalProtocolError(f"a tag cannot contain a blank line: {tag!r}")
    if tag.endswith("\n"):
        # Readers split at the first "\n\n": the tag would lose its last "\n"
        # and the data would start with it.
        raise LocalProtocolError(f"a tag cannot end with a newline: {tag!r}")


def pack_body(tag: str, data: Mapping[str, Any], packer: msgpack.Packer | None = None) -> bytes:
    """The body of a frame: ``TAG + b"\\n\\n" + msgpack(DATA)``."""
    if type(tag) is not str or not tag or "\n" in tag:
        _check_tag(tag)  # the common tag, a one-line str, needs none of these checks
    if type(data) is not dict and not isinstance(data, Mapping):
        raise LocalProtocolError(f"event data must be a mapping, not {type(data).__name__}")
    try:
        encoded_tag = tag.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"event tag cannot be encoded as UTF-8: {exc}") from None
    return encoded_tag + TAG_END + pack_data(data, packer)


def body_tag(body: bytes) -> str:
    """The tag of a body, without decoding its data."""
    end = body.find(TAG_END)
    if end < 0:
        raise RemoteProtocolError("frame body has no tag separator (\\n\\n)")
    try:
        return body[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"event tag is not UTF-8: {exc}") from None


def tag_and_data_size(body: bytes) -> tuple[str, int]:
    """:func:`body_tag` and :func:`event_data_size` with one search."""
    end = body.find(TAG_END)
    if end < 0:
        raise RemoteProtocolError("frame body has no tag separator (\\n\\n)")
    try:
        return body[:end].decode("utf-8"), len(body) - end - len(TAG_END)
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"event tag is not UTF-8: {exc}") from None


def unpack_body(body: bytes) -> tuple[str, dict[str, Any]]:
    """Split a body into its tag and decoded data."""
    end = body.find(TAG_END)
    if end < 0:
        raise RemoteProtocolError("frame body has no tag separator (\\n\\n)")
    try:
        tag = body[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"event tag is not UTF-8: {exc}") from None
    try:
        data = msgpack.unpackb(body[end + 2 :], raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises a wide family; all mean the same here
        raise RemoteProtocolError(f"event data of {tag!r} is not valid msgpack: {exc}") from None
    if not isinstance(data, dict):
        raise RemoteProtocolError(f"event data of {tag!r} is {type(data).__name__}, not a map")
    return tag, data


# -- frames ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: Salt reads only ``body``; saltbus keeps its extensions in ``head``."""

    body: bytes
    head: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return body_tag(self.body)


_FRAME_START: Final = b"\x82\xa4head"
_BODY_KEY: Final = b"\xa4body"
_EMPTY_HEAD: Final = b"\x80"


_BIN8: Final = tuple(b"\xc4" + bytes((size,)) for size in range(0x100))
_BIN16: Final = struct.Struct(">BH")
_BIN32: Final = struct.Struct(">BI")
# Everything before a body's bin header when the head is empty (Salt's frames).
_EMPTY_HEAD_START: Final = _FRAME_START + _EMPTY_HEAD + _BODY_KEY


def _bin_header(size: int) -> bytes:
    if size < 0x100:
        return _BIN8[size]
    if size < 0x10000:
        return _BIN16.pack(0xC5, size)
    return _BIN32.pack(0xC6, size)


def encode_frame(
    body: bytes, head: Mapping[str, Any] | None = None, framing: Framing = Framing.BARE
) -> bytes:
    """Frame a body. Built by hand: this is the publisher's hot path, and the
    layout is fixed (a two-key map, str keys, bin body), so it is byte-for-byte
    what ``msgpack.packb({"head": head, "body": body}, use_bin_type=True)`` gives."""
    if head:
        packed_head = msgpack.packb(head, use_bin_type=True)
        frame = b"".join((_FRAME_START, packed_head, _BODY_KEY, _bin_header(len(body)), body))
    else:
        frame = _EMPTY_HEAD_START + _bin_header(len(body)) + body
    if framing is Framing.LENGTH_PREFIXED:
        return _LENGTH.pack(len(frame)) + frame
    return frame


_SEQ_HEAD_START: Final = _FRAME_START + b"\x82\xa3seq"
_TIME_KEY: Final = b"\xa4time\xcb"
_DOUBLE: Final = struct.Struct(">d")
_FIXINT: Final = tuple(bytes((value,)) for value in range(0x80))
_UINT8: Final = struct.Struct(">BB")
_UINT16: Final = struct.Struct(">BH")
_UINT32: Final = struct.Struct(">BI")
_UINT64: Final = struct.Struct(">BQ")


def _pack_uint(value: int) -> bytes:
    """msgpack's smallest encoding of a non-negative int below 2**64."""
    if value < 0x80:
        return _FIXINT[value]
    if value < 0x100:
        return _UINT8.pack(0xCC, value)
    if value < 0x10000:
        return _UINT16.pack(0xCD, value)
    if value < 0x100000000:
        return _UINT32.pack(0xCE, value)
    return _UINT64.pack(0xCF, value)


def encode_event_frames(
    events: Iterable[tuple[int, float, bytes]], framing: Framing = Framing.BARE
) -> list[bytes]:
    """``encode_frame(body, {"seq": seq, "time": time}, framing)`` for each
    ``(seq, time, body)``, byte for byte, without msgpack per event: the
    publisher's hot path. The time is packed once per run of equal times (a
    batch shares its receive time, one float object)."""
    frames: list[bytes] = []
    append = frames.append
    prefixed = framing is Framing.LENGTH_PREFIXED
    last_time: float | None = None
    middle = b""
    for seq, when, body in events:
        if type(seq) is not int or type(when) is not float or not 0 <= seq <= _UINT64_MAX:
            append(encode_frame(body, {"seq": seq, "time": when}, framing))  # as msgpack does
            continue
        if when is not last_time:  # the same object for a batch; 0.0 == -0.0, too
            middle = _TIME_KEY + _DOUBLE.pack(when) + _BODY_KEY
            last_time = when
        frame = b"".join((_SEQ_HEAD_START, _pack_uint(seq), middle, _bin_header(len(body)), body))
        append(_LENGTH.pack(len(frame)) + frame if prefixed else frame)
    return frames


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
        (size,) = _LENGTH.unpack_from(buffer)
        if size > self.max_frame_size:
            raise RemoteProtocolError(
                f"frame of {size} bytes declared, over the limit of {self.max_frame_size}"
            )
        if len(buffer) < 4 + size:
            return None
        payload = bytes(buffer[4 : 4 + size])
        del buffer[: 4 + size]
        try:
            value = msgpack.unpackb(payload, raw=False)
        except Exception as exc:
            raise RemoteProtocolError(
                f"length-prefixed frame is not one msgpack value: {exc}"
            ) from None
        return _to_frame(value)

    def _next_bare(self) -> Frame | None:
        unpacker = self._unpacker
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
            return _to_frame(value)

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


def _to_frame(value: Any) -> Frame:
    if type(value) is dict:
        body = value.get("body")
        head = value.get("head")
        if type(body) is bytes and type(head) is dict:
            return Frame(body, head)  # as every frame from Salt or saltbus
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"frame is a {type(value).__name__}, not a map")
    body = value.get("body")
    if not isinstance(body, bytes):
        kind = type(body).__name__ if body is not None else "missing"
        raise RemoteProtocolError(f"frame body is {kind}, not bin")
    head = value.get("head", {})
    if not isinstance(head, dict):
        raise RemoteProtocolError(f"frame head is a {type(head).__name__}, not a map")
    return Frame(body=body, head=head)


def event_data_size(body: bytes) -> int:
    """The size of a body's packed data: what ``max_event_size`` bounds, as in
    Salt (which trims the data to it); the tag and the frame come on top."""
    return len(body) - body.find(TAG_END) - len(TAG_END)


def check_event_size(body: bytes, max_event_size: int) -> None:
    """Refuse, rather than trim, an event whose data is over ``max_event_size``."""
    size = event_data_size(body)
    if size > max_event_size:
        raise FrameTooLargeError(size, max_event_size)
