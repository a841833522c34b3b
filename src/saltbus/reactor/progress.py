"""Where the reactor is: the position it resumes from, and its pid file.

The position saved is a low-water mark: the highest sequence number such
that every event up to it has been handled (its reactions ran, or were
skipped, throttled or dropped and reported). Reactions run concurrently, so
a later event may finish first; saving it would skip the earlier one after
a crash. A restart therefore re-runs at most the reactions that were in
flight (at-least-once after a crash), and exactly once after a clean stop,
which waits for the queue to drain.

The pid file is held locked while a reactor runs: ``saltbus react --reload``
finds the process to signal by it, and a second reactor with the same name
(which would share the position) is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from saltbus.client.positions import PositionStore
from saltbus.config import Config
from saltbus.errors import BusError
from saltbus.journal.paths import default_data_dir, journal_path

SAVE_INTERVAL: Final = 0.05


def bus_journal(config: Config) -> Path:
    """The journal file of the bus ``config`` names (it may not exist)."""
    data_dir = config.data_dir or default_data_dir()
    return journal_path(data_dir, config.sock_dir, config.socket_prefix)


def position_store(config: Config) -> PositionStore:
    return PositionStore(bus_journal(config), f"reactor.{config.reactor_name}")


def pid_path(config: Config) -> Path:
    return bus_journal(config).with_suffix(".reactors") / f"{config.reactor_name}.pid"


@dataclass(frozen=True, slots=True)
class Backlog:
    """The journaled events after a reactor's saved position, at its start."""

    since: int  # the saved position: every event up to it was handled
    first: int | None  # the oldest journaled after it (None: none is)
    last: int
    oldest: float | None  # when the publisher received ``first`` (Unix time)

    @property
    def events(self) -> int:
        return 0 if self.first is None else self.last - self.first + 1

    def describe(self, now: float) -> str:
        """``catching up N events from seq A to B (oldest HH:MM:SS, X min ago)``."""
        if self.first is None or self.oldest is None:
            return f"nothing to catch up: every event up to seq {self.since} was handled"
        ago = max(0.0, now - self.oldest)
        stamp = time.strftime(
            "%H:%M:%S" if ago < 86400 else "%Y-%m-%d %H:%M:%S", time.localtime(self.oldest)
        )
        return (
            f"catching up {self.events} events from seq {self.first} to {self.last} "
            f"(oldest {stamp}, {_how_long(ago)} ago)"
        )


def _how_long(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def backlog(journal: Path, since: int, epoch: int | None) -> Backlog | None:
    """What a reactor that handled every event up to ``since`` (numbered in
    ``epoch``) finds in ``journal`` to catch up on; None when the journal
    numbers its events anew (the reactor then starts with new events, and
    the client says so). Raises :class:`JournalError`."""
    from saltbus.journal import Journal  # noqa: PLC0415 (SQLite only for a reactor with a journal)

    with Journal.open(journal, readonly=True) as store:
        if epoch is not None and store.epoch() not in (None, epoch):
            return None
        oldest = store.read(since=since, limit=1)
        last = store.last_seq()
    if not oldest:
        return Backlog(since, None, last, None)
    return Backlog(since, oldest[0].seq, last, oldest[0].time)


class Progress:
    """Counts the reactions in flight per event and keeps the low-water mark."""

    def __init__(self, store: PositionStore | None, interval: float = SAVE_INTERVAL) -> None:
        self.store = store
        self.epoch: int | None = None
        self._open: OrderedDict[int, int] = OrderedDict()
        self._seen: int | None = None
        self._mark: int | None = None
        self._saved: int | None = None
        self._interval = interval
        self._last_save = float("-inf")
        # Runs first at each save; False: not saved now. The rules' state
        # (saltbus.reactor.multi) is written there, so that the position
        # saved never runs ahead of it.
        self.before_save: Callable[[int | None], bool] | None = None

    def seen(self, seq: int | None, jobs: int) -> None:
        """An event was dispatched, with ``jobs`` reactions queued for it."""
        if seq is None:
            return
        self._seen = seq
        if jobs:
            self._open[seq] = jobs
        self._update_mark()
        self.maybe_save()

    def done(self, seq: int | None) -> None:
        if seq is None or seq not in self._open:
            return
        left = self._open[seq] - 1
        if left:
            self._open[seq] = left
        else:
            del self._open[seq]
            self._update_mark()
            self.maybe_save()

    def _update_mark(self) -> None:
        # Kept as a plain value: the journal writer's thread reads it (the
        # publisher's retention hold), and iterating _open from there could
        # meet it being changed.
        self._mark = next(iter(self._open)) - 1 if self._open else self._seen

    @property
    def mark(self) -> int | None:
        """Every event up to this sequence number is handled."""
        return self._mark

    @property
    def in_flight(self) -> int:
        return sum(self._open.values())

    def maybe_save(self) -> None:
        if self.store is not None and time.monotonic() - self._last_save >= self._interval:
            self.save()

    def save(self) -> None:
        mark = self.mark
        if self.store is None or mark is None or mark == self._saved:
            return
        if self.before_save is not None and not self.before_save(self.epoch):
            return
        self.store.save(self.epoch, mark)
        self._saved = mark
        self._last_save = time.monotonic()


class PidFile:
    """A pid file held under an exclusive lock while the reactor runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            raise BusError(
                f"a reactor named {self.path.stem!r} already runs on this bus (pid {pid}); "
                "give this one another reactor_name (--name)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            handle.close()


def signal_reactor(path: Path, signum: int = signal.SIGHUP) -> int:
    """Send ``signum`` to the reactor whose pid file is ``path``; its pid."""
    try:
        handle = path.open()
    except FileNotFoundError:
        raise BusError(f"no reactor runs under {path.stem!r} (no {path})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = int(handle.read().strip() or 0)
            if pid <= 0:
                raise BusError(f"{path} holds no pid") from None
            os.kill(pid, signum)
            return pid
    raise BusError(f"no reactor runs under {path.stem!r} ({path} is stale)")
