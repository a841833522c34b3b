"""``journal_on_error: deliver``: the seqs delivered without the journal, and
the ``saltbus/journal/gap`` notices that name them once it commits again.

A resuming reader is told of a gap only by a journaled notice. A notice
delivered while the journal fails again is lost with the events around it,
so it is sent again with the next one: no unjournaled range goes unnamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from saltbus.errors import RemoteProtocolError
from saltbus.event import utc_stamp
from saltbus.journal.records import JournalRecord
from saltbus.wire import pack_body, unpack_body

JOURNAL_GAP_TAG: Final = "saltbus/journal/gap"


class GapNotices:
    def __init__(self, epoch: int | None, *, stamp_has_offset: bool) -> None:
        self._epoch = epoch  # the journal's numbering, named in every notice
        self._stamp_has_offset = stamp_has_offset
        self.span: tuple[int, int] | None = None  # first and last seq unjournaled
        self._lost: list[bytes] = []  # our notices among them

    def widen(self, records: Sequence[JournalRecord]) -> None:
        """``records`` were delivered, not journaled."""
        first = self.span[0] if self.span is not None else records[0].seq
        self.span = (first, records[-1].seq)
        self._lost += [record.body for record in records if self._ours(record)]

    def close(self, seconds: float, refused: int) -> list[bytes]:
        """The notices to journal now that it commits again: those lost, then
        one for the span that ends here."""
        assert self.span is not None
        first, last = self.span
        notice = {
            "first": first,
            "last": last,
            "epoch": self._epoch,
            "seconds": round(seconds, 3),
            "refused": refused,
            "_stamp": utc_stamp(self._stamp_has_offset),
        }
        bodies = [*self._lost, pack_body(JOURNAL_GAP_TAG, notice)]
        self.span = None
        self._lost = []
        return bodies

    def _ours(self, record: JournalRecord) -> bool:
        if record.tag != JOURNAL_GAP_TAG:
            return False
        try:
            return bool(unpack_body(record.body)[1].get("epoch") == self._epoch)
        except (RemoteProtocolError, AttributeError):
            return False
