"""The journal's background threads (saltbus.journal.background): behind the
tail, the index and checkpoint threads run at a lower CPU priority than the
process, on real threads read back through the kernel's per-thread nice."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from saltbus.journal.background import BACKGROUND_NICE, lower_this_thread
from saltbus.journal.tailed import TailedWriter
from saltbus.journal.writer import JournalWriter
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not hasattr(threading, "get_native_id") or os.uname().sysname != "Linux",
    reason="a per-thread nice value is Linux's",
)


def nice_of(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def journal_threads() -> dict[str, int]:
    """The native ids of the journal's threads, by the first part of their names."""
    found: dict[str, int] = {}
    for thread in threading.enumerate():
        kind = thread.name.partition(":")[0]
        if kind in ("saltbus-journal", "saltbus-checkpoint") and thread.native_id is not None:
            found[kind] = thread.native_id
    return found


def test_lowering_a_thread_leaves_the_others_alone() -> None:
    own = nice_of(threading.get_native_id())
    seen: dict[str, int] = {}

    def background() -> None:
        seen["lowered"] = lower_this_thread(3)
        seen["nice"] = nice_of(threading.get_native_id())

    worker = threading.Thread(target=background)
    worker.start()
    worker.join()
    assert seen == {"lowered": True, "nice": min(own + 3, 19)}
    assert nice_of(threading.get_native_id()) == own
    assert nice_of(os.getpid()) == own


def test_the_tails_index_and_checkpoint_threads_run_lower(tmp_path: Path) -> None:
    own = nice_of(os.getpid())
    with TailedWriter(tmp_path / "j.sqlite3"):
        threads = journal_threads()
        assert set(threads) == {"saltbus-journal", "saltbus-checkpoint"}
        lowered = min(own + BACKGROUND_NICE, 19)
        wait_until(
            lambda: all(nice_of(t) == lowered for t in threads.values()),
            lambda: f"nice {lowered} on both, not {[nice_of(t) for t in threads.values()]}",
        )
        assert nice_of(threading.get_native_id()) == own, "the caller's thread is left alone"


def test_a_journal_that_commits_for_its_callers_keeps_their_priority(tmp_path: Path) -> None:
    own = nice_of(os.getpid())
    with JournalWriter(tmp_path / "j.sqlite3", durability="fsync"):
        threads = journal_threads()
        assert "saltbus-journal" in threads
        assert nice_of(threads["saltbus-journal"]) == own
