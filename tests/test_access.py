"""Access control (saltbus.server.access): file modes, peer credentials checked
on every connection, the tcp-mode secret, and connection limits.

Tests run as root; the other user is `nobody`, running Debian's system Python
(root's pyenv is not readable by nobody) with a world-readable copy of the
saltbus package. Each refusal is asserted on both sides: the client's error
and the daemon's log line.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import saltbus
from saltbus import AccessDeniedError, Config, Listener, Sender
from saltbus.control import Refused, decode_control
from saltbus.server import EmbeddedPublisher
from saltbus.server.access import AccessPolicy, PeerCredentials
from saltbus.wire import FrameDecoder, encode_frame, pack_body
from tests.serve_support import ServeProcess

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
WAIT = 20


@pytest.fixture(scope="module")
def nobody_pythonpath() -> Iterator[Path]:
    """A copy of the saltbus package that `nobody` can read (directly under the
    system temporary directory, which every user can traverse)."""
    root = Path(tempfile.mkdtemp(prefix="sb-src-"))
    try:
        shutil.copytree(Path(saltbus.__file__).parent, root / "saltbus")
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_as_nobody(
    code: str, pythonpath: Path, group: int | None = None
) -> subprocess.CompletedProcess[str]:
    groups = ["--groups", str(group)] if group is not None else ["--clear-groups"]
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            *groups,
            SYSTEM_PYTHON,
            "-c",
            textwrap.dedent(code),
        ],
        env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def client_code(config: Config, action: str) -> str:
    return f"""
        import sys
        from saltbus import Config, Listener, Sender, AccessDeniedError
        config = Config.load(env={{}}, overrides={{
            "sock_dir": {str(config.sock_dir)!r}, "data_dir": "/nonexistent",
            "ipc_mode": {config.ipc_mode!r},
            "tcp_master_pub_port": {config.tcp_master_pub_port},
            "tcp_master_pull_port": {config.tcp_master_pull_port},
        }})
        try:
            {action}
        except AccessDeniedError as exc:
            print("DENIED", exc)
            sys.exit(3)
        print("OK")
    """


FIRE = 'Sender(config).fire("from/nobody", {"who": "nobody"}, timeout=2)'
LISTEN = "Listener(config).connect(timeout=2)"


@pytest.fixture
def opened_by_hand(bus_config: Config) -> Iterator[Config]:
    """A bus whose directory and socket modes were loosened by hand."""
    with EmbeddedPublisher(bus_config):
        bus_config.sock_dir.parent.chmod(0o711)
        bus_config.sock_dir.chmod(0o777)
        for path in (bus_config.pub_address, bus_config.pull_address, bus_config.lock_path):
            Path(str(path)).chmod(0o666)
        yield bus_config


def test_default_modes_keep_other_users_out(
    bus_config: Config, publisher: EmbeddedPublisher, nobody_pythonpath: Path
):
    assert stat.S_IMODE(bus_config.sock_dir.stat().st_mode) == 0o700
    for path in (bus_config.pub_address, bus_config.pull_address):
        assert stat.S_IMODE(Path(str(path)).stat().st_mode) == 0o600
    result = run_as_nobody(client_code(bus_config, FIRE), nobody_pythonpath)
    assert result.returncode == 3, result.stderr
    assert "permission denied" in result.stdout


def test_loosened_modes_are_not_enough(
    opened_by_hand: Config, nobody_pythonpath: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, "saltbus.server")
    for action, kind in ((FIRE, "pull"), (LISTEN, "publish")):
        result = run_as_nobody(client_code(opened_by_hand, action), nobody_pythonpath)
        assert result.returncode == 3, (result.stdout, result.stderr)
        assert "refused" in result.stdout and "not the bus's user" in result.stdout
        assert any(
            f"refused {kind} connection from pid" in r.message and f"uid {NOBODY}" in r.message
            for r in caplog.records
        ), [r.message for r in caplog.records]


def test_sock_group_lets_that_group_in(bus_config: Config, nobody_pythonpath: Path):
    config = bus_config.replace(sock_group="nogroup")
    config.sock_dir.parent.chmod(0o711)  # the test's own directory, above sock_dir
    with EmbeddedPublisher(config), Listener(config, "from/") as listener:
        assert stat.S_IMODE(config.sock_dir.stat().st_mode) == 0o750
        assert config.sock_dir.stat().st_gid == NOBODY
        for path in (config.pub_address, config.pull_address):
            info = Path(str(path)).stat()
            assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == NOBODY
        result = run_as_nobody(client_code(config, FIRE), nobody_pythonpath, group=NOBODY)
        assert result.returncode == 0, (result.stdout, result.stderr)
        event = listener.receive(timeout=WAIT)
    assert event is not None and event.data["who"] == "nobody"


def test_root_is_refused_unless_allowed(bus_config: Config, monkeypatch: pytest.MonkeyPatch):
    policy = AccessPolicy(bus_config)
    monkeypatch.setattr(policy, "uid", 1000)  # as if the daemon ran as another user
    root = PeerCredentials(pid=1, uid=0, gid=0)
    monkeypatch.setattr("saltbus.server.access.peer_credentials", lambda _sock: root)
    assert "root is not allowed" in (policy.refusal(None) or "")
    allowed = AccessPolicy(bus_config.replace(allow_root=True))
    monkeypatch.setattr(allowed, "uid", 1000)
    assert allowed.refusal(None) is None


def _tcp_config(bus_config: Config, **extra: object) -> Config:
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    return bus_config.replace(
        ipc_mode="tcp", tcp_master_pub_port=ports[0], tcp_master_pull_port=ports[1], **extra
    )


def _refusal_from(address: tuple[str, int], first: bytes) -> str:
    with socket.create_connection(address, timeout=WAIT) as raw:
        raw.sendall(first)
        decoder = FrameDecoder()
        while True:
            data = raw.recv(65536)
            assert data, "closed without a Refused frame"
            decoder.receive_data(data)
            for frame in decoder:
                message = decode_control(frame)
                assert isinstance(message, Refused)
                return message.reason


def test_tcp_needs_the_secret(bus_config: Config, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, "saltbus.server")
    config = _tcp_config(bus_config)
    with EmbeddedPublisher(config), Listener(config, "t/") as listener, Sender(config) as sender:
        assert stat.S_IMODE(config.secret_path.stat().st_mode) == 0o600
        assert sender.fire("t/ok", {}, ack=True).seq == 1
        assert listener.receive(timeout=WAIT) is not None
        # A client without the secret (as Salt's are) is refused and told why.
        salt_like = encode_frame(pack_body("t/evil", {}))
        assert "no secret" in _refusal_from(config.pull_address, salt_like)  # type: ignore[arg-type]
        assert "no secret" in _refusal_from(config.pub_address, salt_like)  # type: ignore[arg-type]
    assert not config.secret_path.exists()
    assert any("refused pull connection from 127.0.0.1:" in r.message for r in caplog.records)


def test_tcp_wrong_secret_is_refused(bus_config: Config):
    config = _tcp_config(bus_config)
    with EmbeddedPublisher(config):
        config.secret_path.write_text("not-the-secret\n")
        with pytest.raises(AccessDeniedError, match="wrong secret"), Sender(config) as sender:
            sender.fire("t/x", {}, timeout=2)


def test_tcp_unauthenticated_opt_in_admits_salt_clients(bus_config: Config):
    config = _tcp_config(bus_config, tcp_allow_unauthenticated=True)
    with EmbeddedPublisher(config), Listener(config, "u/") as listener:
        assert not config.secret_path.exists()
        with socket.create_connection(config.pull_address, timeout=WAIT) as raw:  # type: ignore[arg-type]
            raw.sendall(encode_frame(pack_body("u/salt", {"n": 1})))
        event = listener.receive(timeout=WAIT)
    assert event is not None and event.tag == "u/salt"


def test_connection_limit(bus_config: Config, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, "saltbus.server")
    config = bus_config.replace(max_connections=3)
    with EmbeddedPublisher(config) as bus:
        held = [Listener(config) for _ in range(3)]
        for listener in held:
            listener.connect(timeout=2)
        with pytest.raises(AccessDeniedError, match="too many connections"):
            Listener(config, reconnect=False).connect(timeout=2)
        for listener in held:
            listener.close()
        deadline = time.monotonic() + WAIT
        while bus.subscriber_stats() and time.monotonic() < deadline:
            time.sleep(0.01)
        with Listener(config) as again:  # room again once they left
            assert again.connected
    assert any("too many connections" in r.message for r in caplog.records)


def test_half_a_frame_then_silence_is_dropped(bus_config: Config, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, "saltbus.server")
    config = bus_config.replace(partial_frame_timeout=0.5)
    with EmbeddedPublisher(config), Listener(config) as listener, Sender(config) as sender:
        stalled = socket.socket(socket.AF_UNIX)
        stalled.connect(str(config.pull_address))
        frame = encode_frame(pack_body("half/frame", {"n": 1}))
        stalled.sendall(frame[: len(frame) // 2])
        stalled.settimeout(WAIT)
        assert stalled.recv(1) == b""  # closed by the publisher
        stalled.close()
        sender.fire("after/stall", {})
        event = listener.receive(timeout=WAIT)
    assert event is not None and event.tag == "after/stall"
    assert any("half a frame" in r.message for r in caplog.records)


def test_socket_owned_by_another_user_is_checked_by_the_sender(
    opened_by_hand: Config, nobody_pythonpath: Path
):
    # The refusal reaches a sender even though the publisher never reads its events.
    code = client_code(opened_by_hand, FIRE)
    started = time.monotonic()
    result = run_as_nobody(code, nobody_pythonpath)
    assert result.returncode == 3 and "DENIED" in result.stdout
    assert time.monotonic() - started < WAIT
    assert os.geteuid() == 0


def test_serve_warns_when_tcp_is_open_to_everyone(bus_config: Config, tmp_path: Path):
    config = _tcp_config(bus_config)
    config_file = tmp_path / "bus.yaml"
    config_file.write_text(
        f"ipc_mode: tcp\ntcp_master_pub_port: {config.tcp_master_pub_port}\n"
        f"tcp_master_pull_port: {config.tcp_master_pull_port}\n"
    )
    with ServeProcess.for_bus(
        config, "--config", str(config_file), "--tcp-allow-unauthenticated"
    ) as proc:
        proc.wait_for_log("any local user", WAIT)
        line = next(line for line in proc.log.splitlines() if "serving" not in line)
        assert "WARNING" in line and "any local user" in line
