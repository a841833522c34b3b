"""RSS and open FDs of every long-lived process, sampled through the run, and
whether each levelled off: the median of a process's last quarter of samples
against its first quarter, with a tolerance (a restarted process is a new
series; a series too short to show a trend is not judged)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
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

    def judged(self, span: float) -> list[Series]:
        """The series long enough to judge: at least MIN_SAMPLES and 40 % of ``span``."""
        return [
            s
            for s in self.series.values()
            if len(s.samples) >= MIN_SAMPLES and s.samples[-1][0] - s.samples[0][0] >= 0.4 * span
        ]

    def trends(self, span: float) -> list[tuple[Series, str | None]]:
        """Each judged series, with what grew past the tolerance (None: level)."""
        out: list[tuple[Series, str | None]] = []
        for series in self.judged(span):
            (rss0, fd0), (rss1, fd1) = series.quarters()
            problems = []
            if rss1 > rss0 * RSS_RATIO + RSS_SLACK_KIB:
                problems.append(f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB")
            if fd1 > fd0 + FD_SLACK:
                problems.append(f"FDs {fd0:.0f} -> {fd1:.0f}")
            out.append((series, "; ".join(problems) or None))
        return out
