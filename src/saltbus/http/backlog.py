"""``?backlog=N``: where a stream starts so that it opens with the last ``N``
events it would have been sent, read from the journal.

The answer is a resume point: the stream then resumes after it as after a
``Last-Event-ID`` (the publisher replays its journal, then goes on live), so
the backlog and the live events meet with no gap and no duplicate.

The journal is read here, in the bridge's process, as ``saltbus history``
reads it (the file under the data directory that the bus's ``sock_dir``
names): counting the last ``N`` events that match a filter and a token's read
patterns has to look at tags, which the publisher's replay cannot do backwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

from saltbus.config import Config
from saltbus.errors import ConfigError, JournalError
from saltbus.event import MatchType
from saltbus.journal.paths import default_data_dir, journal_path
from saltbus.journal.store import Journal

log = logging.getLogger("saltbus.http")

MAX_BACKLOG: Final = 10_000
# How far back (in sequence numbers) the last N are looked for: a filter that
# matches rarely must not make a page's opening read the whole journal.
REACH: Final = 100_000
CHUNK: Final = 2_000  # sequence numbers read at once, newest first


def parse_backlog(text: str | None) -> int | None:
    """The ``backlog`` parameter: how many past events to open with (None: none)."""
    if text is None or not text.strip():
        return None
    if not text.strip().isdigit() or int(text) > MAX_BACKLOG:
        raise ConfigError(
            f"backlog must be a number of events from 0 to {MAX_BACKLOG}, not {text!r}"
        )
    return int(text)


def journal_file(config: Config) -> Path:
    """The journal of the bus ``config`` names (the file may not exist)."""
    data_dir = config.data_dir or default_data_dir()
    return journal_path(data_dir, config.sock_dir, config.socket_prefix)


def backlog_start(
    path: Path,
    count: int,
    may_read: Callable[[str], bool],
    *,
    tag: str = "",
    match_type: MatchType = MatchType.STARTSWITH,
    reach: int = REACH,
    chunk: int = CHUNK,
) -> int | None:
    """The sequence number just before the last ``count`` journaled events
    whose tag matches ``tag`` and that ``may_read`` allows (fewer when there
    are fewer within ``reach`` of the newest); None when there are none, or no
    journal to read (then the stream starts live)."""
    if count <= 0:
        return None
    try:
        with Journal.open(path, readonly=True) as journal:
            return _start(journal, count, may_read, tag, match_type, reach, chunk)
    except JournalError as exc:
        log.warning("?backlog= starts live: cannot read the journal: %s", exc)
        return None


def _start(
    journal: Journal,
    count: int,
    may_read: Callable[[str], bool],
    tag: str,
    match_type: MatchType,
    reach: int,
    chunk: int,
) -> int | None:
    newest = journal.last_seq()
    floor = max(0, newest - reach)
    oldest_found: int | None = None
    found = 0
    upper = newest
    while upper > floor:
        lower = max(floor, upper - chunk)
        records = journal.read(since=lower, until=upper, tag=tag, match_type=match_type)
        for record in reversed(records):
            if may_read(record.tag):
                found += 1
                oldest_found = record.seq
                if found == count:
                    return record.seq - 1
        upper = lower
    return None if oldest_found is None else oldest_found - 1
