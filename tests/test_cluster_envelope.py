"""The two message forms of the federation, as bytes: one event per message
(what readers of the stream that know nothing of batches get) and a batch of
an origin's events, read back exactly, and malformed batches refused."""

from __future__ import annotations

import struct

import pytest

from saltbus.cluster.envelope import (
    BATCH,
    MSG_ID,
    ORIGIN_SEQ,
    TAG,
    Batch,
    Envelope,
    batch_size,
    unpack_batch,
)
from saltbus.errors import RemoteProtocolError
from saltbus.wire import pack_body


def test_a_lone_event_keeps_the_first_form():
    headers = Envelope("web1", 7, 42, "salt/job/1/ret/m 1").headers()
    assert headers[MSG_ID] == "web1:7:42"
    assert headers[ORIGIN_SEQ] == "42"
    assert headers[TAG] == "salt/job/1/ret/m%201"
    assert BATCH not in headers
    assert batch_size(headers) is None
    assert Envelope.from_headers(headers) == Envelope("web1", 7, 42, "salt/job/1/ret/m 1")


def test_a_batch_round_trips_with_its_seqs_gaps_and_bodies():
    events = [(100, pack_body("a/1", {"n": 1})), (101, b""), (105, pack_body("a/2", {"x": "y"}))]
    batch = Batch("web1", 7, events)
    headers = batch.headers()
    assert headers[MSG_ID] == "web1:7:100-105"
    assert headers[ORIGIN_SEQ] == "100"
    assert TAG not in headers
    count = batch_size(headers)
    assert count == 3
    envelope = Envelope.from_headers(headers)
    assert (envelope.node, envelope.epoch, envelope.seq) == ("web1", 7, 100)
    assert unpack_batch(envelope, count, batch.body()) == events


def test_the_body_is_length_prefixed_entries_with_seq_offsets():
    body = Batch("n", 1, [(10, b"ab"), (12, b"c")]).body()
    assert body == struct.pack(">II", 0, 2) + b"ab" + struct.pack(">II", 2, 1) + b"c"


@pytest.mark.parametrize(
    ("body", "count", "what"),
    [
        (struct.pack(">II", 0, 5) + b"abc", 1, "cut inside an event"),
        (struct.pack(">II", 0, 1) + b"a" + b"\x00\x00", 2, "cut inside an entry"),
        (struct.pack(">II", 0, 1) + b"a", 2, "holds 1 events, its header says 2"),
        (struct.pack(">II", 3, 1) + b"a" + struct.pack(">II", 3, 1) + b"b", 2, "out of order"),
    ],
)
def test_a_malformed_batch_is_refused(body: bytes, count: int, what: str):
    with pytest.raises(RemoteProtocolError, match=what):
        unpack_batch(Envelope("n", 1, 10), count, body)


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_an_invalid_batch_header_is_refused(value: str):
    with pytest.raises(RemoteProtocolError, match="Saltbus-Batch"):
        batch_size({BATCH: value})


def test_a_batch_cannot_span_more_seqs_than_an_offset_holds():
    with pytest.raises(ValueError, match="cannot follow"):
        Batch("n", 1, [(1, b""), (1 + 2**32, b"")]).body()
