"""Frames, ``{"head": {...}, "body": bin}``: built by hand on the publisher's
hot path, byte for byte what msgpack would make, and checked when read."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from saltbus.errors import RemoteProtocolError
from saltbus.wire.body import UINT64_MAX, body_tag
from saltbus.wire.generations import Framing

# Room for the tag and the frame's own keys on top of an event's data.
FRAME_OVERHEAD: Final = 65_536
LENGTH: Final = struct.Struct(">I")  # the 4-byte big-endian prefix of Salt 3006/3008


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
        return LENGTH.pack(len(frame)) + frame
    return frame


_PLAIN_START: Final = len(_EMPTY_HEAD_START)


def plain_frame_body(data: bytes) -> bytes | None:
    """The body of ``data`` when ``data`` is exactly one frame with an empty
    head, keys in the order Salt's clients and saltbus's write them; else None
    (then msgpack reads it). Read by hand: an idle publisher's pull side takes
    one such frame per read."""
    if not data.startswith(_EMPTY_HEAD_START):
        return None
    size = len(data)
    if size < _PLAIN_START + 2:
        return None
    kind = data[_PLAIN_START]
    if kind == 0xC4:
        start = _PLAIN_START + 2
        length = data[_PLAIN_START + 1]
    elif kind == 0xC5 and size >= _PLAIN_START + 3:
        start = _PLAIN_START + 3
        length = int.from_bytes(data[_PLAIN_START + 1 : start], "big")
    elif kind == 0xC6 and size >= _PLAIN_START + 5:
        start = _PLAIN_START + 5
        length = int.from_bytes(data[_PLAIN_START + 1 : start], "big")
    else:
        return None
    if start + length != size:
        return None
    return data[start:]


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


def encode_event_frame(
    seq: int, when: float, body: bytes, framing: Framing = Framing.BARE
) -> bytes:
    """``encode_frame(body, {"seq": seq, "time": when}, framing)``, byte for
    byte: one event (an idle publisher's every delivery), without the batch
    loop of :func:`encode_event_frames`."""
    if type(seq) is not int or type(when) is not float or not 0 <= seq <= UINT64_MAX:
        return encode_frame(body, {"seq": seq, "time": when}, framing)  # as msgpack does
    frame = b"".join(
        (
            _SEQ_HEAD_START,
            _pack_uint(seq),
            _TIME_KEY,
            _DOUBLE.pack(when),
            _BODY_KEY,
            _bin_header(len(body)),
            body,
        )
    )
    return LENGTH.pack(len(frame)) + frame if framing is Framing.LENGTH_PREFIXED else frame


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
        if type(seq) is not int or type(when) is not float or not 0 <= seq <= UINT64_MAX:
            append(encode_frame(body, {"seq": seq, "time": when}, framing))  # as msgpack does
            continue
        if when is not last_time:  # the same object for a batch; 0.0 == -0.0, too
            middle = _TIME_KEY + _DOUBLE.pack(when) + _BODY_KEY
            last_time = when
        frame = b"".join((_SEQ_HEAD_START, _pack_uint(seq), middle, _bin_header(len(body)), body))
        append(LENGTH.pack(len(frame)) + frame if prefixed else frame)
    return frames


def to_frame(value: Any) -> Frame:
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
