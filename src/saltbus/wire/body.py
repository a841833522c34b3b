"""An event's body: ``TAG + b"\\n\\n" + msgpack(DATA)``, packed and read."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Final

import msgpack

from saltbus.errors import FrameTooLargeError, LocalProtocolError, RemoteProtocolError

TAG_END: Final = b"\n\n"
DEFAULT_MAX_EVENT_SIZE: Final = 1_048_576
_INT64_MIN: Final = -(2**63)
UINT64_MAX: Final = 2**64 - 1  # msgpack's largest int


def _to_msgpack_safe(value: Any) -> Any:
    """Replace what msgpack cannot carry the way Salt's serialiser does."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= UINT64_MAX else str(value)
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


def event_data_size(body: bytes) -> int:
    """The size of a body's packed data: what ``max_event_size`` bounds, as in
    Salt (which trims the data to it); the tag and the frame come on top."""
    return len(body) - body.find(TAG_END) - len(TAG_END)


def check_event_size(body: bytes, max_event_size: int) -> None:
    """Refuse, rather than trim, an event whose data is over ``max_event_size``."""
    size = event_data_size(body)
    if size > max_event_size:
        raise FrameTooLargeError(size, max_event_size)
