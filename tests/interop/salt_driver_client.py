"""The test side of ``salt_side_driver.py``: runs it with a Salt venv's python, and
speaks its line protocol.

One process per Salt generation holds any number of named ``MasterEvent``/``MinionEvent``
objects on any bus (see ``salt_side_driver.py`` for the line protocol), so a test module
pays Salt's import time once per generation, not once per fire or listen.
"""

from __future__ import annotations

import json
import queue
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from tests.interop.buses import START_TIMEOUT, STOP_TIMEOUT, node_id, read_temp, stop_process
from tests.interop.salt_peer_client import REPO_ROOT, SaltPeerError, salt_python

DRIVER_SCRIPT = Path(__file__).resolve().with_name("salt_side_driver.py")


def to_json_value(value: object) -> object:
    """JSON for what JSON lacks, as salt_side_peer.py prints it: bytes as ``{"__bytes__": hex}``."""
    if isinstance(value, bytes | bytearray):
        return {"__bytes__": bytes(value).hex()}
    raise TypeError(f"cannot send {type(value).__name__} to the Salt driver")


def from_json_value(value: Any) -> Any:
    """The inverse of ``to_json_value`` over a decoded JSON value."""
    if isinstance(value, dict):
        if list(value) == ["__bytes__"]:
            return bytes.fromhex(value["__bytes__"])
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


class SaltDriver:
    """One Salt generation's ``salt_side_driver.py``: named event objects on any bus."""

    def __init__(self, version: str) -> None:
        self.version = version
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close)
        self.proc = subprocess.Popen(
            [str(salt_python(version)), str(DRIVER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=REPO_ROOT,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._counter = 0
        if self._next_line(START_TIMEOUT) != "READY":
            raise self._fail("did not print READY")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next_line(self, timeout: float) -> str | None:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise self._fail(f"no reply within {timeout} s") from None

    def _fail(self, message: str) -> SaltPeerError:
        return SaltPeerError(
            f"Salt {self.version} driver: {message} (exit {self.proc.poll()})\n"
            f"--- stderr ---\n{read_temp(self._stderr)}"
        )

    def stderr(self) -> str:
        return read_temp(self._stderr)

    def request(self, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}, default=to_json_value) + "\n")
        self.proc.stdin.flush()
        line = self._next_line(timeout)
        if line is None:
            raise self._fail(f"exited during {op}")
        reply: dict[str, Any] = from_json_value(json.loads(line))
        if not reply.pop("ok"):
            raise self._fail(f"{op} {fields} failed:\n{reply['error']}")
        return reply

    # Convenience wrappers ------------------------------------------------------

    def new_name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter}"

    def open(self, sock_dir: Path, node: str = "master", *, listen: bool, name: str = "") -> str:
        name = name or self.new_name("listener" if listen else "firer")
        self.request(
            "open", name=name, sock_dir=str(sock_dir), node=node, id=node_id(node), listen=listen
        )
        return name

    def listener(self, sock_dir: Path, node: str = "master", sync_tag: str = "") -> str:
        """An event object subscribed to the bus; with ``sync_tag``, proven subscribed by
        firing ``sync_tag/N`` until it comes back (use a tag other listeners ignore)."""
        name = self.open(sock_dir, node, listen=True)
        if sync_tag:
            self.request("sync", name=name, tag=sync_tag)
        return name

    def fire(self, name: str, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        results: list[Any] = self.request(
            "fire", name=name, events=[[t, dict(d)] for t, d in events]
        )["results"]
        return results

    def get(
        self,
        name: str,
        count: int = 1,
        *,
        wait: float = 10.0,
        tag: str = "",
        match_type: str | None = None,
        full: bool = True,
    ) -> tuple[list[Any], bool]:
        """Up to ``count`` events from ``get_event``; and whether one timed out."""
        reply = self.request(
            "get",
            timeout=count * wait + 30,
            name=name,
            count=count,
            wait=wait,
            tag=tag,
            match_type=match_type,
            full=full,
        )
        return reply["events"], reply["timeout"]

    def close_event(self, name: str) -> None:
        self.request("close", name=name)

    def close(self) -> None:
        if self.proc.stdin is not None:
            with suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        self._reader.join(timeout=STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


class DriverPool:
    """One :class:`SaltDriver` per Salt generation, started on first use."""

    def __init__(self) -> None:
        self._drivers: dict[str, SaltDriver] = {}

    def get(self, version: str) -> SaltDriver:
        if version not in self._drivers:
            self._drivers[version] = SaltDriver(version)
        return self._drivers[version]

    def close(self) -> None:
        for driver in self._drivers.values():
            driver.close()
        self._drivers.clear()
