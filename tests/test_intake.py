"""The intake (saltbus.server.intake) in memory: numbering, acknowledgements,
and what it does while the journal cannot commit, with a journal sink that
fails on demand and a fan-out whose one subscriber records what it is sent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import pytest

from saltbus.errors import JournalError, JournalWriteError
from saltbus.journal.records import JournalRecord
from saltbus.server import intake as intake_module
from saltbus.server.commits import CommittedCallback, FailedCallback, NoJournal
from saltbus.server.fanout import FanOut
from saltbus.server.gaps import JOURNAL_GAP_TAG
from saltbus.server.holding import JOURNAL_FAILED_TAG, JOURNAL_RECOVERED_TAG
from saltbus.server.intake import Intake
from saltbus.wire import Framing, pack_body, unpack_body


class Sink:
    """A journal that commits inline or fails, as told."""

    def __init__(self, last_seq: int = 0) -> None:
        self.last_seq = last_seq
        self.error: JournalError | None = None
        self.committed: list[int] = []
        # When set, what is committed is not yet readable (a tail in front of SQLite).
        self.index_lags = False
        self.index_waiters: list[tuple[int, Callable[[], None]]] = []
        self.inline: list[int] = []  # the last seq of each batch committed inline (tail first)

    def commit_inline(self, records: Sequence[JournalRecord], *, defer_index: bool = False) -> bool:
        if self.error is not None:
            raise self.error
        self._commit(records)
        self.inline.append(records[-1].seq)
        return True

    def submit(
        self,
        records: Sequence[JournalRecord],
        on_committed: CommittedCallback,
        *,
        on_failed: FailedCallback,
        probe: bool = False,
    ) -> None:
        if self.error is not None:
            on_failed(records, self.error)
            return
        self._commit(records)
        on_committed(records)

    def when_indexed(self, seq: int, callback: Callable[[], None]) -> bool:
        if not self.index_lags:
            return True
        self.index_waiters.append((seq, callback))
        return False

    def index_all(self) -> None:
        """The index catches up (as the tail's writer thread reports it)."""
        waiters, self.index_waiters = self.index_waiters, []
        for _, callback in waiters:
            callback()

    def _commit(self, records: Sequence[JournalRecord]) -> None:
        assert records[0].seq == self.last_seq + 1, "a gap in the journal"
        self.committed += [r.seq for r in records]
        self.last_seq = records[-1].seq


class Delivered:
    """Stands for the fan-out: what was delivered, in order."""

    def __init__(self) -> None:
        self.records: list[JournalRecord] = []

    def deliver(self, records: Sequence[JournalRecord]) -> None:
        self.records += records


class Source:
    """A firing connection."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []
        self.nacks: list[tuple[int, str]] = []
        self.paused = False

    def send_acks(self, acks: Sequence[tuple[int, int]]) -> None:
        self.acks += acks

    def send_nacks(self, request_ids: Sequence[int], reason: str) -> None:
        self.nacks += [(i, reason) for i in request_ids]

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def bodies(tag: str, count: int, first: int = 0) -> tuple[list[bytes], list[str]]:
    return [pack_body(tag, {"n": n}) for n in range(first, first + count)], [tag] * count


def make(sink: Sink | NoJournal, readers: set[Source] | None = None) -> tuple[Intake, Delivered]:
    delivered = Delivered()
    fanout = FanOut(Framing.BARE)
    fanout.deliver = delivered.deliver  # type: ignore[method-assign]
    return Intake(fanout, sink, readers if readers is not None else set()), delivered


def with_index_lag() -> tuple[Sink, Intake, Delivered, list[int]]:
    """An intake whose journal's index lags, and the last seqs ``on_indexed`` is told."""
    sink = Sink()
    sink.index_lags = True
    intake, delivered = make(sink)
    told: list[int] = []
    intake.on_indexed = lambda records: told.append(records[-1].seq)
    return sink, intake, delivered, told


def run(coro_fn: object) -> None:
    asyncio.run(coro_fn())  # type: ignore[operator]


def test_numbering_goes_on_after_the_journal_and_by_one() -> None:
    async def main() -> None:
        intake, delivered = make(Sink(last_seq=40))
        for size in (1, 7, 2, 13):
            intake.accept(*bodies("s/q", size))
            await intake.drained()
        assert [r.seq for r in delivered.records] == list(range(41, 64))
        assert intake.last_seq == 63 and intake.received == 23

    run(main)


def test_no_journal_is_the_same_path() -> None:
    async def main() -> None:
        intake, delivered = make(NoJournal())
        source = Source()
        intake.accept(*bodies("a", 3), acks=[(2, 77)], source=source)
        await intake.drained()
        assert [r.seq for r in delivered.records] == [1, 2, 3]
        assert source.acks == [(77, 3)]

    run(main)


def test_a_burst_from_two_connections_is_one_commit_each_acked_with_its_seqs() -> None:
    async def main() -> None:
        sink = Sink()
        intake, delivered = make(sink)
        first, second = Source(), Source()
        intake.accept(*bodies("a", 1))  # flushed at once: the burst starts after it
        intake.accept(*bodies("b", 2), acks=[(1, 5)], source=first)
        intake.accept(*bodies("c", 2), acks=[(0, 9)], source=second)
        await intake.drained()
        assert [r.tag for r in delivered.records] == ["a", "b", "b", "c", "c"]
        assert first.acks == [(5, 3)] and second.acks == [(9, 4)]

    run(main)


def test_acks_and_returners_wait_for_the_index_and_delivery_does_not() -> None:
    async def main() -> None:
        sink, intake, delivered, told = with_index_lag()
        source = Source()
        intake.accept(*bodies("a", 2), acks=[(1, 7)], source=source)
        await asyncio.sleep(0.01)
        assert [r.seq for r in delivered.records] == [1, 2]
        assert source.acks == [] and told == []
        drained = asyncio.create_task(intake.drained())
        await asyncio.sleep(0.01)
        assert not drained.done(), "drained before the acknowledgement was sent"
        threading.Thread(target=sink.index_all).start()  # the writer thread's report
        await asyncio.wait_for(drained, 5)
        assert source.acks == [(7, 2)] and told == [2]

    run(main)


def test_acks_at_commit_are_answered_before_the_index_and_go_through_the_tail() -> None:
    async def main() -> None:
        sink, intake, delivered, told = with_index_lag()
        journaled: list[int] = []
        intake.on_journaled = lambda records: journaled.append(records[-1].seq)
        importer, client = Source(), Source()
        intake.accept(
            *bodies("i", 3), acks=[(0, 0), (1, 1), (2, 2)], source=importer, acks_at_commit=True
        )
        await asyncio.sleep(0.01)
        assert [r.seq for r in delivered.records] == [1, 2, 3]
        assert importer.acks == [(0, 1), (1, 2), (2, 3)], "answered before SQLite has them"
        assert sink.inline == [3], "committed tail first, as an unacked batch"
        assert told == [], "the returners still wait for the index"
        assert journaled == [3], "the export is told once the tail has them"
        # Flushed with an ordinary acked fire, every ack of the flush waits.
        intake.accept(*bodies("u", 1))  # flushed at once: the two below are one flush
        intake.accept(*bodies("c", 1), acks=[(0, 5)], source=client)
        intake.accept(*bodies("i", 1), acks=[(0, 3)], source=importer, acks_at_commit=True)
        await asyncio.sleep(0.01)
        assert [r.seq for r in delivered.records] == [1, 2, 3, 4, 5, 6]
        assert importer.acks == [(0, 1), (1, 2), (2, 3)] and client.acks == []
        assert sink.inline == [3, 4]
        sink.index_all()
        await asyncio.wait_for(intake.drained(), 5)
        assert importer.acks[-1] == (3, 6) and client.acks == [(5, 5)]
        assert told == [3, 4, 6] and journaled == [3, 4, 6]

    run(main)


def test_index_reports_settle_batches_in_order_with_one_wake_up() -> None:
    async def main() -> None:
        sink, intake, delivered, told = with_index_lag()
        source = Source()
        for n in range(3):
            intake.accept(*bodies("a", 1, n), acks=[(0, n)], source=source)
            await asyncio.sleep(0.01)  # past the coalescing window: a batch each
        # Readable at once, but acknowledged after the batches before it.
        sink.index_lags = False
        intake.accept(*bodies("b", 1), acks=[(0, 9)], source=source)
        await asyncio.sleep(0.01)
        assert [r.seq for r in delivered.records] == [1, 2, 3, 4]
        assert told == [] and source.acks == []
        loop = asyncio.get_running_loop()
        posted: list[object] = []
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counting(callback: Callable[..., object], *args: object) -> asyncio.Handle:
            posted.append(callback)
            return call_soon_threadsafe(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        sink.index_all()  # one report per batch, as a group's commit makes them
        await asyncio.wait_for(intake.drained(), 5)
        assert len(posted) == 1, "the loop is woken once for the group"
        assert told == [1, 2, 3, 4]
        assert source.acks == [(0, 1), (1, 2), (2, 3), (9, 4)]

    run(main)


@pytest.mark.parametrize("acks_at_commit", [False, True])
def test_a_batch_the_journal_cannot_store_is_refused_not_delivered(acks_at_commit: bool) -> None:
    async def main() -> None:
        sink = Sink()
        intake, delivered = make(sink)
        source = Source()
        sink.error = JournalError("seq 1 is not after the journal's last seq 5")
        intake.accept(*bodies("x", 2), acks=[(0, 1)], source=source, acks_at_commit=acks_at_commit)
        await intake.drained()
        assert delivered.records == []
        assert source.nacks and intake.journal_failure is None and intake.refused == 1

    run(main)


def test_a_failing_journal_holds_refuses_acks_and_recovers_without_a_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(intake_module, "PROBE_INTERVAL", 0.05)

    async def main() -> None:
        sink = Sink()
        source, acker = Source(), Source()
        intake, delivered = make(sink, {source, acker})
        intake.accept(*bodies("ok", 2))
        await intake.drained()
        sink.error = JournalWriteError("disk full", "database or disk is full")
        intake.accept(*bodies("held", 2), source=source)
        await intake.drained()
        assert intake.journal_failure is not None and source.paused
        intake.accept(*bodies("acked", 1), acks=[(0, 3)], source=acker)
        assert acker.nacks == [(3, "journal cannot commit: disk full")] and not acker.paused
        intake.accept(*bodies("late", 1))
        await asyncio.sleep(0.2)
        assert [r.tag for r in delivered.records] == ["ok", "ok"], "delivered unjournaled"
        # Held, or in the probe that is trying them now.
        assert intake.last_seq == 2 and intake.held + intake.in_flight == 4
        sink.error = None
        for _ in range(100):
            if intake.journal_failure is None and not intake.held:
                break
            await asyncio.sleep(0.02)
        await intake.drained()
        tags = [r.tag for r in delivered.records]
        assert tags == [
            "ok",
            "ok",
            JOURNAL_FAILED_TAG,
            "held",
            "held",
            "late",
            JOURNAL_RECOVERED_TAG,
        ]
        assert [r.seq for r in delivered.records] == list(range(1, 8))
        assert sink.committed == list(range(1, 8))
        assert not source.paused
        recovered = unpack_body(delivered.records[-1].body)[1]
        assert recovered["held"] == 3 and recovered["refused"] == 1

    run(main)


class GapNoticeFailsOnce(Sink):
    """A journal that fails while told to, and then once more, on the first
    gap notice it is given (deliver mode: gaps in its seqs are expected)."""

    def __init__(self) -> None:
        super().__init__()
        self.notice_failed = False
        self.stored: list[JournalRecord] = []

    def commit_inline(self, records: Sequence[JournalRecord], *, defer_index: bool = False) -> bool:
        self._maybe_fail(records)
        return super().commit_inline(records, defer_index=defer_index)

    def submit(
        self,
        records: Sequence[JournalRecord],
        on_committed: CommittedCallback,
        *,
        on_failed: FailedCallback,
        probe: bool = False,
    ) -> None:
        try:
            self._maybe_fail(records)
        except JournalWriteError as exc:
            on_failed(records, exc)
            return
        super().submit(records, on_committed, on_failed=on_failed, probe=probe)

    def _maybe_fail(self, records: Sequence[JournalRecord]) -> None:
        if not self.notice_failed and records[0].tag == JOURNAL_GAP_TAG:
            self.notice_failed = True
            raise JournalWriteError("disk full", "no space left on device")

    def _commit(self, records: Sequence[JournalRecord]) -> None:
        self.stored += records
        self.last_seq = records[-1].seq


def test_a_gap_notice_lost_in_a_gap_is_sent_again() -> None:
    async def main() -> None:
        sink = GapNoticeFailsOnce()
        delivered = Delivered()
        fanout = FanOut(Framing.BARE)
        fanout.deliver = delivered.deliver  # type: ignore[method-assign]
        intake = Intake(fanout, sink, set(), on_error="deliver", epoch=7)
        sink.error = JournalWriteError("disk full", "no space left on device")
        intake.accept(*bodies("a", 2))  # seqs 1, 2: delivered, not journaled
        await intake.drained()
        sink.error = None
        for tag in ("b", "c", "d"):
            intake.accept(*bodies(tag, 1))
            await intake.drained()
            await asyncio.sleep(0.01)
        await intake.drained()
        assert [r.seq for r in delivered.records] == list(range(1, len(delivered.records) + 1))
        stored = {r.seq for r in sink.stored}
        missing = {r.seq for r in delivered.records} - stored
        notices = [unpack_body(r.body)[1] for r in sink.stored if r.tag == JOURNAL_GAP_TAG]
        named = {seq for n in notices for seq in range(n["first"], n["last"] + 1)}
        assert sink.notice_failed and len(notices) == 2
        assert 1 in missing and missing == named

    run(main)
