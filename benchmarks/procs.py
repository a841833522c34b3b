"""Starting, reading and stopping the benchmark's processes, each bounded in time.

Every process started goes into a :class:`Processes` group, which stops them all
(SIGTERM, then SIGKILL) when the group is left, whatever happened.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
PEER: Final = HERE / "peer.py"
RELAY: Final = HERE / "relay.py"
PUB: Final = "master_event_pub.ipc"
PULL: Final = "master_event_pull.ipc"
STOP_GRACE: Final = 5.0


class BenchError(RuntimeError):
    pass


def salt_python() -> str:
    """The Salt 3007 venv's python (built by scripts/salt-venvs)."""
    path = os.environ.get("SALTBUS_BENCH_SALT_PYTHON") or str(
        ROOT / ".venvs" / "salt-3007" / "bin" / "python"
    )
    if not os.access(path, os.X_OK):
        raise BenchError(f"no Salt 3007 python at {path}: run scripts/salt-venvs first")
    return path


class Proc:
    """A child process whose stdout is read line by line, with deadlines."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_line(self, deadline: float) -> str:
        """The next stdout line; BenchError past ``deadline`` (monotonic) or at exit."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no output in time{self.tail()}")
            readable, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.popen.wait(STOP_GRACE)
                    raise BenchError(f"{self.name} exited with {code}{self.tail()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def expect_ready(self, deadline: float) -> None:
        line = self.read_line(deadline)
        if line != "READY":
            raise BenchError(f"{self.name}: expected READY, got {line!r}{self.tail()}")

    def result(self, deadline: float) -> dict[str, Any]:
        value = json.loads(self.read_line(deadline))
        if not isinstance(value, dict):
            raise BenchError(f"{self.name}: result is not an object: {value!r}")
        return value

    def say(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def tail(self, size: int = 2000) -> str:
        self._log.flush()
        text = self.log_path.read_bytes()[-size:].decode(errors="replace")
        return f"\n--- {self.name} stderr (end) ---\n{text}" if text.strip() else ""

    def memory(self) -> dict[str, float]:
        """Resident memory in MiB from /proc: current (VmRSS) and peak (VmHWM)."""
        found: dict[str, float] = {}
        try:
            lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        except OSError:
            return found
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
        return found

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_GRACE)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


class Processes:
    """The processes of one benchmark case; all stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str]) -> Proc:
        proc = Proc(name, argv, self.log_dir)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Clients first, the publisher (started first) last.
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as error:  # one failed stop must not leave the others running
                print(f"benchmarks: could not stop {proc.name}: {error}", file=sys.stderr)


def accepts(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def wait_for_sockets(proc: Proc, sock_dir: Path, deadline: float) -> None:
    """Until both bus sockets accept connections (the publisher is serving)."""
    while not (accepts(sock_dir / PUB) and accepts(sock_dir / PULL)):
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}{proc.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name}: sockets not ready in time{proc.tail()}")
        time.sleep(0.05)


def publisher_argv(kind: str, sock_dir: Path, journal: str) -> list[str]:
    if kind == "salt":
        return [salt_python(), str(PEER), "publisher", "--lib", "salt", "--sock-dir", str(sock_dir)]
    if kind == "relay":
        return [sys.executable, str(RELAY), "--sock-dir", str(sock_dir)]
    return [
        sys.executable,
        "-m",
        "saltbus.cli.main",
        "serve",
        "--sock-dir",
        str(sock_dir),
        "--journal",
        journal,
        "--data-dir",
        str(sock_dir / "data"),
    ]


def peer_argv(lib: str, role: str, sock_dir: Path, *options: str) -> list[str]:
    python = salt_python() if lib == "salt" else sys.executable
    return [python, str(PEER), role, "--lib", lib, "--sock-dir", str(sock_dir), *options]
