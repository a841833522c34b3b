"""The delivery promises with real processes: `saltbus serve` killed with
SIGKILL mid-stream, and a subscriber that never reads a flood of events."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from saltbus import Config, Listener, NoPublisherError, Sender
from saltbus.errors import BusError
from tests.serve_support import ServeProcess

WAIT = 30.0


@pytest.mark.timeout(900)
def test_acked_events_survive_kill_9_exactly_once_in_order(bus_config: Config):
    total, kill_at = 100_000, 40_000
    acked: dict[int, int] = {}  # n -> seq
    received: list[tuple[int, int]] = []  # (seq, n)
    listener = Listener(bus_config, "kill/")
    done = threading.Event()

    def listen() -> None:
        # Reads until every acked event has been seen, resuming by itself
        # across the publisher's death and restart.
        while not done.is_set() or len(received) < len(acked):
            event = listener.receive(timeout=0.5)
            if event is not None:
                received.append((event.seq, event.data["n"]))

    with ServeProcess.for_bus(bus_config) as first:
        listener.connect(timeout=5)
        reader = threading.Thread(target=listen)
        reader.start()
        try:
            n = 0
            with Sender(bus_config) as sender:
                while n < total:
                    if n == kill_at:
                        first.kill()
                        break
                    with contextlib.suppress(BusError):
                        acked[n] = sender.fire("kill/evt", {"n": n}, timeout=5, ack=True).seq
                    n += 1
            assert first.returncode == -signal.SIGKILL
            with ServeProcess.for_bus(bus_config), Sender(bus_config) as sender:
                for n in range(kill_at, total):
                    acked[n] = sender.fire("kill/evt", {"n": n}, timeout=5, ack=True).seq
                done.set()
                reader.join(120)
        finally:
            done.set()
            listener.close()
    assert not reader.is_alive()
    seqs = [s for s, _ in received]
    assert seqs == sorted(set(seqs)), "events out of order or delivered twice"
    by_n = {n: s for s, n in received}
    missing = [n for n in acked if n not in by_n]
    assert not missing, f"{len(missing)} acknowledged events never arrived, e.g. {missing[:5]}"
    assert all(by_n[n] == s for n, s in acked.items())
    assert len(acked) == total


@pytest.mark.timeout(900)
def test_stuck_reader_keeps_publisher_memory_bounded(bus_config: Config):
    total, pad = 500_000, "z" * 1000
    with ServeProcess.for_bus(bus_config) as proc:
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(bus_config.pub_address))
        # The normal subscriber runs in its own process so that it keeps up.
        counter = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
                from saltbus import Config, Listener
                sock_dir = {str(bus_config.sock_dir)!r}
                config = Config.load(env={{}}, overrides={{"sock_dir": sock_dir}})
                expected = 1
                with Listener(config, "flood/") as listener:
                    print("READY", flush=True)
                    for _ in range({total}):
                        event = listener.receive(timeout=60)
                        assert event is not None, "timed out"
                        assert event.data["n"] == expected - 1, (event.data["n"], expected)
                        expected += 1
                print("OK", expected - 1, flush=True)
            """),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert counter.stdout is not None
        assert counter.stdout.readline().strip() == "READY"
        peak = 0
        with Sender(bus_config) as sender:
            for n in range(total):
                sender.fire("flood/evt", {"n": n, "pad": pad}, timeout=10)
                if n % 10_000 == 0:
                    peak = max(peak, proc.rss())
        result = counter.communicate(timeout=300)[0]
        peak = max(peak, proc.rss())
        stuck.close()
    assert counter.returncode == 0 and result.split() == ["OK", str(total)]
    print(f"publisher peak RSS {peak / 2**20:.1f} MiB for {total} events of 1 KB")
    assert peak < 100 * 2**20


def test_no_publisher_error_is_clear(sock_dir: Path):
    config = Config.load(env={}, overrides={"sock_dir": sock_dir})
    with pytest.raises(NoPublisherError, match="no publisher"):
        Sender(config).fire("a/b", {}, timeout=0.1, ack=True)
