"""saltbus's own blocking clients: Listener and Sender raise instead of returning None/False."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from saltbus import (
    BusClosedError,
    BusTimeoutError,
    Config,
    Event,
    JournalUnavailableError,
    Listener,
    LocalProtocolError,
    NoPublisherError,
    Sender,
)
from saltbus.control import Nack, encode_control
from saltbus.server import EmbeddedPublisher
from saltbus.wire import Framing
from tests.firing_support import saltbus_lock, stand_in


def test_fire_and_receive(bus_config: Config, publisher: EmbeddedPublisher):
    with Listener(bus_config) as listener, Sender(bus_config) as sender:
        sender.fire("app/ready", {"ok": True})
        event = listener.receive(timeout=5)
    assert isinstance(event, Event)
    assert event.tag == "app/ready" and event.data["ok"] is True
    assert event.seq == 1


def test_receive_timeout_returns_none_and_keeps_the_connection(
    bus_config: Config, publisher: EmbeddedPublisher
):
    with Listener(bus_config) as listener, Sender(bus_config) as sender:
        assert listener.receive(timeout=0.05) is None
        assert listener.connected
        sender.fire("x/1", {})
        event = listener.receive(timeout=5)
    assert event is not None and event.tag == "x/1"


def test_listener_filters_by_tag(bus_config: Config, publisher: EmbeddedPublisher):
    with Listener(bus_config, "job/", "startswith") as listener, Sender(bus_config) as sender:
        for tag in ("noise/1", "job/1", "noise/2", "job/2"):
            sender.fire(tag, {})
        tags = [listener.receive(timeout=5), listener.receive(timeout=5)]
    assert [e.tag for e in tags if e] == ["job/1", "job/2"]


def test_iteration_yields_events_in_order(bus_config: Config, publisher: EmbeddedPublisher):
    with Listener(bus_config) as listener, Sender(bus_config) as sender:
        for n in range(100):
            sender.fire("it/evt", {"n": n})
        got = []
        for event in listener:
            got.append(event.data["n"])
            if len(got) == 100:
                break
    assert got == list(range(100))


def test_no_publisher_raises(sock_dir: Path):
    config = Config.load(env={}, overrides={"sock_dir": sock_dir})
    with pytest.raises(NoPublisherError, match=r"master_event_pub\.ipc"):
        Listener(config).connect()
    started = time.monotonic()
    with pytest.raises(NoPublisherError, match=r"master_event_pull\.ipc"):
        Sender(config).fire("a/b", {}, timeout=0.2)
    assert time.monotonic() - started < 2


def test_listener_waits_for_the_publisher_to_return_by_default(bus_config: Config):
    with EmbeddedPublisher(bus_config), Listener(bus_config) as listener:
        assert listener.receive(timeout=0.01) is None
    started = time.monotonic()
    assert listener.receive(timeout=0.3) is None
    assert time.monotonic() - started >= 0.25
    listener.close()


def test_listener_raises_when_the_publisher_stops(bus_config: Config):
    listener = Listener(bus_config, reconnect=False)
    try:
        with EmbeddedPublisher(bus_config):
            listener.connect()
            assert listener.receive(timeout=0.01) is None
        with pytest.raises(BusClosedError, match="closed the connection"):
            listener.receive(timeout=5)
        assert not listener.connected
    finally:
        listener.close()


def test_sender_reconnects_after_a_publisher_restart(bus_config: Config):
    with Sender(bus_config) as sender:
        with EmbeddedPublisher(bus_config):
            sender.fire("first/evt", {})
        with EmbeddedPublisher(bus_config), Listener(bus_config) as listener:
            sender.fire("second/evt", {})
            event = listener.receive(timeout=5)
    assert event is not None and event.tag == "second/evt"


def test_sender_writes_the_configured_generation(sock_dir: Path):
    for generation in ("3006", "3007", "3008"):
        config = Config.load(
            env={}, overrides={"sock_dir": sock_dir / generation, "salt_version": generation}
        )
        with EmbeddedPublisher(config), Listener(config) as listener, Sender(config) as sender:
            sender.fire("gen/evt", {"g": generation})
            event = listener.receive(timeout=5)
            assert event is not None and event.data["g"] == generation
            stamp = event.data["_stamp"]
            assert stamp.endswith("+00:00") == (generation == "3008")


def test_sender_rejects_bad_input_with_one_error(bus_config: Config, publisher: EmbeddedPublisher):
    with Sender(bus_config) as sender:
        for tag, data in (("a/b", [1]), (3, {}), ("", {}), ("a/b", {"k": object()})):
            with pytest.raises(LocalProtocolError):
                sender.fire(tag, data)  # type: ignore[arg-type]
        assert sender.fire("a/ok", {}, ack=True).seq == 1


def test_a_nack_raises_journal_unavailable_at_once(bus_config: Config):
    def nack(request_id: int) -> bytes:
        return encode_control(Nack(request_id, "disk full"), Framing.BARE)

    with stand_in(bus_config, nack) as standin, Sender(bus_config) as sender:
        # Raised on the answer: waiting out the timeout would raise BusTimeoutError.
        with pytest.raises(JournalUnavailableError, match="disk full"):
            sender.fire("a/b", {}, timeout=30, ack=True)
        # The connection is kept: the next event goes on it.
        with pytest.raises(JournalUnavailableError):
            sender.fire("a/c", {}, timeout=30, ack=True)
        assert standin.requests == [1, 2]


def test_a_missing_ack_from_saltbus_does_not_blame_salt(bus_config: Config):
    with (
        saltbus_lock(bus_config.lock_path),
        stand_in(bus_config, lambda _id: b""),
        Sender(bus_config) as sender,
        pytest.raises(BusTimeoutError, match=r"no acknowledgement within 0\.2 s") as caught,
    ):
        sender.fire("a/b", {}, timeout=0.2, ack=True)
    assert "Salt publisher" not in str(caught.value)
