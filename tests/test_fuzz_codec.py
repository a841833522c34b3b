"""Fuzzing the sans-I/O codec (saltbus.wire, saltbus.control) with hostile bytes.

Hypothesis generates and mutates frames and feeds them, in random chunkings, to
:class:`FrameDecoder` in every framing (declared and auto-detected), then gives
what comes out to ``body_tag``, ``unpack_body`` and ``decode_control``: random
bytes, truncated frames, valid frames with flipped, inserted and deleted bytes,
wrong msgpack types at every position, huge declared lengths (the length prefix,
and msgpack bin/str/ext/array/map headers claiming gigabytes), tags that are not
UTF-8, and data nested thousands deep. The properties:

- only :class:`RemoteProtocolError` (or a well-formed frame) ever comes out,
  never another exception, and no input takes long;
- a decoder buffers at most twice ``max_frame_size``, and after a failure it
  refuses more data; a stalled partial frame holds memory in proportion to
  ``max_frame_size``, not to the sizes it declares or to its nesting;
- a valid stream gives the same frames in any chunking.

``SALTBUS_FUZZ_EXAMPLES`` (default 2000) is the number of inputs this module
generates in all, split between the properties by weight; the full run is::

    SALTBUS_FUZZ_EXAMPLES=100000 ./dev test tests/test_fuzz_codec.py tests/test_fuzz_daemon.py
"""

from __future__ import annotations

import contextlib
import itertools
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saltbus.control import ack_request_id, decode_control, event_seq
from saltbus.errors import RemoteProtocolError
from saltbus.wire import (
    DEFAULT_MAX_EVENT_SIZE,
    FRAME_OVERHEAD,
    Frame,
    FrameDecoder,
    Framing,
    body_tag,
    encode_frame,
    unpack_body,
)
from tests.fuzz_support import (
    CONTROL_FIELDS,
    CONTROL_OPS,
    EXAMPLES,
    deep_frames,
    frame_around,
    hostile_inputs,
    huge_declarations,
    invalid_utf8_frames,
    mutated,
    nested,
    report,
    sized_header,
    stalled_partial_frames,
    subscriber_requests,
    valid_frames,
    with_framing,
    wrong_types,
)

# pytest-timeout's 120 s per test is for the CI run; the full run needs more.
pytestmark = pytest.mark.timeout(max(120, EXAMPLES // 20))
DEFAULT_FRAME = DEFAULT_MAX_EVENT_SIZE + FRAME_OVERHEAD
# A small limit makes "over the limit" reachable with small inputs.
FRAME_SIZES = st.sampled_from([64, 1024, 65536, DEFAULT_FRAME])
FRAMINGS = [None, Framing.BARE, Framing.LENGTH_PREFIXED]
FRAMING_IDS = ["detected", "bare", "prefixed"]
PARSERS = 256 * 1024
# No single input may take longer than this (a hang shows as a failure, not a stuck run).
SLOW = 20.0

# Each property's share of the budget; a parametrized property's share is split
# between its cases.
WEIGHTS = {
    "random": 15,
    "round_trip": 15,
    "mutated": 20,
    "wrong_types": 10,
    "huge": 10,
    "utf8": 5,
    "deep": 5,
    "control": 10,
    "body": 5,
    "memory": 5,
    "mixed": 10,
}
_TOTAL = sum(WEIGHTS.values())
RUN: dict[str, int] = {"inputs": 0, "frames": 0, "errors": 0}


def budget(name: str, cases: int = 1) -> Any:
    examples = max(10, EXAMPLES * WEIGHTS[name] // (_TOTAL * cases))
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    report(
        request,
        f"fuzz codec: {RUN['inputs']} inputs ({RUN['frames']} frames decoded, "
        f"{RUN['errors']} refused with RemoteProtocolError) in {time.monotonic() - started:.1f} s",
    )


# -- the properties every input is held to ------------------------------------------


def exercise(frame: Frame) -> None:
    """Everything a peer does with a decoded frame: clean results or RemoteProtocolError."""
    assert isinstance(frame.body, bytes)
    assert isinstance(frame.head, dict)
    ack_request_id(frame)
    event_seq(frame)
    with contextlib.suppress(RemoteProtocolError):
        body_tag(frame.body)
    with contextlib.suppress(RemoteProtocolError):
        unpack_body(frame.body)
    with contextlib.suppress(RemoteProtocolError):
        decode_control(frame)


def decode(
    chunks: list[bytes],
    framing: Framing | None,
    max_frame_size: int = DEFAULT_FRAME,
    *,
    again: bool = False,
) -> tuple[list[Frame], RemoteProtocolError | None]:
    """Feed ``chunks``; the frames that came out and the error that ended the stream
    (``again``: the same input as before, chunked differently, not counted twice)."""
    RUN["inputs"] += not again
    started = time.monotonic()
    decoder = FrameDecoder(framing, max_frame_size=max_frame_size)
    frames: list[Frame] = []
    error: RemoteProtocolError | None = None
    for chunk in chunks:
        try:
            decoder.receive_data(chunk)
            while (frame := decoder.next_frame()) is not None:
                exercise(frame)
                frames.append(frame)
        except RemoteProtocolError as exc:
            error = exc
            break
        assert decoder.buffered <= 2 * max_frame_size + 4, decoder.buffered
    if error is not None:
        # The stream has lost its place: the decoder refuses more data and says so again.
        with pytest.raises(RemoteProtocolError):
            decoder.receive_data(b"\x80")
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()
        RUN["errors"] += 1
    RUN["frames"] += len(frames)
    assert time.monotonic() - started < SLOW
    return frames, error


def chunked(stream: bytes, data: st.DataObject) -> list[bytes]:
    """``stream`` cut at random places, or one byte at a time."""
    if len(stream) <= 400 and data.draw(st.integers(0, 5)) == 0:
        return [stream[i : i + 1] for i in range(len(stream))]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    return [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]


# -- random and mutated bytes ----------------------------------------------------------


@pytest.mark.parametrize("framing", FRAMINGS, ids=FRAMING_IDS)
@budget("random", cases=3)
@given(stream=st.binary(max_size=2000), max_frame_size=FRAME_SIZES, data=st.data())
def test_random_bytes(
    framing: Framing | None, stream: bytes, max_frame_size: int, data: st.DataObject
) -> None:
    decode(chunked(stream, data), framing, max_frame_size)


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED], ids=FRAMING_IDS[1:])
@budget("mutated", cases=2)
@given(data=st.data())
def test_mutated_frames(framing: Framing, data: st.DataObject) -> None:
    originals = data.draw(st.lists(valid_frames(framing), min_size=1, max_size=4))
    broken, intact = data.draw(mutated(b"".join(originals)))
    detect = data.draw(st.booleans())
    frames, _ = decode(chunked(broken, data), None if detect else framing)
    # The frames before the damage all come out, whatever follows them.
    ends = list(itertools.accumulate(len(f) for f in originals))
    whole = sum(1 for end in ends if end <= intact)
    assert [encode_frame(f.body, f.head, framing) for f in frames[:whole]] == originals[:whole]


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED], ids=FRAMING_IDS[1:])
@budget("round_trip", cases=2)
@given(data=st.data())
def test_valid_stream_in_any_chunking(framing: Framing, data: st.DataObject) -> None:
    frames = data.draw(st.lists(valid_frames(framing), min_size=1, max_size=6))
    stream = b"".join(frames)
    whole, error = decode([stream], framing)
    assert error is None
    assert len(whole) == len(frames)
    assert [encode_frame(f.body, f.head, framing) for f in whole] == frames
    detect = data.draw(st.booleans())
    pieces, error = decode(chunked(stream, data), None if detect else framing, again=True)
    assert error is None
    assert pieces == whole


# -- wrong types, huge sizes, bad UTF-8, deep nesting -----------------------------------------


@pytest.mark.parametrize("framing", FRAMINGS, ids=FRAMING_IDS)
@budget("wrong_types", cases=3)
@given(frame=wrong_types(), data=st.data())
def test_wrong_msgpack_types(framing: Framing | None, frame: bytes, data: st.DataObject) -> None:
    frames, error = decode(chunked(with_framing(frame, framing), data), framing)
    if framing is None and frame[:1] == b"\x00":
        assert not frames  # read as the start of a length prefix: waits for the rest
        return
    # The reference: what msgpack itself makes of the value, then the frame's shape.
    try:
        value = msgpack.unpackb(frame, raw=False)
    except (ValueError, TypeError):
        value = None
    well_formed = (
        isinstance(value, dict)
        and isinstance(value.get("body"), bytes)
        and isinstance(value.get("head", {}), dict)
    )
    if well_formed:
        assert error is None and len(frames) == 1
    else:
        assert error is not None and not frames


@pytest.mark.parametrize("framing", FRAMINGS, ids=FRAMING_IDS)
@budget("huge", cases=4)
@given(frame=huge_declarations(), max_frame_size=FRAME_SIZES, data=st.data())
def test_huge_declared_sizes(
    framing: Framing | None, frame: bytes, max_frame_size: int, data: st.DataObject
) -> None:
    decode(chunked(with_framing(frame, framing), data), framing, max_frame_size)


@budget("huge", cases=4)
@given(
    size=st.integers(0, 2**32 - 1),
    max_frame_size=FRAME_SIZES,
    tail=st.binary(max_size=200),
    detect=st.booleans(),
)
def test_huge_length_prefix(size: int, max_frame_size: int, tail: bytes, detect: bool) -> None:
    stream = size.to_bytes(4, "big") + tail
    _, error = decode([stream], None if detect else Framing.LENGTH_PREFIXED, max_frame_size)
    if size > max_frame_size and not (detect and stream[0] != 0):
        # Refused from the prefix alone, before any of the frame is buffered.
        assert error is not None and "declared" in str(error)


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED], ids=FRAMING_IDS[1:])
@budget("utf8", cases=2)
@given(frame=invalid_utf8_frames(), data=st.data())
def test_invalid_utf8(framing: Framing, frame: bytes, data: st.DataObject) -> None:
    frames, _ = decode(chunked(with_framing(frame, framing), data), framing)
    for frame_out in frames:
        with pytest.raises(RemoteProtocolError):
            unpack_body(frame_out.body)


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED], ids=FRAMING_IDS[1:])
@budget("deep", cases=2)
@given(frame=deep_frames(), data=st.data())
def test_deep_nesting(framing: Framing, frame: bytes, data: st.DataObject) -> None:
    decode(chunked(with_framing(frame, framing), data), framing)


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED], ids=FRAMING_IDS[1:])
@budget("mixed", cases=2)
@given(data=st.data())
def test_any_hostile_input(framing: Framing, data: st.DataObject) -> None:
    """What tests/test_fuzz_daemon.py sends a live daemon, every kind mixed."""
    stream = data.draw(st.one_of(hostile_inputs(framing), subscriber_requests(framing)))
    detect = data.draw(st.booleans())
    decode(chunked(stream, data), None if detect else framing)


# -- control messages and bodies on their own ------------------------------------------


@budget("control")
@given(frame=valid_frames(Framing.BARE))
def test_decode_control_of_any_head(frame: bytes) -> None:
    frames, error = decode([frame], Framing.BARE)
    assert error is None and len(frames) == 1


@pytest.mark.parametrize("kind", ["array", "map", "mixed"])
def test_decode_control_of_deep_values_everywhere(kind: str) -> None:
    """Every field of every control message, nested as deep as msgpack lets a
    peer nest it (deeper than Python's recursion limit)."""
    for op, field, depth in itertools.product(CONTROL_OPS, CONTROL_FIELDS, (990, 1020)):
        control = b"\x82\xa2op" + msgpack.packb(op) + msgpack.packb(field) + nested(depth, kind)
        frames, error = decode([frame_around(b"\x81\xa7saltbus" + control, b"")], Framing.BARE)
        assert error is None and len(frames) == 1


@budget("body")
@given(
    body=st.binary(max_size=300)
    | st.builds(lambda t, d: t + b"\n\n" + d, st.binary(max_size=30), st.binary(max_size=200))
    | st.builds(nested, st.integers(1, 3000), st.sampled_from(["array", "map", "mixed"]))
)
def test_body_functions_on_any_bytes(body: bytes) -> None:
    RUN["inputs"] += 1
    exercise(Frame(body=body))
    exercise(Frame(body=b"", head={"saltbus": {"op": "subscribe", "patterns": body}}))


# -- memory --------------------------------------------------------------------------


@budget("memory")
@given(partial=stalled_partial_frames(), detect=st.booleans())
def test_stalled_partial_frames_hold_bounded_memory(partial: bytes, detect: bool) -> None:
    """A connection that sends the start of a frame and stalls keeps its decoder:
    what the decoder holds is bounded by max_frame_size, whatever the bytes declare."""
    RUN["inputs"] += 1
    max_frame_size = 65536
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decoder = FrameDecoder(None if detect else Framing.BARE, max_frame_size=max_frame_size)
        try:
            for start in range(0, len(partial), 4096):
                decoder.receive_data(partial[start : start + 4096])
                assert decoder.next_frame() is None
        except RemoteProtocolError:
            RUN["errors"] += 1
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert decoder.buffered <= 2 * max_frame_size + 4
    # The bytes themselves (in our buffer, and in msgpack's), plus the fixed state of
    # the decoder's two msgpack parsers (a buffer and a 1024-deep stack, ~100 KiB each).
    assert held <= 3 * max_frame_size + PARSERS, f"{held} bytes held for {len(partial)} bytes sent"


@pytest.mark.parametrize(
    "start",
    [b"\x82\xa4head", b"\x82\xa4head\x91", b"\x82\xa4head\x81\xa1k"],
    ids=["head", "in-array", "in-map"],
)
@pytest.mark.parametrize("fill", [b"\x90", b"\xc0", b"\x80"], ids=["arrays", "nils", "maps"])
def test_endless_frame_is_refused_at_the_limit(start: bytes, fill: bytes) -> None:
    """A peer that keeps sending one frame that never ends (arrays of arrays of
    small items, each array under msgpack's length limits) is refused once
    max_frame_size bytes of it came, not decoded item by item while it sends."""
    max_frame_size = 65536
    decoder = FrameDecoder(Framing.BARE, max_frame_size=max_frame_size)
    outer = sized_header("array32", 30000)
    inner = sized_header("array32", 30000) + fill * 30000
    decoder.receive_data(start + outer)
    sent = len(start) + len(outer)
    with pytest.raises(RemoteProtocolError):
        while sent < 64 * max_frame_size:
            decoder.receive_data(inner)
            sent += len(inner)
            assert decoder.next_frame() is None
    assert sent <= max_frame_size + 2 * len(inner)
