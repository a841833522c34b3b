"""Running one command for ``cmd.run``, on a worker thread.

Blocking ``Popen`` on the reactor's threads, not asyncio's subprocesses:
measured on 2 CPUs, 10 threads start ~1,400 short commands a second, asyncio's
default loop ~300 and uvloop (which ``saltbus serve`` runs on) ~100.

Both pipes are read as the command writes (so it never blocks on a full
pipe), keeping the first ``OUTPUT_LIMIT`` bytes of each. The command gets its
own process group: a timeout, or the reactor stopping, kills all of it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Final

from saltbus.errors import SaltbusError

OUTPUT_LIMIT: Final = 64 * 1024
READ_SIZE: Final = 64 * 1024


class CommandTimeoutError(SaltbusError):
    """The command ran past its timeout; its process group was killed.

    Not a TimeoutError: that is an OSError, which callers read as "could not
    start the command"."""


@dataclass
class _Capped:
    kept: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def add(self, chunk: bytes) -> None:
        room = OUTPUT_LIMIT - len(self.kept)
        self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        text = self.kept.decode("utf-8", "replace")
        return f"{text}\n[{self.dropped} more bytes not kept]" if self.dropped else text


class Commands:
    """Runs commands and remembers the running ones, to kill them on stop."""

    def __init__(self) -> None:
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        shell: bool,
        cwd: str | None,
        env: Mapping[str, str] | None,
        timeout: float | None,
    ) -> tuple[int, str, str]:
        """(exit status, stdout, stderr). Raises OSError when it cannot start,
        :class:`CommandTimeoutError` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        proc = subprocess.Popen(
            cmd,
            shell=shell,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        with self._lock:
            self._running.add(proc)
        try:
            out, err = _read_both(proc, deadline)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                retcode = proc.wait(remaining)
            except subprocess.TimeoutExpired:
                raise CommandTimeoutError from None
            return retcode, out.text(), err.text()
        except BaseException:
            # Before the leader is reaped, so its pid (the group's id) cannot
            # have been reused. A command that ended by itself keeps what it
            # started in the background.
            _kill_group(proc)
            raise
        finally:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            proc.wait()
            with self._lock:
                self._running.discard(proc)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def kill_all(self) -> int:
        """Kill every running command's process group; how many there were."""
        with self._lock:
            running = [proc for proc in self._running if proc.returncode is None]
        for proc in running:
            _kill_group(proc)
        return len(running)


def _read_both(proc: subprocess.Popen[bytes], deadline: float | None) -> tuple[_Capped, _Capped]:
    out, err = _Capped(), _Capped()
    streams: list[tuple[IO[bytes] | None, _Capped]] = [(proc.stdout, out), (proc.stderr, err)]
    with selectors.DefaultSelector() as selector:
        for stream, sink in streams:
            if stream is not None:
                selector.register(stream, selectors.EVENT_READ, sink)
        while selector.get_map():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise CommandTimeoutError
            for key, _events in selector.select(remaining):
                chunk = os.read(key.fd, READ_SIZE)
                if chunk:
                    key.data.add(chunk)
                else:
                    selector.unregister(key.fileobj)
    return out, err


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The whole group: what the command started in the background too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
