"""The publisher daemon (saltbus.server) over real sockets.

In-process servers run as ``async with Server(config)`` inside ``asyncio.run``
or as an :class:`EmbeddedPublisher`; where process behaviour matters (signals,
``kill -9``, stderr, memory) ``saltbus serve`` runs as a subprocess. Clients
here are raw sockets and :class:`FrameDecoder`, so the tests see the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest

from saltbus.config import Address, Config
from saltbus.control import Stats, StatsRequest, decode_control, encode_control
from saltbus.errors import ConfigError, PublisherRunningError
from saltbus.server import EmbeddedPublisher, Server
from saltbus.server.app import DRAIN_TIMEOUT, LAG_REPORT_INTERVAL, LAGGED_TAG
from saltbus.wire import FRAME_OVERHEAD, Frame, FrameDecoder, Framing, encode_frame, pack_body
from tests.serve_support import ServeProcess, bus_flags
from tests.waiting import wait_until, wait_until_async

WAIT = 10.0  # the bound of every wait in this module


# -- helpers -------------------------------------------------------------------------


def connect(address: Address, timeout: float = WAIT) -> socket.socket:
    """A connected blocking socket, retrying while the publisher is not there yet."""
    deadline = time.monotonic() + timeout
    while True:
        family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address if isinstance(address, tuple) else os.fspath(address))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        return sock


def make_config(root: Path, **overrides: Any) -> Config:
    """A bus in ``root/bus`` with its journal in ``root/data``, whatever the environment
    (the default data_dir as root is /var/lib/saltbus: tests must not write there)."""
    values: dict[str, Any] = {"sock_dir": root / "bus", "data_dir": root / "data"}
    values.update(overrides)
    return Config.load(env={}, overrides=values)


def body(tag: str, n: int, pad: int = 0, **extra: Any) -> bytes:
    data: dict[str, Any] = {"n": n, **extra}
    if pad:
        data["pad"] = "x" * pad
    return pack_body(tag, data)


def data_of(frame: Frame) -> dict[str, Any]:
    value = msgpack.unpackb(frame.body.split(b"\n\n", 1)[1], raw=False)
    assert isinstance(value, dict)
    return value


class RawSubscriber:
    """A listener on the publish socket that keeps every byte it reads."""

    def __init__(
        self, address: Address, framing: Framing | None = None, *, keep_raw: bool = False
    ) -> None:
        self.sock = connect(address)
        self.decoder = FrameDecoder(framing, max_frame_size=64 << 20)
        self.keep_raw = keep_raw
        self.raw = bytearray()  # every byte read, with keep_raw
        self.frames: list[Frame] = []
        self.counts: dict[str, int] = {}  # frames received, by tag
        self.eof = False

    def _read(self, deadline: float) -> None:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        if self.keep_raw:
            self.raw += data
        self.decoder.receive_data(data)
        for frame in self.decoder:
            self.frames.append(frame)
            tag = frame.tag if frame.body else ""
            self.counts[tag] = self.counts.get(tag, 0) + 1

    def read(self, count: int, timeout: float = WAIT) -> list[Frame]:
        """Until ``count`` frames in all have arrived (fails on timeout or EOF)."""
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            assert not self.eof, f"EOF after {len(self.frames)} of {count} frames"
            assert time.monotonic() < deadline, f"{len(self.frames)} of {count} frames"
            self._read(deadline)
        return self.frames

    def read_tag(self, tag: str, count: int, timeout: float = WAIT) -> list[Frame]:
        """Until ``count`` frames tagged ``tag`` have arrived; returns those."""
        deadline = time.monotonic() + timeout
        while (got := self.counts.get(tag, 0)) < count:
            assert not self.eof, f"EOF after {got} of {count} {tag!r} frames"
            assert time.monotonic() < deadline, f"{got} of {count} {tag!r} frames"
            self._read(deadline)
        return [f for f in self.frames if f.tag == tag]

    def read_to_eof(self, timeout: float = WAIT) -> list[Frame]:
        deadline = time.monotonic() + timeout
        while not self.eof:
            assert time.monotonic() < deadline, "no EOF from the publisher"
            self._read(deadline)
        return self.frames

    def tags(self) -> list[str]:
        return [f.tag if f.body else "" for f in self.frames]

    def close(self) -> None:
        self.sock.close()


def send(address: Address, data: bytes) -> None:
    with connect(address) as sock:
        sock.sendall(data)


def is_closed_by_peer(sock: socket.socket, timeout: float = WAIT) -> bool:
    """True when the publisher closed this connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.fixture
def serve(serves: Callable[..., ServeProcess]) -> Callable[..., ServeProcess]:
    """``serve(root, *args, env=...)``: a ready ``saltbus serve`` for the bus of
    ``make_config(root)``, killed when the test ends."""

    def start(root: Path, *args: str, env: dict[str, str] | None = None) -> ServeProcess:
        config = make_config(root)
        return serves(config, *bus_flags(config), *args, env=env)

    return start


def sync_subscribers(pull: Address, subs: list[RawSubscriber], framing: Framing = Framing.BARE):
    """Make sure the publisher has registered ``subs``: fire probes until each has
    seen one, then an end marker; afterwards each subscriber's ``frames`` is empty."""
    marker = f"sync/{uuid.uuid4().hex}"
    with connect(pull) as sock:
        deadline = time.monotonic() + WAIT
        while not all(marker + "/probe" in s.tags() for s in subs):
            assert time.monotonic() < deadline, "subscribers never saw a probe"
            sock.sendall(encode_frame(pack_body(marker + "/probe", {}), framing=framing))
            for s in subs:
                s._read(time.monotonic() + 0.05)
        sock.sendall(encode_frame(pack_body(marker + "/end", {}), framing=framing))
        for s in subs:
            while marker + "/end" not in s.tags():
                s.read(len(s.frames) + 1)
            s.frames.clear()
            s.counts.clear()


# -- delivery -----------------------------------------------------------------------------


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


# -- sockets, modes, stale and live publishers ---------------------------------------


def test_sock_dir_created_0700_and_sockets_0600(new_sock_dir: Path) -> None:
    assert not new_sock_dir.exists()
    config = make_config(new_sock_dir.parent)
    assert config.sock_dir == new_sock_dir
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        with EmbeddedPublisher(config) as bus:
            assert stat.S_IMODE(new_sock_dir.stat().st_mode) == 0o700
            for address in (bus.pub_address, bus.pull_address):
                assert isinstance(address, Path)
                mode = address.stat().st_mode
                assert stat.S_ISSOCK(mode)
                assert stat.S_IMODE(mode) == 0o600, oct(mode)
    finally:
        os.umask(old_umask)
    assert not Path(config.pub_address).exists()  # type: ignore[arg-type]
    assert not Path(config.pull_address).exists()  # type: ignore[arg-type]


def test_existing_sock_dir_keeps_its_mode(sock_dir: Path) -> None:
    """An existing sock_dir may be Salt's own, shared on purpose: left as it is."""
    config = make_config(sock_dir)
    config.sock_dir.mkdir()
    config.sock_dir.chmod(0o750)
    with EmbeddedPublisher(config):
        assert stat.S_IMODE(config.sock_dir.stat().st_mode) == 0o750


def test_second_server_on_same_sock_dir_is_refused(bus_config: Config) -> None:
    with EmbeddedPublisher(bus_config) as first:
        with pytest.raises(PublisherRunningError) as info:
            EmbeddedPublisher(bus_config).start()
        assert os.fspath(bus_config.sock_dir) in str(info.value)

        async def second() -> None:
            async with Server(bus_config):
                pass  # pragma: no cover - must not start

        with pytest.raises(PublisherRunningError, match=str(bus_config.sock_dir)):
            asyncio.run(second())
        # The refused servers left the first one's sockets alone.
        sub = RawSubscriber(first.pub_address)
        wait_until(lambda: len(first.subscriber_stats()) == 1, "subscriber")
        send(first.pull_address, encode_frame(body("still/here", 1)))
        assert sub.read(1)[0].tag == "still/here"
        sub.close()


def test_live_foreign_publisher_is_refused_naming_the_path(bus_config: Config) -> None:
    """A live socket that is not a saltbus daemon's (Salt's, say) is never taken over."""
    bus_config.sock_dir.mkdir()
    pub = Path(bus_config.pub_address)  # type: ignore[arg-type]
    pull = Path(bus_config.pull_address)  # type: ignore[arg-type]
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    foreign.bind(os.fspath(pub))
    foreign.listen()
    try:
        with pytest.raises(PublisherRunningError, match=str(pub)):
            EmbeddedPublisher(bus_config).start()
        assert stat.S_ISSOCK(pub.stat().st_mode)  # not removed
        assert not pull.exists()  # what it had bound itself was cleaned up
    finally:
        foreign.close()
    # Once the foreign publisher is gone, its stale socket is no obstacle.
    with EmbeddedPublisher(bus_config) as bus:
        sub = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        send(bus.pull_address, encode_frame(body("after/foreign", 1)))
        assert sub.read(1)[0].tag == "after/foreign"
        sub.close()


@pytest.mark.parametrize("which", ["pub", "pull"])
@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_non_socket_at_socket_path_is_refused(bus_config: Config, which: str, kind: str) -> None:
    bus_config.sock_dir.mkdir()
    target = Path(bus_config.pub_address if which == "pub" else bus_config.pull_address)  # type: ignore[arg-type]
    other = Path(bus_config.pull_address if which == "pub" else bus_config.pub_address)  # type: ignore[arg-type]
    precious = bus_config.sock_dir / "precious.txt"
    precious.write_text("keep me")
    if kind == "file":
        target.write_text("keep me")
    elif kind == "symlink":
        target.symlink_to(precious)
    else:
        target.mkdir()
    with pytest.raises(ConfigError, match=str(target)):
        EmbeddedPublisher(bus_config).start()
    assert target.exists() or target.is_symlink()
    assert precious.read_text() == "keep me"
    if kind == "file":
        assert target.read_text() == "keep me"
    assert not other.exists()
    # The lock was released: with the obstacle gone, the bus starts.
    if kind == "directory":
        target.rmdir()
    else:
        target.unlink()
    with EmbeddedPublisher(bus_config):
        assert stat.S_ISSOCK(target.stat().st_mode)


def test_stale_sockets_of_a_killed_serve_are_replaced(
    sock_dir: Path, serve: Callable[..., ServeProcess]
) -> None:
    first = serve(sock_dir)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.pub.exists() and first.pull.exists()  # left behind by kill -9
    with pytest.raises(ConnectionRefusedError):
        socket.socket(socket.AF_UNIX).connect(os.fspath(first.pub))
    second = serve(sock_dir)
    assert second.alive()
    sub = RawSubscriber(second.pub)
    sync_subscribers(second.pull, [sub])
    send(second.pull, encode_frame(body("after/kill", 1)))
    assert sub.read(1)[0].tag == "after/kill"
    assert "Traceback" not in second.log
    sub.close()


def test_stale_sockets_are_replaced_in_process(bus_config: Config) -> None:
    bus_config.sock_dir.mkdir()
    for address in (bus_config.pub_address, bus_config.pull_address):
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(os.fspath(address))  # type: ignore[arg-type]
        dead.close()  # the file stays; nobody listens
    with EmbeddedPublisher(bus_config) as bus:
        sub = RawSubscriber(bus.pub_address)
        wait_until(lambda: len(bus.subscriber_stats()) == 1, "subscriber")
        send(bus.pull_address, encode_frame(body("fresh", 1)))
        assert sub.read(1)[0].tag == "fresh"
        sub.close()


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


# -- tcp ------------------------------------------------------------------------------------


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


# -- bad input on the pull socket ------------------------------------------------------------

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


# -- framing ---------------------------------------------------------------------------------


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


# -- slow and misbehaving subscribers --------------------------------------------------------


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
