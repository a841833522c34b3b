"""The busy poll (saltbus.server.busypoll) on a real event loop, and in a
served bus: the loop stays awake for the window after activity, reads what
arrives meanwhile at once, ends by itself, and spends at most its share."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saltbus import Config, Listener, Sender
from saltbus.errors import ConfigError
from saltbus.server.app import Server
from saltbus.server.busypoll import BUDGET_BURST, BusyPoll, RunnableTasks

# The window tests must not depend on the machine's load: the budget and a
# yield that gave the CPU away (each of which ends a window) are tested on
# their own.
UNBOUNDED = {"contended_yield": 10.0, "burst": 10.0, "share": 1.0}


def test_a_poke_keeps_the_loop_turning_for_the_window_then_it_sleeps() -> None:
    async def main() -> tuple[int, float, bool]:
        busy = BusyPoll(asyncio.get_running_loop(), 0.005, **UNBOUNDED)
        started = time.perf_counter()
        busy.poke()
        assert busy.polling
        while busy.polling:
            await asyncio.sleep(0.001)
        open_for = time.perf_counter() - started
        await asyncio.sleep(0.02)
        return busy.windows, open_for, busy.polling

    windows, open_for, polling_after = asyncio.run(main())
    assert windows == 1
    assert 0.005 <= open_for < 0.5  # ends by itself, not before the window
    assert not polling_after


def test_pokes_while_open_extend_one_window() -> None:
    async def main() -> tuple[int, float]:
        busy = BusyPoll(asyncio.get_running_loop(), 0.2, **UNBOUNDED)
        for _ in range(5):
            last_poke = time.perf_counter()
            busy.poke()
            await asyncio.sleep(0.002)
        while busy.polling:
            await asyncio.sleep(0.0005)
        return busy.windows, time.perf_counter() - last_poke

    windows, open_after_last = asyncio.run(main())
    assert windows == 1
    assert open_after_last >= 0.2


def test_a_timer_due_inside_the_window_runs_on_time() -> None:
    # The loop polls between turns: a callback due now is not held back
    # until the window ends.
    async def main() -> float:
        loop = asyncio.get_running_loop()
        busy = BusyPoll(loop, 0.2, **UNBOUNDED)
        busy.poke()
        fired = loop.create_future()
        start = loop.time()
        loop.call_later(0.01, lambda: fired.set_result(loop.time() - start))
        late: float = await fired
        busy.close()
        return late

    assert asyncio.run(main()) < 0.1


def test_polling_spends_at_most_its_share() -> None:
    async def main() -> tuple[float, float]:
        busy = BusyPoll(asyncio.get_running_loop(), 0.05, share=0.1, contended_yield=10.0)
        started = time.perf_counter()
        while time.perf_counter() - started < 0.5:
            busy.poke()  # a steady rate that would keep it polling all the time
            await asyncio.sleep(0.01)
        while busy.polling:
            await asyncio.sleep(0.001)
        return busy.spent, time.perf_counter() - started

    spent, elapsed = asyncio.run(main())
    # The budget starts at BUDGET_BURST and refills at the share.
    assert spent <= BUDGET_BURST + 0.1 * elapsed + 0.02
    assert spent > 0


def test_a_yield_that_gives_the_cpu_away_ends_the_window() -> None:
    # Every yield counts as given away: the window closes at its first turn,
    # long before its end.
    async def main() -> tuple[int, float]:
        busy = BusyPoll(asyncio.get_running_loop(), 1.0, contended_yield=0.0)
        started = time.perf_counter()
        busy.poke()
        while busy.polling:
            await asyncio.sleep(0.001)
        return busy.contended, time.perf_counter() - started

    contended, open_for = asyncio.run(main())
    assert contended == 1
    assert open_for < 0.5


def test_no_window_opens_while_more_tasks_are_runnable_than_cpus() -> None:
    async def main() -> tuple[bool, int, bool, bool]:
        loop = asyncio.get_running_loop()
        counts = [3]
        busy = BusyPoll(loop, 1.0, **UNBOUNDED, runnable=lambda: counts[0], cpus=2)
        busy.poke()  # this task and two more: both CPUs are wanted
        crowded = busy.polling
        counts[0] = 2  # this task and one more (a listener it woke): polls
        busy.poke()
        opened = busy.polling
        busy.close()
        unknown = BusyPoll(loop, 0.01, **UNBOUNDED, runnable=lambda: None, cpus=1)
        unknown.poke()  # nothing known of the machine: as without the check
        return crowded, busy.crowded, opened, unknown.polling

    assert asyncio.run(main()) == (False, 1, True, True)


def test_runnable_tasks_reads_the_kernels_count(tmp_path: Path) -> None:
    probe = RunnableTasks()
    try:
        count = probe()
        assert count is not None and 1 <= count <= 100_000  # this test is running
    finally:
        probe.close()
    assert probe() is None  # closed
    fake = tmp_path / "loadavg"
    fake.write_text("0.50 0.40 0.30 7/301 4242\n")
    read = RunnableTasks(str(fake))
    assert read() == 7
    fake.write_text("garbage\n")
    assert read() is None  # each call reads the file anew
    read.close()
    assert RunnableTasks(str(tmp_path / "missing"))() is None


def test_a_window_of_zero_and_a_closed_poll_never_open() -> None:
    async def main() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        off = BusyPoll(loop, 0.0)
        off.poke()
        closed = BusyPoll(loop, 0.01)
        closed.close()
        closed.poke()
        return off.polling, closed.polling

    assert asyncio.run(main()) == (False, False)


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        BusyPoll(asyncio.new_event_loop(), -1.0)


@pytest.mark.parametrize("value", [-1, 10_001])
def test_busy_poll_us_out_of_range_is_one_line(tmp_path: Path, value: int) -> None:
    with pytest.raises(ConfigError, match=r"busy_poll_us must be 0 \(off\) to 10000"):
        Config.load(env={}, overrides={"sock_dir": tmp_path, "busy_poll_us": value})


@pytest.mark.parametrize("value", ["-1", "20000", "ten"])
def test_serve_refuses_a_bad_busy_poll_in_one_line(tmp_path: Path, value: str) -> None:
    serve = [sys.executable, "-m", "saltbus.cli.main", "serve"]
    result = subprocess.run(
        [*serve, "--sock-dir", str(tmp_path / "s"), "--busy-poll-us", value],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    # One line saying what is wrong (after argparse's usage for a non-number).
    lines = result.stderr.splitlines()
    assert "busy" in lines[-1] and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 or lines[0].startswith("usage:"), result.stderr
    assert not (tmp_path / "s").exists()  # refused before anything was made


def test_busy_poll_us_from_the_environment(tmp_path: Path) -> None:
    config = Config.load(env={"SALTBUS_BUSY_POLL_US": "0"}, overrides={"sock_dir": tmp_path})
    assert config.busy_poll_us == 0
    assert Config.load(env={}, overrides={"sock_dir": tmp_path}).busy_poll_us == 100


@pytest.mark.parametrize("busy_poll_us", [0, 100, 5000])
def test_a_served_bus_delivers_the_same_with_any_window(tmp_path: Path, busy_poll_us: int) -> None:
    # Events fired while the window is open and after it closed all arrive,
    # in order, and the served loop is not left polling once the bus is idle.
    config = Config.load(
        env={},
        overrides={
            "sock_dir": tmp_path / "s",
            "data_dir": tmp_path / "d",
            "busy_poll_us": busy_poll_us,
        },
    )

    async def main() -> tuple[list[int], bool | None]:
        async with Server(config) as server:
            loop = asyncio.get_running_loop()

            def exchange() -> list[int]:
                got: list[int] = []
                with Listener(config, tag="t/") as listener, Sender(config) as sender:
                    listener.connect(timeout=10.0)
                    for n in range(20):
                        sender.fire("t/x", {"n": n})
                        if n % 5 == 4:
                            time.sleep(0.02)  # past the window
                    while len(got) < 20:
                        event = listener.receive(10.0)
                        assert event is not None, f"only {got} arrived"
                        got.append(event.data["n"])
                return got

            got = await loop.run_in_executor(None, exchange)
            await asyncio.sleep(0.05)
            busy = server._busy_poll
            return got, None if busy is None else busy.polling

    got, polling = asyncio.run(main())
    assert got == list(range(20))
    assert polling is (None if busy_poll_us == 0 else False)
