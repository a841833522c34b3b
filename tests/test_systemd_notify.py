"""systemd's notify protocol (saltbus.cli.notify), against a real NOTIFY_SOCKET.

The test plays the service manager: it binds a unix datagram socket (a path,
or an abstract ``@`` name), starts a real ``saltbus serve`` with
``NOTIFY_SOCKET`` pointing at it, and reads what arrives, with the sender's
credentials (systemd accepts notifications from the main process only).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from saltbus.cli.notify import Notifier
from saltbus.client.sender import Sender
from saltbus.config import Config
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env

WAIT = 10.0  # the bound of every wait here
CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ServiceManager:
    """The receiving end of NOTIFY_SOCKET: each datagram as (sender pid, lines)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(WAIT)

    def receive(self) -> tuple[int, list[str]]:
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(CREDENTIALS.size))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = CREDENTIALS.unpack(payload[: CREDENTIALS.size])[0]
        return pid, data.decode("utf-8").split("\n")

    def until(self, line: str, limit: int = 200) -> list[tuple[int, list[str]]]:
        """Every message up to and including the first holding ``line``."""
        seen = []
        for _ in range(limit):
            message = self.receive()
            seen.append(message)
            if line in message[1]:
                return seen
        raise AssertionError(f"no {line!r} in {limit} messages: {seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(sock_dir: Path) -> Iterator[ServiceManager]:
    manager = ServiceManager(os.fspath(sock_dir / "notify"))
    try:
        yield manager
    finally:
        manager.close()


def test_serve_is_ready_once_its_sockets_serve_and_says_when_it_stops(
    manager: ServiceManager, bus_config: Config
) -> None:
    serve = ServeProcess.for_bus(
        bus_config, env={"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"}
    )
    try:
        before_ready = manager.until("READY=1")
        # Every notification comes from the main process (systemd's NotifyAccess=main).
        assert {pid for pid, _ in before_ready} == {serve.pid}
        ready_lines = before_ready[-1][1]
        assert any(line.startswith("STATUS=serving the master bus in") for line in ready_lines), (
            ready_lines
        )
        assert ["STATUS=starting"] in [lines for _, lines in before_ready]
        # READY=1 means the sockets serve: an acknowledged fire succeeds at once.
        with Sender(bus_config) as sender:
            assert sender.fire("notify/ready", {"n": 1}, timeout=WAIT, ack=True).seq == 1
        # WatchdogSec=0.2s: keep-alives keep coming while it serves.
        for _ in range(2):
            pid, _ = manager.until("WATCHDOG=1")[-1]
            assert pid == serve.pid
        serve.stop(WAIT)
        stopping = manager.until("STOPPING=1")[-1]
        assert stopping[0] == serve.pid
        assert "STATUS=stopping at seq 1" in stopping[1]
    finally:
        serve.close()


def test_an_abstract_notify_socket_is_reached(bus_config: Config) -> None:
    manager = ServiceManager(f"@saltbus-test-{uuid.uuid4().hex}")
    try:
        with ServeProcess.for_bus(bus_config, env={"NOTIFY_SOCKET": manager.address}) as serve:
            pid, _ = manager.until("READY=1")[-1]
            assert pid == serve.pid
    finally:
        manager.close()


def _command(kind: str, tmp_path: Path) -> list[str]:
    if kind == "react":
        reaction = tmp_path / "noop.sls"
        reaction.write_text("noop:\n  event.send:\n    - tag: notify/seen\n")
        conf = tmp_path / "reactor.conf"
        conf.write_text(f"reactor:\n  - 'notify/*':\n    - {reaction}\n")
        return ["react", "--config", os.fspath(conf)]
    if kind == "exporter":
        return ["exporter", "--metrics", "127.0.0.1:0"]
    return ["http", "--no-auth", "--port", "0"]


def _bus_flags(kind: str, config: Config) -> list[str]:
    # The exporter reads no journal: it has no --data-dir.
    return ["--sock-dir", os.fspath(config.sock_dir)] if kind == "exporter" else bus_flags(config)


@pytest.mark.parametrize("kind", ["react", "http", "exporter"])
def test_react_http_and_exporter_are_ready_once_they_run_and_say_when_they_stop(
    kind: str, manager: ServiceManager, bus_config: Config, tmp_path: Path
) -> None:
    with ServeProcess.for_bus(bus_config):
        proc = subprocess.Popen(
            [os.fspath(SALTBUS), *_command(kind, tmp_path), *_bus_flags(kind, bus_config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=clean_env(NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="200000"),
        )
        try:
            pid, lines = manager.until("READY=1")[-1]
            assert pid == proc.pid
            assert any(line.startswith("STATUS=") for line in lines), lines
            pid, _ = manager.until("WATCHDOG=1")[-1]
            assert pid == proc.pid
            proc.send_signal(signal.SIGTERM)
            pid, _ = manager.until("STOPPING=1")[-1]
            assert pid == proc.pid
            # uvicorn re-raises the SIGTERM it handled once it has shut down; systemd
            # counts an exit by SIGTERM as a clean stop.
            assert proc.wait(WAIT) in (0, -signal.SIGTERM)
        finally:
            proc.kill()
            proc.wait(WAIT)


def test_without_notify_socket_nothing_is_sent() -> None:
    with Notifier.from_env({}) as notifier:
        assert not notifier.enabled
        notifier.ready("serving")  # no socket: nothing to send, no error
        assert notifier.watchdog_interval is None


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "3000000"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4242"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    env: dict[str, str], interval: float | None
) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": "/nonexistent", **env}, pid=4242) as notifier:
        assert notifier.watchdog_interval == interval


def test_a_notify_socket_not_a_unix_address_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}) as notifier:
        assert not notifier.enabled
    assert "vsock:2:1234" in caplog.text


def test_a_missing_service_manager_is_logged_once_and_does_not_raise(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = sock_dir / "gone"
    caplog.set_level(logging.WARNING, "saltbus.notify")
    with Notifier.from_env({"NOTIFY_SOCKET": os.fspath(gone)}) as notifier:
        notifier.ready()
        notifier.status("still here")
    warnings = [r for r in caplog.records if r.name == "saltbus.notify"]
    assert len(warnings) == 1
    assert str(gone) in warnings[0].getMessage()


def test_lines_are_one_datagram_and_newlines_in_a_status_do_not_forge_keys(
    manager: ServiceManager,
) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": manager.address}) as notifier:
        notifier.ready("two\nREADY=0")
    assert manager.receive()[1] == ["READY=1", "STATUS=two READY=0"]
