"""saltbus.reactor.progress: the low-water mark saved as the reactor's position,
and the pid file that `saltbus react --reload` signals."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

import pytest

from saltbus.client.positions import PositionStore
from saltbus.config import Config
from saltbus.errors import BusError
from saltbus.reactor.progress import (
    PidFile,
    Progress,
    bus_journal,
    pid_path,
    position_store,
    signal_reactor,
)


def test_mark_waits_for_the_oldest_event_in_flight(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "j.sqlite3", "reactor.t")
    progress = Progress(store, interval=0.0)
    progress.epoch = 42
    progress.seen(1, 0)
    assert progress.mark == 1 and store.load() == (42, 1)
    progress.seen(2, 2)
    progress.seen(3, 1)
    progress.seen(4, 0)
    assert progress.mark == 1
    progress.done(3)  # a later event finished first: the mark must not pass 2
    assert progress.mark == 1 and store.load() == (42, 1)
    progress.done(2)
    assert progress.mark == 1 and progress.in_flight == 1
    progress.done(2)
    assert progress.mark == 4 and store.load() == (42, 4)


def test_saves_are_coalesced_and_the_last_one_is_kept(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "j.sqlite3", "reactor.t")
    progress = Progress(store, interval=3600.0)
    for seq in range(1, 101):
        progress.seen(seq, 0)
    assert store.load() == (None, 1)
    progress.save()
    assert store.load() == (None, 100)


def test_events_without_sequence_numbers_are_not_tracked() -> None:
    progress = Progress(None)
    progress.seen(None, 3)
    progress.done(None)
    assert progress.mark is None and progress.in_flight == 0


def test_paths_follow_the_bus_journal(tmp_path: Path) -> None:
    config = Config.load(
        env={}, overrides={"sock_dir": tmp_path / "bus", "data_dir": tmp_path, "reactor_name": "r1"}
    )
    journal = bus_journal(config)
    assert journal.parent == tmp_path and journal.suffix == ".sqlite3"
    assert position_store(config).path == journal.with_suffix(".positions") / "reactor.r1"
    assert pid_path(config) == journal.with_suffix(".reactors") / "r1.pid"


def test_pid_file_is_exclusive_and_signals_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "reactors" / "r.pid"
    with pytest.raises(BusError, match="no reactor runs"):
        signal_reactor(path)
    holder = PidFile(path)
    holder.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(BusError, match=f"already runs on this bus \\(pid {os.getpid()}\\)"):
            PidFile(path).acquire()
        got = threading.Event()

        def handler(signum: int, frame: FrameType | None) -> None:
            got.set()

        previous = signal.signal(signal.SIGUSR1, handler)
        try:
            assert signal_reactor(path, signal.SIGUSR1) == os.getpid()
            assert got.wait(5)
        finally:
            signal.signal(signal.SIGUSR1, previous)
    finally:
        holder.release()
    assert not path.exists()


def test_a_stale_pid_file_is_not_signalled(tmp_path: Path) -> None:
    path = tmp_path / "r.pid"
    path.write_text("999999\n")
    with pytest.raises(BusError, match="stale"):
        signal_reactor(path)
