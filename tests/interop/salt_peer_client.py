"""Run real Salt processes from tests, without importing Salt.

The test process runs in the project venv, which has no Salt. Each Salt generation lives
in its own venv made by ``scripts/salt-venvs``; this module starts
``tests/interop/salt_side_peer.py`` with that venv's python and speaks its line protocol
(``READY``, one JSON object per line, ``TIMEOUT``).

Import it as ``from tests.interop.salt_peer_client import ...``: ``tests/__init__.py`` and
``tests/interop/__init__.py`` make ``tests`` a package, so pytest puts the repository root
on ``sys.path`` whatever directory it is started from.

A missing Salt venv raises :class:`SaltVenvMissingError`, so interop tests fail (never skip)
on a machine where ``scripts/salt-venvs`` was not run.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

SALT_VERSIONS: tuple[str, ...] = ("3006", "3007", "3008")
"""Salt generations with a venv: 3006.30 (LTS), 3007.8 and 3008.5."""

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER_SCRIPT = Path(__file__).resolve().with_name("salt_side_peer.py")

READY_TIMEOUT = 30.0
"""Seconds a Salt process gets to print READY; Salt imports take ~1 s on a quiet machine."""
STOP_TIMEOUT = 10.0
"""Seconds between SIGTERM and SIGKILL when stopping a Salt process."""
RUN_TIMEOUT = 60.0
"""Seconds a one-shot Salt command (fire, info) may take before it is killed."""
EXIT_TIMEOUT = 3
"""Exit code of ``salt_side_peer.py listen`` when a ``get_event`` returned None."""


class SaltVenvMissingError(RuntimeError):
    """The Salt venv for a generation does not exist: run ``scripts/salt-venvs``."""


class SaltPeerError(RuntimeError):
    """A Salt process failed, timed out, or broke the line protocol."""


def venvs_dir() -> Path:
    return Path(os.environ.get("SALTBUS_SALT_VENVS") or REPO_ROOT / ".venvs")


def salt_python(version: str) -> Path:
    """The python of the Salt venv for ``version`` ("3006", "3007" or "3008")."""
    if version not in SALT_VERSIONS:
        raise ValueError(f"unknown Salt generation {version!r}; expected one of {SALT_VERSIONS}")
    python = venvs_dir() / f"salt-{version}" / "bin" / "python"
    if not python.exists():
        raise SaltVenvMissingError(
            f"no Salt {version} venv at {python.parent.parent}: run scripts/salt-venvs "
            f"(from {REPO_ROOT}) to create the Salt virtual environments"
        )
    return python


def _node_args(sock_dir: Path | str, node: str, id: str | None) -> list[str]:
    args = ["--sock-dir", str(sock_dir), "--node", node]
    if id is not None:
        args += ["--id", id]
    return args


def _command(version: str, subcommand: str, *args: str) -> list[str]:
    return [str(salt_python(version)), str(PEER_SCRIPT), subcommand, *args]


class _SaltProcess:
    """A long-running salt_side_peer.py with stdout read line by line in the background.

    A reader thread (rather than reads with a deadline) keeps READY waits bounded
    whatever the child does, and stderr goes to a file so a chatty Salt can never block
    on a full pipe.
    """

    def __init__(self, argv: list[str], what: str) -> None:
        self.what = what
        # Closed in stop(): it must outlive this call and be readable for error messages.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=REPO_ROOT,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def fail(self, message: str) -> SaltPeerError:
        return SaltPeerError(
            f"{self.what}: {message} (exit code {self.proc.poll()})\n"
            f"--- stderr ---\n{self.stderr()}"
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f"no READY within {timeout} s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                # stdout closed: the process is exiting; give it a moment to report why.
                with suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=STOP_TIMEOUT)
                raise self.fail("exited before READY")
            if line == "READY":
                return
            raise self.fail(f"unexpected output before READY: {line!r}")

    def lines_after_exit(self) -> list[str]:
        """Every stdout line not consumed yet; call once the process has ended."""
        self._reader.join(timeout=STOP_TIMEOUT)
        out: list[str] = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                out.append(line)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@contextmanager
def salt_publisher(
    version: str, sock_dir: Path | str, node: str = "master", id: str | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Run Salt's own event publisher for ``node`` in ``sock_dir`` until the block ends.

    Yields once both sockets accept connections. On exit the publisher gets SIGTERM
    (SIGKILL after ``STOP_TIMEOUT``); its ``returncode`` is 0 when it stopped cleanly.
    """
    peer = _SaltProcess(
        _command(version, "publisher", *_node_args(sock_dir, node, id)),
        f"Salt {version} {node} publisher",
    )
    try:
        peer.wait_ready()
        yield peer.proc
    finally:
        peer.stop()


def salt_fire(
    version: str,
    sock_dir: Path | str,
    tag: str,
    data: Mapping[str, Any],
    node: str = "master",
    id: str | None = None,
    count: int | None = None,
) -> list[dict[str, Any]]:
    """Fire with Salt's client (``fire_event(data, tag)``); one ``{"result": ...}`` per event.

    ``count=None`` fires ``data`` once as given; ``count=N`` fires N events, each with
    ``"n": 0..N-1`` added.
    """
    args = [*_node_args(sock_dir, node, id), "--tag", tag, "--data", json.dumps(dict(data))]
    if count is not None:
        args += ["--count", str(count)]
    what = f"Salt {version} fire on {node}"
    try:
        done = subprocess.run(
            _command(version, "fire", *args),
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        raise SaltPeerError(f"{what}: still running after {RUN_TIMEOUT} s") from exc
    if done.returncode != 0:
        raise SaltPeerError(f"{what}: exit code {done.returncode}\n--- stderr ---\n{done.stderr}")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    expected = 1 if count is None else count
    if len(results) != expected:
        raise SaltPeerError(f"{what}: {len(results)} results for {expected} events: {results}")
    return results


def salt_info(version: str) -> dict[str, Any]:
    """``{"salt_version": ...}`` as reported by the Salt venv."""
    done = subprocess.run(
        _command(version, "info"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise SaltPeerError(f"Salt {version} info: exit {done.returncode}\n{done.stderr}")
    info: dict[str, Any] = json.loads(done.stdout)
    return info


class SaltListener:
    """A running ``salt_side_peer.py listen``: already subscribed when handed out."""

    def __init__(self, peer: _SaltProcess) -> None:
        self._peer = peer
        self.proc = peer.proc

    def events(self, timeout: float = 30.0, allow_timeout: bool = False) -> list[dict[str, Any]]:
        """Wait for the listener to end and return the events it printed, in order.

        The listener ends after its ``count`` events, or when a ``get_event`` came back
        empty; the latter raises unless ``allow_timeout`` (then the events so far return).
        """
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            error = self._peer.fail(f"still listening after {timeout} s")
            self._peer.stop()
            raise error from exc
        lines = self._peer.lines_after_exit()
        timed_out = lines[-1:] == ["TIMEOUT"]
        if timed_out:
            lines = lines[:-1]
        try:
            got = [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise self._peer.fail(f"unparsable output: {lines!r}") from exc
        rc = self.proc.returncode
        if rc == 0 or (rc == EXIT_TIMEOUT and timed_out and allow_timeout):
            return got
        if rc == EXIT_TIMEOUT and timed_out:
            raise self._peer.fail(f"get_event timed out after {len(got)} events: {got!r}")
        raise self._peer.fail(f"failed after {len(got)} events: {got!r}")


@contextmanager
def salt_listener(
    version: str,
    sock_dir: Path | str,
    node: str = "master",
    id: str | None = None,
    tag: str = "",
    match_type: str | None = None,
    count: int | None = None,
    wait: float = 10.0,
) -> Iterator[SaltListener]:
    """Listen with Salt's client (``get_event(wait, tag, match_type, full=True)``).

    Yields once Salt's subscriber is connected to the publish socket, so events fired
    inside the block reach it. ``count=None`` listens until a ``get_event`` times out.
    The process is stopped on exit if still running.
    """
    args = [*_node_args(sock_dir, node, id), "--tag", tag, "--wait", str(wait)]
    if match_type is not None:
        args += ["--match-type", match_type]
    if count is not None:
        args += ["--count", str(count)]
    peer = _SaltProcess(_command(version, "listen", *args), f"Salt {version} {node} listener")
    try:
        peer.wait_ready()
        yield SaltListener(peer)
    finally:
        peer.stop()
