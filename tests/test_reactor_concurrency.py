"""saltbus.reactor.concurrency: ``lock:`` and ``concurrency:``. The gate's
decisions on their own, the gate in an event loop (backpressure, draining), and
real `saltbus serve` and `saltbus react` processes running commands that log
their start and end times: one key runs one at a time in event order while
different keys overlap, ``concurrency: 2`` never has more than two running, a
full gate stops the intake without dropping, and reactions waiting for a lock
when the reactor is killed run after its restart."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Hashable
from pathlib import Path

import pytest

from saltbus import Config, Listener, Sender
from saltbus.reactor.concurrency import Concurrency, Gate, Ticket
from tests.serve_support import ServeProcess
from tests.test_reactor_cli import collect, react, reactor_conf
from tests.waiting import wait_until


class Recorder:
    """A gate whose started items are listed, to finish them by hand."""

    def __init__(self) -> None:
        self.started: list[Ticket[str]] = []
        self.gate: Gate[str] = Gate(self.started.append)

    def admit(self, item: str, lock: str | None = None, limit: int | None = None) -> None:
        rule: Hashable = item.split(":", maxsplit=1)[0]
        self.gate.admit(item, rule, lock, limit)

    def names(self) -> list[str]:
        return [t.item for t in self.started]

    def finish(self, item: str) -> None:
        (ticket,) = [t for t in self.started if t.item == item]
        self.gate.finished(ticket)


def test_one_lock_runs_one_at_a_time_in_order_and_other_locks_run_beside() -> None:
    r = Recorder()
    for n in range(3):
        r.admit(f"deploy:a{n}", lock="a")
    r.admit("deploy:b0", lock="b")
    assert r.names() == ["deploy:a0", "deploy:b0"]
    assert (r.gate.running, r.gate.waiting) == (2, 2)
    r.finish("deploy:a0")
    assert r.names() == ["deploy:a0", "deploy:b0", "deploy:a1"]
    r.finish("deploy:b0")
    r.finish("deploy:a1")
    assert r.names()[-1] == "deploy:a2"
    r.finish("deploy:a2")
    assert r.gate.size == 0
    assert not r.gate._locks and not r.gate._running  # nothing left behind per key


def test_a_concurrency_limit_per_rule() -> None:
    r = Recorder()
    for n in range(5):
        r.admit(f"sync:{n}", limit=2)
    r.admit("other:0", limit=2)
    assert r.names() == ["sync:0", "sync:1", "other:0"]
    r.finish("sync:1")
    assert r.names()[-1] == "sync:2"
    r.finish("sync:0")
    r.finish("sync:2")
    assert r.names()[-2:] == ["sync:3", "sync:4"]
    assert r.gate.running == 3


def test_a_lock_and_a_limit_together_keep_each_keys_order() -> None:
    r = Recorder()
    r.admit("job:a0", lock="a", limit=1)
    r.admit("job:b0", lock="b", limit=1)  # its key is free, the rule is not
    r.admit("job:a1", lock="a", limit=1)
    assert r.names() == ["job:a0"]
    r.finish("job:a0")
    # b0 waited for the limit first; a1 then waits behind it.
    assert r.names() == ["job:a0", "job:b0"]
    r.finish("job:b0")
    assert r.names() == ["job:a0", "job:b0", "job:a1"]


def test_finishing_what_never_started_is_refused() -> None:
    r = Recorder()
    r.admit("x:0", lock="k")
    r.admit("x:1", lock="k")
    waiting = r.gate.admit("x:2", "x", "k", None)
    with pytest.raises(ValueError, match="never started"):
        r.gate.finished(waiting)


def test_in_a_loop_the_intake_waits_for_room_and_join_drains() -> None:
    async def main() -> tuple[list[str], bool, bool, dict[str, int]]:
        release = asyncio.Event()
        ran: list[str] = []

        async def run(item: str) -> None:
            await release.wait()
            ran.append(item)

        gate: Concurrency[str] = Concurrency(3, run)
        for n in range(3):
            gate.admit(f"r{n}", "rule", "key", None)
        room = asyncio.create_task(gate.room())
        await asyncio.sleep(0.05)
        blocked = not room.done()
        release.set()
        await asyncio.wait_for(room, 5)
        await asyncio.wait_for(gate.join(), 5)
        return ran, blocked, room.done(), gate.stats()

    ran, blocked, freed, stats = asyncio.run(main())
    assert blocked and freed
    assert ran == ["r0", "r1", "r2"]
    assert stats["gated_full_waits"] == 1
    assert stats["gated_peak_waiting"] == 2
    assert (stats["gated_waiting"], stats["gated_running"]) == (0, 0)


# -- real processes ------------------------------------------------------------------

# Each reaction appends "<key> <n> start <ns>" and "<key> <n> end <ns>" to a log.
STEP = (
    '    - cmd: [sh, -c, \'echo "$0 $1 start $(date +%s%N)" >> {log}; sleep 0.05; '
    'echo "$0 $1 end $(date +%s%N)" >> {log}\', "{{{{ data[\'key\'] }}}}", '
    "\"{{{{ data['n'] }}}}\"]\n"
    "    - timeout: 60\n"
)


def spans(log: Path) -> dict[tuple[str, int], tuple[int, int]]:
    found: dict[tuple[str, int], dict[str, int]] = {}
    for line in log.read_text().splitlines():
        key, n, what, ns = line.split()
        found.setdefault((key, int(n)), {})[what] = int(ns)
    return {k: (v["start"], v["end"]) for k, v in found.items()}


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, step in points:
        now += step
        peak = max(peak, now)
    return peak


def run_burst(
    bus_config: Config,
    tmp_path: Path,
    extras: str,
    keys: list[str],
    per_key: int,
    *flags: str,
) -> tuple[dict[tuple[str, int], tuple[int, int]], str]:
    log = tmp_path / "spans.log"
    conf = reactor_conf(
        tmp_path,
        {"work.sls": "work:\n  cmd.run:\n" + STEP.format(log=log) + extras},
        "  - 'app/work':\n    - work.sls\n",
    )
    total = len(keys) * per_key
    with ServeProcess.for_bus(bus_config), Listener(bus_config, "saltbus/reactor/") as rets:
        rets.connect(5)
        proc = react(bus_config, conf, "--workers", "8", *flags)
        try:
            with Sender(bus_config) as sender:
                for n in range(per_key):
                    for key in keys:
                        sender.fire("app/work", {"key": key, "n": n}, ack=True)
            done = collect(rets, total, timeout=120)
        finally:
            assert proc.stop() == 0
    assert all(e.data["success"] for e in done), [e.data for e in done if not e.data["success"]]
    found = spans(log)
    assert len(found) == total
    return found, proc.stderr


def test_a_lock_serialises_one_key_in_order_while_other_keys_overlap(
    bus_config: Config, tmp_path: Path
) -> None:
    found, _ = run_burst(
        bus_config, tmp_path, "  lock: \"svc-{{ data['key'] }}\"\n", ["a", "b", "c"], 20
    )
    for key in "abc":
        runs = [found[(key, n)] for n in range(20)]
        # In event order, each starting after the one before it ended.
        for (_, end), (start, _) in itertools.pairwise(runs):
            assert start >= end
        assert most_at_once(runs) == 1
    assert most_at_once(list(found.values())) > 1  # different keys ran side by side


def test_concurrency_two_never_runs_more_than_two(bus_config: Config, tmp_path: Path) -> None:
    found, _ = run_burst(bus_config, tmp_path, "  concurrency: 2\n", ["x"], 20)
    assert most_at_once(list(found.values())) == 2


def test_a_full_gate_stops_the_intake_and_drops_nothing(bus_config: Config, tmp_path: Path) -> None:
    # reactor_worker_hwm 3: 20 reactions of one key cannot all wait at once.
    found, stderr = run_burst(bus_config, tmp_path, "  lock: one\n", ["k"], 20, "--hwm", "3")
    runs = [found[("k", n)] for n in range(20)]
    assert all(start >= end for (_, end), (start, _) in itertools.pairwise(runs))
    assert "reading no events until one finishes" in stderr
    assert "dropped 0," in stderr and "reactor queue full" not in stderr


def test_reactions_waiting_for_a_lock_survive_kill_9(bus_config: Config, tmp_path: Path) -> None:
    """They hold the reactor's saved position back: the restart runs them."""
    log = tmp_path / "done.log"
    conf = reactor_conf(
        tmp_path,
        {
            "slow.sls": "slow:\n  cmd.run:\n"
            f"    - cmd: [sh, -c, 'sleep 0.2; echo $0 >> {log}', \"{{{{ data['n'] }}}}\"]\n"
            "  lock: one\n"
        },
        "  - 'app/slow':\n    - slow.sls\n",
    )
    with ServeProcess.for_bus(bus_config):
        proc = react(bus_config, conf)
        try:
            with Sender(bus_config) as sender:
                for n in range(10):
                    sender.fire("app/slow", {"n": n}, ack=True)

            def lines() -> list[int]:
                return [int(x) for x in log.read_text().split()] if log.exists() else []

            wait_until(lambda: len(lines()) >= 3, "3 reactions done", 30)
        finally:
            assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
        before = lines()
        assert len(before) < 10
        proc = react(bus_config, conf)
        try:
            wait_until(lambda: set(lines()) == set(range(10)), "every reaction done", 60)
        finally:
            assert proc.stop() == 0
    after = lines()[len(before) :]
    assert after == sorted(after)  # in event order again
    assert after[-1] == 9 and after[0] <= before[-1] + 1
    assert "catching up" in proc.stderr
