"""Real servers for the sink returners' tests (Debian's redis-server, mariadbd),
each in a fresh directory on an ephemeral loopback port, stopped by pid; and
firing many events through `saltbus serve` with one acknowledgement."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from saltbus import Config, Sender
from tests.returners_support import free_port

WAIT = 30.0


class Fired:
    """Events fired as ``{"n": 1, 2, ...}``; the last seq acknowledged."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.count = 0
        self.last_seq = 0

    def fire(self, count: int, tag: str = "app/evt") -> None:
        """``count`` events; all journaled on return (one connection keeps
        order, and the last is acknowledged)."""
        with Sender(self.config) as sender:
            for left in range(count, 0, -1):
                self.count += 1
                sent = sender.fire(tag, {"n": self.count}, timeout=5, ack=left == 1)
            assert sent.seq is not None
            self.last_seq = sent.seq


@dataclass
class Daemon:
    """A server process of a test, stopped by its pid."""

    root: Path
    port: int
    command: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.root / "log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.root
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(WAIT)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(WAIT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def wait_for(ready: Callable[[], object], daemon: Daemon, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if ready():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if daemon.process is not None and daemon.process.poll() is not None:
            raise AssertionError(f"{what} exited: {daemon.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not start: {daemon.log()}")
        time.sleep(0.1)


def gaps(seqs: list[int]) -> str:
    """What is wrong with events received as ``seqs`` (first arrivals): the
    seqs missing between the first and the last, and where order breaks."""
    missing = sorted(set(range(min(seqs), max(seqs) + 1)) - set(seqs))
    back = [(a, b) for a, b in itertools.pairwise(seqs) if b < a]
    return f"{len(seqs)} events, {len(missing)} missing {missing[:20]}, out of order {back[:5]}"


# -- Redis ------------------------------------------------------------------


class RedisServer(Daemon):
    """redis-server with an append-only file fsynced always: a restart keeps every entry."""

    def start(self, *options: str, ready: bool = True) -> None:
        """Start with the append-only settings and ``options``; with ``ready``,
        wait until it answers PING (after loading its data)."""
        import redis  # noqa: PLC0415

        self.command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.root),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            *options,
        ]
        super().start()
        if not ready:
            return
        client = redis.Redis(port=self.port, socket_timeout=2)
        try:
            wait_for(client.ping, self, "redis-server")
        finally:
            client.close()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    root = Path(tempfile.mkdtemp(prefix="sbredis-"))
    server = RedisServer(root, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- MariaDB ----------------------------------------------------------------

MYSQL_USER = "salt"
MYSQL_PASSWORD = "sb-test-pw"
MYSQL_DB = "salt"


class MariaDB(Daemon):
    """mariadbd on its own datadir and socket; a `salt` user and database."""

    @property
    def socket(self) -> Path:
        return self.root / "sock"

    def options(self, **extra: object) -> dict[str, object]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": MYSQL_USER,
            "pass": MYSQL_PASSWORD,
            "db": MYSQL_DB,
            "connect_timeout": 2,
            **extra,
        }

    def start(self) -> None:
        self.command = [
            "mariadbd",
            "--no-defaults",
            f"--datadir={self.root / 'data'}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.root / 'pid'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            *(["--user=root"] if os.geteuid() == 0 else []),
        ]
        super().start()
        wait_for(lambda: self.connect(root=True).close() is None, self, "mariadbd")

    def connect(self, *, root: bool = False) -> Any:
        import pymysql  # noqa: PLC0415

        if root:
            return pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=MYSQL_USER,
            password=MYSQL_PASSWORD,
            database=MYSQL_DB,
            autocommit=True,
        )


@contextlib.contextmanager
def mariadb_server() -> Iterator[MariaDB]:
    root = Path(tempfile.mkdtemp(prefix="sbmy-"))
    server = MariaDB(root, free_port())
    try:
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={root / 'data'}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                *(["--user=root"] if os.geteuid() == 0 else []),
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )
        server.start()
        conn = server.connect(root=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {MYSQL_DB}")
                cur.execute(
                    f"CREATE USER '{MYSQL_USER}'@'127.0.0.1' IDENTIFIED BY '{MYSQL_PASSWORD}'"
                )
                cur.execute(f"GRANT ALL ON {MYSQL_DB}.* TO '{MYSQL_USER}'@'127.0.0.1'")
        finally:
            conn.close()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- rsyslog ----------------------------------------------------------------


class Rsyslog(Daemon):
    """rsyslogd in the foreground, TCP and UDP on loopback and a datagram
    socket at ``socket`` (as /dev/log); what it receives goes to ``out`` as
    ``MSGID STRUCTURED-DATA MSG`` lines."""

    udp_port: int = 0

    @property
    def out(self) -> Path:
        return self.root / "out.log"

    @property
    def socket(self) -> Path:
        return self.root / "log"

    def start(self) -> None:
        conf = self.root / "rsyslog.conf"
        conf.write_text(
            f'global(workDirectory="{self.root}" maxMessageSize="64k")\n'
            'module(load="imtcp")\nmodule(load="imudp")\n'
            'module(load="imuxsock" SysSock.Use="off")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}")\n'
            f'input(type="imudp" address="127.0.0.1" port="{self.udp_port}" rcvBufSize="8m")\n'
            # The message's own header, as a syslog daemon reads a remote one.
            f'input(type="imuxsock" Socket="{self.socket}" UseSpecialParser="off" '
            'ParseHostname="on" UseSysTimeStamp="off")\n'
            'template(name="sd" type="string" string="%msgid% %structured-data% %msg%\\n")\n'
            f'action(type="omfile" file="{self.out}" template="sd")\n'
        )
        self.command = ["rsyslogd", "-n", "-f", str(conf), "-i", str(self.root / "pid")]
        super().start()
        wait_for(lambda: _listening(self.port) and self.socket.exists(), self, "rsyslogd")


def _listening(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def rsyslog_server() -> Iterator[Rsyslog]:
    root = Path(tempfile.mkdtemp(prefix="sbsys-"))
    server = Rsyslog(root, free_port())
    server.udp_port = free_port()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- mosquitto --------------------------------------------------------------

MQTT_USER = "saltbus"
MQTT_PASSWORD = "sb-test-pw"


class Mosquitto(Daemon):
    """mosquitto on loopback, with a password file (no anonymous clients) and
    persistence (sessions and their queued messages outlive a restart)."""

    def start(self) -> None:
        conf = self.root / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {self.root / 'passwd'}\n"
            f"persistence true\npersistence_location {self.root}/\n"
            "max_inflight_messages 0\nmax_queued_messages 100000\n"
            # As root it would become the mosquitto user, who cannot read this directory.
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.command = ["mosquitto", "-c", str(conf)]
        super().start()
        wait_for(lambda: _listening(self.port), self, "mosquitto")


class Subscriber:
    """A real MQTT client subscribed (QoS 1) to ``topic``, keeping what arrives.
    With ``client_id``, a persistent session (clean_session false) that
    reconnects by itself: the broker keeps its messages while it is away."""

    def __init__(self, port: int, topic: str, client_id: str | None = None) -> None:
        import threading  # noqa: PLC0415

        import paho.mqtt.client as mqtt  # noqa: PLC0415

        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._running.set()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or "sbtest-sub",
            clean_session=client_id is None,
        )
        self.client.reconnect_delay_set(0.1, 1)
        self.client.username_pw_set(MQTT_USER, MQTT_PASSWORD)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._got
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(WAIT), "the test's subscriber could not subscribe"

    def _got(self, client: Any, userdata: Any, message: Any) -> None:
        # Paused, the client reads nothing more: the broker keeps the rest queued.
        self._running.wait(2 * WAIT)
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def pause(self) -> None:
        """Hold the next message unacknowledged until resume(): the client
        stays connected but takes nothing more (a slow subscriber)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def payloads(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.resume()
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def mosquitto_server() -> Iterator[Mosquitto]:
    root = Path(tempfile.mkdtemp(prefix="sbmq-"))
    server = Mosquitto(root, free_port())
    try:
        subprocess.run(
            ["mosquitto_passwd", "-c", "-b", str(root / "passwd"), MQTT_USER, MQTT_PASSWORD],
            capture_output=True,
            check=True,
            timeout=30,
        )
        os.chmod(root / "passwd", 0o600)
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
