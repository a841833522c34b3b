"""The durable event log: every numbered event, in one SQLite file per bus.

Below the server and the clients in the layer order: it imports only
``saltbus.errors``, ``saltbus.event`` and ``saltbus.wire``.
"""

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
