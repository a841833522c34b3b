"""Missed returns: the minions a Salt job was published to that have not
returned when its time is up (sans-I/O; the clock is given).

Salt fires ``salt/job/<jid>/new`` with ``{jid, tgt, tgt_type, user, fun, arg,
minions, missing}`` when the master publishes a job (the same keys in 3006,
3007 and 3008; see WIRE.md), and each minion's answer as
``salt/job/<jid>/ret/<id>``. The job's timeout is in the publication, not in
the event, so every job gets the same one (``reactor_missing_returns_timeout``),
counted from the ``_stamp`` Salt puts in the ``new`` event, so that events
replayed after a restart keep their own times. Salt's own ``missing`` (minions
a list target named that the master does not know) is passed on, not waited
for. The jobs Salt's CLI publishes to ask whether a minion still runs a job
(``saltutil.find_job``) are not watched: the job they ask about is.

Memory is bounded: at most ``max_jobs`` jobs are open; opening one more drops
the oldest (returned as :class:`Dropped`, and counted).

The tracker reflects every event up to :attr:`ReturnTracker.seq`: after a
restart, the events it saw again are ignored, so a replay from an earlier
position changes nothing.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

NEW_SUFFIX: Final = "/new"
PREFIX: Final = "salt/job/"
MISSING_TAG: Final = "saltbus/job/{jid}/missing"
# Salt's CLI asks the minions that have not returned whether they still run
# the job with a job of its own: a dead minion would be reported twice.
NOT_WATCHED: Final = frozenset(("saltutil.find_job",))


@dataclass(slots=True)
class OpenJob:
    """A published job some of whose minions have not returned yet."""

    jid: str
    fun: str
    tgt: Any
    tgt_type: str
    user: str
    minions: tuple[str, ...]
    waiting: set[str]
    deadline: float  # Unix time
    salt_missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "jid": self.jid,
            "fun": self.fun,
            "tgt": self.tgt,
            "tgt_type": self.tgt_type,
            "user": self.user,
            "minions": list(self.minions),
            "waiting": sorted(self.waiting),
            "deadline": self.deadline,
            "salt_missing": list(self.salt_missing),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> OpenJob:
        return cls(
            str(value["jid"]),
            str(value["fun"]),
            value["tgt"],
            str(value["tgt_type"]),
            str(value["user"]),
            tuple(value["minions"]),
            set(value["waiting"]),
            float(value["deadline"]),
            tuple(value.get("salt_missing", ())),
        )

    def report(self, timeout: float) -> dict[str, Any]:
        """The data of ``saltbus/job/<jid>/missing``."""
        return {
            "jid": self.jid,
            "fun": self.fun,
            "tgt": self.tgt,
            "tgt_type": self.tgt_type,
            "user": self.user,
            "missing": sorted(self.waiting),
            "minions": list(self.minions),
            "returned": len(self.minions) - len(self.waiting),
            "timeout": timeout,
            "salt_missing": list(self.salt_missing),
        }


@dataclass(frozen=True, slots=True)
class Dropped:
    """An open job forgotten to keep within ``max_jobs``."""

    jid: str
    waiting: int


class ReturnTracker:
    def __init__(
        self, timeout: float, max_jobs: int, clock: Callable[[], float] = time.time
    ) -> None:
        if timeout <= 0 or max_jobs <= 0:
            raise ValueError("timeout and max_jobs must be positive")
        self.timeout = timeout
        self.max_jobs = max_jobs
        self._clock = clock
        self._jobs: dict[str, OpenJob] = {}  # in the order they were opened
        self._deadlines: list[tuple[float, str]] = []  # a heap; closed jobs left in it
        self.seq: int | None = None
        # Changed since take_changes(): the store writes only these.
        self._changed: set[str] = set()
        self._closed: set[str] = set()
        self.opened = 0
        self.completed = 0
        self.reported = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def jobs(self) -> Mapping[str, OpenJob]:
        return self._jobs

    def restore(self, jobs: Iterable[OpenJob], seq: int | None) -> None:
        """Take back what a store kept (before any event is observed)."""
        for job in jobs:
            self._jobs[job.jid] = job
            heapq.heappush(self._deadlines, (job.deadline, job.jid))
        self.seq = seq
        while len(self._jobs) > self.max_jobs:  # kept under a larger max_jobs
            self._drop_oldest()

    def observe(self, tag: str, data: Mapping[str, Any], seq: int | None) -> list[Dropped]:
        """Take one event of the bus into account; the jobs dropped to make room."""
        if seq is not None:
            if self.seq is not None and seq <= self.seq:
                return []  # seen before a restart
            self.seq = seq
        if not tag.startswith(PREFIX):
            return []
        jid, _, rest = tag[len(PREFIX) :].partition("/")
        if rest == "new":
            return self._open(jid, data)
        if rest.startswith("ret/"):
            self._returned(jid, rest[len("ret/") :])
        return []

    def _open(self, jid: str, data: Mapping[str, Any]) -> list[Dropped]:
        minions = data.get("minions")
        if not jid or jid in self._jobs or not isinstance(minions, list) or not minions:
            return []
        if data.get("fun") in NOT_WATCHED:
            return []
        salt_missing = data.get("missing")
        job = OpenJob(
            jid,
            str(data.get("fun", "")),
            data.get("tgt"),
            str(data.get("tgt_type", "glob")),
            str(data.get("user", "")),
            tuple(str(m) for m in minions),
            {str(m) for m in minions},
            _stamp(data.get("_stamp"), self._clock) + self.timeout,
            tuple(str(m) for m in salt_missing) if isinstance(salt_missing, list) else (),
        )
        dropped = []
        while len(self._jobs) >= self.max_jobs:
            dropped.append(self._drop_oldest())
        self._jobs[jid] = job
        heapq.heappush(self._deadlines, (job.deadline, jid))
        self._touch(jid)
        self.opened += 1
        return dropped

    def _returned(self, jid: str, minion: str) -> None:
        job = self._jobs.get(jid)
        if job is None or minion not in job.waiting:
            return
        job.waiting.discard(minion)
        if job.waiting:
            self._touch(jid)
        else:
            self._close(jid)
            self.completed += 1

    def expire(self, now: float | None = None) -> list[OpenJob]:
        """The jobs whose time is up with minions still waited for, closed."""
        now = self._clock() if now is None else now
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, jid = heapq.heappop(self._deadlines)
            job = self._jobs.get(jid)
            if job is None or job.deadline != deadline:
                continue  # closed already
            self._close(jid)
            self.reported += 1
            due.append(job)
        return due

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self._jobs:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def take_changes(self) -> tuple[list[OpenJob], list[str]]:
        """(jobs opened or changed, jids closed) since the last call."""
        changed = [self._jobs[jid] for jid in self._changed if jid in self._jobs]
        closed = sorted(self._closed)
        self._changed, self._closed = set(), set()
        return changed, closed

    def unsaved(self, changed: Iterable[str], closed: Iterable[str]) -> None:
        """Changes :meth:`take_changes` gave that could not be saved: kept for the next try."""
        for jid in changed:
            if jid in self._jobs:
                self._changed.add(jid)
        for jid in closed:
            if jid not in self._jobs:
                self._closed.add(jid)

    @property
    def dirty(self) -> bool:
        return bool(self._changed or self._closed)

    def _touch(self, jid: str) -> None:
        self._changed.add(jid)
        self._closed.discard(jid)

    def _close(self, jid: str) -> None:
        del self._jobs[jid]
        self._changed.discard(jid)
        self._closed.add(jid)

    def _drop_oldest(self) -> Dropped:
        job = next(iter(self._jobs.values()))
        self._close(job.jid)
        self.dropped += 1
        return Dropped(job.jid, len(job.waiting))


def _stamp(value: Any, clock: Callable[[], float]) -> float:
    """Salt's ``_stamp`` (ISO 8601, UTC without an offset) as Unix time;
    the clock's time when there is none."""
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return clock()
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    return clock()
