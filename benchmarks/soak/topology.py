"""What the soak runs, where: the NATS cluster, PostgreSQL, Redis, MariaDB, the
http returner's receiver, a small disk for one node's journal, and per node
`saltbus serve` (federated, returners), `saltbus react` and a `saltbus listen
--resume`; `saltbus http` on the first. The last node's processes are spared
from the process faults, so that their memory and FDs are judged over the run.

Everything lives under one short directory; every port is ephemeral, on
loopback. :meth:`Topology.close` kills whatever still runs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from tests.cluster_support import NatsServer, nats_servers
from tests.returners_support import Postgres, postgres_server
from tests.sinks_support import MariaDB, RedisServer, mariadb_server, redis_server

from benchmarks.soak.processes import ROOT, SALTBUS, Proc, SoakError, soak_env
from saltbus import Config
from saltbus.journal.paths import journal_path

NODES: Final = ("a", "b", "c")
# Its serve, react and listener are never killed or stopped (every other fault
# still reaches it): one life each over the whole run, judged for leaks.
SPARED: Final = "c"
MYSQL_NODE: Final = SPARED  # a MariaDB stopped and started under a serve that lives the hour
HTTP_SINK_NODE: Final = "b"  # the http returner where kill -9 makes its duplicates
TAGS: Final = "soak/"
REACT_TAG: Final = "soak/react/"
SALT_RATE: Final = 20.0  # Salt's firer, events/s (unacked: Salt has no ack)
REDIS_STREAM: Final = "soak:{master_id}"
DISK_MIB: Final = 1024  # a tmpfs takes memory only for what is written


def salt_python() -> str | None:
    """Salt 3007's python (scripts/salt-venvs builds .venvs/salt-3007), if there."""
    path = os.environ.get("SALTBUS_SOAK_SALT_PYTHON") or str(
        ROOT / ".venvs" / "salt-3007" / "bin" / "python"
    )
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Node:
    """One bus: its files, its config, and the saltbus processes on it."""

    name: str
    dir: Path
    config: Config
    config_file: Path
    reactions: Path  # what the reactor's reaction appended, one event id a line
    listened: Path  # `saltbus listen --json` output
    rawfile: Path  # the rawfile_json returner's file
    serve: Proc
    react: Proc
    listener: Proc
    http: Proc | None = None
    http_port: int | None = None

    @property
    def journal(self) -> Path:
        assert self.config.data_dir is not None
        return journal_path(self.config.data_dir, self.config.sock_dir, self.config.socket_prefix)

    def procs(self) -> list[Proc]:
        return [p for p in (self.serve, self.react, self.listener, self.http) if p is not None]


@dataclass
class Topology:
    root: Path
    journal: str  # batch, or none (the --break journal-none run)
    nats: list[NatsServer] = field(default_factory=list)
    pg: Postgres | None = None
    redis: RedisServer | None = None
    mariadb: MariaDB | None = None
    sink: Proc | None = None  # the http returner's receiver
    sink_port: int | None = None
    disk: Path | None = None
    disk_node: str | None = None
    nodes: list[Node] = field(default_factory=list)
    salt_python: str | None = None  # Salt 3007's, for its own clients; None: not run
    salt_listener: Proc | None = None  # Salt's MasterEvent on the first node
    salt_firer: Proc | None = None  # Salt's fire_event on the second node
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def federated(self) -> bool:
        return self.journal != "none"

    def start(self) -> None:
        try:
            if self.federated:
                self.nats = self._stack.enter_context(nats_servers(self.root, 3))
                self.pg = self._stack.enter_context(postgres_server())
                self.redis = self._stack.enter_context(redis_server())
                self.mariadb = self._stack.enter_context(mariadb_server())
                self._sink()
                assert self.sink is not None
                self.sink.start()
                if os.geteuid() == 0:
                    self.disk = self._stack.enter_context(tmpfs(self.root / "disk", DISK_MIB))
                    self.disk_node = NODES[0]
            self.nodes = [self._node(name) for name in NODES]
            self._salt_clients()
            for node in self.nodes:
                node.serve.start()
            for proc in self.procs():
                if not proc.alive():
                    proc.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for proc in self.procs():
            proc.stop()
        self._stack.close()

    def procs(self) -> list[Proc]:
        salt = [p for p in (self.salt_listener, self.salt_firer, self.sink) if p is not None]
        return [p for node in self.nodes for p in node.procs()] + salt

    @property
    def sink_received(self) -> Path:
        """What the http returner's receiver got: one event id a line."""
        return self.root / "http-received.txt"

    def _sink(self) -> None:
        port = free_port()
        self.sink_port = port
        self.sink = Proc(
            "sink-http",  # not "http...": the monitor judges saltbus's roles by prefix
            [
                sys.executable,
                "-m",
                "benchmarks.soak.sink",
                "--port",
                str(port),
                "--out",
                str(self.sink_received),
            ],
            self.root / "sink-http.log",
            ready_check=lambda: port_open(port),
        )

    @property
    def salt_listened(self) -> Path:
        return self.root / "salt-listened.jsonl"

    @property
    def salt_fired(self) -> Path:
        return self.root / "salt-fired.txt"

    def _salt_clients(self) -> None:
        if self.salt_python is None:
            return
        script = str(Path(__file__).with_name("salt_peer.py"))
        env = soak_env()
        env.pop("PYTHONPATH")  # Salt's python imports Salt, never this repository's saltbus
        listen_on, fire_on = self.nodes[0], self.nodes[1]
        self.salt_listener = Proc(
            f"salt-listener-{listen_on.name}",
            [
                self.salt_python,
                script,
                "listen",
                str(listen_on.config.sock_dir),
                str(self.salt_listened),
            ],
            self.root / "salt-listener.log",
            env=env,
        )
        self.salt_firer = Proc(
            f"salt-firer-{fire_on.name}",
            [
                self.salt_python,
                script,
                "fire",
                str(fire_on.config.sock_dir),
                fire_on.name,
                str(SALT_RATE),
                str(self.salt_fired),
            ],
            self.root / "salt-firer.log",
            env=env,
        )

    def _node(self, name: str) -> Node:
        home = self.root / name
        home.mkdir()
        on_disk = self.disk is not None and name == self.disk_node
        data_dir = (self.disk if on_disk and self.disk else home) / f"d{name}"
        settings: dict[str, Any] = {
            "sock_dir": str(home / "s"),
            "data_dir": str(data_dir),
            "journal": self.journal,
        }
        rawfile = home / "events.jsonl"
        if self.federated:
            assert self.pg is not None and self.redis is not None
            assert self.mariadb is not None and self.sink_port is not None
            settings["cluster"] = {
                "servers": [s.url for s in self.nats],
                "node_name": name,
                "export": [TAGS],
                "import": [TAGS],
                "replicas": 3,
            }
            returners = ["rawfile_json", "pgjsonb", "redis_stream"]
            returners += ["mysql"] if name == MYSQL_NODE else []
            returners += ["http"] if name == HTTP_SINK_NODE else []
            settings["event_return"] = returners
            settings["event_return_queue"] = 100
            settings["event_return_queue_max_seconds"] = 0.5
            settings["event_return_whitelist"] = [f"{TAGS}*"]
            settings["event_return_retry_max_seconds"] = 2
            settings["returner_options"] = {
                "rawfile_json": {"filename": str(rawfile)},
                "pgjsonb": self.pg.options(master_id=name),
                "redis_stream": {
                    "port": self.redis.port,
                    "stream": REDIS_STREAM,
                    "maxlen": 0,
                    "master_id": name,
                },
            }
            if name == MYSQL_NODE:
                settings["returner_options"]["mysql"] = self.mariadb.options(master_id=name)
            if name == HTTP_SINK_NODE:
                settings["returner_options"]["http"] = {
                    "url": f"http://127.0.0.1:{self.sink_port}/bulk",
                    "master_id": name,
                    "timeout": 5,
                    "dead_letter": str(home / "http-dead-letter.jsonl"),
                }
        config_file = home / "serve.yaml"
        config_file.write_text(yaml.safe_dump(settings))
        config = Config.load(config_file, env={})
        reactions = home / "reactions.txt"
        react_file = home / "react.yaml"
        (home / "record.sls").write_text(
            "record:\n  python:\n    - function: benchmarks.soak.reaction:record\n"
            f"    - kwargs: {{path: {str(reactions)!r}}}\n"
        )
        react_settings = {**settings, "reactor": [{f"{REACT_TAG}*": [str(home / "record.sls")]}]}
        react_file.write_text(yaml.safe_dump(react_settings))
        saltbus = os.fspath(SALTBUS)
        serve = Proc(
            f"serve-{name}",
            [saltbus, "serve", "--config", str(config_file)],
            home / "serve.log",
            ready="Ctrl-C to stop",
        )
        react = Proc(
            f"react-{name}",
            [saltbus, "react", "--config", str(react_file)],
            home / "react.log",
            ready="running on the",
        )
        listened = home / "listened.jsonl"
        listener = Proc(
            f"listener-{name}",
            [
                saltbus,
                "listen",
                "--config",
                str(config_file),
                "--tag",
                TAGS,
                "--json",
                "--resume",
                f"soak-{name}",
            ],
            home / "listener.log",
            stdout=listened,
        )
        node = Node(
            name, home, config, config_file, reactions, listened, rawfile, serve, react, listener
        )
        if name == NODES[0]:
            port = free_port()
            node.http_port = port
            node.http = Proc(
                "http",
                [
                    saltbus,
                    "http",
                    "--config",
                    str(config_file),
                    "--no-auth",
                    "--port",
                    str(port),
                    "--heartbeat",
                    "2",
                    "--no-access-log",
                ],
                home / "http.log",
                ready_check=lambda: port_open(port),
            )
        return node


@contextlib.contextmanager
def tmpfs(mount: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs at ``mount`` (root only, as tests/disk_support.py), unmounted after."""
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SoakError(f"cannot mount a tmpfs at {mount}: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
