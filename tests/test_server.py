"""The publisher daemon (saltbus.server.app, .embedded) over real sockets: delivery,
start-up and shutdown, tcp mode, framing by Salt version, slow subscribers.

In-process servers run as ``async with Server(config)`` inside ``asyncio.run``
or as an :class:`EmbeddedPublisher`; where process behaviour matters (signals,
``kill -9``, stderr, memory) ``saltbus serve`` runs as a subprocess. Clients
here are raw sockets and :class:`FrameDecoder`, so the tests see the bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from saltbus.client import Listener, Sender
from saltbus.config import Config
from saltbus.errors import PublisherRunningError
from saltbus.server import EmbeddedPublisher, Server
from saltbus.server.app import DRAIN_TIMEOUT
from saltbus.server.laggards import LAG_REPORT_INTERVAL, LAGGED_TAG
from saltbus.wire import Frame, FrameDecoder, Framing, encode_frame
from tests.serve_support import ServeProcess, bus_flags
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
from tests.waiting import wait_until, wait_until_async

# -- delivery -------------------------------------------------------------------------


@pytest.mark.parametrize("journal", ["none", "batch", "fsync"])
def test_every_event_reaches_every_subscriber_in_order(sock_dir: Path, journal: str) -> None:
    """Several subscribers, several firing connections writing interleaved and
    split at random byte offsets: each subscriber gets every event, all in the
    same order, each connection's events in the order it sent them."""
    bus_config = make_config(sock_dir, journal=journal)
    n_subs, n_firers, per_firer = 4, 5, 2000
    total = n_firers * per_firer

    async def main() -> tuple[list[list[Frame]], float]:
        async with Server(bus_config) as server:
            streams = [
                await asyncio.open_unix_connection(os.fspath(server.pub_address))
                for _ in range(n_subs)
            ]
            await wait_until_async(lambda: len(server.fanout.subscribers) == n_subs, "subscribers")

            async def fire(src: int) -> None:
                _reader, writer = await asyncio.open_unix_connection(os.fspath(server.pull_address))
                rnd = random.Random(src)
                data = b"".join(
                    encode_frame(body(f"load/{src}", i, src=src)) for i in range(per_firer)
                )
                pos = 0
                while pos < len(data):
                    step = rnd.randint(1, 3000)
                    writer.write(data[pos : pos + step])
                    pos += step
                    await writer.drain()
                    await asyncio.sleep(0)
                writer.close()
                await writer.wait_closed()

            async def read(reader: asyncio.StreamReader) -> list[Frame]:
                decoder = FrameDecoder()
                frames: list[Frame] = []
                while len(frames) < total:
                    data = await reader.read(1 << 16)
                    if not data:
                        break
                    decoder.receive_data(data)
                    frames.extend(decoder)
                return frames

            started = time.perf_counter()
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(read(r) for r, _w in streams), *(fire(s) for s in range(n_firers))
                ),
                timeout=60,
            )
            elapsed = time.perf_counter() - started
            for _r, w in streams:
                w.close()
            return [r for r in results if r is not None], elapsed

    received, elapsed = asyncio.run(main())
    print(
        f"\njournal {journal}: {total} events to {n_subs} subscribers in {elapsed:.2f} s "
        f"({total / elapsed:.0f} events/s in, {n_subs * total / elapsed:.0f} out)"
    )
    assert len(received) == n_subs
    first = received[0]
    assert len(first) == total
    assert [f.head["seq"] for f in first] == list(range(1, total + 1))
    for frames in received[1:]:
        assert [f.body for f in frames] == [f.body for f in first]
    per_src: dict[int, list[int]] = {}
    for frame in first:
        data = data_of(frame)
        per_src.setdefault(data["src"], []).append(data["n"])
    assert per_src == {src: list(range(per_firer)) for src in range(n_firers)}
    # The connections really were interleaved, not served one after another.
    sources = [data_of(f)["src"] for f in first]
    switches = sum(1 for a, b in itertools.pairwise(sources) if a != b)
    assert switches > n_firers


def test_every_event_reaches_every_subscriber_across_processes(
    sock_dir: Path, serve: Callable[..., ServeProcess]
) -> None:
    """The same with `saltbus serve` in its own process and threads for clients."""
    bus = serve(sock_dir)
    n_subs, n_firers, per_firer = 3, 4, 5000
    total = n_firers * per_firer
    subs = [RawSubscriber(bus.pub) for _ in range(n_subs)]
    sync_subscribers(bus.pull, subs)
    errors: list[BaseException] = []

    def fire(src: int) -> None:
        try:
            with connect(bus.pull) as sock:
                for start in range(0, per_firer, 100):
                    sock.sendall(
                        b"".join(
                            encode_frame(body("load", i, src=src))
                            for i in range(start, start + 100)
                        )
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read(sub: RawSubscriber) -> None:
        try:
            sub.read(total, timeout=60)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(s,)) for s in subs]
    threads += [threading.Thread(target=fire, args=(i,)) for i in range(n_firers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    elapsed = time.perf_counter() - started
    assert not errors, errors
    print(
        f"\nsaltbus serve: {total} events to {n_subs} subscribers in {elapsed:.2f} s "
        f"({total / elapsed:.0f} events/s)"
    )
    first = subs[0].frames
    assert len(first) == total
    seqs = [f.head["seq"] for f in first]
    assert seqs == list(range(seqs[0], seqs[0] + total))
    for sub in subs[1:]:
        assert [f.body for f in sub.frames] == [f.body for f in first]
    per_src: dict[int, list[int]] = {}
    for frame in first:
        data = data_of(frame)
        per_src.setdefault(data["src"], []).append(data["n"])
    assert per_src == {src: list(range(per_firer)) for src in range(n_firers)}
    for sub in subs:
        sub.close()


def test_bursts_over_the_journal_bounds_stay_complete_and_in_order(
    sock_dir: Path, serve: Callable[..., ServeProcess]
) -> None:
    """Firing clients that write far more than the journal may hold in flight
    are paused and resumed (the publisher stops reading them for a while);
    nothing is lost or reordered on the way."""
    # Queues big enough that these (slow, Python) readers never lose events:
    # what is tested is the intake, not the overflow policy.
    bus = serve(
        sock_dir,
        env={
            "SALTBUS_SUBSCRIBER_QUEUE_EVENTS": "1000000",
            "SALTBUS_SUBSCRIBER_QUEUE_BYTES": str(512 << 20),
        },
    )
    n_firers, per_firer = 3, 10_000
    total = n_firers * per_firer
    subs = [RawSubscriber(bus.pub) for _ in range(2)]
    sync_subscribers(bus.pull, subs)
    errors: list[BaseException] = []
    blobs = [
        b"".join(encode_frame(body("burst", i, pad=1000, src=src)) for i in range(per_firer))
        for src in range(n_firers)
    ]

    def fire(src: int) -> None:
        try:
            with connect(bus.pull) as sock:
                sock.sendall(blobs[src])  # ~10 MB at once, over the 4 MB in-flight bound
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read(sub: RawSubscriber) -> None:
        try:
            sub.read_tag("burst", total, timeout=90)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(s,)) for s in subs]
    threads += [threading.Thread(target=fire, args=(i,)) for i in range(n_firers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.perf_counter() - started
    assert not errors, errors
    print(f"\nbursts: {total} x 1 KB from {n_firers} clients in {elapsed:.2f} s")
    assert LAGGED_TAG not in subs[0].counts and LAGGED_TAG not in subs[1].counts
    first = [f for f in subs[0].frames if f.tag == "burst"]
    assert len(first) == total
    seqs = [f.head["seq"] for f in first]
    assert seqs == sorted(seqs) and len(set(seqs)) == total
    assert [f.body for f in subs[1].frames if f.tag == "burst"] == [f.body for f in first]
    per_src: dict[int, list[int]] = {}
    for frame in first:
        data = data_of(frame)
        per_src.setdefault(data["src"], []).append(data["n"])
    assert per_src == {src: list(range(per_firer)) for src in range(n_firers)}
    for sub in subs:
        sub.close()


# -- stopping on a signal -------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_exits_0_on_signal_and_removes_its_sockets(
    sock_dir: Path, serve: Callable[..., ServeProcess], sig: signal.Signals
) -> None:
    bus = serve(sock_dir)
    sub = RawSubscriber(bus.pub)
    firer = connect(bus.pull)
    sync_subscribers(bus.pull, [sub])
    firer.sendall(encode_frame(body("before/stop", 1)))
    assert sub.read(1)[0].tag == "before/stop"
    bus.send_signal(sig)
    assert bus.wait() == 0, bus.log
    err = bus.log
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err
    assert "stopped" in err
    assert not bus.pub.exists()
    assert not bus.pull.exists()
    # The lock file stays (deleting it would race a starter), but nobody holds it.
    assert not bus.config.served_by_saltbus()
    sub.read_to_eof()  # the subscriber was told: EOF, not a hang
    assert is_closed_by_peer(firer)
    sub.close()
    firer.close()


# -- tcp ------------------------------------------------------------------------------


def test_tcp_mode_on_loopback_with_ephemeral_ports(new_sock_dir: Path) -> None:
    config = make_config(
        new_sock_dir.parent,
        ipc_mode="tcp",
        tcp_master_pub_port=0,
        tcp_master_pull_port=0,
        tcp_allow_unauthenticated=True,
    )

    async def main() -> list[Frame]:
        async with Server(config) as server:
            pub, pull = server.pub_address, server.pull_address
            assert isinstance(pub, tuple) and isinstance(pull, tuple)
            assert pub[0] == pull[0] == "127.0.0.1"
            assert pub[1] != 0 and pull[1] != 0 and pub[1] != pull[1]
            reader, writer = await asyncio.open_connection(*pub)
            await wait_until_async(lambda: len(server.fanout.subscribers) == 1, "subscriber")
            _r, pull_writer = await asyncio.open_connection(*pull)
            pull_writer.write(b"".join(encode_frame(body("tcp/evt", i)) for i in range(100)))
            await pull_writer.drain()
            decoder = FrameDecoder()
            frames: list[Frame] = []
            while len(frames) < 100:
                data = await asyncio.wait_for(reader.read(65536), WAIT)
                assert data
                decoder.receive_data(data)
                frames.extend(decoder)
            writer.close()
            pull_writer.close()
            return frames

    frames = asyncio.run(main())
    assert [data_of(f)["n"] for f in frames] == list(range(100))
    # Only the (unheld) lock file remains: it marks saltbus's bus in tcp mode too.
    left = [p.name for p in new_sock_dir.iterdir()] if new_sock_dir.exists() else []
    assert left in ([], [".master_event.saltbus.lock"])


def test_tcp_bound_addresses_via_embedded_publisher(sock_dir: Path) -> None:
    config = make_config(
        sock_dir,
        ipc_mode="tcp",
        tcp_master_pub_port=0,
        tcp_master_pull_port=0,
        tcp_allow_unauthenticated=True,
    )
    with EmbeddedPublisher(config) as bus:
        pub, pull = bus.pub_address, bus.pull_address
        assert isinstance(pub, tuple) and isinstance(pull, tuple)
        assert pub[1] > 0 and pull[1] > 0
        sub = RawSubscriber(pub)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        assert bus.subscriber_stats()[0].peer.startswith("127.0.0.1:")
        send(pull, encode_frame(body("tcp/x", 1)))
        assert sub.read(1)[0].tag == "tcp/x"
        # A second bus on the same ports (another sock_dir, so another lock) is refused.
        taken = make_config(
            sock_dir / "other",
            ipc_mode="tcp",
            tcp_master_pub_port=pub[1],
            tcp_master_pull_port=pull[1],
        )
        with pytest.raises(PublisherRunningError, match=f"127.0.0.1:{pull[1]}"):
            EmbeddedPublisher(taken).start()
        send(pull, encode_frame(body("tcp/y", 2)))
        assert sub.read(2)[1].tag == "tcp/y"
        sub.close()


# -- framing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("salt_version", "framing"),
    [("3006", Framing.LENGTH_PREFIXED), ("3007", Framing.BARE), ("3008", Framing.BARE)],
)
def test_publish_framing_follows_salt_version(
    sock_dir: Path, salt_version: str, framing: Framing
) -> None:
    config = make_config(sock_dir, salt_version=salt_version)
    with EmbeddedPublisher(config) as bus:
        sub = RawSubscriber(bus.pub_address, framing, keep_raw=True)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        b1, b2 = body("gen/a", 1), body("gen/b", 2)
        # Fired in the other framing: the pull side accepts either.
        other = Framing.BARE if framing is Framing.LENGTH_PREFIXED else Framing.LENGTH_PREFIXED
        send(bus.pull_address, encode_frame(b1, framing=other) + encode_frame(b2, framing=other))
        frames = sub.read(2)
        assert [f.body for f in frames] == [b1, b2]
        assert [f.head["seq"] for f in frames] == [1, 2]
        assert bytes(sub.raw) == b"".join(encode_frame(f.body, f.head, framing) for f in frames)
        assert sub.raw[0] == (0x00 if framing is Framing.LENGTH_PREFIXED else 0x82)
        sub.close()


# -- slow subscribers -----------------------------------------------------------------


def test_a_stuck_subscriber_is_cut_loose_while_another_gets_everything(sock_dir: Path) -> None:
    n, size = 50_000, 1024
    config = make_config(
        sock_dir,
        subscriber_queue_events=2000,
        subscriber_queue_bytes=2 * 1024 * 1024,
        subscriber_stall_timeout=1.0,
    )
    with EmbeddedPublisher(config) as bus:
        stuck = RawSubscriber(bus.pub_address)
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        good = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 2, "subscribers")
        frames = [encode_frame(body("bulk", i, pad=size - 30)) for i in range(n)]
        with connect(bus.pull_address) as pull:
            batch = 500
            for start in range(0, n, batch):
                pull.sendall(b"".join(frames[start : start + batch]))
                good.read_tag("bulk", max(0, start + batch - 1000), timeout=30)
            bulk = good.read_tag("bulk", n, timeout=60)
        # The reader that kept reading lost nothing, though the stuck one
        # filled its queue: the firing side waited instead.
        assert [data_of(f)["n"] for f in bulk] == list(range(n))
        # The stuck one was cut loose after the stall timeout, and its loss reported.
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "the stuck subscriber cut loose")
        reports = good.read_tag(LAGGED_TAG, 1, timeout=30)
        assert reports[0].tag == LAGGED_TAG
        assert data_of(reports[0])["dropped"] > 0
        assert bus.subscriber_stats()[0].dropped == 0
        # What it gets, reading at last, is an in-order run, then the end.
        stuck.sock.setblocking(True)
        got = stuck.read_to_eof(timeout=30)
        seqs = [f.head["seq"] for f in got]
        assert seqs == sorted(seqs)
        assert len(got) < n
        stuck.close()
        good.close()


@pytest.mark.parametrize("journal", ["none", "batch"])
def test_stuck_subscriber_memory_is_bounded_in_serve(
    sock_dir: Path, serve: Callable[..., ServeProcess], journal: str
) -> None:
    """Salt's publisher grew 65 MB -> 1,887 MB for 200,000 1-KB events with one
    stuck listener (WIRE.md). saltbus's growth is bounded by the queue settings."""
    n, size = 100_000, 1024
    bus = serve(
        sock_dir,
        "--journal",
        journal,
        env={
            "SALTBUS_SUBSCRIBER_QUEUE_EVENTS": "4000",
            "SALTBUS_SUBSCRIBER_QUEUE_BYTES": "4194304",
        },
    )
    stuck = RawSubscriber(bus.pub)
    good = RawSubscriber(bus.pub)
    sync_subscribers(bus.pull, [stuck, good])
    process = psutil.Process(bus.pid)
    baseline = process.memory_info().rss
    peak = baseline
    frames = [encode_frame(body("bulk", i, pad=size - 30)) for i in range(1000)]
    started = time.perf_counter()
    with connect(bus.pull) as pull:
        for start in range(0, n, 1000):
            pull.sendall(b"".join(frames))
            good.read_tag("bulk", max(0, start + 1000 - 2000), timeout=30)
            if start % 10_000 == 0:
                peak = max(peak, process.memory_info().rss)
        good.read_tag("bulk", n, timeout=60)
    elapsed = time.perf_counter() - started
    peak = max(peak, process.memory_info().rss)
    growth = (peak - baseline) / 2**20
    print(
        f"\nsaltbus serve --journal {journal}, {n} x {size} B, one stuck subscriber: "
        f"RSS {baseline / 2**20:.0f} MB"
        f" -> peak {peak / 2**20:.0f} MB (+{growth:.1f} MB); {n / elapsed:.0f} events/s"
    )
    assert len(good.read_tag("bulk", n)) == n
    assert growth < 48, f"publisher memory grew by {growth:.0f} MB"
    assert bus.alive()
    assert "(stuck; see subscriber_stall_timeout)" in bus.log
    stuck.close()
    good.close()


def test_lagged_reports_stop_when_the_traffic_stops(sock_dir: Path) -> None:
    """A stuck Salt listener's drops are reported once a second while events
    flow; the reports must not keep themselves going (each one pushing one more
    event out of the stuck queue) once nothing is fired any more."""
    config = make_config(sock_dir, subscriber_queue_events=10, subscriber_stall_timeout=1.0)
    with EmbeddedPublisher(config) as bus:
        stuck = RawSubscriber(bus.pub_address)
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        good = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 2, "subscribers")
        with connect(bus.pull_address) as pull:
            for start in range(0, 2000, 100):
                pull.sendall(
                    b"".join(
                        encode_frame(body("bulk", i, pad=1000)) for i in range(start, start + 100)
                    )
                )
                good.read_tag("bulk", start + 100)
        first = good.read_tag(LAGGED_TAG, 1, timeout=LAG_REPORT_INTERVAL + WAIT)
        # Watch the bus for several report intervals with nothing fired.
        deadline = time.monotonic() + 4 * LAG_REPORT_INTERVAL
        while time.monotonic() < deadline:
            good._read(deadline)
        reports = [data_of(f) for f in good.frames if f.tag == LAGGED_TAG]
        assert len(reports) <= 2, reports
        assert reports[0] == data_of(first[0])
        assert reports[0]["dropped"] > 0
        stuck.close()
        good.close()


# -- shutdown -------------------------------------------------------------------------


def test_shutdown_delivers_what_was_already_published(bus_config: Config) -> None:
    n = 5000
    bus = EmbeddedPublisher(bus_config)
    bus.start()
    try:
        slow = RawSubscriber(bus.pub_address)
        witness = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 2, "subscribers")
        send(bus.pull_address, b"".join(encode_frame(body("last", i, pad=1000)) for i in range(n)))
        witness.read(n, timeout=30)  # all of them were published
        assert all(s.dropped == 0 for s in bus.subscriber_stats())
        # `slow` has read nothing yet: most of its events wait in the publisher.
        stopper = threading.Thread(target=bus.stop)
        started = time.monotonic()
        stopper.start()
        frames = slow.read_to_eof(timeout=30)
        stopper.join(WAIT)
        assert not stopper.is_alive()
        assert time.monotonic() - started < DRAIN_TIMEOUT + 2
        assert [data_of(f)["n"] for f in frames] == list(range(n))
        assert len(witness.read_to_eof()) == n
        slow.close()
        witness.close()
    finally:
        bus.stop()
    assert not Path(bus_config.pub_address).exists()  # type: ignore[arg-type]


def test_shutdown_with_a_stuck_subscriber_is_bounded(bus_config: Config) -> None:
    bus = EmbeddedPublisher(bus_config)
    bus.start()
    stuck = RawSubscriber(bus.pub_address)
    try:
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        send(bus.pull_address, b"".join(encode_frame(body("x", i, pad=1000)) for i in range(3000)))
        wait_until(lambda: bus.subscriber_stats()[0].queued_events > 0, "a backlog")
        started = time.monotonic()
        bus.stop()
        took = time.monotonic() - started
        assert DRAIN_TIMEOUT - 0.1 <= took < DRAIN_TIMEOUT + 2
        assert not Path(bus_config.pub_address).exists()  # type: ignore[arg-type]
        assert not Path(bus_config.pull_address).exists()  # type: ignore[arg-type]
    finally:
        bus.stop()
        stuck.close()


def test_server_in_asyncio_with_serve_and_request_exit(bus_config: Config) -> None:
    """``await server.serve()`` runs until ``request_exit``; the sockets go with it."""

    async def main() -> list[Frame]:
        server = Server(bus_config)
        task = asyncio.create_task(server.serve())
        await wait_until_async(
            lambda: Path(bus_config.pub_address).exists(),
            "the socket",  # type: ignore[arg-type]
        )
        reader, writer = await asyncio.open_unix_connection(os.fspath(bus_config.pub_address))
        await wait_until_async(lambda: len(server.fanout.subscribers) == 1, "subscriber")
        _r, pull = await asyncio.open_unix_connection(os.fspath(bus_config.pull_address))
        pull.write(encode_frame(body("serve/evt", 1)))
        await pull.drain()
        await wait_until_async(lambda: server.intake.next_seq == 2, "the event")
        server.request_exit()
        await asyncio.wait_for(task, WAIT)
        data = await asyncio.wait_for(reader.read(), WAIT)  # to EOF
        writer.close()
        pull.close()
        decoder = FrameDecoder()
        decoder.receive_data(data)
        return list(decoder)

    frames = asyncio.run(main())
    assert [f.tag for f in frames] == ["serve/evt"]
    assert not Path(bus_config.pub_address).exists()  # type: ignore[arg-type]
    assert not Path(bus_config.pull_address).exists()  # type: ignore[arg-type]


def test_listeners_resuming_while_events_stream_get_no_gap_and_no_duplicate(
    serves: Callable[..., ServeProcess], bus_config: Config
) -> None:
    # The default journal delivers from its tail before SQLite has indexed an
    # event: a resume asked for in that moment must still meet the live stream.
    serves(bus_config, *bus_flags(bus_config))
    total = 3000
    end_tag = "test/resume/end"
    with Listener(bus_config, "test/resume") as live:
        live.connect(timeout=10)

        def fire() -> None:
            with Sender(bus_config) as sender:
                for n in range(total):
                    sender.fire("test/resume/n", {"n": n}, timeout=5)
                sender.fire(end_tag, {}, timeout=5, ack=True)

        firing = threading.Thread(target=fire)
        firing.start()
        got: dict[int, list[int]] = {}
        readers = []

        def resume(since: int) -> None:
            seqs: list[int] = []
            with Listener(bus_config, "test/resume", since=since, epoch=None) as listener:
                listener.connect(timeout=10)
                while (event := listener.receive(timeout=10)) is not None:
                    assert event.seq is not None
                    seqs.append(event.seq)
                    if event.tag == end_tag:
                        break
            got[since] = seqs

        seen = 0
        end_seq = None
        back = itertools.cycle((0, 1, 2, 40))
        while end_seq is None:
            event = live.receive(timeout=10)
            assert event is not None and event.seq is not None, "the live stream stopped"
            if event.tag == end_tag:
                end_seq = event.seq
            seen += 1
            if seen % 150 == 0:
                since = max(0, event.seq - next(back))
                reader = threading.Thread(target=resume, args=(since,))
                reader.start()
                readers.append(reader)
        firing.join(30)
        for reader in readers:
            reader.join(30)
    assert len(got) == len(readers) >= 16
    for since, seqs in got.items():
        assert seqs == list(range(since + 1, end_seq + 1)), f"resumed after {since}"
