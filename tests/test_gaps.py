"""The deliver-mode gap notices (saltbus.server.gaps): the span they name,
and a notice of ours lost in a later gap sent again; another bus's is not."""

from __future__ import annotations

from typing import Any

from saltbus.journal.records import JournalRecord
from saltbus.server.gaps import JOURNAL_GAP_TAG, GapNotices
from saltbus.wire import pack_body, unpack_body


def record(seq: int, tag: str = "app/evt", data: dict[str, Any] | None = None) -> JournalRecord:
    return JournalRecord(seq, 0.0, tag, pack_body(tag, data or {}))


def test_the_notice_names_the_whole_span() -> None:
    gaps = GapNotices(7, stamp_has_offset=False)
    gaps.widen([record(4), record(5)])
    gaps.widen([record(9)])
    assert gaps.span == (4, 9)
    (body,) = gaps.close(1.25, refused=2)
    tag, data = unpack_body(body)
    assert tag == JOURNAL_GAP_TAG
    assert (data["first"], data["last"], data["epoch"], data["refused"]) == (4, 9, 7, 2)
    assert gaps.span is None


def test_a_notice_of_ours_lost_in_the_gap_is_sent_again_first() -> None:
    gaps = GapNotices(7, stamp_has_offset=False)
    ours = record(12, JOURNAL_GAP_TAG, {"first": 3, "last": 11, "epoch": 7})
    foreign = record(13, JOURNAL_GAP_TAG, {"first": 1, "last": 2, "epoch": 99})
    longer = record(14, JOURNAL_GAP_TAG + "/x", {"epoch": 7})
    gaps.widen([ours, foreign, longer])
    bodies = gaps.close(0.5, refused=0)
    assert bodies[0] == ours.body and len(bodies) == 2
    assert unpack_body(bodies[1])[1]["first"] == 12
    assert gaps.span is None
