"""The daemon's connections (saltbus.server.connections) over real sockets:
bad input on the pull socket closes only that connection, both pull framings,
listeners that write garbage, ask without reading, or go away.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import psutil
import pytest

from saltbus.config import Address, Config
from saltbus.control import Stats, StatsRequest, decode_control, encode_control
from saltbus.server import EmbeddedPublisher
from saltbus.wire import FRAME_OVERHEAD, FrameDecoder, Framing, encode_frame
from tests.serve_support import ServeProcess
from tests.server_support import (
    WAIT,
    RawSubscriber,
    body,
    connect,
    data_of,
    is_closed_by_peer,
    make_config,
    send,
    sync_subscribers,
)
from tests.waiting import wait_until

# -- bad input on the pull socket -----------------------------------------------------

BAD_INPUTS: dict[str, bytes] = {
    "garbage": b"\xc1\xc1 this is not msgpack at all \xff\xfe" * 10,
    "garbage-after-map-start": b"\x82\xa4head\x80\xa4body\xc1\xc1\xc1garbage",
    "length-prefix-garbage": b"\x00\x00\x00\x10" + b"\xc1" * 16,
    "not-a-map": msgpack.packb([1, 2, 3]),
    "no-separator": msgpack.packb(
        {"head": {}, "body": b"a tag without separator"}, use_bin_type=True
    ),
    "body-as-str": msgpack.packb({"head": {}, "body": "a/b\n\n\x80"}, use_bin_type=True),
    "body-missing": msgpack.packb({"head": {}}, use_bin_type=True),
    "oversized-bare": b"\x82\xa4head\x80\xa4body\xc6"
    + (8 << 20).to_bytes(4, "big")
    + b"a/b\n\n"
    + b"\x00" * (4 << 20),
    "oversized-prefixed": (8 << 20).to_bytes(4, "big") + b"\x82\xa4head\x80" + b"\x00" * 1000,
}


def _send_bad(address: Address, data: bytes) -> socket.socket:
    """Send ``data``, tolerating the publisher closing the connection mid-way."""
    sock = connect(address)
    sock.settimeout(WAIT)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)
    return sock


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_closes_only_that_connection(
    bus_config: Config, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level("WARNING", logger="saltbus.server")
    with EmbeddedPublisher(bus_config) as bus:
        sub = RawSubscriber(bus.pub_address)
        good = connect(bus.pull_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        good.sendall(encode_frame(body("good", 1)))
        assert sub.read(1)[-1].tag == "good"

        bad = _send_bad(bus.pull_address, BAD_INPUTS[kind])
        assert is_closed_by_peer(bad), "the bad connection was not closed"
        bad.close()

        good.sendall(encode_frame(body("good", 2)))
        # A new connection works too, and the subscriber was never disturbed.
        send(bus.pull_address, encode_frame(body("good", 3)))
        frames = sub.read(3)
        assert [f.tag for f in frames] == ["good", "good", "good"]
        assert [data_of(f)["n"] for f in frames] == [1, 2, 3]
        assert len(bus.subscriber_stats()) == 1
        good.close()
        sub.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    closing = [w for w in warnings if "closing pull connection" in w]
    assert len(closing) >= 1, warnings
    assert f"pid {os.getpid()} uid {os.getuid()}" in closing[0]


def test_good_frames_before_a_bad_one_are_published(
    bus_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="saltbus.server")
    with EmbeddedPublisher(bus_config) as bus:
        sub = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        stream = encode_frame(body("ok", 1)) + encode_frame(body("ok", 2)) + b"\xc1junk"
        bad = _send_bad(bus.pull_address, stream + encode_frame(body("never", 3)))
        assert is_closed_by_peer(bad)
        send(bus.pull_address, encode_frame(body("ok", 4)))
        assert [data_of(f)["n"] for f in sub.read(3)] == [1, 2, 4]
        sub._read(time.monotonic() + 0.2)
        assert "never" not in sub.tags()
        bad.close()
        sub.close()


@pytest.mark.parametrize(
    ("bad", "cause"),
    [
        (b"a tag without separator", "no tag separator"),
        (b"t\n\n" + msgpack.packb({"pad": b"x" * 5000}), "over max_event_size (4096)"),
    ],
    ids=["no-separator", "over-max-event-size"],
)
def test_a_bad_frame_alone_in_a_read_closes_its_connection(
    sock_dir: Path, caplog: pytest.LogCaptureFixture, bad: bytes, cause: str
) -> None:
    """Once a connection's framing is known, a read of one whole frame takes
    the idle publisher's shortcut: it checks the frame as any other."""
    caplog.set_level("WARNING", logger="saltbus.server")
    with EmbeddedPublisher(make_config(sock_dir, max_event_size=4096)) as bus:
        sub = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        firer = connect(bus.pull_address)
        firer.sendall(encode_frame(body("first", 1)))
        assert sub.read(1)[0].tag == "first"
        time.sleep(0.05)  # read on its own, not with the first frame
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            firer.sendall(encode_frame(bad))
        firer.settimeout(WAIT)
        assert is_closed_by_peer(firer)
        firer.close()
        send(bus.pull_address, encode_frame(body("after", 2)))
        assert [f.tag for f in sub.read(2)] == ["first", "after"]
        sub.close()
    warnings = [r.getMessage() for r in caplog.records]
    closing = [w for w in warnings if "closing pull connection" in w]
    assert len(closing) == 1 and cause in closing[0], closing


def test_event_at_max_event_size_is_delivered(sock_dir: Path) -> None:
    """max_event_size bounds an event's data (Salt trims data to it); the tag
    and the frame's keys come on top, so an event of exactly that size passes."""
    config = make_config(sock_dir, max_event_size=4096)
    with EmbeddedPublisher(config) as bus:
        sub = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        data = msgpack.packb({"pad": b"x" * 4088}, use_bin_type=True)
        assert len(data) == 4096
        big = b"a/long/tag/" * 20 + b"\n\n" + data
        send(bus.pull_address, encode_frame(big))
        assert sub.read(1)[0].body == big
        # Far over the limit: refused, and the subscriber is not disturbed.
        huge = b"t\n\n" + msgpack.packb({"pad": b"x" * (4096 + FRAME_OVERHEAD)})
        bad = _send_bad(bus.pull_address, encode_frame(huge))
        assert is_closed_by_peer(bad)
        bad.close()
        send(bus.pull_address, encode_frame(body("after", 1)))
        assert sub.read(2)[1].tag == "after"
        sub.close()


def test_bad_input_logged_by_serve_with_the_peer(
    sock_dir: Path, serve: Callable[..., ServeProcess]
) -> None:
    bus = serve(sock_dir)
    sub = RawSubscriber(bus.pub)
    sync_subscribers(bus.pull, [sub])
    bad = _send_bad(bus.pull, BAD_INPUTS["garbage"])
    assert is_closed_by_peer(bad)
    bad.close()
    send(bus.pull, encode_frame(body("after/garbage", 1)))
    assert sub.read(1)[0].tag == "after/garbage"
    assert bus.alive()
    err = bus.log
    assert f"WARNING: closing pull connection from pid {os.getpid()}" in err, err
    assert "Traceback" not in err
    sub.close()


def test_tcp_bad_input_log_names_host_and_port(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="saltbus.server")
    config = make_config(
        sock_dir,
        ipc_mode="tcp",
        tcp_master_pub_port=0,
        tcp_master_pull_port=0,
        tcp_allow_unauthenticated=True,
    )
    with EmbeddedPublisher(config) as bus:
        bad = _send_bad(bus.pull_address, b"\xc1garbage")
        port = bad.getsockname()[1]
        assert is_closed_by_peer(bad)
        bad.close()
    assert any(f"127.0.0.1:{port}" in r.getMessage() for r in caplog.records)


# -- pull framings --------------------------------------------------------------------


def test_both_pull_framings_accepted_in_one_daemon(bus_config: Config) -> None:
    with EmbeddedPublisher(bus_config) as bus:
        sub = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        prefixed = connect(bus.pull_address)
        bare = connect(bus.pull_address)
        expected = []
        for i in range(200):
            sock, framing, name = (
                (prefixed, Framing.LENGTH_PREFIXED, "prefixed")
                if i % 2
                else (bare, Framing.BARE, "bare")
            )
            sock.sendall(encode_frame(body(f"framing/{name}", i), framing=framing))
            expected.append((f"framing/{name}", i))
            if i % 10 == 9:  # let each stream be read before the next
                sub.read(len(expected))
        frames = sub.read(200)
        assert sorted((f.tag, data_of(f)["n"]) for f in frames) == sorted(expected)
        for name in ("prefixed", "bare"):
            ns = [data_of(f)["n"] for f in frames if f.tag == f"framing/{name}"]
            assert ns == sorted(ns) and len(ns) == 100
        prefixed.close()
        bare.close()
        sub.close()


# -- subscriber connections -----------------------------------------------------------


def test_subscriber_writing_garbage_keeps_receiving(bus_config: Config) -> None:
    with EmbeddedPublisher(bus_config) as bus:
        chatty = RawSubscriber(bus.pub_address)
        quiet = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 2, "subscribers")
        chatty.sock.sendall(b"\xc1\xff garbage \x00" * 1000)
        chatty.sock.sendall(encode_frame(body("from/subscriber", 0)))  # a frame: ignored too
        send(bus.pull_address, encode_frame(body("evt", 1)))
        chatty.sock.sendall(os.urandom(1 << 20))
        send(bus.pull_address, encode_frame(body("evt", 2)))
        for sub in (chatty, quiet):
            frames = sub.read(2)
            assert [(f.tag, data_of(f)["n"]) for f in frames] == [("evt", 1), ("evt", 2)]
        assert len(bus.subscriber_stats()) == 2
        chatty.close()
        quiet.close()


def test_listener_asking_without_reading_costs_bounded_memory(
    sock_dir: Path, serve: Callable[..., ServeProcess]
) -> None:
    """A listener may ask for statistics on the publish socket; one that asks
    and never reads must not make the publisher queue replies without bound:
    it is not read while it does not read (measured before the fix: 200,000
    requests grew the publisher by ~100 MB)."""
    bus = serve(sock_dir)
    good = RawSubscriber(bus.pub)
    sync_subscribers(bus.pull, [good])
    process = psutil.Process(bus.pid)
    baseline = process.memory_info().rss
    asker = connect(bus.pub)
    asker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = encode_control(StatsRequest(), Framing.BARE)
    asker.settimeout(2.0)
    sent = 0
    with contextlib.suppress(TimeoutError):
        for _ in range(200):
            asker.sendall(request * 1000)
            sent += 1000
    assert sent < 200_000, "the publisher kept reading requests it could not answer"
    growth = (process.memory_info().rss - baseline) / 2**20
    assert growth < 16, f"publisher grew by {growth:.0f} MB"
    # The others are served meanwhile, and the asker gets its answers once it reads.
    send(bus.pull, encode_frame(body("still/served", 1)))
    assert good.read_tag("still/served", 1)
    asker.settimeout(WAIT)
    decoder = FrameDecoder()
    replies = 0
    deadline = time.monotonic() + WAIT
    while replies < 10:
        assert time.monotonic() < deadline
        decoder.receive_data(asker.recv(1 << 16))
        replies += sum(1 for f in decoder if isinstance(decode_control(f), Stats))
    asker.close()
    good.close()


def test_subscriber_disconnecting_is_forgotten(bus_config: Config) -> None:
    with EmbeddedPublisher(bus_config) as bus:
        gone = RawSubscriber(bus.pub_address)
        stays = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 2, "subscribers")
        gone.close()
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "the closed one to go")
        send(bus.pull_address, b"".join(encode_frame(body("x", i)) for i in range(100)))
        assert len(stays.read(100)) == 100
        stays.close()


def test_stuck_subscriber_that_goes_away_is_forgotten(bus_config: Config) -> None:
    """A stalled listener is not read (see above); its going away is still noticed."""
    with EmbeddedPublisher(bus_config) as bus:
        stuck = RawSubscriber(bus.pub_address)
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        send(bus.pull_address, b"".join(encode_frame(body("x", i, pad=1000)) for i in range(3000)))
        wait_until(lambda: bus.subscriber_stats()[0].queued_events > 0, "a backlog")
        stuck.close()
        wait_until(lambda: not bus.subscriber_stats(), "the closed subscriber to go")
