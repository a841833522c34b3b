"""Tests of saltbus.wire: Salt's exact bytes, and encoder/decoder pairs in memory.

Everything here is pure: bytes go into a :class:`FrameDecoder` and frames come
out; no sockets. The golden bytes are those WIRE.md recorded from Salt.
"""

from __future__ import annotations

import datetime as dt
import itertools
import struct
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saltbus.errors import (
    FrameTooLargeError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SaltbusError,
)
from saltbus.wire import (
    DEFAULT_GENERATION,
    GENERATIONS,
    Frame,
    FrameDecoder,
    Framing,
    body_tag,
    check_event_size,
    detect_framing,
    encode_event_frame,
    encode_event_frames,
    encode_frame,
    event_data_size,
    generation,
    pack_body,
    pack_data,
    tag_and_data_size,
    unpack_body,
)
from saltbus.wire.frames import plain_frame_body

# -- golden bytes (WIRE.md) ----------------------------------------------------

# fire_event({'n': 1}, 'bench/evt/1') on Salt 3007.8, as written to the pull socket.
GOLDEN_FRAME = bytes.fromhex(
    """
    82 a4 68 65 61 64 80 a4 62 6f 64 79 c4 33 62 65
    6e 63 68 2f 65 76 74 2f 31 0a 0a 82 a1 6e 01 a6
    5f 73 74 61 6d 70 ba 32 30 32 36 2d 31 31 2d 32
    37 54 30 31 3a 31 34 3a 34 32 2e 37 32 31 39 31
    36
    """
)
GOLDEN_TAG = "bench/evt/1"
GOLDEN_STAMP = "2026-11-27T01:14:42.721916"


def golden_data() -> dict[str, Any]:
    # Salt's fire_event adds _stamp after the caller's keys.
    return {"n": 1, "_stamp": GOLDEN_STAMP}


def test_golden_frame_is_65_bytes() -> None:
    assert len(GOLDEN_FRAME) == 65
    assert GOLDEN_FRAME[:1] == b"\x82"


def test_encode_golden_frame() -> None:
    assert encode_frame(pack_body(GOLDEN_TAG, golden_data())) == GOLDEN_FRAME


def test_decode_golden_frame() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(GOLDEN_FRAME)
    frame = decoder.next_frame()
    assert frame is not None
    assert frame.head == {}
    assert frame.tag == GOLDEN_TAG
    tag, data = unpack_body(frame.body)
    assert tag == GOLDEN_TAG
    assert data == golden_data()
    assert list(data) == ["n", "_stamp"]
    assert decoder.next_frame() is None
    assert decoder.framing is Framing.BARE
    assert decoder.buffered == 0


def test_golden_frame_length_prefixed() -> None:
    framed = encode_frame(pack_body(GOLDEN_TAG, golden_data()), framing=Framing.LENGTH_PREFIXED)
    assert framed == b"\x00\x00\x00\x41" + GOLDEN_FRAME
    decoder = FrameDecoder()
    decoder.receive_data(framed)
    assert decoder.framing is Framing.LENGTH_PREFIXED
    frame = decoder.next_frame()
    assert frame is not None
    assert frame.body == pack_body(GOLDEN_TAG, golden_data())
    assert decoder.next_frame() is None


def test_golden_body() -> None:
    assert pack_body("a/b", {"x": 1}) == b"a/b\n\n\x81\xa1x\x01"
    assert unpack_body(b"a/b\n\n\x81\xa1x\x01") == ("a/b", {"x": 1})
    assert body_tag(b"a/b\n\n\x81\xa1x\x01") == "a/b"


def test_short_tags_are_not_padded() -> None:
    # Old Salt docstrings speak of 20-character tags; Salt does not pad.
    assert pack_body("t", {}) == b"t\n\n\x80"


# -- encode_frame is msgpack's own encoding ------------------------------------

BOUNDARY_SIZES = [0, 1, 255, 256, 65535, 65536, 70000]
HEADS: list[dict[str, Any]] = [
    {},
    {"seq": 5},
    {"seq": 2**40, "t": "x", "b": b"y", "nested": {"a": [1, 2.5, None, True]}},
]


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
@pytest.mark.parametrize("head", HEADS, ids=["empty", "seq", "mixed"])
def test_encode_frame_matches_msgpack(size: int, head: dict[str, Any]) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert len(body) == size
    expected = msgpack.packb({"head": head, "body": body}, use_bin_type=True)
    assert encode_frame(body, head) == expected
    assert encode_frame(body, head, Framing.LENGTH_PREFIXED) == (
        struct.pack(">I", len(expected)) + expected
    )


@pytest.mark.parametrize(
    ("size", "marker"),
    [(255, b"\xc4"), (256, b"\xc5"), (65535, b"\xc5"), (65536, b"\xc6")],
)
def test_encode_frame_bin_header(size: int, marker: bytes) -> None:
    frame = encode_frame(b"\x00" * size)
    header_at = len(b"\x82\xa4head\x80\xa4body")
    assert frame[header_at : header_at + 1] == marker


def test_encode_frame_none_head_is_empty_map() -> None:
    assert encode_frame(b"x", None) == msgpack.packb({"head": {}, "body": b"x"}, use_bin_type=True)


def test_length_prefix_is_big_endian_length_of_bare_frame() -> None:
    body = pack_body("a/b", {"x": "y" * 300})
    bare = encode_frame(body, {"seq": 1})
    prefixed = encode_frame(body, {"seq": 1}, Framing.LENGTH_PREFIXED)
    assert prefixed[4:] == bare
    assert int.from_bytes(prefixed[:4], "big") == len(bare)
    assert prefixed[:1] == b"\x00"


@given(
    head=st.dictionaries(
        st.text(max_size=5), st.one_of(st.integers(0, 2**64 - 1), st.text(), st.binary())
    ),
    body=st.binary(max_size=600),
)
def test_encode_frame_matches_msgpack_random(head: dict[str, Any], body: bytes) -> None:
    assert encode_frame(body, head) == msgpack.packb(
        {"head": head, "body": body}, use_bin_type=True
    )


# -- generations (WIRE.md, "Salt generations differ in framing") ---------------


def test_generations_table() -> None:
    lp, bare = Framing.LENGTH_PREFIXED, Framing.BARE
    table = {
        name: (g.name, g.pull_framing, g.pub_framing, g.stamp_has_offset, g.pub_mode, g.pull_mode)
        for name, g in GENERATIONS.items()
    }
    assert table == {
        "3006": ("3006", lp, lp, False, 0o600, 0o600),
        "3007": ("3007", bare, bare, False, 0o660, 0o600),
        "3008": ("3008", lp, bare, True, 0o660, 0o600),
    }
    assert DEFAULT_GENERATION == "3007"


@pytest.mark.parametrize("name", ["3006", "3007", "3008"])
def test_generation_by_name(name: str) -> None:
    assert generation(name) is GENERATIONS[name]
    assert generation(int(name)) is GENERATIONS[name]  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["3005", "2019.2", "", "3007.8"])
def test_unknown_generation(name: str) -> None:
    with pytest.raises(LocalProtocolError, match="3006, 3007, 3008"):
        generation(name)


# -- framing detection ---------------------------------------------------------


def test_detect_framing() -> None:
    assert detect_framing(0x00) is Framing.LENGTH_PREFIXED
    assert detect_framing(0x82) is Framing.BARE


@pytest.mark.parametrize("first", [0x01, 0x7F, 0x92, 0xA4, 0xC1, 0xC4, 0xFF])
def test_detect_framing_refuses_other_bytes(first: int) -> None:
    with pytest.raises(RemoteProtocolError, match=f"0x{first:02x}"):
        detect_framing(first)


@pytest.mark.parametrize("first", [0x01, 0x92, 0xA4, 0xFF])
def test_decoder_refuses_other_first_byte_and_stays_failed(first: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(bytes([first]) + b"rest")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    # A valid frame afterwards does not resurrect the stream, nor is it buffered.
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(GOLDEN_FRAME)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    assert decoder.buffered <= len(b"rest") + 1


def test_decoder_detects_nothing_before_data() -> None:
    decoder = FrameDecoder()
    assert decoder.framing is None
    decoder.receive_data(b"")
    assert decoder.framing is None
    assert decoder.next_frame() is None


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED])
def test_detection_needs_only_the_first_byte(framing: Framing) -> None:
    stream = encode_frame(pack_body(GOLDEN_TAG, golden_data()), framing=framing)
    decoder = FrameDecoder()
    decoder.receive_data(stream[:1])
    assert decoder.framing is framing
    assert decoder.next_frame() is None
    decoder.receive_data(stream[1:])
    frame = decoder.next_frame()
    assert frame is not None
    assert unpack_body(frame.body) == (GOLDEN_TAG, golden_data())


def test_explicit_framing_is_not_redetected() -> None:
    decoder = FrameDecoder(framing=Framing.LENGTH_PREFIXED)
    decoder.receive_data(GOLDEN_FRAME)  # a bare frame on a length-prefixed stream
    assert decoder.framing is Framing.LENGTH_PREFIXED
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        decoder.next_frame()  # 0x82a46865 read as a length


# -- round trips -----------------------------------------------------------------

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1

tags = st.text(min_size=1, max_size=40).filter(lambda t: "\n\n" not in t and not t.endswith("\n"))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, UINT64_MAX),
    st.integers(),  # big ints: carried as decimal strings
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
data_dicts = st.dictionaries(st.text(max_size=10), values, max_size=6)
heads = st.dictionaries(st.text(max_size=5), st.one_of(st.integers(0, 2**63), st.text()))


def expected_after_trip(value: Any) -> Any:
    """What a value decodes as: ints beyond 64 bits come back as decimal strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not INT64_MIN <= value <= UINT64_MAX:
        return str(value)
    if isinstance(value, Mapping):
        return {k: expected_after_trip(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [expected_after_trip(v) for v in value]
    return value


def decode_all(chunks: Iterable[bytes], framing: Framing | None, **kwargs: Any) -> list[Frame]:
    decoder = FrameDecoder(framing, **kwargs)
    frames: list[Frame] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        frames.extend(decoder)
    assert decoder.next_frame() is None
    assert decoder.buffered == 0
    return frames


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED])
@pytest.mark.parametrize("detect", [False, True], ids=["declared", "detected"])
@given(tag=tags, data=data_dicts, head=heads)
def test_round_trip(
    framing: Framing, detect: bool, tag: str, data: dict[str, Any], head: dict[str, Any]
) -> None:
    body = pack_body(tag, data)
    assert body_tag(body) == tag
    stream = encode_frame(body, head, framing)
    frames = decode_all([stream], None if detect else framing)
    assert len(frames) == 1
    assert frames[0].head == head
    assert frames[0].body == body
    assert frames[0].tag == tag
    assert unpack_body(frames[0].body) == (tag, expected_after_trip(data))


@given(data=data_dicts)
def test_pack_data_is_msgpack_of_safe_data(data: dict[str, Any]) -> None:
    # What a Salt peer would unpack from our bytes.
    assert msgpack.unpackb(pack_data(data), raw=False, strict_map_key=False) == (
        expected_after_trip(data)
    )


def make_stream(
    events: list[tuple[str, dict[str, Any]]], framing: Framing
) -> tuple[bytes, list[bytes], list[int]]:
    """The stream of frames for ``events``, their bodies, and where each frame ends."""
    bodies = [pack_body(tag, data) for tag, data in events]
    frames = [
        encode_frame(body, {"seq": i} if i % 2 else {}, framing) for i, body in enumerate(bodies)
    ]
    ends = list(itertools.accumulate(len(f) for f in frames))
    return b"".join(frames), bodies, ends


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED])
@pytest.mark.parametrize("detect", [False, True], ids=["declared", "detected"])
def test_stream_one_byte_at_a_time(framing: Framing, detect: bool) -> None:
    events = [(f"salt/job/{i}/ret/m{i}", {"i": i, "pad": "x" * (i * 7)}) for i in range(60)]
    events.append(("big", {"blob": b"\x00" * 70000}))
    events.append(("last", {}))
    stream, bodies, ends = make_stream(events, framing)
    decoder = FrameDecoder(None if detect else framing)
    got: list[bytes] = []
    got_at: list[int] = []
    for i in range(len(stream)):
        decoder.receive_data(stream[i : i + 1])
        frame = decoder.next_frame()
        if frame is not None:
            got.append(frame.body)
            got_at.append(i + 1)
        assert decoder.next_frame() is None
    assert got == bodies
    # Each frame comes out exactly when its last byte arrives, not later.
    assert got_at == ends
    assert decoder.buffered == 0


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED])
@pytest.mark.parametrize("detect", [False, True], ids=["declared", "detected"])
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(
        st.tuples(
            tags,
            st.dictionaries(
                st.text(max_size=5), st.one_of(st.integers(), st.binary(max_size=300)), max_size=3
            ),
        ),
        min_size=1,
        max_size=8,
    ),
    data=st.data(),
)
def test_stream_in_random_chunks(
    framing: Framing,
    detect: bool,
    events: list[tuple[str, dict[str, Any]]],
    data: st.DataObject,
) -> None:
    stream, bodies, _ = make_stream(events, framing)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    edges = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(edges)]
    frames = decode_all(chunks, None if detect else framing)
    assert [f.body for f in frames] == bodies
    assert [f.head for f in frames] == [{"seq": i} if i % 2 else {} for i in range(len(bodies))]


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED])
def test_partial_frame_waits(framing: Framing) -> None:
    stream = encode_frame(pack_body("a/b", {"x": 1}), framing=framing)
    decoder = FrameDecoder(framing)
    decoder.receive_data(stream[:-1])
    assert decoder.next_frame() is None
    assert decoder.next_frame() is None
    decoder.receive_data(stream[-1:])
    frame = decoder.next_frame()
    assert frame is not None
    assert frame.body == pack_body("a/b", {"x": 1})


# -- size limits -----------------------------------------------------------------


def test_plain_body_takes_one_whole_plain_frame_and_nothing_else() -> None:
    plain = encode_frame(b"a/b\n\n\x80")
    decoder = FrameDecoder()
    assert decoder.plain_body(plain) is None, "the framing is not known yet"
    decoder.receive_data(plain)
    assert decoder.next_frame() == Frame(b"a/b\n\n\x80", {})
    assert decoder.plain_body(plain) == b"a/b\n\n\x80"
    assert decoder.next_frame() is None and decoder.buffered == 0, "taken whole"
    assert decoder.plain_body(plain + plain) is None, "two frames"
    assert decoder.plain_body(encode_frame(b"a/b\n\n\x80", {"ack": 1})) is None, "a head"
    decoder.receive_data(plain[:10])
    assert decoder.plain_body(plain) is None, "a frame is pending before it"
    decoder.receive_data(plain[10:])
    assert decoder.next_frame() == Frame(b"a/b\n\n\x80", {})
    assert FrameDecoder(Framing.LENGTH_PREFIXED).plain_body(plain) is None
    small = FrameDecoder(Framing.BARE, max_frame_size=len(plain) - 1)
    assert small.plain_body(plain) is None, "over the frame limit: next_frame refuses it"
    failed = FrameDecoder(Framing.BARE)
    failed.receive_data(b"\x82\xa4head\x80\xa4body\xc1\xc1\xc1garbage")
    with pytest.raises(RemoteProtocolError):
        failed.next_frame()
    assert failed.plain_body(plain) is None, "a failed stream has lost its place"


def test_length_prefix_over_limit_raises_before_body() -> None:
    decoder = FrameDecoder(Framing.LENGTH_PREFIXED, max_frame_size=1000)
    decoder.receive_data(struct.pack(">I", 1001))  # the prefix alone, no body yet
    with pytest.raises(RemoteProtocolError, match="1001"):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError):  # the body is not even buffered
        decoder.receive_data(b"\x00" * 1001)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_length_prefix_over_limit_detected() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.receive_data(b"\x00\x00\x00\x65")  # 101
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_length_prefix_at_limit_is_accepted() -> None:
    body = pack_body("t", {"b": b"x" * 500})
    frame = encode_frame(body, framing=Framing.LENGTH_PREFIXED)
    limit = len(frame) - 4
    decoder = FrameDecoder(Framing.LENGTH_PREFIXED, max_frame_size=limit)
    decoder.receive_data(frame)
    got = decoder.next_frame()
    assert got is not None
    assert got.body == body


@pytest.mark.parametrize("size", [1001, 1500, 2500, 10_000])
@pytest.mark.parametrize("one_chunk", [True, False], ids=["one-chunk", "byte-by-byte"])
def test_bare_frame_with_body_over_limit_raises(size: int, one_chunk: bool) -> None:
    stream = encode_frame(b"\x01" * size)
    decoder = FrameDecoder(Framing.BARE, max_frame_size=1000)
    with pytest.raises(RemoteProtocolError):
        if one_chunk:
            decoder.receive_data(stream)
            decoder.next_frame()
        else:
            for i in range(len(stream)):
                decoder.receive_data(stream[i : i + 1])
                assert decoder.next_frame() is None
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_bare_frame_with_body_at_limit_is_accepted() -> None:
    stream = encode_frame(b"\x01" * 1000)
    decoder = FrameDecoder(Framing.BARE, max_frame_size=1000)
    decoder.receive_data(stream)
    frame = decoder.next_frame()
    assert frame is not None
    assert frame.body == b"\x01" * 1000


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED])
def test_many_small_frames_in_one_big_chunk(framing: Framing) -> None:
    events = [(f"t/{i}", {"i": i}) for i in range(500)]
    stream, bodies, _ = make_stream(events, framing)
    limit = 64
    assert all(len(encode_frame(b, {"seq": 499}, framing)) <= limit for b in bodies)
    assert len(stream) > 50 * limit
    frames = decode_all([stream], framing, max_frame_size=limit)
    assert [f.body for f in frames] == bodies
    frames = decode_all([stream], None, max_frame_size=limit)
    assert [f.body for f in frames] == bodies


def test_check_event_size_bounds_the_data_not_the_tag() -> None:
    # As in Salt, max_event_size bounds the packed data; the tag comes on top.
    check_event_size(b"a/long/tag/" * 5 + b"\n\n" + b"x" * 10, 10)
    with pytest.raises(FrameTooLargeError) as info:
        check_event_size(b"t\n\n" + b"x" * 11, 10)
    assert info.value.size == 11
    assert info.value.limit == 10
    assert "11" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LocalProtocolError)


# -- malformed input -------------------------------------------------------------


def packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


MALFORMED_FRAMES = {
    "not-a-map": packb([b"a\n\n\x80"]),
    "int": packb(7),
    "body-as-str": packb({"head": {}, "body": "a/b\n\n\x80"}),
    "missing-body": packb({"head": {}}),
    "body-nil": packb({"head": {}, "body": None}),
    "head-not-a-map": packb({"head": [1], "body": b"a/b\n\n\x80"}),
    "bin-keys": packb({b"head": {}, b"body": b"a/b\n\n\x80"}),
    "int-keys": packb({1: {}, 2: b"a/b\n\n\x80"}),
    "garbage": b"\x82\xc1\xc1\xc1\xc1",
    "bad-utf8-key": b"\x82\xa4\xff\xfe\xfd\xfc\x80\xa4body\xc4\x00",
}


@pytest.mark.parametrize("raw", MALFORMED_FRAMES.values(), ids=MALFORMED_FRAMES.keys())
@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED])
def test_malformed_frame_raises_and_decoder_stays_failed(raw: bytes, framing: Framing) -> None:
    if framing is Framing.LENGTH_PREFIXED:
        raw = struct.pack(">I", len(raw)) + raw
    decoder = FrameDecoder(framing)
    decoder.receive_data(raw)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(encode_frame(pack_body("ok", {}), framing=framing))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError):
        list(decoder)


def test_malformed_frame_after_good_ones() -> None:
    good = encode_frame(pack_body("ok", {}))
    decoder = FrameDecoder()
    decoder.receive_data(good + good + MALFORMED_FRAMES["body-as-str"] + good)
    assert decoder.next_frame() is not None
    assert decoder.next_frame() is not None
    with pytest.raises(RemoteProtocolError, match="str"):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_head_may_be_missing() -> None:
    decoder = FrameDecoder(Framing.BARE)
    decoder.receive_data(packb({"body": b"a/b\n\n\x80", "extra": 1}))
    frame = decoder.next_frame()
    assert frame == Frame(body=b"a/b\n\n\x80", head={})


def test_length_prefixed_frame_holding_two_values() -> None:
    one = encode_frame(pack_body("a", {}))
    two = one + one
    decoder = FrameDecoder(Framing.LENGTH_PREFIXED)
    decoder.receive_data(struct.pack(">I", len(two)) + two)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_length_prefixed_frame_truncated() -> None:
    one = encode_frame(pack_body("a", {"x": 1}))
    decoder = FrameDecoder(Framing.LENGTH_PREFIXED)
    # The prefix claims one byte less than the frame; the last byte then starts
    # the next "prefix".
    decoder.receive_data(struct.pack(">I", len(one) - 1) + one)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_length_prefixed_empty_frame() -> None:
    decoder = FrameDecoder(Framing.LENGTH_PREFIXED)
    decoder.receive_data(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_protocol_errors_are_saltbus_errors() -> None:
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(ProtocolError, SaltbusError)
    assert not issubclass(RemoteProtocolError, ValueError)


# -- bodies ------------------------------------------------------------------------


def test_body_without_separator() -> None:
    with pytest.raises(RemoteProtocolError, match="separator"):
        body_tag(b"a/b\n\x80")
    with pytest.raises(RemoteProtocolError):
        unpack_body(b"a/b")
    with pytest.raises(RemoteProtocolError):
        _ = Frame(body=b"no separator").tag


def test_tag_not_utf8() -> None:
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        body_tag(b"\xff\xfe\n\n\x80")
    with pytest.raises(RemoteProtocolError):
        unpack_body(b"a\xc3\n\n\x80")


def test_body_tag_splits_at_first_separator() -> None:
    assert body_tag(b"a\n\n\n\n\x80") == "a"


@pytest.mark.parametrize(
    "data",
    [packb([1, 2]), packb("str"), packb(1), packb(None), packb(b"bin")],
    ids=["list", "str", "int", "nil", "bin"],
)
def test_unpack_body_of_non_map(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="not a map"):
        unpack_body(b"a/b\n\n" + data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x81\xa1x", b"\x81\xa1x\x01\x01", b"\x81\xa2\xff\xfe\x01"],
    ids=["empty", "reserved-byte", "truncated", "extra-data", "bad-utf8"],
)
def test_unpack_body_of_invalid_msgpack(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        unpack_body(b"a/b\n\n" + data)


def test_unpack_body_keeps_bin_and_non_str_keys() -> None:
    assert unpack_body(b"t\n\n" + packb({"b": b"\x00\xff", 1: "one"})) == (
        "t",
        {"b": b"\x00\xff", 1: "one"},
    )


def test_unpack_body_with_unicode_tag() -> None:
    body = pack_body("salt/minion/é/ünï", {"k": "ß"})
    assert unpack_body(body) == ("salt/minion/é/ünï", {"k": "ß"})


@pytest.mark.parametrize("tag", ["", "a\n\nb", "\n\n", "a/b\n\n"])
def test_pack_body_refuses_bad_tags(tag: str) -> None:
    with pytest.raises(LocalProtocolError):
        pack_body(tag, {})
    with pytest.raises(ValueError):  # what Salt's fire_event raises
        pack_body(tag, {})


@pytest.mark.parametrize("tag", ["a\n", "salt/x/\n"])
def test_pack_body_refuses_tag_ending_in_newline(tag: str) -> None:
    # tag + "\n\n" would hold "\n\n" one byte early: the tag would decode as
    # tag[:-1] and the data would start with a stray "\n".
    with pytest.raises(LocalProtocolError):
        pack_body(tag, {"x": 1})


def test_pack_body_allows_single_newlines_inside_tag() -> None:
    assert unpack_body(pack_body("\na\nb", {"x": 1})) == ("\na\nb", {"x": 1})


def test_pack_body_refuses_unencodable_tag() -> None:
    with pytest.raises(LocalProtocolError):
        pack_body("a\ud800", {})


def test_pack_body_refuses_non_str_tag() -> None:
    with pytest.raises(LocalProtocolError):
        pack_body(b"a/b", {})  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [None, [("x", 1)], "x=1", 1, b"x"])
def test_pack_body_refuses_non_mapping(data: Any) -> None:
    with pytest.raises(LocalProtocolError, match="mapping"):
        pack_body("a/b", data)
    with pytest.raises(ValueError):
        pack_body("a/b", data)


def test_pack_body_accepts_any_mapping() -> None:
    assert pack_body("a/b", MappingProxyType({"x": 1})) == b"a/b\n\n\x81\xa1x\x01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (UINT64_MAX, UINT64_MAX),
        (INT64_MIN, INT64_MIN),
        (UINT64_MAX + 1, str(UINT64_MAX + 1)),
        (INT64_MIN - 1, str(INT64_MIN - 1)),
        (10**30, "1" + "0" * 30),
        ([1, 2**70, {"deep": -(2**70)}], [1, str(2**70), {"deep": str(-(2**70))}]),
        (True, True),
    ],
)
def test_big_ints_become_decimal_strings(value: Any, expected: Any) -> None:
    _, data = unpack_body(pack_body("t", {"v": value}))
    assert data == {"v": expected}
    assert type(data["v"]) is type(expected)


def test_datetimes_become_isoformat_strings() -> None:
    when = dt.datetime(2024, 1, 1, 0, 0, 0)
    with_us = dt.datetime(2026, 11, 27, 1, 14, 42, 721916)
    aware = dt.datetime(2026, 11, 27, 2, 47, 16, 835472, tzinfo=dt.UTC)
    data = {"a": when, "b": [with_us], "c": {"d": aware}, "e": dt.date(2024, 2, 29)}
    assert unpack_body(pack_body("t", data))[1] == {
        "a": "2024-01-01T00:00:00",
        "b": ["2026-11-27T01:14:42.721916"],
        "c": {"d": "2026-11-27T02:47:16.835472+00:00"},
        "e": "2024-02-29",
    }


def test_containers_and_buffers() -> None:
    data = {"t": (1, 2), "s": frozenset([3]), "ba": bytearray(b"\x00"), "mv": memoryview(b"z")}
    assert unpack_body(pack_body("t", data))[1] == {
        "t": [1, 2],
        "s": [3],
        "ba": b"\x00",
        "mv": b"z",
    }


@pytest.mark.parametrize(
    "data",
    [
        {"o": object()},
        {"nested": [1, {"o": object()}]},
        {"big": 2**70, "o": object()},
        {"f": lambda: None},
        {"s": "\ud800"},
    ],
    ids=["object", "nested", "with-big-int", "function", "surrogate"],
)
def test_unencodable_data_raises_local_protocol_error(data: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError, match="cannot be encoded"):
        pack_body("t", data)


def test_self_referencing_data_raises_local_protocol_error() -> None:
    data: dict[str, Any] = {}
    data["me"] = data
    with pytest.raises(LocalProtocolError):
        pack_data(data)


# -- the publisher's frames, built by hand --------------------------------------


@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.integers(min_value=0, max_value=2**64 - 1),
                st.integers(min_value=-(2**63), max_value=-1),
                st.booleans(),
            ),
            st.one_of(st.floats(allow_nan=False), st.integers(min_value=0, max_value=2**32)),
            st.binary(max_size=70_000),
        ),
        max_size=5,
    ),
    st.sampled_from(list(Framing)),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_event_frames_are_encode_frame_byte_for_byte(
    events: list[tuple[int, float, bytes]], framing: Framing
) -> None:
    expected = [encode_frame(b, {"seq": s, "time": t}, framing) for s, t, b in events]
    assert encode_event_frames(events, framing) == expected
    assert [encode_event_frame(s, t, b, framing) for s, t, b in events] == expected


def test_event_frames_share_a_batch_time() -> None:
    events = [(seq, 1700000000.25, b"t\n\n\x80") for seq in (1, 127, 128, 255, 256, 65536, 2**32)]
    frames = encode_event_frames(events)
    for (seq, when, body), frame in zip(events, frames, strict=True):
        assert msgpack.unpackb(frame) == {"head": {"seq": seq, "time": when}, "body": body}


def test_tag_and_data_size_match_body_tag_and_event_data_size() -> None:
    body = pack_body("a/b", {"x": 1})
    assert tag_and_data_size(body) == (body_tag(body), event_data_size(body))
    with pytest.raises(RemoteProtocolError):
        tag_and_data_size(b"no separator")
    with pytest.raises(RemoteProtocolError):
        tag_and_data_size(b"\xff\n\n\x80")


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_plain_frame_body_reads_what_msgpack_reads(size: int) -> None:
    body = b"t\n\n" + b"x" * size
    frame = msgpack.packb({"head": {}, "body": body}, use_bin_type=True)
    assert plain_frame_body(frame) == body
    assert plain_frame_body(frame + b"\x80") is None, "more than one frame"
    assert plain_frame_body(frame[:-1]) is None, "a frame cut short"
    with_head = msgpack.packb({"head": {"a": 1}, "body": body}, use_bin_type=True)
    assert plain_frame_body(with_head) is None
    body_first = msgpack.packb({"body": body, "head": {}}, use_bin_type=True)
    assert plain_frame_body(body_first) is None


@pytest.mark.parametrize("framing", list(Framing))
def test_frames_one_per_read_mixed_with_split_and_headed_ones(framing: Framing) -> None:
    plain = [encode_frame(b"a/%d\n\n\x80" % i + b"y" * (i * 300), None, framing) for i in range(4)]
    headed = encode_frame(b"h\n\n\x80", {"ack": 7}, framing)
    decoder = FrameDecoder(framing)
    got: list[Frame] = []
    for data in (plain[0], plain[1][:5], plain[1][5:], headed, plain[2], plain[3] + plain[0]):
        decoder.receive_data(data)
        got += list(decoder)
    assert [f.body for f in got] == [
        b"a/0\n\n\x80",
        b"a/1\n\n\x80" + b"y" * 300,
        b"h\n\n\x80",
        b"a/2\n\n\x80" + b"y" * 600,
        b"a/3\n\n\x80" + b"y" * 900,
        b"a/0\n\n\x80",
    ]
    assert [dict(f.head) for f in got] == [{}, {}, {"ack": 7}, {}, {}, {}]
    assert decoder.buffered == 0


def test_a_plain_frame_over_the_limit_is_refused() -> None:
    frame = encode_frame(b"t\n\n" + b"x" * 200)
    decoder = FrameDecoder(Framing.BARE, max_frame_size=100)
    decoder.receive_data(frame)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
