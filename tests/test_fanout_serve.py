"""Slow against stuck, under a real `saltbus serve` with its default journal,
on a machine loaded by a CPU hog: a Salt-protocol listener that keeps reading
gets every event in order while another listener takes nothing; the stuck one
is cut loose after the stall timeout; the publisher's memory stays bounded.

The suite fires 100,000 events of 1 KB; the full run fires 500,000:
``SALTBUS_SLOW_READER_EVENTS=500000 ./dev test tests/test_fanout_serve.py -s``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import msgpack
import psutil

from saltbus.config import Config
from saltbus.wire import FrameDecoder, encode_frame, pack_body
from tests.serve_support import ServeProcess, bus_flags

EVENTS = int(os.environ.get("SALTBUS_SLOW_READER_EVENTS", "100000"))
RSS_LIMIT = 100 * 2**20
BATCH = 500


class SaltReader:
    """Reads the publish socket as Salt's listeners do (sending nothing),
    checking the order of the ``bulk`` events as they come."""

    def __init__(self, config: Config) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.fspath(config.pub_address))
        self.sock.settimeout(1.0)
        self.count = 0
        self.out_of_order = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        decoder = FrameDecoder()
        deadline = time.monotonic() + 600
        while self.count < EVENTS and time.monotonic() < deadline:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            decoder.receive_data(data)
            for frame in decoder:
                if not frame.tag.startswith("bulk"):
                    continue
                n = msgpack.unpackb(frame.body.split(b"\n\n", 1)[1])["n"]
                if n != self.count:
                    self.out_of_order += 1
                self.count += 1

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        self.sock.close()


def test_a_reading_listener_loses_nothing_beside_a_stuck_one(
    serves: Callable[..., ServeProcess], bus_config: Config
) -> None:
    daemon = serves(bus_config, *bus_flags(bus_config))
    process = psutil.Process(daemon.pid)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(os.fspath(bus_config.pub_address))
        reader = SaltReader(bus_config)
        time.sleep(0.2)
        pad = "x" * 1000
        peak = process.memory_info().rss
        started = time.monotonic()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as pull:
            pull.connect(os.fspath(bus_config.pull_address))
            pull.settimeout(120)
            for first in range(0, EVENTS, BATCH):
                frames = [
                    encode_frame(pack_body("bulk", {"n": n, "pad": pad}))
                    for n in range(first, min(first + BATCH, EVENTS))
                ]
                pull.sendall(b"".join(frames))
                if first % (20 * BATCH) == 0:
                    peak = max(peak, process.memory_info().rss)
        reader.join(timeout=300)
        elapsed = time.monotonic() - started
        peak = max(peak, process.memory_info().rss)
        print(
            f"\n{EVENTS} x 1 KB beside a stuck listener, CPU hog running: reader got "
            f"{reader.count} in {elapsed:.1f} s; publisher peak RSS {peak / 2**20:.0f} MiB"
        )
        assert reader.count == EVENTS
        assert reader.out_of_order == 0
        assert peak < RSS_LIMIT, f"publisher RSS {peak / 2**20:.0f} MiB"
        assert "(stuck; see subscriber_stall_timeout)" in daemon.log
        stuck.close()
        daemon.stop()
    finally:
        hog.kill()
        hog.wait()
