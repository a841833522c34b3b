"""What the intake hands events to and answers: the journal, as a
:class:`JournalSink` (:class:`~saltbus.journal.tailed.TailedWriter` by default,
:class:`~saltbus.journal.writer.JournalWriter` for ``journal: fsync``, or
:class:`NoJournal` for ``journal: none``), and the firing connections, as
:class:`AckTarget`.

A sink may take a batch (``commit_inline``: it is durable, deliver it) before
its store's readers can see it: ``when_indexed`` says when they can, and what
readers of the store must see (an acknowledgement, the returners' wake-up, a
replay) waits for it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from saltbus.errors import JournalError
from saltbus.journal.records import JournalRecord

CommittedCallback = Callable[[Sequence[JournalRecord]], None]
FailedCallback = Callable[[Sequence[JournalRecord], JournalError], None]


class JournalSink(Protocol):
    """What the intake needs of a journal (:class:`~saltbus.journal.writer.JournalWriter`)."""

    @property
    def last_seq(self) -> int: ...

    def commit_inline(self, records: Sequence[JournalRecord], *, defer_index: bool = False) -> bool:
        """Journal ``records`` now, if the sink can (True: deliver them). With
        ``defer_index``, what follows (indexing) may wait for the next call."""
        ...

    def when_indexed(self, seq: int, callback: Callable[[], None]) -> bool:
        """Whether readers of the journal's store (SQLite) see ``seq`` already;
        if not, ``callback`` runs, on any thread, once they do."""
        ...

    def submit(
        self,
        records: Sequence[JournalRecord],
        on_committed: CommittedCallback,
        *,
        on_failed: FailedCallback,
        probe: bool = False,
    ) -> None: ...


class NoJournal:
    """``journal: none``: every batch is "committed" at once, on the caller's thread."""

    def __init__(self) -> None:
        self._last_seq = 0

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def commit_inline(self, records: Sequence[JournalRecord], *, defer_index: bool = False) -> bool:
        if records:
            self._last_seq = records[-1].seq
        return True

    def when_indexed(self, seq: int, callback: Callable[[], None]) -> bool:
        return True

    def submit(
        self,
        records: Sequence[JournalRecord],
        on_committed: CommittedCallback,
        *,
        on_failed: FailedCallback,
        probe: bool = False,
    ) -> None:
        self.commit_inline(records)
        on_committed(records)


class PausableReader(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class AckTarget(PausableReader, Protocol):
    """A firing connection: told which of its events were journaled (or not),
    and not read while its events wait for the journal."""

    def send_acks(self, acks: Sequence[tuple[int, int]]) -> None: ...

    def send_nacks(self, request_ids: Sequence[int], reason: str) -> None: ...
