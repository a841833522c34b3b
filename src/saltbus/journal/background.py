"""The journal's background threads, at a lower CPU priority.

Behind the tail (tailed.py) SQLite's index and the WAL's checkpoints are
work no listener waits for: an idle CPU should run them at once, and a busy
one should run the delivery path first. On a 2-CPU machine saturated by a
federation burst (three buses, NATS, a firing client, two listeners) the
three buses' index threads took about a third of each bus's CPU while the
listeners waited for theirs; at nice +10 the burst's last event landed
0.076 → 0.056 s after the last fire (medians of 48 rounds, alternated with
the same code at nice 0; benchmarks/NOTES.md). Linux keeps a nice value per
thread, so only these threads are lowered, never the event loop's.

What still waits for the index: an acked fire's answer (it promises
``saltbus history`` has the event) and the returners; under saturation
they are slower, not starved (nice lowers a share of the CPU, it does not
take it away). Past the tail's bound on unindexed records commits go to
SQLite first, through this thread, so overload slows the firing clients
instead of growing memory.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Final

log = logging.getLogger("saltbus.journal.writer")

# How much lower than the main thread's the background threads' priority is (of 0..19).
BACKGROUND_NICE: Final = 10


def lower_this_thread(steps: int = BACKGROUND_NICE) -> bool:
    """Run the calling thread ``steps`` below the process's main thread (a
    thread starts with its creator's priority: lowering is not repeated
    in a thread made by a lowered one); False where a thread has no
    priority of its own (not Linux) or the system refused."""
    if sys.platform != "linux":
        return False  # elsewhere PRIO_PROCESS with a thread id names a process
    thread = threading.get_native_id()
    try:
        main = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's id is the pid
        os.setpriority(os.PRIO_PROCESS, thread, main + steps)
    except OSError as exc:
        log.debug("cannot lower the priority of %s: %s", threading.current_thread().name, exc)
        return False
    return True
