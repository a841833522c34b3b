"""The journal's checkpoints, off the commit path.

SQLite's automatic checkpoint copies the WAL into the database file inside
whichever commit crosses its threshold: a spike of milliseconds on that
event's latency. The writer turns it off on its connection
(:meth:`~saltbus.journal.store.Journal.checkpoint_in_background`) and a
:class:`Checkpointer` runs PASSIVE checkpoints from a connection and a thread
of its own, at most once per :data:`CHECKPOINT_INTERVAL` while commits come:
neither the writer nor the readers wait for them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Final

from saltbus.errors import JournalError
from saltbus.journal.background import lower_this_thread
from saltbus.journal.store import Journal

log = logging.getLogger("saltbus.journal.writer")

# How often the checkpointer copies the WAL into the database while commits come.
CHECKPOINT_INTERVAL: Final = 1.0


class Checkpointer:
    """PASSIVE checkpoints from a connection of its own, on a thread of its
    own, at most once per CHECKPOINT_INTERVAL while commits come (see the
    module's docstring): neither the writer nor the readers wait for them."""

    def __init__(self, path: Path, *, background: bool = False) -> None:
        """``background``: at a lower CPU priority (see background.py)."""
        self.path = path
        self._background = background
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"saltbus-checkpoint:{path.name}", daemon=True
        )
        self._thread.start()

    def poke(self) -> None:
        if not self._poked.is_set():
            self._poked.set()

    def close(self) -> None:
        self._stop.set()
        self._poked.set()
        self._thread.join()

    def _run(self) -> None:
        if self._background:
            lower_this_thread()
        try:
            journal = Journal.open(self.path)
        except JournalError as exc:
            log.error("journal checkpoints on %s cannot start: %s", self.path, exc)
            return
        failing = False
        try:
            while not self._stop.is_set():
                self._poked.wait()
                if self._stop.wait(CHECKPOINT_INTERVAL):
                    break
                self._poked.clear()
                try:
                    journal.checkpoint()
                except JournalError as exc:
                    if not failing:  # a full disk fails every one: say it once
                        log.warning("journal checkpoint failed; retrying: %s", exc)
                    failing = True
                else:
                    failing = False
        finally:
            journal.close()
