"""``saltbus history`` reads the journal's tail: a killed publisher's events
that SQLite had not indexed yet are printed, without waiting for a restart."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from saltbus.cli.common import journal_file
from saltbus.client.listener import Listener
from saltbus.client.sender import Sender
from saltbus.config import Config
from saltbus.errors import BusClosedError, BusError
from saltbus.journal.tail import encode, tail_path
from tests.journal_support import build_journal, event
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env

KILL_AFTER = 3000
MAX_BURST = 200_000
WAIT = 30.0


@pytest.fixture
def bus(sock_dir: Path) -> Config:
    return Config.load(
        env={}, overrides={"sock_dir": sock_dir / "bus", "data_dir": sock_dir / "data"}
    )


def history(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(SALTBUS), "history", *bus_flags(config), "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )


def printed_seqs(stdout: str) -> list[int]:
    return [json.loads(line)["seq"] for line in stdout.splitlines()]


def test_history_after_sigkill_has_every_delivered_event(bus: Config) -> None:
    received: list[int] = []
    with ServeProcess.for_bus(bus) as serve:
        listener = Listener(bus, "burst/", reconnect=False)
        try:
            sender = Sender(bus)
            try:
                # Answered once SQLite has it: in history whatever comes after.
                acked = sender.fire("acked/one", {}, timeout=WAIT, ack=True).seq
                # The listener is subscribed once it gets a probe.
                for _attempt in range(60):
                    sender.fire("burst/probe", {}, timeout=WAIT)
                    probe = listener.receive(0.5)
                    if probe is not None:
                        break
                assert probe is not None and probe.seq is not None, "never subscribed"
                received.append(probe.seq)
                stop = threading.Event()

                def fire_burst() -> None:
                    # Not acked: delivered once in the tail, indexed into SQLite
                    # behind, until the publisher is killed in the middle.
                    with contextlib.suppress(BusError, OSError):
                        for n in range(MAX_BURST):
                            if stop.is_set():
                                return
                            sender.fire("burst/event", {"n": n, "fill": "x" * 200}, timeout=WAIT)

                firing = threading.Thread(target=fire_burst)
                firing.start()
                try:
                    while len(received) < KILL_AFTER:
                        got = listener.receive(WAIT)
                        assert got is not None and got.seq is not None, "the burst stopped"
                        received.append(got.seq)
                    serve.kill()  # while events are still fired, delivered and indexed
                    # What had reached the listener's socket before the kill.
                    with contextlib.suppress(BusClosedError):
                        while (got := listener.receive(1.0)) is not None:
                            assert got.seq is not None
                            received.append(got.seq)
                finally:
                    stop.set()
                    firing.join(WAIT)
            finally:
                sender.close()
        finally:
            listener.close()
        serve.kill()
    assert received == list(range(received[0], received[-1] + 1))
    result = history(bus, "--tag", "burst/", "--since", str(received[0] - 1))
    assert result.returncode == 0, result.stderr
    printed = printed_seqs(result.stdout)
    # Every delivered event, and perhaps a few more: each is in the tail
    # before it is delivered.
    assert printed[: len(received)] == received, (
        f"history ends at {printed[-1] if printed else None}, the listener got up to {received[-1]}"
    )
    assert printed == list(range(received[0], printed[-1] + 1))
    assert printed_seqs(history(bus, "--tag", "acked/").stdout) == [acked]


def test_history_merges_the_tail_past_sqlite_and_filters_it(bus: Config) -> None:
    path = journal_file(bus)
    build_journal(path, 10, bus.sock_dir)
    # What a killed publisher leaves: frames SQLite has (8-10) and frames it lacks.
    tail_path(path).write_bytes(encode([event(seq) for seq in range(8, 15)]) + b"\x07\x00")
    everything = history(bus)
    assert everything.returncode == 0, everything.stderr
    assert printed_seqs(everything.stdout) == list(range(1, 15))
    some = history(bus, "--since", "9", "--until", "13", "--limit", "3")
    assert printed_seqs(some.stdout) == [10, 11, 12]
    tagged = history(bus, "--tag", "salt/job/00000012", "--match-type", "startswith")
    assert printed_seqs(tagged.stdout) == [12]
    assert tail_path(path).stat().st_size > 0, "a reader never changes the tail"


def test_history_prints_the_tail_before_its_damage_and_says_where(bus: Config) -> None:
    path = journal_file(bus)
    build_journal(path, 5, bus.sock_dir)
    good = encode([event(seq) for seq in range(6, 9)])
    tail_path(path).write_bytes(good + b"\xff" * 40 + encode([event(9)]))
    result = history(bus)
    assert printed_seqs(result.stdout) == list(range(1, 9))
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith(
        f"saltbus: error: journal {tail_path(path)} is damaged at byte {len(good)}"
    )
    assert f"saltbus journal recover --sock-dir {bus.sock_dir}" in line
    assert "Traceback" not in result.stderr
