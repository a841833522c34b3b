"""Processes for the saltbus ↔ Salt interop tests: saltbus's daemon and CLI, and Salt's
publisher with its log at hand (Salt's clients are in ``salt_driver_client.py``).

Every wait here is bounded, and every process started is stopped by its owner
(a context manager or a fixture), SIGTERM first and SIGKILL after ``STOP_TIMEOUT``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from saltbus.config import Config
from tests.interop.salt_peer_client import (
    _command,
    _node_args,
    _SaltProcess,
)
from tests.serve_support import ServeProcess

STOP_TIMEOUT = 10.0
START_TIMEOUT = 20.0
CLI_TIMEOUT = 30.0
MINION_ID = "interop-minion-1"
NODES = ("master", "minion")


def node_id(node: str) -> str | None:
    return MINION_ID if node == "minion" else None


def node_cli_args(node: str) -> list[str]:
    """``--node``/``--id`` for saltbus's commands."""
    return ["--node", node, *(["--id", MINION_ID] if node == "minion" else [])]


def bus_config(sock_dir: Path, version: str | None, node: str = "master", **extra: Any) -> Config:
    """saltbus's settings for the bus in ``sock_dir``, untouched by the environment."""
    overrides: dict[str, Any] = {
        "sock_dir": sock_dir,
        "node": node,
        "id": node_id(node),
        "salt_version": version,
        "data_dir": sock_dir / "data",
        **extra,
    }
    return Config.load(env={}, overrides=overrides)


def saltbus_exe() -> list[str]:
    """The ``saltbus`` console script of the venv running the tests."""
    script = Path(sys.executable).with_name("saltbus")
    if script.exists():
        return [str(script)]
    found = shutil.which("saltbus")
    if found is None:
        raise RuntimeError(f"no saltbus console script next to {sys.executable} or on PATH")
    return [found]


def cli_env() -> dict[str, str]:
    """The environment for saltbus's CLI: no SALTBUS_* setting leaks in from outside."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SALTBUS_")}


def run_saltbus(
    *args: str, timeout: float = CLI_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one saltbus command to completion (killed after ``timeout``), in
    ``env`` (default: :func:`cli_env`)."""
    return subprocess.run(
        [*saltbus_exe(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=cli_env() if env is None else env,
    )


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def read_temp(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode("utf-8", "replace")


# -- saltbus serve (tests/serve_support.py) ----------------------------------------


def saltbus_daemon(sock_dir: Path, version: str, node: str = "master") -> ServeProcess:
    """``saltbus serve --salt-version VERSION`` for the bus in ``sock_dir``, started
    (``wait_ready`` or ``with`` before use)."""
    config = bus_config(sock_dir, version, node)
    return ServeProcess.for_bus(config, "--salt-version", version, *node_cli_args(node))


# -- Salt's own publisher, with its log ------------------------------------------


class SaltPublisher:
    """Salt's publisher (via ``salt_side_peer.py publisher``), its stderr readable while it runs."""

    def __init__(self, version: str, sock_dir: Path, node: str) -> None:
        self.version = version
        self.sock_dir = sock_dir
        self.node = node
        self._peer = _SaltProcess(
            _command(version, "publisher", *_node_args(sock_dir, node, node_id(node))),
            f"Salt {version} {node} publisher",
        )
        self.proc = self._peer.proc

    def stderr(self) -> str:
        return self._peer.stderr()

    def config(self, version: str | None = None) -> Config:
        """saltbus's settings for this bus (``version`` defaults to the publisher's)."""
        return bus_config(self.sock_dir, version or self.version, self.node)


@contextmanager
def salt_publisher_with_log(version: str, sock_dir: Path, node: str) -> Iterator[SaltPublisher]:
    publisher = SaltPublisher(version, sock_dir, node)
    try:
        publisher._peer.wait_ready()
        yield publisher
    finally:
        publisher._peer.stop()


# -- saltbus listen in the background --------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with suppress(OSError):
        for fd in fd_dir.iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _connected_unix_inodes() -> set[int]:
    """Inodes of connected unix stream sockets (state 03 in /proc/net/unix)."""
    connected: set[int] = set()
    with open("/proc/net/unix", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 7 and fields[5] == "03":
                connected.add(int(fields[6]))
    return connected


class SaltbusListen:
    """``saltbus listen ...`` running in the background, its output collected at the end."""

    def __init__(self, args: Sequence[str]) -> None:
        self._stdout: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close)
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close)
        self.proc = subprocess.Popen(
            [*saltbus_exe(), "listen", *args],
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            env=cli_env(),
        )

    def wait_connected(self, timeout: float = START_TIMEOUT) -> None:
        """Until the process holds a connected unix socket: its listener is connected.

        A Salt publisher says nothing to a new listener, so the only sign is the
        socket itself. Salt's loop registers a subscriber when it accepts it, before
        it reads events fired on connections made later, so events fired after this
        returns reach the listener.
        """
        deadline = time.monotonic() + timeout
        while not (_socket_inodes(self.proc.pid) & _connected_unix_inodes()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"saltbus listen exited early:\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"saltbus listen not connected in {timeout} s")
            time.sleep(0.02)
        time.sleep(0.1)  # the publisher's accept, which the client cannot see

    def wait(self, timeout: float = CLI_TIMEOUT) -> tuple[int, str, str]:
        """Exit code, stdout and stderr once it ended (killed after ``timeout``)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            raise RuntimeError(
                f"saltbus listen still running after {timeout} s; stdout so far:\n"
                f"{read_temp(self._stdout)}\nstderr:\n{self.stderr()}"
            ) from None
        return self.proc.returncode, read_temp(self._stdout), self.stderr()

    def stderr(self) -> str:
        return read_temp(self._stderr)

    def close(self) -> None:
        stop_process(self.proc)
        self._stdout.close()
        self._stderr.close()


@contextmanager
def saltbus_listen(*args: str) -> Iterator[SaltbusListen]:
    listen = SaltbusListen(args)
    try:
        listen.wait_connected()
        yield listen
    finally:
        listen.close()


def module_dir() -> Iterator[Path]:
    """A short fresh directory under /tmp, as tests/conftest.py's ``sock_dir``, for
    fixtures that outlive one test (unix socket paths must stay under 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sb-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- pools shared by the tests of one module -------------------------------------

# _stamp as each generation's firing clients write it (WIRE.md): 3008 adds +00:00.
STAMP = {
    "3006": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$"),
    "3007": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$"),
    "3008": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$"),
}


class DaemonPool:
    """One ``saltbus serve`` per (generation, node), started on first use, each in its
    own directory under ``root``; stopped together by :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._daemons: dict[tuple[str, str], ServeProcess] = {}

    def get(self, version: str, node: str = "master") -> ServeProcess:
        key = (version, node)
        if key not in self._daemons:
            sock_dir = self.root / f"d{version}-{node}"
            sock_dir.mkdir()
            daemon = saltbus_daemon(sock_dir, version, node)
            try:
                daemon.wait_ready(START_TIMEOUT)
            except BaseException:
                daemon.close()
                raise
            self._daemons[key] = daemon
        return self._daemons[key]

    def close(self) -> list[str]:
        """Stop every daemon; returns what went wrong (an unclean exit, a traceback)."""
        problems = []
        for (version, node), daemon in self._daemons.items():
            try:
                code = daemon.stop(STOP_TIMEOUT, check=False)
                log = daemon.log
                if code != 0 or "Traceback" in log or "ERROR" in log:
                    problems.append(f"saltbus serve {version} {node}: exit {code}\n{log}")
            except AssertionError as exc:  # it did not stop in time, and was killed
                problems.append(f"saltbus serve {version} {node}: {exc}")
            finally:
                daemon.close()
        self._daemons.clear()
        return problems


class PublisherPool:
    """One Salt publisher per (generation, node), started on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stack = ExitStack()
        self._publishers: dict[tuple[str, str], SaltPublisher] = {}

    def get(self, version: str, node: str = "master") -> SaltPublisher:
        key = (version, node)
        if key not in self._publishers:
            sock_dir = self.root / f"s{version}-{node}"
            sock_dir.mkdir()
            self._publishers[key] = self._stack.enter_context(
                salt_publisher_with_log(version, sock_dir, node)
            )
        return self._publishers[key]

    def close(self) -> None:
        self._stack.close()
        self._publishers.clear()


def strip_stamp(version: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without its ``_stamp``, after checking the stamp has ``version``'s format."""
    rest = dict(data)
    stamp = rest.pop("_stamp")
    assert STAMP[version].match(stamp), f"Salt {version} _stamp expected, got {stamp!r}"
    return rest
