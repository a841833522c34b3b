"""RSS and open FDs of every long-lived process, sampled through the run, and
whether each levelled off: the median of a process's last quarter of samples
against its first quarter, with a tolerance. Each life of a restarted process
is its own series, judged only if it is long enough to show a trend; the
processes the faults spare live the whole run."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from benchmarks.soak.processes import usage

INTERVAL = 2.0
MIN_SAMPLES = 12
RSS_RATIO = 1.5  # the last quarter's median may be this much of the first's...
RSS_SLACK_KIB = 24 * 1024  # ...plus this (caches filling early in a short run)
FD_SLACK = 16


@dataclass
class Series:
    role: str
    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss KiB, fds)

    def quarters(self) -> tuple[tuple[float, float], tuple[float, float]]:
        q = max(1, len(self.samples) // 4)
        first, last = self.samples[:q], self.samples[-q:]
        return (
            (statistics.median(s[1] for s in first), statistics.median(s[2] for s in first)),
            (statistics.median(s[1] for s in last), statistics.median(s[2] for s in last)),
        )


class Monitor:
    """Samples ``pids()`` (role -> pid) every INTERVAL seconds in a thread."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self._pids = pids
        self.series: dict[tuple[str, int], Series] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(INTERVAL * 3)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            for role, pid in self._pids().items():
                found = usage(pid)
                if found is not None:
                    series = self.series.setdefault((role, pid), Series(role, pid))
                    series.samples.append((time.monotonic(), *found))

    def lives(
        self, span: float, starts: Mapping[str, int], judged_roles: tuple[str, ...]
    ) -> list[Role]:
        """Per role, its lives: each long enough (at least MIN_SAMPLES and 40 %
        of ``span``) judged, the others counted as too short. ``starts``: how
        many times each process was started (a life too short to be sampled
        counts too); a role that is not there counts its sampled lives."""
        by_role: dict[str, list[Series]] = {}
        for series in self.series.values():
            by_role.setdefault(series.role, []).append(series)
        roles = []
        for name, lives in sorted(by_role.items()):
            lives.sort(key=lambda s: s.samples[0][0])
            role = Role(name, max(starts.get(name, 0), len(lives)), name.startswith(judged_roles))
            for series in lives:
                seconds = series.samples[-1][0] - series.samples[0][0]
                if len(series.samples) >= MIN_SAMPLES and seconds >= 0.4 * span:
                    role.judged.append(_judge(series, seconds, check=role.saltbus))
                else:
                    role.short += 1
                    role.longest_short = max(role.longest_short, seconds)
            roles.append(role)
        return roles


@dataclass
class Life:
    """One life of a process judged: first-quarter and last-quarter medians."""

    pid: int
    seconds: float
    rss: tuple[float, float]  # MiB
    fds: tuple[float, float]
    problem: str | None  # what grew past the tolerance; None: level (or not judged)

    def usage(self) -> str:
        return (
            f"RSS {self.rss[0]:.1f} -> {self.rss[1]:.1f} MiB, "
            f"FDs {self.fds[0]:.0f} -> {self.fds[1]:.0f} over {self.seconds:.0f} s"
        )


@dataclass
class Role:
    """A process role (serve-c, nats-n1...) over the run: how many times it was
    started, its lives long enough to judge, and how many were too short."""

    name: str
    starts: int
    saltbus: bool  # judged; the others (NATS, databases, Salt's) are shown only
    judged: list[Life] = field(default_factory=list)
    short: int = 0
    longest_short: float = 0.0

    @property
    def problems(self) -> list[str]:
        return [life.problem for life in self.judged if life.problem]


def _judge(series: Series, seconds: float, *, check: bool) -> Life:
    (rss0, fd0), (rss1, fd1) = series.quarters()
    problems = []
    if rss1 > rss0 * RSS_RATIO + RSS_SLACK_KIB:
        problems.append(f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB")
    if fd1 > fd0 + FD_SLACK:
        problems.append(f"FDs {fd0:.0f} -> {fd1:.0f}")
    return Life(
        series.pid,
        seconds,
        (rss0 / 1024, rss1 / 1024),
        (fd0, fd1),
        ("; ".join(problems) or None) if check else None,
    )
