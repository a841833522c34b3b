"""`saltbus serve` as a subprocess: the one way the tests run the daemon.

A :class:`ServeProcess` starts ``saltbus serve ARGS`` with its output in a log
(a file the test names, or an anonymous one), is ready once the daemon says it
serves (the line it prints after its lock is held and both sockets listen: a
stale socket of a killed publisher does not pass for a live one), and ends by
:meth:`~ServeProcess.stop` (SIGTERM, a bounded wait, exit 0 asserted) or
:meth:`~ServeProcess.kill` (SIGKILL). Its pid is there for /proc.

The environment is the test run's without SALTBUS_* variables (conftest sets
SALTBUS_DATA_DIR, say), plus the ``env`` a test passes: only the test's flags,
config file and ``env`` configure the daemon. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from saltbus.config import Address, Config

SALTBUS = Path(sys.executable).with_name("saltbus")
if not SALTBUS.exists():  # pragma: no cover - a venv always has the console script
    SALTBUS = Path(shutil.which("saltbus") or "saltbus")
# The machine is small and shared: generous, but every wait ends.
WAIT = 30.0
# The end of the line `saltbus serve` prints once it serves (saltbus.cli.serve).
READY = "Ctrl-C to stop"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without SALTBUS_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALTBUS_")}
    env.update(extra)
    return env


def bus_flags(config: Config) -> list[str]:
    """``--sock-dir`` and ``--data-dir`` for the bus of ``config``."""
    flags = ["--sock-dir", os.fspath(config.sock_dir)]
    if config.data_dir is not None:
        flags += ["--data-dir", os.fspath(config.data_dir)]
    return flags


def _path(address: Address) -> Path:
    assert isinstance(address, Path), f"not a unix socket: {address}"
    return address


class ServeProcess:
    """``saltbus serve *args``, running from construction on, serving ``config``
    (what the test expects the daemon to make of its arguments).

    As a context manager it waits until the daemon is ready and, at the end, stops
    it (exit 0 asserted) when the block ended normally, kills it otherwise.
    """

    def __init__(
        self,
        config: Config,
        *args: str,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        # Appended to, so that a log shared by restarts keeps every run's lines.
        self._log_file: IO[bytes] = (
            tempfile.TemporaryFile() if log is None else open(log, "a+b")  # noqa: SIM115
        )
        self._log_start = os.fstat(self._log_file.fileno()).st_size
        self._final_log: str | None = None
        try:
            self.popen = subprocess.Popen(
                [os.fspath(SALTBUS), "serve", *args],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=self._log_file,
                env=clean_env(**(env or {})),
            )
        except BaseException:
            self._log_file.close()
            raise

    @classmethod
    def for_bus(
        cls,
        config: Config,
        *extra: str,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Self:
        """``saltbus serve --sock-dir S --data-dir D *extra`` for the bus of ``config``."""
        return cls(config, *bus_flags(config), *extra, log=log, env=env)

    # -- what it is ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def sock_dir(self) -> Path:
        return self.config.sock_dir

    @property
    def pub(self) -> Path:
        """The publish socket (ipc mode)."""
        return _path(self.config.pub_address)

    @property
    def pull(self) -> Path:
        """The pull socket (ipc mode)."""
        return _path(self.config.pull_address)

    @property
    def log(self) -> str:
        """What this run wrote to stdout and stderr so far."""
        if self._final_log is not None:
            return self._final_log
        fd = self._log_file.fileno()
        size = os.fstat(fd).st_size - self._log_start
        # pread: the daemon shares the file offset, which a seek would move.
        return os.pread(fd, max(0, size), self._log_start).decode("utf-8", "replace")

    # -- waiting ------------------------------------------------------------------------

    def wait_for_log(self, text: str, timeout: float = WAIT) -> None:
        """Until ``text`` is in the log; fails when the daemon exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if not self.alive():
                if text in self.log:  # written just before it exited
                    return
                raise AssertionError(
                    f"saltbus serve exited {self.returncode} before it logged {text!r}:\n{self.log}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from saltbus serve in {timeout} s:\n{self.log}")
            time.sleep(0.01)

    def wait_ready(self, timeout: float = WAIT) -> Self:
        """Until the daemon serves: its lock held, both sockets listening."""
        self.wait_for_log(READY, timeout)
        return self

    def wait(self, timeout: float = WAIT) -> int:
        return self.popen.wait(timeout)

    # -- ending -------------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def stop(self, timeout: float = WAIT, *, check: bool = True) -> int:
        """SIGTERM, then its exit code within ``timeout`` (killed and failed when
        it takes longer); with ``check``, an exit other than 0 fails too."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"saltbus serve did not stop within {timeout} s of SIGTERM:\n{self.log}"
            ) from None
        if check:
            assert code == 0, f"saltbus serve exited {code}:\n{self.log}"
        return code

    def kill(self) -> int:
        """SIGKILL (when it still runs); its exit code."""
        if self.alive():
            self.popen.kill()
        return self.popen.wait(WAIT)

    def close(self) -> None:
        """Kill it if it still runs; the log stays readable. Idempotent."""
        if self._final_log is not None:
            return
        try:
            self.kill()
        finally:
            self._final_log = self.log
            self._log_file.close()

    def __enter__(self) -> Self:
        try:
            return self.wait_ready()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self.alive():
                self.stop()
        finally:
            self.close()

    # -- /proc ----------------------------------------------------------------------------

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {key} in /proc/{self.pid}/status")

    def rss(self) -> int:
        """The resident set now, in bytes."""
        return self._status("VmRSS")

    def peak_rss(self) -> int:
        """The high-water mark of the resident set since the daemon started
        (or since :meth:`reset_peak_rss`)."""
        return self._status("VmHWM")

    def reset_peak_rss(self) -> None:
        """Start :meth:`peak_rss` afresh from the resident set now (Linux >= 4.0)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_targets(self) -> list[str]:
        """What each open descriptor is (for a failure's message)."""
        targets = []
        for fd in sorted(os.listdir(f"/proc/{self.pid}/fd"), key=int):
            with contextlib.suppress(OSError):
                targets.append(f"{fd}->{os.readlink(f'/proc/{self.pid}/fd/{fd}')}")
        return targets

    def sockets(self) -> int:
        """Open socket descriptors: the listening sockets, and one per connection."""
        return sum(1 for target in self.fd_targets() if "socket:" in target)
