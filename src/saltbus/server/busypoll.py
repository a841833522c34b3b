"""Busy polling: the event loop keeps polling, instead of sleeping, for a moment
after it wrote events to listeners.

On a machine whose idle CPUs halt (virtual machines above all), a publisher
that goes to sleep right after writing an event to a listener makes the
listener's wake-up slow. On the 2-vCPU machine the benchmarks run on, with
the journal at its default and the same raw clients, the median latency from
a firing client to a listening one was 150-160 µs with the publisher
sleeping at once and 80-90 µs with it polling for 100 µs after each delivery
(``benchmarks/NOTES.md``, "Busy polling"). The kernel's own remedy, guest
halt polling, is off there (``haltpoll.guest_halt_poll_ns=0``). This makes
the same trade in the one process whose latency it is: CPU for a moment
after a delivery, none while the bus is idle. Linux's ``net.core.busy_poll``
and Go's spinning scheduler threads make it for the same reason.

While the window is open a callback reschedules itself with ``call_soon``, so
the loop polls its sockets without a timeout at every turn: an event arriving
meanwhile is read at once, not after the window. Each turn yields the CPU
(``sched_yield``) first: a listener the kernel queued on this CPU runs at
once instead of waiting for the window to close; and a yield that gave the
CPU away ends the window, since then the CPU is wanted by others, and polling
would only take from what this process waits for. Nothing polls after an
event is only taken in (a bus with no listeners has no one to wake). The
time spent polling is bounded to :data:`MAX_SHARE` of
one CPU, :data:`BUDGET_BURST` at a time: at a steady rate that would keep the
loop polling all the time, windows open only while the budget lasts.
``busy_poll_us: 0`` turns it off.

A window opens only while no more tasks are runnable than there are CPUs
(:class:`RunnableTasks`, from ``/proc/loadavg``: one read, about a
microsecond): on a saturated machine every CPU is wanted and none halts, so
polling only takes CPU from the others. A yield that returns at once does
not show that: the tasks waiting may be queued on the other CPUs. In a
federation burst on 2 CPUs (three buses, NATS and the clients all busy) the
windows took about 7 % of a CPU per importing bus, and the last delivery
came about a tenth later.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Final

# At most this share of one CPU goes to polling, and at most BUDGET_BURST
# seconds of it at once.
MAX_SHARE: Final = 0.15
BUDGET_BURST: Final = 0.02
# A yield that takes longer than this gave the CPU to another task: the CPU is
# wanted, and polling would only take from what this process waits for.
CONTENDED_YIELD: Final = 20e-6
LOADAVG: Final = "/proc/loadavg"


class RunnableTasks:
    """How many tasks the kernel has runnable now, this one included (the
    fourth field of ``/proc/loadavg``, ``running/total``); None where that
    cannot be read. The file stays open: each call is one ``pread``."""

    def __init__(self, path: str = LOADAVG) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def __call__(self) -> int | None:
        if self._fd is None:
            return None
        try:
            return int(os.pread(self._fd, 128, 0).split()[3].partition(b"/")[0])
        except (OSError, IndexError, ValueError):
            return None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class BusyPoll:
    """Keeps ``loop`` polling for ``window`` seconds after the last :meth:`poke`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        window: float,
        *,
        share: float = MAX_SHARE,
        burst: float = BUDGET_BURST,
        contended_yield: float = CONTENDED_YIELD,
        runnable: Callable[[], int | None] | None = None,
        cpus: int | None = None,
    ) -> None:
        """``runnable``: tells how many tasks are runnable now (:class:`RunnableTasks`);
        a window opens only while that is at most ``cpus`` (this process's CPUs)."""
        if window < 0 or not 0 <= share <= 1:
            raise ValueError(f"a busy-poll window of {window} s and a share of {share}")
        self._loop = loop
        self._window = window
        self._share = share
        self._burst = burst
        self._contended_yield = contended_yield
        self._runnable = runnable
        self._cpus = cpus if cpus is not None else len(os.sched_getaffinity(0))
        self._until = 0.0
        self._polling = False
        self._started = 0.0
        self._closed = False
        # The budget: seconds of polling left, refilled at `share` per second.
        self._budget = burst
        self._refilled = time.perf_counter()
        # Seconds spent polling and windows opened since the start (statistics).
        self.spent = 0.0
        self.windows = 0
        # Windows closed early because a yield gave the CPU away.
        self.contended = 0
        # Windows not opened because more tasks were runnable than there are CPUs.
        self.crowded = 0

    @property
    def polling(self) -> bool:
        """Whether a window is open now."""
        return self._polling

    def poke(self) -> None:
        """Open a window, or move the open one's end to ``window`` from now."""
        if self._window <= 0 or self._closed:
            return
        now = time.perf_counter()
        self._until = now + self._window
        if self._polling:
            return
        self._budget = min(self._burst, self._budget + (now - self._refilled) * self._share)
        self._refilled = now
        if self._budget <= 0:
            return  # spent: the loop sleeps as usual until the budget refills
        if self._runnable is not None:
            runnable = self._runnable()
            if runnable is not None and runnable > self._cpus:
                self.crowded += 1
                return  # every CPU is wanted: none halts, and polling takes from the others
        self._polling = True
        self._started = now
        self.windows += 1
        self._loop.call_soon(self._turn)

    def close(self) -> None:
        """End the window at the next turn and open none again."""
        self._closed = True
        self._until = 0.0

    def _turn(self) -> None:
        now = time.perf_counter()
        if now < self._until and now - self._started < self._budget:
            # A listener the kernel queued on this CPU runs now, not after the
            # window: polling must never be what it waits for.
            os.sched_yield()
            if time.perf_counter() - now < self._contended_yield:
                self._loop.call_soon(self._turn)
                return
            self.contended += 1
        used = now - self._started
        self._budget -= used
        self.spent += used
        self._polling = False
