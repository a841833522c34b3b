"""saltbus's control messages: the bytes each encodes to, and the round trip
through a frame for every message type."""

from __future__ import annotations

from typing import Any, get_args

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltbus.control import (
    CONTROL_KEY,
    MESSAGE_TYPES,
    Ack,
    Auth,
    ControlMessage,
    Lagged,
    Nack,
    Refused,
    Stats,
    StatsRequest,
    Subscribe,
    Subscribed,
    Welcome,
    decode_control,
    encode_control,
)
from saltbus.errors import RemoteProtocolError
from saltbus.event import MatchType
from saltbus.wire import Frame, FrameDecoder, Framing, encode_frame

ints = st.integers(min_value=0, max_value=2**63 - 1)
optional_ints = st.none() | ints
texts = st.text(max_size=20)
# Every match type but regex takes any text; regex patterns that compile.
patterns = st.tuples(
    texts, st.sampled_from([m for m in MatchType if m is not MatchType.REGEX])
) | st.tuples(st.sampled_from(["", "a.*", r"salt/job/\d+", "^x$"]), st.just(MatchType.REGEX))
# msgpack carries integers from -2**63 to 2**64 - 1.
stats_maps = st.dictionaries(
    texts, st.integers(min_value=-(2**63), max_value=2**64 - 1) | texts | st.booleans(), max_size=4
)
gaps = st.lists(st.tuples(ints, ints), max_size=3).map(tuple)

# One strategy per message type; the test below fails for a type added without one.
STRATEGIES: dict[type[ControlMessage], st.SearchStrategy[Any]] = {
    Subscribe: st.builds(
        Subscribe,
        st.lists(patterns, max_size=3).map(tuple),
        optional_ints,
        optional_ints,
        st.none() | texts,
    ),
    Subscribed: st.builds(Subscribed, ints, ints, st.booleans(), optional_ints, gaps),
    Lagged: st.builds(Lagged, ints),
    Ack: st.builds(Ack, ints, ints),
    Nack: st.builds(Nack, ints, texts),
    StatsRequest: st.just(StatsRequest()),
    Stats: st.builds(Stats, stats_maps),
    Auth: st.builds(Auth, texts),
    Welcome: st.just(Welcome()),
    Refused: st.builds(Refused, texts),
}
messages = st.one_of(*STRATEGIES.values())


def test_every_message_type_has_an_op_and_a_strategy() -> None:
    types = get_args(ControlMessage)
    assert set(MESSAGE_TYPES.values()) == set(types)
    assert len(MESSAGE_TYPES) == len(types)  # no two types share an op
    assert set(STRATEGIES) == set(types)


def _decode_one(data: bytes) -> Frame:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    frames = list(decoder)
    assert len(frames) == 1
    return frames[0]


@given(messages, st.sampled_from(list(Framing)))
def test_every_message_round_trips_through_a_frame(
    message: ControlMessage, framing: Framing
) -> None:
    assert decode_control(_decode_one(encode_control(message, framing))) == message


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        (
            Subscribe((("a/", MatchType.STARTSWITH),), 3, 9),
            [
                ("op", "subscribe"),
                ("patterns", [["a/", "startswith"]]),
                ("since", 3),
                ("epoch", 9),
            ],
        ),
        (
            Subscribed(5, 6, True, 2),
            [("op", "subscribed"), ("seq", 5), ("epoch", 6), ("replaying", True), ("first", 2)],
        ),
        (Lagged(4), [("op", "lagged"), ("delivered", 4)]),
        (Ack(1, 2), [("op", "acked"), ("id", 1), ("seq", 2)]),
        (Nack(1, "disk full"), [("op", "nack"), ("id", 1), ("reason", "disk full")]),
        (StatsRequest(), [("op", "stats")]),
        (Stats({"n": 1}), [("op", "stats-reply"), ("stats", {"n": 1})]),
        (Auth("s3"), [("op", "auth"), ("secret", "s3")]),
        (Welcome(), [("op", "welcome")]),
        (Refused("no"), [("op", "refused"), ("reason", "no")]),
    ],
)
def test_wire_bytes_are_pinned(message: ControlMessage, fields: list[tuple[str, Any]]) -> None:
    # Keys in this order: peers already deployed read (and byte-compare) these frames.
    expected = encode_frame(b"", {CONTROL_KEY: dict(fields)})
    assert encode_control(message, Framing.BARE) == expected
    frame = msgpack.unpackb(encode_control(message, Framing.BARE), raw=False)
    assert list(frame["head"][CONTROL_KEY].items()) == fields


def test_an_event_frame_carries_no_control_message() -> None:
    assert decode_control(Frame(body=b"t\n\n\x80", head={CONTROL_KEY: {"op": "acked"}})) is None


@pytest.mark.parametrize(
    "control",
    [
        {"op": "nonsense"},
        {"op": 3},
        {},
        {"op": "acked", "id": 1},
        {"op": "acked", "id": True, "seq": 1},
        {"op": "nack", "reason": "x"},
        {"op": "stats-reply", "stats": [1]},
        {"op": "subscribe", "patterns": [["(", "regex"]]},
    ],
)
def test_malformed_messages_are_remote_protocol_errors(control: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed saltbus control message"):
        decode_control(Frame(body=b"", head={CONTROL_KEY: control}))
