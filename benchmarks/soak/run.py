"""One soak run: start the topology and the load, inject the faults, let the
consumers catch up, reconcile, stop everything (also on Ctrl-C)."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.soak.consumers import SseClient
from benchmarks.soak.faults import Fault, Injector, kinds_for, schedule, targets_of
from benchmarks.soak.monitor import Monitor, Role
from benchmarks.soak.processes import Proc, SoakError
from benchmarks.soak.reconcile import (
    Acked,
    Check,
    missing_total,
    read_acked,
    reconcile,
    salt_checks,
)
from benchmarks.soak.topology import NODES, REACT_TAG, TAGS, Topology, salt_python
from saltbus import Sender

WARMUP = 5.0
# Whose RSS and FDs must level: saltbus's processes. NATS, PostgreSQL and Redis
# hold the run's data (they grow with it by design); Salt's clients are Salt's.
JUDGED = ("serve-", "react-", "listener-", "http")
ROUND_GRACE = 600.0  # how much longer than asked the load may run to finish the first round
SYNC_WAIT = 60.0
SETTLE_MAX = 180.0  # after the load, how long the consumers may take to catch up...
SETTLE_STUCK = 45.0  # ...while they make progress; after this long without, they are done
LATE = 3.0  # after everything arrived, how long to look for a late duplicate


@dataclass
class Options:
    minutes: float
    seed: int
    rate: float = 200.0  # events/s over all nodes, steady
    burst: int = 2000  # events per burst, over all nodes
    burst_every: float = 60.0
    breaks: str | None = None  # "journal-none"
    keep: bool = False


@dataclass
class Outcome:
    options: Options
    root: Path
    faults: list[Fault] = field(default_factory=list)
    acked: dict[str, Acked] = field(default_factory=dict)
    unacked: int = 0
    checks: list[Check] = field(default_factory=list)
    died: list[str] = field(default_factory=list)  # processes that exited by themselves
    resources: list[Role] = field(default_factory=list)  # RSS/FDs, per process role
    duration: float = 0.0
    kinds: tuple[str, ...] = ()

    @property
    def violations(self) -> int:
        return (
            sum(len(c.violations) for c in self.checks)
            + len(self.died)
            + sum(len(r.problems) for r in self.resources)
            + sum(1 for f in self.faults if f.error)
        )


def run(options: Options, log: Any = sys.stderr) -> Outcome:
    root = Path(tempfile.mkdtemp(prefix="sbs-"))
    outcome = Outcome(options, root)
    topology = Topology(root, "none" if options.breaks == "journal-none" else "batch")
    if not options.breaks:
        topology.salt_python = salt_python()
    sse: list[SseClient] = []
    firers: list[Proc] = []
    monitor = Monitor(lambda: _pids(topology))
    try:
        print(f"soak: starting in {root}", file=log, flush=True)
        topology.start()
        http = topology.nodes[0].http_port
        assert http is not None
        sse = [
            SseClient("all", http, TAGS, root / "sse-all.txt"),
            SseClient("react", http, REACT_TAG, root / "sse-react.txt"),
        ]
        for client in sse:
            client.start()
        _sync(topology, sse)
        monitor.start()
        seconds = options.minutes * 60
        per_node = len(NODES)
        for node in topology.nodes:
            firers.append(
                Proc(
                    f"load-{node.name}",
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.soak.load",
                        "--config",
                        str(node.config_file),
                        "--node",
                        node.name,
                        "--rate",
                        str(options.rate / per_node),
                        "--burst",
                        str(options.burst // per_node),
                        "--burst-every",
                        str(options.burst_every),
                        "--seconds",
                        str(seconds + ROUND_GRACE),
                        "--seed",
                        str(options.seed),
                        "--out",
                        str(root / f"fired-{node.name}.txt"),
                    ],
                    node.dir / "load.log",
                )
            )
        started = time.monotonic()
        for firer in firers:
            firer.start()
        print(
            f"soak: load running for {seconds:.0f} s (longer if needed to inject every kind "
            "of fault once)",
            file=log,
            flush=True,
        )
        outcome.kinds = kinds_for(topology)
        _faults(topology, options, outcome, started + seconds, log)
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        for firer in firers:
            firer.stop()  # SIGTERM: the record it keeps ends with a whole line
        outcome.duration = time.monotonic() - started
        _revive(topology, outcome, log)
        if topology.salt_firer is not None:
            topology.salt_firer.stop()  # what it fired is then all there is to find
        outcome.acked = read_acked(root / f"fired-{n}.txt" for n in NODES)
        outcome.unacked = sum(
            1 for n in NODES for line in _lines(root / f"fired-{n}.txt") if line.startswith("U ")
        )
        print(f"soak: {len(outcome.acked)} events acked; settling", file=log, flush=True)
        records = {c.name: (c.out, c.tag) for c in sse}
        outcome.checks = _settle(topology, outcome.acked, records)
        outcome.checks += salt_checks(topology, outcome.acked, outcome.faults)
        monitor.close()
        starts = {p.role: p.starts for p in topology.procs()}
        outcome.resources = monitor.lives(outcome.duration, starts, JUDGED)
        return outcome
    finally:
        monitor.close()
        for client in sse:
            client.close()
        for firer in firers:
            firer.stop()
        topology.close()
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)


def _sync(topology: Topology, sse: list[SseClient]) -> None:
    """Until every listener and SSE client is live: the load's first event
    must not be fired before they subscribed (they start from \"now\")."""
    deadline = time.monotonic() + SYNC_WAIT
    n = 0
    while True:
        n += 1
        for node in topology.nodes:
            with Sender(node.config) as sender:
                sender.fire(f"{TAGS}sync/{node.name}", {"sync": n}, 5.0, ack=True)
        time.sleep(0.3)
        listened = [node.listened for node in topology.nodes]
        if topology.salt_listener is not None:
            listened.append(topology.salt_listened)
        if all(f"{TAGS}sync/" in _text(path) for path in listened) and all(
            client.connects for client in sse
        ):
            return
        if time.monotonic() > deadline:
            raise SoakError(f"the listeners and SSE clients not live in {SYNC_WAIT} s")


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _faults(topology: Topology, options: Options, outcome: Outcome, end: float, log: Any) -> None:
    injector = Injector(topology)
    time.sleep(WARMUP)
    kinds = set(outcome.kinds)
    for fault in schedule(options.seed, outcome.kinds, targets_of(topology)):
        # A short run still injects every kind once: the load goes on until then.
        round_done = kinds <= {f.kind for f in outcome.faults}
        if time.monotonic() + fault.hold + 10 > end and round_done:
            break
        if time.monotonic() > end + ROUND_GRACE - 30:
            break
        injector.inject(fault)
        outcome.faults.append(fault)
        print(f"soak: fault {fault.describe()}", file=log, flush=True)
        _revive(topology, outcome, log)
        remaining = end - time.monotonic()
        time.sleep(fault.gap if remaining <= 0 else min(fault.gap, remaining))


def _revive(topology: Topology, outcome: Outcome, log: Any) -> None:
    """A saltbus process that exited by itself is a violation; it is restarted
    so that the run goes on and the rest can be checked."""
    for proc in topology.procs():
        if not proc.alive():
            assert proc.popen is not None
            what = f"{proc.role} exited by itself ({proc.popen.returncode}): {proc.tail(600)}"
            outcome.died.append(what)
            print(f"soak: {what}", file=log, flush=True)
            proc.start()


def _settle(
    topology: Topology, acked: dict[str, Acked], sse: dict[str, tuple[Path, str]]
) -> list[Check]:
    deadline = time.monotonic() + SETTLE_MAX
    best, best_at = None, time.monotonic()
    while True:
        checks = reconcile(topology, acked, sse)
        missing = missing_total(checks)
        now = time.monotonic()
        if missing == 0 or now > deadline or now - best_at > SETTLE_STUCK:
            break
        if best is None or missing < best:
            best, best_at = missing, now
        time.sleep(3.0)
    time.sleep(LATE)
    return reconcile(topology, acked, sse)


def _pids(topology: Topology) -> dict[str, int]:
    pids = {p.role: p.pid for p in topology.procs() if p.pid is not None}
    for server in topology.nats:
        if server.proc is not None and server.proc.poll() is None:
            pids[f"nats-{server.name}"] = server.proc.pid
    if topology.redis is not None and topology.redis.process is not None:
        pids["redis"] = topology.redis.process.pid
    if topology.mariadb is not None and topology.mariadb.process is not None:
        pids["mariadb"] = topology.mariadb.process.pid
    if topology.pg is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids["postgres"] = int((topology.pg.data / "postmaster.pid").read_text().split()[0])
    return pids


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
