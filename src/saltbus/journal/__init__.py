"""The durable event log: every numbered event, in one SQLite file per bus.

Below the server and the clients in the layer order: it imports only
``saltbus.errors``, ``saltbus.event`` and ``saltbus.wire``. The names are
imported from their modules on first use (see :mod:`saltbus.lazy`): finding a
journal's path (:mod:`.paths`, which every command may do) does not load SQLite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saltbus.lazy import lazy_names

if TYPE_CHECKING:
    from saltbus.journal.paths import default_data_dir, journal_path
    from saltbus.journal.records import JournalRecord, JournalStats
    from saltbus.journal.store import Durability, Journal
    from saltbus.journal.writer import CommittedCallback, FailedCallback, JournalWriter

__all__ = [
    "CommittedCallback",
    "Durability",
    "FailedCallback",
    "Journal",
    "JournalRecord",
    "JournalStats",
    "JournalWriter",
    "default_data_dir",
    "journal_path",
]

# Hidden from type checkers, which see the imports above (see saltbus.lazy).
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "saltbus.journal.paths": ("default_data_dir", "journal_path"),
            "saltbus.journal.records": ("JournalRecord", "JournalStats"),
            "saltbus.journal.store": ("Durability", "Journal"),
            "saltbus.journal.writer": ("CommittedCallback", "FailedCallback", "JournalWriter"),
        },
    )
