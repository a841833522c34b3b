"""What a node remembers of its imports (saltbus.cluster.state) and the
headers each exported event carries (saltbus.cluster.envelope)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saltbus import Config, Sender
from saltbus.cluster.envelope import Envelope
from saltbus.cluster.state import (
    EPOCHS_KEPT,
    ORIGIN_KEY,
    ImportState,
    marked_first,
    may_carry_marker,
    origin_marker,
    read_marker,
)
from saltbus.errors import RemoteProtocolError
from saltbus.journal.paths import journal_path
from saltbus.server import EmbeddedPublisher
from saltbus.wire import pack_body


def test_marks_survive_a_save_and_only_move_up(tmp_path: Path):
    state = ImportState.load(tmp_path / "positions" / "import")
    assert state.delivered(("a", 1)) is None
    state.record(("a", 1), 10, local_seq=100)
    state.record(("a", 1), 7, local_seq=90)
    state.record(("b", 2), 3)
    state.save()
    again = ImportState.load(state.path)
    assert again.marks == {("a", 1): 10, ("b", 2): 3}
    assert again.as_of == 100


def test_the_stream_seq_handled_survives_a_save_and_an_older_file_has_none(tmp_path: Path):
    state = ImportState(tmp_path / "import")
    state.stream_seq = 4096
    state.save()
    assert ImportState.load(state.path).stream_seq == 4096
    older = tmp_path / "older"
    older.write_text('{"local_epoch": 5, "as_of": 9, "origins": {"b": {"7": 3}}}\n')
    loaded = ImportState.load(older)
    assert (loaded.stream_seq, loaded.marks) == (0, {("b", 7): 3})


def test_only_the_latest_epochs_of_an_origin_are_kept(tmp_path: Path):
    state = ImportState(tmp_path / "import")
    for epoch in range(EPOCHS_KEPT + 2):
        state.record(("a", 1000 - epoch), 5)  # epochs are random numbers, not in order
    state.save()
    kept = ImportState.load(state.path).marks
    assert sorted(kept) == sorted(("a", 1000 - e) for e in range(2, EPOCHS_KEPT + 2))


def test_an_unreadable_file_is_rebuilt_from_the_journal(tmp_path: Path):
    path = tmp_path / "import"
    path.write_text("{not json")
    assert ImportState.load(path).marks == {}


def test_the_journal_tells_what_was_delivered_after_the_file(bus_config: Config, tmp_path: Path):
    assert bus_config.data_dir is not None
    journal = journal_path(bus_config.data_dir, bus_config.sock_dir, bus_config.socket_prefix)
    state = ImportState(tmp_path / "import")
    with EmbeddedPublisher(bus_config), Sender(bus_config) as sender:
        sender.fire("local/x", {"n": 1}, ack=True)
        marked = {"n": 2, "_saltbus_origin": origin_marker("a", 5, 41, "2024-01-01T00:00:00")}
        sender.fire("remote/x", marked, ack=True)
        assert state.catch_up(journal) == [(("a", 5), 41)]
        assert state.marks == {("a", 5): 41}
        state.save()
        # Fired after the save (say, just before a crash): found from as_of on.
        sender.fire("remote/y", {"_saltbus_origin": origin_marker("a", 5, 42)}, ack=True)
        sender.fire("remote/z", {"_saltbus_origin": origin_marker("b", 6, 7)}, ack=True)
    later = ImportState.load(state.path)
    assert later.as_of == 2
    assert later.catch_up(journal) == [(("a", 5), 42), (("b", 6), 7)]
    assert later.marks == {("a", 5): 42, ("b", 6): 7}
    assert later.as_of == 4
    # A missing journal (a new bus) holds nothing.
    assert ImportState(tmp_path / "other").catch_up(tmp_path / "none.sqlite3") == []


def test_markers():
    marker = origin_marker("web1", 9, 12, "2024-01-01T00:00:00")
    assert marker == {"node": "web1", "seq": 12, "epoch": 9, "stamp": "2024-01-01T00:00:00"}
    assert read_marker({"_saltbus_origin": marker}) == (("web1", 9), 12)
    assert read_marker({"_saltbus_origin": "web1"}) is None
    assert read_marker({"n": 1}) is None


@pytest.mark.parametrize("keys", [1, 15, 16, 70_000])  # fixmap, map16, map32
def test_an_imported_body_is_known_by_its_marker_first(keys: int):
    marker = origin_marker("web1", 3, 7)
    data = {ORIGIN_KEY: marker, **{f"k{n}": n for n in range(keys - 1)}}
    assert marked_first(pack_body("salt/job/1/ret/m1", data))


@pytest.mark.parametrize(
    "data",
    [
        {"x": 1, ORIGIN_KEY: origin_marker("web1", 3, 7)},  # decoded to tell
        {"note": ORIGIN_KEY},
        {ORIGIN_KEY[:-1]: 1},
        {},
    ],
)
def test_a_body_without_the_marker_first_is_not_known_imported(data: dict[str, object]):
    assert not marked_first(pack_body("a/b", data))


def test_a_body_that_is_not_an_event_is_not_known_imported():
    assert not marked_first(b"no separator")
    assert not marked_first(b"tag\n\n")
    assert not marked_first(b"tag\n\n\x92\xaf_saltbus_origin")  # an array, not a map


@pytest.mark.parametrize("tag", ["salt/auth", "a b/c\nd", "ünï/日本/%25", "x:y"])
def test_headers_round_trip(tag: str):
    envelope = Envelope("web1", 2**62, 17, tag)
    headers = envelope.headers()
    assert headers["Nats-Msg-Id"] == f"web1:{2**62}:17"
    assert all(v.isascii() and v.isprintable() for v in headers.values())
    assert Envelope.from_headers(headers) == envelope


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"Saltbus-Origin": "a"}, {"Saltbus-Origin": "a", "Saltbus-Origin-Seq": "x"}],
)
def test_messages_saltbus_did_not_publish_are_refused(headers: dict[str, str] | None):
    with pytest.raises(RemoteProtocolError):
        Envelope.from_headers(headers)


@pytest.mark.parametrize(
    ("data", "carries"),
    [
        ({ORIGIN_KEY: origin_marker("web1", 3, 7), "x": 1}, True),
        ({"x": "r" * 400, ORIGIN_KEY: 1}, True),  # anywhere, not only first
        ({"note": ORIGIN_KEY}, True),  # in a value: decoding tells (the exporter does)
        ({"x": "\u00af" * 20 + ORIGIN_KEY}, True),  # past many header bytes that start no key
        ({"pad": "r" * 400, "origin": "_saltbus"}, False),
        ({"x": "\u00af" * 20}, False),  # the header byte alone (in UTF-8 text)
        ({ORIGIN_KEY[:-1]: 1}, False),
        ({}, False),
    ],
)
def test_a_body_may_carry_the_marker_only_with_its_packed_key(
    data: dict[str, object], carries: bool
):
    body = pack_body("salt/job/1/ret/m1", data)
    assert may_carry_marker(body) is carries
    assert may_carry_marker(body) is (b"\xaf" + ORIGIN_KEY.encode() in body)
