"""The values the journal stores and reports: one record per event, and the totals.

Kept apart from the SQLite code so that callers (the publisher, ``saltbus
history``) can build and read records without importing the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saltbus.wire import body_tag


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One journaled event.

    ``body`` is the frame body exactly as the publisher received it
    (``TAG + b"\\n\\n" + msgpack(data)``): the journal never decodes the data,
    so that journaling costs no msgpack work on the hot path and a replayed
    event is byte-for-byte the event that was fired. ``tag`` is stored beside
    it only so that queries can filter without touching the body.
    """

    seq: int
    time: float  # server receive time, Unix epoch seconds
    tag: str
    body: bytes

    @classmethod
    def from_body(cls, seq: int, time: float, body: bytes) -> JournalRecord:
        """A record for ``body``, its tag read from the body itself.

        Raises :class:`~saltbus.errors.RemoteProtocolError` when the body has
        no tag (the publisher has already checked this for every frame it
        accepts, so it can pass the tag it decoded instead).
        """
        return cls(seq, time, body_tag(body), body)


@dataclass(frozen=True, slots=True)
class JournalStats:
    """What a journal holds. ``bytes`` is the total size of the stored bodies
    (what ``max_bytes`` retention bounds), not the size of the file."""

    path: Path
    first_seq: int | None
    last_seq: int
    count: int
    bytes: int
