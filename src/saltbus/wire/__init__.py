"""Salt's event protocol as a sans-I/O codec: no sockets, no asyncio.

Both bus sockets carry a stream of msgpack maps ``{"head": {...}, "body": bin}``;
``body`` is ``TAG + b"\\n\\n" + msgpack(DATA)``. Salt generations differ only in
how frames are delimited (WIRE.md): bare msgpack values one after another, or
each frame preceded by its 4-byte big-endian length. :class:`FrameDecoder`
takes bytes in any chunking and yields frames; :func:`encode_frame` makes them.
"""

from saltbus.wire.body import (
    DEFAULT_MAX_EVENT_SIZE,
    TAG_END,
    body_tag,
    check_event_size,
    data_packer,
    event_data_size,
    pack_body,
    pack_data,
    tag_and_data_size,
    unpack_body,
)
from saltbus.wire.decoder import FrameDecoder, detect_framing
from saltbus.wire.frames import (
    FRAME_OVERHEAD,
    Frame,
    encode_event_frame,
    encode_event_frames,
    encode_frame,
)
from saltbus.wire.generations import (
    DEFAULT_GENERATION,
    GENERATIONS,
    Framing,
    Generation,
    generation,
)

__all__ = [
    "DEFAULT_GENERATION",
    "DEFAULT_MAX_EVENT_SIZE",
    "FRAME_OVERHEAD",
    "GENERATIONS",
    "TAG_END",
    "Frame",
    "FrameDecoder",
    "Framing",
    "Generation",
    "body_tag",
    "check_event_size",
    "data_packer",
    "detect_framing",
    "encode_event_frame",
    "encode_event_frames",
    "encode_frame",
    "event_data_size",
    "generation",
    "pack_body",
    "pack_data",
    "tag_and_data_size",
    "unpack_body",
]
