"""A real ``salt-master`` and ``salt-minion`` (or more) of one Salt generation, for tests.

Both run from the generation's venv (``scripts/salt-venvs``) with a temporary root_dir,
ephemeral loopback ports, ``auto_accept`` and the current user, and are stopped by pid.
Start-up waits until the minion's ``salt/minion/<id>/start`` event is on the master's bus,
so the minion answers jobs once the context manager yields.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from saltbus import Config, Listener
from tests.interop.salt_peer_client import salt_python

START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
MINION_ID = "saltbus-minion"


API_USER = "saltbus"
API_PASSWORD = "anything"  # Salt's `auto` eauth accepts any password


@dataclass(frozen=True)
class SaltMaster:
    version: str
    root: Path
    config_file: Path
    sock_dir: Path
    minion_id: str
    python: Path
    api_url: str | None = None
    # Every minion's process, by id (the first is minion_id).
    minions: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def stop_minion(self, minion_id: str) -> None:
        """Stop one minion (its key stays accepted: the master still targets it)."""
        _stop(self.minions[minion_id])

    def bus_config(self, **overrides: object) -> Config:
        """saltbus's view of the master's bus (Salt's own publisher serves it)."""
        values = {"sock_dir": self.sock_dir, "salt_version": self.version, "journal": "none"}
        values.update(overrides)
        return Config.load(env={}, overrides=values)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # Salt's daemons fork workers into their own process group (start_new_session).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
    # Workers left behind by a daemon that exited first.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def salt_master_and_minion(
    version: str, *, salt_api: bool = False, more_minions: int = 0
) -> Iterator[SaltMaster]:
    """With ``salt_api``, salt-api runs too (rest_tornado without TLS, the `auto`
    eauth for API_USER with every right), its /run at ``SaltMaster.api_url``.
    ``more_minions``: minions besides MINION_ID, named ``MINION_ID-2``, ``-3``..."""
    python = salt_python(version)
    bin_dir = python.parent
    # Unix socket paths must stay short: a directory directly under /tmp.
    root = Path(tempfile.mkdtemp(prefix="sm-", dir="/tmp"))
    publish_port, ret_port, api_port = _free_ports(3)
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    common = {
        "root_dir": str(root),
        "user": user,
        "log_level_logfile": "info",
        "enable_fqdns_grains": False,
    }
    master = {
        **common,
        "interface": "127.0.0.1",
        "publish_port": publish_port,
        "ret_port": ret_port,
        "sock_dir": str(root / "m"),
        "pki_dir": str(root / "pki" / "master"),
        "cachedir": str(root / "cache" / "master"),
        "log_file": str(root / "master.log"),
        "pidfile": str(root / "master.pid"),
        "auto_accept": True,
        "file_roots": {"base": [str(root / "srv")]},
        "worker_threads": 2,
    }
    minion = {
        **common,
        "id": MINION_ID,
        "master": "127.0.0.1",
        "master_port": ret_port,
        "publish_port": publish_port,
        "sock_dir": str(root / "n"),
        "pki_dir": str(root / "pki" / "minion"),
        "cachedir": str(root / "cache" / "minion"),
        "log_file": str(root / "minion.log"),
        "pidfile": str(root / "minion.pid"),
        "file_client": "remote",
        "grains_cache": True,
    }
    if salt_api:
        master["rest_tornado"] = {"port": api_port, "address": "127.0.0.1", "disable_ssl": True}
        master["external_auth"] = {"auto": {API_USER: [".*", "@runner", "@wheel", "@jobs"]}}
        master["netapi_enable_clients"] = ["local_async", "runner", "wheel"]
    (root / "srv").mkdir()
    for name, conf in (("master", master), ("minion", minion)):
        (root / name).write_text(yaml.safe_dump(conf))
    # Each further minion has its own config directory (salt-minion -c DIR reads DIR/minion).
    minion_dirs = {MINION_ID: (root, root / "minion.log")}
    for n in range(2, more_minions + 2):
        other = f"{MINION_ID}-{n}"
        conf_dir = root / f"c{n}"
        minion_dirs[other] = (conf_dir, Path(f"{minion['log_file']}{n}"))
        conf_dir.mkdir()
        own = {key: f"{value}{n}" if key in _PER_MINION else value for key, value in minion.items()}
        (conf_dir / "minion").write_text(yaml.safe_dump({**own, "id": other}))
    procs: list[subprocess.Popen[bytes]] = []
    api_url = f"http://127.0.0.1:{api_port}/run" if salt_api else None
    handle = SaltMaster(version, root, root / "master", root / "m", MINION_ID, python, api_url)
    try:
        procs.append(_daemon(bin_dir / "salt-master", root))
        pub = root / "m" / "master_event_pub.ipc"
        deadline = time.monotonic() + START_TIMEOUT
        while not pub.exists():
            _alive(procs[0], root / "master.log", deadline)
            time.sleep(0.1)
        for minion_id, (conf_dir, log) in minion_dirs.items():
            with Listener(handle.bus_config(), f"salt/minion/{minion_id}/start") as listener:
                listener.connect(START_TIMEOUT)
                procs.append(_daemon(bin_dir / "salt-minion", conf_dir))
                handle.minions[minion_id] = procs[-1]
                while listener.receive(1.0) is None:
                    _alive(procs[0], root / "master.log", deadline)
                    _alive(procs[-1], log, deadline)
        if salt_api:
            procs.append(_daemon(bin_dir / "salt-api", root))
            while not _listening(api_port):
                _alive(procs[-1], root / "master.log", deadline)
                time.sleep(0.1)
        yield handle
    finally:
        for proc in reversed(procs):
            _stop(proc)
        subprocess.run(["rm", "-rf", str(root)], check=False)


class LateMaster:
    """A salt-master (no minion) whose config is written before it runs: a
    reaction can be pointed at it while it is down, and the test starts it
    later. Loopback, ephemeral ports, a temporary root_dir; stopped by pid."""

    def __init__(self, version: str) -> None:
        self.python = salt_python(version)
        self.root = Path(tempfile.mkdtemp(prefix="sl-", dir="/tmp"))
        publish_port, self.ret_port = _free_ports(2)
        user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
        conf = {
            "root_dir": str(self.root),
            "user": user,
            "log_level_logfile": "info",
            "interface": "127.0.0.1",
            "publish_port": publish_port,
            "ret_port": self.ret_port,
            "sock_dir": str(self.root / "m"),
            "pki_dir": str(self.root / "pki"),
            "cachedir": str(self.root / "cache"),
            "log_file": str(self.root / "master.log"),
            "pidfile": str(self.root / "master.pid"),
            "worker_threads": 2,
        }
        self.config_file = self.root / "master"
        self.config_file.write_text(yaml.safe_dump(conf))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it; return once its ret_port listens."""
        self.proc = _daemon(self.python.parent / "salt-master", self.root)
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(self.ret_port):
            _alive(self.proc, self.root / "master.log", deadline)
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
        subprocess.run(["rm", "-rf", str(self.root)], check=False)


@contextlib.contextmanager
def late_master(version: str) -> Iterator[LateMaster]:
    master = LateMaster(version)
    try:
        yield master
    finally:
        master.close()


# A further minion's own copy of these (the first minion's path with its number).
_PER_MINION = frozenset(("sock_dir", "pki_dir", "cachedir", "log_file", "pidfile"))


def _daemon(program: Path, root: Path) -> subprocess.Popen[bytes]:
    # What a daemon prints (salt-api's wsgiref prints tracebacks) is kept beside its log.
    with (root / f"{program.name}.out").open("ab") as out:
        return subprocess.Popen(
            [str(program), "-c", str(root), "--log-level", "quiet"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _alive(proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"{proc.args[0]} exited {proc.returncode}: {_log_tail(log)}")
    if time.monotonic() > deadline:
        raise AssertionError(f"{proc.args[0]} not ready in {START_TIMEOUT} s: {_log_tail(log)}")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
