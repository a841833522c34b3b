"""The fault schedule, drawn from the seed, and its injection, one fault at a
time: every kind in a shuffled round, then another round, each with its
target (the processes of a kind taken in turn), how long it lasts and the
pause after it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.cluster_support import stream_leader

from benchmarks.soak.topology import DISK_MIB, SPARED, Topology
from saltbus.client.admin import fetch_stats
from saltbus.config import Config
from saltbus.errors import SaltbusError

KINDS: Final = (
    "serve-kill",
    "react-kill",
    "http-kill",
    "listener-kill",
    "listener-stop",
    "nats-kill",
    "nats-leader-kill",
    "pg-stop",
    "redis-stop",
    "mariadb-stop",
    "disk-full",
    "hostile",
)
# Without a journal, nothing can replay what a killed publisher had queued for
# a listener that was behind: the loss the --break run must show.
BREAK_KINDS: Final = ("serve-kill-behind",)
HOSTILE_GARBAGE: Final = 20  # connections writing random bytes, per socket
HOSTILE_HALF_OPEN: Final = 10  # connections that send a partial frame and hang


@dataclass
class Fault:
    kind: str
    target: str
    hold: float  # seconds the fault lasts
    gap: float  # seconds of calm after it
    start: float = 0.0  # wall clock
    end: float = 0.0
    error: str | None = None

    def describe(self) -> str:
        span = (
            f"{time.strftime('%H:%M:%S', time.localtime(self.start))}+{self.end - self.start:.1f}s"
        )
        return f"{self.kind} {self.target} at {span}" + (
            f" (FAILED: {self.error})" if self.error else ""
        )


def kinds_for(topology: Topology) -> tuple[str, ...]:
    if not topology.federated:
        return BREAK_KINDS
    return tuple(k for k in KINDS if k != "disk-full" or topology.disk is not None)


def schedule(seed: int, kinds: tuple[str, ...], targets: dict[str, list[str]]) -> Iterator[Fault]:
    """Endless: rounds of every kind, shuffled by the seed."""
    rng = random.Random(seed)
    turn = dict.fromkeys(kinds, 0)
    while True:
        order = list(kinds)
        rng.shuffle(order)
        for kind in order:
            names = targets[kind]
            target = names[turn[kind] % len(names)]
            turn[kind] += 1
            hold = (
                rng.uniform(3.0, 8.0)
                if kind in ("listener-stop", "disk-full")
                else rng.uniform(1.0, 4.0)
            )
            yield Fault(kind, target, round(hold, 2), round(rng.uniform(3.0, 6.0), 2))


def targets_of(topology: Topology) -> dict[str, list[str]]:
    """Each kind's targets. The process faults spare SPARED's processes (their
    memory and FDs are judged over the whole run); every other fault, hostile
    connections included, reaches every node."""
    nodes = [n.name for n in topology.nodes]
    killed = [n for n in nodes if n != SPARED]
    return {
        "serve-kill": killed,
        "serve-kill-behind": nodes,
        "react-kill": killed,
        "http-kill": [n.name for n in topology.nodes if n.http is not None and n.name != SPARED],
        "listener-kill": killed,
        "listener-stop": killed,
        "nats-kill": [s.name for s in topology.nats],
        "nats-leader-kill": ["leader"],
        "pg-stop": ["postgres"],
        "redis-stop": ["redis"],
        "mariadb-stop": ["mariadb"],
        "disk-full": [topology.disk_node or "-"],
        # The spared node first: even a short run's one burst is on a node whose
        # processes are judged over the whole run.
        "hostile": [SPARED, *killed],
    }


class Injector:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.nodes = {n.name: n for n in topology.nodes}

    def inject(self, fault: Fault) -> None:
        """Break, wait ``hold``, repair; the fault's times and any failure recorded."""
        fault.start = time.time()
        try:
            self._inject(fault)
        except Exception as exc:  # recorded: the run goes on, the report names it
            fault.error = f"{type(exc).__name__}: {exc}"[:500]
        fault.end = time.time()

    def _inject(self, fault: Fault) -> None:
        kind, hold = fault.kind, fault.hold
        if kind in ("serve-kill", "react-kill", "listener-kill", "http-kill"):
            node = self.nodes[fault.target]
            proc = {
                "serve-kill": node.serve,
                "react-kill": node.react,
                "listener-kill": node.listener,
                "http-kill": node.http,
            }[kind]
            assert proc is not None
            proc.kill9()
            time.sleep(hold)
            proc.start()
            if kind == "serve-kill" and self.topology.federated:
                _wait_linked(node.config)
        elif kind == "serve-kill-behind":
            node = self.nodes[fault.target]
            node.listener.pause()
            time.sleep(1.0)
            node.serve.kill9()
            time.sleep(hold)
            node.serve.start()
            node.listener.resume()
        elif kind == "listener-stop":
            listener = self.nodes[fault.target].listener
            listener.pause()
            time.sleep(hold)
            listener.resume()
        elif kind in ("nats-kill", "nats-leader-kill"):
            servers = {s.name: s for s in self.topology.nats}
            name = fault.target
            if kind == "nats-leader-kill":
                name = asyncio.run(stream_leader([s.url for s in servers.values()]))
                fault.target = f"leader {name}"
            servers[name].kill()
            time.sleep(hold)
            servers[name].start()
        elif kind in ("pg-stop", "redis-stop", "mariadb-stop"):
            server = {
                "pg-stop": self.topology.pg,
                "redis-stop": self.topology.redis,
                "mariadb-stop": self.topology.mariadb,
            }[kind]
            assert server is not None
            server.stop()
            time.sleep(hold)
            server.start()
        elif kind == "disk-full":
            assert self.topology.disk is not None
            with FullDisk(self.topology.disk):
                time.sleep(hold)
        elif kind == "hostile":
            hostile(self.topology, self.nodes[fault.target].name, hold)
        else:  # pragma: no cover - KINDS is closed
            raise ValueError(kind)


def _wait_linked(config: Config) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if fetch_stats(config, 5.0)["cluster"]["state"] == "linked":
                return
        except (SaltbusError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError("node not linked 60 s after its restart")


class FullDisk:
    """The tmpfs shrunk to what it holds, then the last bytes taken: ENOSPC for
    the journal without writing the whole disk's size into memory."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.filler = disk / "filler"

    def __enter__(self) -> FullDisk:
        stat = os.statvfs(self.disk)
        used_kib = (stat.f_blocks - stat.f_bfree) * stat.f_frsize // 1024
        _remount(self.disk, f"{used_kib + 256}k")
        stat = os.statvfs(self.disk)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with contextlib.suppress(OSError):  # full already
                os.write(fd, b"\0" * (stat.f_bavail * stat.f_frsize))
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        self.filler.unlink(missing_ok=True)
        _remount(self.disk, f"{DISK_MIB}m")


def _remount(disk: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(disk)], check=True, capture_output=True
    )


def hostile(topology: Topology, name: str, hold: float) -> None:
    """Garbage on the node's pull and publish sockets (and the HTTP port), and
    half-open connections held for ``hold`` seconds."""
    node = next(n for n in topology.nodes if n.name == name)
    rng = random.Random(f"hostile-{name}-{time.time()}")
    held: list[socket.socket] = []
    addresses = [node.config.pull_address, node.config.pub_address]
    try:
        for address in addresses:
            for n in range(HOSTILE_GARBAGE + HOSTILE_HALF_OPEN):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(2.0)
                try:
                    sock.connect(str(address))
                    if n < HOSTILE_GARBAGE:
                        sock.sendall(rng.randbytes(rng.randint(1, 4096)))
                    else:
                        sock.sendall(b"\x00\x00\x10\x00\x82")  # a frame that never ends
                except OSError:
                    pass
                held.append(sock)
        if node.http_port is not None:
            for n in range(HOSTILE_GARBAGE):
                sock = socket.create_connection(("127.0.0.1", node.http_port), 2.0)
                with contextlib.suppress(OSError):
                    sock.sendall(rng.randbytes(512) if n % 2 else b"GET /events HTTP/1.1\r\nHo")
                held.append(sock)
        time.sleep(hold)
    finally:
        for sock in held:
            sock.close()
