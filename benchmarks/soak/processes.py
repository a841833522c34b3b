"""A long-lived child process of the soak: started, killed (-9), stopped
(SIGSTOP/SIGCONT), restarted, and read in /proc (RSS, FDs). Every wait is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Final

ROOT: Final = Path(__file__).resolve().parents[2]
SALTBUS: Final = Path(sys.executable).with_name("saltbus")
WAIT: Final = 60.0
STOP_GRACE: Final = 10.0


class SoakError(RuntimeError):
    """The soak could not set itself up (not a violation: a broken harness)."""


def soak_env(**extra: str) -> dict[str, str]:
    """The environment without SALTBUS_* settings; the repository on the path
    (the reactor imports ``benchmarks.soak.reaction``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALTBUS_")}
    paths = [p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


class Proc:
    """``argv`` with stderr (and stdout unless ``stdout`` names a file) appended to
    ``log``; ready once ``ready`` appears in what it logged since its start, or
    ``ready_check()`` is true."""

    def __init__(
        self,
        role: str,
        argv: Sequence[str],
        log: Path,
        *,
        ready: str | None = None,
        ready_check: Callable[[], bool] | None = None,
        stdout: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.role = role
        self.argv = list(argv)
        self.log = log
        self.ready = ready
        self.ready_check = ready_check
        self.stdout = stdout
        self.env = dict(env) if env is not None else soak_env()
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.paused = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        assert not self.alive(), f"{self.role} already runs"
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as err:
            out: IO[bytes] = self.stdout.open("ab") if self.stdout is not None else err
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self.env,
                    cwd=ROOT,
                )
            finally:
                if out is not err:
                    out.close()
        self.starts += 1
        self.paused = False
        deadline = time.monotonic() + WAIT
        while not self._is_ready(offset):
            if not self.alive():
                raise SoakError(f"{self.role} exited at start:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise SoakError(f"{self.role} not ready in {WAIT} s:\n{self.tail()}")
            time.sleep(0.1)

    def _is_ready(self, offset: int) -> bool:
        if self.ready_check is not None:
            return self.ready_check()
        if self.ready is None:
            return True
        with self.log.open("rb") as log:
            log.seek(offset)
            return self.ready.encode() in log.read()

    def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(WAIT)
        self.paused = False

    def pause(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> int | None:
        """SIGTERM (SIGCONT first, if stopped), then SIGKILL after the grace."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(WAIT)
        return self.popen.returncode

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""


def usage(pid: int) -> tuple[int, int] | None:
    """(RSS in KiB, open FDs) of ``pid`` from /proc; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]), fds
    return None
