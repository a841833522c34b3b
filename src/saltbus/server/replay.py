"""Replaying the journal to a subscriber that resumes, then switching it to live.

The subscriber holds its live events while the replay is written; the replay
covers everything after ``since`` up to the last event delivered live before
the hold began, so the two meet with no gap and no duplicate. The default
journal delivers an event from its tail before SQLite, which the replay
reads, has it: the replay first waits until SQLite holds what was delivered
(:func:`wait_indexed`, a few ms).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Final

from saltbus.errors import RemoteProtocolError
from saltbus.event import MatchType
from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Journal
from saltbus.server.commits import JournalSink
from saltbus.server.fanout import Subscriber, event_frame
from saltbus.server.gaps import JOURNAL_GAP_TAG
from saltbus.wire import unpack_body

log = logging.getLogger("saltbus.server")

CHUNK: Final = 2_000
# How long a replay waits for the journal's index to reach what was delivered.
INDEX_WAIT: Final = 10.0


def _read_chunk(
    path: Path, since: int, until: int, pattern: tuple[str, MatchType] | None
) -> list[JournalRecord]:
    # A fresh read-only connection per chunk: SQLite connections belong to one
    # thread, and to_thread may use any worker.
    tag, match_type = pattern or ("", MatchType.STARTSWITH)
    with Journal.open(path, readonly=True) as journal:
        return journal.read(since=since, until=until, limit=CHUNK, tag=tag, match_type=match_type)


def gaps_in(path: Path, since: int, until: int) -> tuple[tuple[int, int], ...]:
    """The unjournaled ranges (``saltbus/journal/gap`` events) that meet (since, until]."""
    with Journal.open(path, readonly=True) as journal:
        epoch = journal.epoch()
        records = journal.read(since=since, tag=JOURNAL_GAP_TAG)
    gaps = []
    for record in records:
        if record.tag != JOURNAL_GAP_TAG:
            continue  # a longer tag that starts the same
        try:
            data = unpack_body(record.body)[1]
            first, last = int(data["first"]), int(data["last"])
        except (RemoteProtocolError, KeyError, TypeError, ValueError):
            continue
        if data.get("epoch") != epoch:
            continue  # another bus's numbering (a notice imported by federation)
        if first <= until and last > since:
            gaps.append((first, last))
    return tuple(gaps)


def first_available(path: Path) -> int | None:
    with Journal.open(path, readonly=True) as journal:
        return journal.first_seq()


async def replay(
    subscriber: Subscriber,
    path: Path,
    since: int,
    until: int,
    pattern: tuple[str, MatchType] | None = None,
) -> int:
    """Write journaled events in (since, until] to ``subscriber``; returns how
    many. A subscriber with one tag ``pattern`` has it applied inside SQLite
    (a rare tag's replay then reads its events, not the whole journal); its
    matcher is applied to what comes back in any case."""
    sent = 0
    position = since
    matcher = subscriber.matcher
    while position < until and not subscriber.closed:
        records = await asyncio.to_thread(_read_chunk, path, position, until, pattern)
        if not records:
            break
        position = records[-1].seq
        frames = [
            event_frame(r, subscriber.framing) for r in records if matcher is None or matcher(r.tag)
        ]
        if frames:
            await subscriber.writable()
            subscriber.write_direct(b"".join(frames), len(frames))
            sent += len(frames)
    return sent


async def wait_indexed(journal: JournalSink, seq: int, timeout: float = INDEX_WAIT) -> None:
    """Wait until the journal's readers see ``seq``. While the journal fails
    they may never: after ``timeout`` the replay goes on with what SQLite
    has, as a replay across a gap does."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def indexed() -> None:
        loop.call_soon_threadsafe(_resolve, done)

    if journal.when_indexed(seq, indexed):
        return
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        log.warning(
            "replay up to seq %d starts before the journal indexed it (%.0f s)", seq, timeout
        )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
