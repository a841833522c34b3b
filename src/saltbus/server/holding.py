"""What the intake does while the journal cannot commit (see :mod:`.intake`).

It holds what failed and what arrives meanwhile, in arrival order, pausing
the connections that sent it; it refuses acked fires with a Nack naming the
cause; and once a probe commits (:meth:`Intake._run_probe`), it logs and
fires ``saltbus/journal/recovered`` and reads those connections again. With
``journal_on_error: deliver`` it delivers instead, and closes the gap with a
journaled notice once the journal commits again.

A mixin of :class:`~saltbus.server.intake.Intake`, whose state it works on:
``_Intake`` says which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from saltbus.errors import JournalWriteError
from saltbus.event import utc_stamp
from saltbus.server.commits import AckTarget, JournalSink
from saltbus.server.fanout import FanOut
from saltbus.server.gaps import JOURNAL_GAP_TAG, GapNotices
from saltbus.wire import pack_body

if TYPE_CHECKING:
    from saltbus.server.intake import _Batch

log = logging.getLogger("saltbus.server")

JOURNAL_FAILED_TAG: Final = "saltbus/journal/failed"
JOURNAL_RECOVERED_TAG: Final = "saltbus/journal/recovered"


class _Intake(Protocol):
    """The intake's state the methods below work on."""

    fanout: FanOut
    journal: JournalSink
    journal_failure: JournalWriteError | None
    failing_since: float | None
    refused: int
    _gaps: GapNotices
    _last_delivered: int
    _stamp_has_offset: bool
    _held: list[tuple[bytes, str]]
    _held_late: list[tuple[bytes, str]]
    _held_sources: set[AckTarget]
    _refused_while_failing: int

    @property
    def paused(self) -> bool: ...

    def accept(
        self,
        bodies: Sequence[bytes],
        tags: Sequence[str],
        acks: Sequence[tuple[int, int]] = (),
        source: AckTarget | None = None,
        *,
        acks_at_commit: bool = False,
    ) -> None: ...

    def _failure_reason(self) -> str: ...

    def _keep(
        self, body: bytes, tag: str, source: AckTarget | None, into: list[tuple[bytes, str]]
    ) -> None: ...

    def _refuse(self, source: AckTarget, request_ids: list[int], why: str) -> None: ...

    def _refuse_acked(self, batch: _Batch, why: str) -> None: ...


class JournalFailures:
    """Holding, refusing and recovering while the journal cannot commit."""

    # Set by Intake.__init__ (see there).
    journal_failure: JournalWriteError | None
    failing_since: float | None
    _held_sources: set[AckTarget]
    _refused_while_failing: int

    def _deliver_unjournaled(self: _Intake, batch: _Batch, error: JournalWriteError) -> None:
        records = batch.records
        if self.journal_failure is None:
            self.journal_failure = error
            self.failing_since = time.time()
            self._refused_while_failing = 0
            log.error(
                "journal cannot commit (%s): %s; delivering events without it "
                "(journal_on_error: deliver): resuming readers will be told of the gap",
                error.reason,
                error,
            )
        self._gaps.widen(records)
        self.fanout.deliver(records)
        self._last_delivered = records[-1].seq
        self._refuse_acked(batch, self._failure_reason())

    def _close_gap(self: _Intake) -> None:
        gap, since = self._gaps.span, self.failing_since
        assert gap is not None and since is not None
        self.journal_failure = None
        self.failing_since = None
        seconds = time.time() - since
        log.warning(
            "journal commits again after %.1f s: events %d to %d were delivered but not journaled",
            seconds,
            *gap,
        )
        bodies = self._gaps.close(seconds, self._refused_while_failing)
        self.accept(bodies, [JOURNAL_GAP_TAG] * len(bodies))

    def _start_failing(self: _Intake, error: JournalWriteError) -> None:
        self.journal_failure = error
        self.failing_since = time.time()
        self._refused_while_failing = 0
        log.error(
            "journal cannot commit (%s): %s; holding events until it can (acked fires "
            "are refused, firing connections wait)",
            error.reason,
            error,
        )
        notice = {
            "reason": error.reason,
            "error": str(error),
            "last_seq": self.journal.last_seq,
            "since": self.failing_since,
            "_stamp": utc_stamp(self._stamp_has_offset),
        }
        self._held.append((pack_body(JOURNAL_FAILED_TAG, notice), JOURNAL_FAILED_TAG))

    def _failure_reason(self: _Intake) -> str:
        assert self.journal_failure is not None
        return f"journal cannot commit: {self.journal_failure.reason}"

    def _hold(
        self: _Intake,
        bodies: Sequence[bytes],
        tags: Sequence[str],
        acks: Sequence[tuple[int, int]],
        source: AckTarget | None,
        into: list[tuple[bytes, str]],
    ) -> None:
        if acks and source is not None:
            self._refuse(source, [rid for _, rid in acks], self._failure_reason())
        acked = {index for index, _ in acks}
        for index, (body, tag) in enumerate(zip(bodies, tags, strict=True)):
            if index not in acked:
                self._keep(body, tag, source, into)

    def _keep(
        self: _Intake,
        body: bytes,
        tag: str,
        source: AckTarget | None,
        into: list[tuple[bytes, str]],
    ) -> None:
        into.append((body, tag))
        if source is not None and source not in self._held_sources:
            self._held_sources.add(source)
            source.pause_reading()

    def _refuse_acked(self: _Intake, batch: _Batch, why: str) -> None:
        """Nack every event of ``batch`` that asked for an acknowledgement."""
        for source, pairs in batch.acks:
            self._refuse(source, [rid for _, rid in pairs], why)

    def _refuse(self: _Intake, source: AckTarget, request_ids: list[int], why: str) -> None:
        self.refused += len(request_ids)
        self._refused_while_failing += len(request_ids)
        source.send_nacks(request_ids, why)

    def _recovered(self: _Intake, committed: int) -> None:
        error, since = self.journal_failure, self.failing_since
        assert error is not None and since is not None
        self.journal_failure = None
        self.failing_since = None
        seconds = time.time() - since
        log.warning(
            "journal commits again after %.1f s (%s): %d held events journaled and delivered, "
            "%d acked fires refused",
            seconds,
            error.reason,
            committed,
            self._refused_while_failing,
        )
        sources, self._held_sources = self._held_sources, set()
        if not self.paused:
            for source in sources:
                source.resume_reading()
        notice: dict[str, Any] = {
            "reason": error.reason,
            "seconds": round(seconds, 3),
            "held": committed - 1,  # the failed notice is one of them
            "refused": self._refused_while_failing,
            "_stamp": utc_stamp(self._stamp_has_offset),
        }
        self.accept([pack_body(JOURNAL_RECOVERED_TAG, notice)], [JOURNAL_RECOVERED_TAG])

    @property
    def held(self: _Intake) -> int:
        """Events waiting for the journal to commit again."""
        return len(self._held) + len(self._held_late)
