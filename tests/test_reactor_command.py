"""saltbus.reactor.command: commands on a worker thread, with capped output, a
timeout that kills the process group, and kill_all for a stopping reactor."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from saltbus.errors import SaltbusError
from saltbus.reactor.command import OUTPUT_LIMIT, Commands, CommandTimeoutError


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} survived"
        time.sleep(0.02)


def test_runs_and_reports() -> None:
    commands = Commands()
    assert commands.run(["sh", "-c", "echo out; echo err >&2; exit 4"], shell=False,
                        cwd=None, env=None, timeout=10) == (4, "out\n", "err\n")  # fmt: skip
    assert commands.run("echo $0", shell=True, cwd="/", env=None, timeout=None)[1] == "/bin/sh\n"


def test_both_outputs_are_read_as_written_and_capped() -> None:
    # Each stream is far over a pipe's buffer: reading only one would deadlock.
    script = f"head -c {OUTPUT_LIMIT * 4} /dev/zero >&2; head -c {OUTPUT_LIMIT + 10} /dev/zero"
    code, out, err = Commands().run(["sh", "-c", script], shell=False, cwd=None, env=None,
                                    timeout=20)  # fmt: skip
    assert code == 0
    assert out.endswith("[10 more bytes not kept]")
    assert err.endswith(f"[{OUTPUT_LIMIT * 3} more bytes not kept]")


def test_timeout_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg"
    with pytest.raises(CommandTimeoutError) as caught:
        Commands().run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], shell=False,
                       cwd=None, env=None, timeout=0.3)  # fmt: skip
    wait_gone(int(pidfile.read_text()))
    # In saltbus's one exception tree, and not an OSError ("could not start").
    assert isinstance(caught.value, SaltbusError) and not isinstance(caught.value, OSError)


def test_a_background_child_outlives_a_command_that_ended(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg"
    script = f"sleep 60 >/dev/null 2>&1 & echo $! > {pidfile}"
    assert Commands().run(["sh", "-c", script], shell=False, cwd=None, env=None, timeout=10)[0] == 0
    child = int(pidfile.read_text())
    try:
        assert alive(child)
    finally:
        os.kill(child, 9)


def test_kill_all_ends_running_commands(tmp_path: Path) -> None:
    commands = Commands()
    results: list[object] = []

    def run() -> None:
        try:
            results.append(commands.run(["sleep", "60"], shell=False, cwd=None, env=None,
                                        timeout=None))  # fmt: skip
        except Exception as exc:  # pragma: no cover - reported by the assert below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while commands.running < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert commands.kill_all() == 3
    for thread in threads:
        thread.join(5)
    assert sorted(r[0] for r in results) == [-9, -9, -9]  # type: ignore[index]


def test_cannot_start() -> None:
    with pytest.raises(FileNotFoundError):
        Commands().run(["/no/such/program"], shell=False, cwd=None, env=None, timeout=1)
