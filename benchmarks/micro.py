"""CPU cost per event of each hot path, measured with ``time.process_time``.

``python -m benchmarks.micro [--events N] [--profile DIR]``

The end-to-end benchmark shares this machine with whatever else runs on it; the
CPU time a process spends per event barely depends on that, so these numbers are
what the optimisations were judged by (benchmarks/NOTES.md). Each path runs the
real saltbus code:

* ``sender``: ``Sender.fire`` into a unix socket drained by another process;
* ``listener``: ``Listener.receive`` of frames a saltbus publisher would send
  (``head`` with seq and time), written by another process;
* ``publisher``: the pull connection's ``data_received`` and the fan-out to one
  Salt-style and one saltbus subscriber, with transports that only count bytes;
* ``publisher+journal``: the same with the journal (batch), writer thread included.

With ``--profile DIR``, each path also runs under pyinstrument and its profile is
written there as text.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.peer import make_data
from saltbus import Config, Listener, Sender
from saltbus.control import Subscribe
from saltbus.server.app import Server
from saltbus.server.connections import PullConnection, SubscriberConnection
from saltbus.wire import encode_frame, pack_body

CHUNK = 256 * 1024


def _drain(path: str, ready: Any) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    ready.set()
    conn, _ = server.accept()
    while conn.recv(1 << 20):
        pass


def _source(path: str, blob: bytes, ready: Any) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    ready.set()
    conn, _ = server.accept()
    conn.sendall(blob)
    conn.recv(1)  # until the listener closes


def _child(target: Callable[..., None], *args: Any) -> Any:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    if not ready.wait(10):
        raise RuntimeError("helper process did not start")
    return proc


def bus_frames(n: int) -> bytes:
    """What a saltbus publisher sends a Salt-style listener for n events."""
    now = time.time()
    return b"".join(
        encode_frame(
            pack_body(f"bench/evt/{i}", dict(make_data(i, 0.0, "small"), _stamp="x" * 26)),
            {"seq": i + 1, "time": now},
        )
        for i in range(n)
    )


def client_frames(n: int) -> bytes:
    """What a firing client sends."""
    return b"".join(
        encode_frame(pack_body(f"bench/evt/{i}", dict(make_data(i, 0.0, "small"), _stamp="x" * 26)))
        for i in range(n)
    )


def run_sender(tmp: Path, n: int) -> Callable[[], None]:
    config = Config.load(env={}, overrides={"sock_dir": tmp})
    path = str(config.pull_address)
    proc = _child(_drain, path)
    sender = Sender(config)

    def work() -> None:
        for i in range(n):
            sender.fire(f"bench/evt/{i}", make_data(i, 0.0, "small"))
        sender.close()
        proc.join(10)

    return work


def run_listener(tmp: Path, n: int) -> Callable[[], None]:
    config = Config.load(env={}, overrides={"sock_dir": tmp})
    proc = _child(_source, str(config.pub_address), bus_frames(n))
    listener = Listener(config, reconnect=False)

    def work() -> None:
        listener.connect(5)
        for _ in range(n):
            if listener.receive(10) is None:
                raise RuntimeError("listener timed out")
        listener.close()
        proc.join(10)

    return work


class CountingTransport:
    """Stands in for a socket transport: takes every write, counts bytes."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def run_publisher(tmp: Path, n: int, journal: str) -> Callable[[], None]:
    config = Config.load(
        env={}, overrides={"sock_dir": tmp / "bus", "data_dir": tmp / "data", "journal": journal}
    )
    blob = client_frames(n)

    async def feed() -> None:
        # Started, as `saltbus serve` is (its sockets are bound in tmp and not
        # used): the connections below are fed directly, with no socket I/O.
        async with Server(config) as server:
            state = server._state
            assert state is not None
            outs = []
            for filtered in (False, True):
                out = CountingTransport()
                sub = SubscriberConnection(state)
                sub.connection_made(out)  # type: ignore[arg-type]
                if filtered:
                    assert sub.subscriber is not None
                    server.subscribe(sub.subscriber, Subscribe((("bench/", "startswith"),)))  # type: ignore[arg-type]
                outs.append(out)
            pull = PullConnection(state)
            pull.connection_made(CountingTransport())  # type: ignore[arg-type]
            view = memoryview(blob)
            for start in range(0, len(view), CHUNK):
                pull.data_received(bytes(view[start : start + CHUNK]))
                await asyncio.sleep(0)
            await server.intake.drained()
            if not all(out.written >= len(blob) for out in outs):
                raise RuntimeError(f"publisher wrote {[o.written for o in outs]} of {len(blob)}")

    return lambda: asyncio.run(feed())


PATHS: dict[str, Callable[[Path, int], Callable[[], None]]] = {
    "sender": run_sender,
    "listener": run_listener,
    "publisher": lambda tmp, n: run_publisher(tmp, n, "none"),
    "publisher+journal": lambda tmp, n: run_publisher(tmp, n, "batch"),
}


def measure(name: str, n: int, profile_dir: Path | None) -> float:
    """CPU microseconds per event (this process and its threads)."""
    tmp = Path(tempfile.mkdtemp(prefix="sbm-", dir="/tmp"))
    try:
        work = PATHS[name](tmp, n)
        if profile_dir is not None:
            from pyinstrument import Profiler  # noqa: PLC0415

            profiler = Profiler(interval=0.0005)
            profiler.start()
        t0 = time.process_time()
        work()
        spent = time.process_time() - t0
        if profile_dir is not None:
            profiler.stop()
            profile_dir.mkdir(parents=True, exist_ok=True)
            text = profiler.output_text(unicode=False, show_all=False)
            (profile_dir / f"{name}.txt").write_text(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return spent / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--path", action="append", choices=tuple(PATHS))
    parser.add_argument("--profile", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    for name in args.path or PATHS:
        costs = sorted(measure(name, args.events, None) for _ in range(args.repeat))
        line = f"{name:18s} {costs[len(costs) // 2]:6.2f} µs/event CPU (min {costs[0]:.2f})"
        print(f"{line}; load {os.getloadavg()[0]:.1f}", flush=True)
        if args.profile is not None:
            measure(name, args.events, args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
