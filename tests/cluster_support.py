"""Real processes for the federation tests: nats-server (alone or three in a
JetStream cluster) and `saltbus serve --config` nodes, on loopback, with
ephemeral ports and their files under one short temporary directory.

Each class starts its process and stops it (or kills it) explicitly; the
context managers stop whatever is still running. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import yaml

from saltbus import Config, Sender
from saltbus.client.admin import fetch_stats
from saltbus.cluster import ORIGIN_KEY
from saltbus.errors import SaltbusError
from saltbus.journal.paths import journal_path
from saltbus.journal.store import Journal
from saltbus.journal.tail import decode, tail_path
from saltbus.wire import unpack_body
from tests.serve_support import ServeProcess
from tests.waiting import wait_until

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
# The machine is small and shared: generous, but every wait ends.
WAIT = 60.0
POLL = 0.1  # seconds between two looks: stats and the journal are read from another process
SETTLE = 1.5  # after the expected events arrived, how long to look for extra ones


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A short directory (unix socket paths stay under 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sbc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One nats-server with JetStream. Its client port is chosen by the
    server the first time and kept for restarts (the store dir is kept too)."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.port = -1
        self.cluster_port: int | None = None
        self.routes: list[int] = []
        self.advertise = True
        self.max_payload: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "127.0.0.1:{self.port}"',
            f'ports_file_dir: "{self.dir}"',
            f'jetstream {{ store_dir: "{self.dir / "store"}" }}',
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            lines.append(
                f'cluster {{ name: "sbtest", listen: "127.0.0.1:{self.cluster_port}", '
                f"routes: [{routes}], no_advertise: {str(not self.advertise).lower()} }}"
            )
        path = self.dir / "nats.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        for old in self.dir.glob("*.ports"):
            old.unlink()
        config = self._write_config()
        with (self.dir / "log").open("ab") as log:
            self.proc = subprocess.Popen(
                [NATS_SERVER, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        ports = self.dir / f"nats-server_{self.proc.pid}.ports"
        wait_until(
            lambda: ports.exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
            f"nats-server {self.name} to write its ports file",
            WAIT,
            POLL,
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"nats-server {self.name} exited:\n{self.log()}")
        # The file may be seen before it is written whole.
        wait_until(lambda: _ports(ports) is not None, f"{ports} written whole", 10.0, POLL)
        url = (_ports(ports) or {})["nats"][0]
        self.port = int(url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(WAIT)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "log").read_text(errors="replace")[-4000:]
        return ""


def _ports(path: Path) -> dict[str, Any] | None:
    try:
        ports = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return ports if isinstance(ports, dict) and ports.get("nats") else None


@contextlib.contextmanager
def nats_servers(
    root: Path, count: int, *, advertise: bool = True, max_payload: int | None = None
) -> Iterator[list[NatsServer]]:
    """One nats-server, or ``count`` of them in one JetStream cluster, ready.
    Without ``advertise``, clients do not learn of the other servers (so a
    client stays cut off when its own server stops)."""
    servers = [NatsServer(root, f"n{i + 1}") for i in range(count)]
    for server in servers:
        server.max_payload = max_payload
    try:
        if count > 1:
            ports = [free_port() for _ in servers]
            for server, port in zip(servers, ports, strict=True):
                server.advertise = advertise
                server.cluster_port = port
                server.routes = [p for p in ports if p != port]
        for server in servers:
            server.start()
        asyncio.run(_wait_jetstream([s.url for s in servers], count))
        yield servers
    finally:
        for server in servers:
            server.kill()


async def _wait_jetstream(urls: Sequence[str], replicas: int) -> None:
    """Until a stream with ``replicas`` can be made (the meta leader is elected)."""
    deadline = time.monotonic() + WAIT
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(servers=list(urls), connect_timeout=2)
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.2)
            continue
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(name="PROBE", subjects=["probe.>"], num_replicas=replicas)
            await js.delete_stream("PROBE")
            return
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.3)
        finally:
            await nc.close()
    raise AssertionError(f"JetStream not ready within {WAIT} s: {last!r}")


async def stream_leader(urls: Sequence[str], stream: str = "SALTBUS") -> str:
    """The name of the server leading ``stream`` (waiting for an election)."""
    deadline = time.monotonic() + WAIT
    nc = await nats.connect(servers=list(urls))
    try:
        while True:
            try:
                info = await nc.jetstream(timeout=5).stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return info.cluster.leader
            except Exception:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


class Node:
    """A saltbus bus run by `saltbus serve --config FILE` with a cluster: section."""

    def __init__(self, root: Path, name: str, servers: Sequence[str], **cluster: Any) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        section = {"servers": list(servers), "node_name": name, **cluster}
        settings = {
            "sock_dir": str(self.dir / "s"),
            "data_dir": str(self.dir / "d"),
            "cluster": section,
        }
        self.config_file = self.dir / "saltbus.yaml"
        self.config_file.write_text(yaml.safe_dump(settings))
        self.config = Config.load(self.config_file, env={})
        assert self.config.data_dir is not None
        self.journal = journal_path(
            self.config.data_dir, self.config.sock_dir, self.config.socket_prefix
        )
        self.proc: ServeProcess | None = None
        self._sender: Sender | None = None

    def start(self, linked: bool = True) -> None:
        assert self.proc is None or not self.proc.alive()
        if self.proc is not None:
            self.proc.close()
        # The log is appended to: a restarted node's keeps every run's lines.
        self.proc = ServeProcess(
            self.config, "--config", str(self.config_file), log=self.dir / "log"
        )
        try:
            self.proc.wait_ready(WAIT)
        except AssertionError:
            raise AssertionError(f"node {self.name} did not serve:\n{self.log()}") from None
        if linked:
            self.wait_linked()

    def stats(self) -> dict[str, Any]:
        return fetch_stats(self.config, 5.0)

    def wait_linked(self) -> None:
        def linked() -> bool:
            try:
                return bool(self.stats()["cluster"]["state"] == "linked")
            except (SaltbusError, KeyError):
                return False

        try:
            wait_until(linked, f"node {self.name} to link", WAIT, POLL)
        except AssertionError:
            raise AssertionError(f"node {self.name} not linked:\n{self.log()}") from None

    def stop(self) -> None:
        self.close_sender()
        if self.proc is not None:
            try:
                if self.proc.alive():
                    self.proc.stop(WAIT)
            finally:
                self.proc.close()

    def kill(self) -> None:
        self.close_sender()
        if self.proc is not None:
            self.proc.close()

    def fire(self, tag: str, data: dict[str, Any]) -> int:
        """Fire one event, acknowledged: returns its local seq."""
        if self._sender is None:
            self._sender = Sender(self.config)
        seq = self._sender.fire(tag, data, timeout=10.0, ack=True).seq
        assert seq is not None
        return seq

    def close_sender(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def events(self) -> list[tuple[int, str, dict[str, Any]]]:
        """Everything this bus journaled: (seq, tag, data). After a kill, the
        journal's tail may hold events SQLite has not indexed yet (the next
        start indexes them): they are journaled too."""
        if not self.journal.exists():
            return []
        with Journal.open(self.journal, readonly=True) as journal:
            records = list(journal.iter_read())
            last = journal.last_seq()
        tail = tail_path(self.journal)
        if tail.exists():
            records += [r for r in decode(tail.read_bytes(), tail).records if r.seq > last]
        return [(r.seq, *unpack_body(r.body)) for r in records]

    def imported(self) -> list[tuple[str, int, str, dict[str, Any]]]:
        """The events delivered here from other nodes, in local order:
        (origin node, origin seq, tag, data)."""
        return [
            (data[ORIGIN_KEY]["node"], data[ORIGIN_KEY]["seq"], tag, data)
            for _seq, tag, data in self.events()
            if ORIGIN_KEY in data
        ]

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "log").read_text(errors="replace")[-6000:]
        return ""


@contextlib.contextmanager
def running(nodes: Sequence[Node]) -> Iterator[Sequence[Node]]:
    """Start the nodes (then wait for all to link); kill what still runs at the end."""
    try:
        for node in nodes:
            node.start(linked=False)
        for node in nodes:
            node.wait_linked()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


class Hits:
    """What reactions POSTed to a loopback HTTP server: each JSON body's
    ``tag`` and ``node`` (the node whose reactor ran it) and when it arrived
    (``time.monotonic()`` of this process)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._seen: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()

    def add(self, tag: str, node: str) -> None:
        with self._lock:
            self._seen.append((tag, node, time.monotonic()))

    @property
    def seen(self) -> list[tuple[str, str, float]]:
        with self._lock:
            return list(self._seen)

    def tags(self) -> set[str]:
        return {tag for tag, _, _ in self.seen}


@contextlib.contextmanager
def hit_server() -> Iterator[Hits]:
    """A loopback HTTP server (ephemeral port) recording the reactions' POSTs."""
    hits: Hits

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            except ValueError:  # cut short: its sender was killed mid-request
                self.send_response(400)
            else:
                hits.add(str(body["tag"]), str(body["node"]))
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hits = Hits(f"http://127.0.0.1:{server.server_address[1]}/")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


def with_post_reaction(node: Node, url: str, **settings: Any) -> None:
    """The node's config gets a reactor (with ``settings``) whose reaction to
    ``app/*`` POSTs ``{tag, node}`` to ``url``."""
    reaction = node.dir / "post.sls"
    reaction.write_text(
        "post:\n  http.post:\n"
        f"    - url: {url}\n"
        f"    - json: {{tag: '{{{{ tag }}}}', node: {node.name}}}\n"
    )
    config = yaml.safe_load(node.config_file.read_text())
    config.update(reactor=[{"app/*": [str(reaction)]}], **settings)
    node.config_file.write_text(yaml.safe_dump(config))


def wait_app_events(node: Node, count: int, timeout: float = WAIT * 3) -> None:
    """Until ``node`` journaled ``count`` ``app/*`` events, its own and imported
    ones (the reactors' ret events, imported too, are not counted)."""

    def app_events() -> int:
        return sum(1 for _, tag, _ in node.events() if tag.startswith("app/"))

    try:
        wait_until(lambda: app_events() >= count, f"{count} events on {node.name}", timeout, POLL)
    except AssertionError:
        raise AssertionError(
            f"node {node.name}: {app_events()} of {count} events; stats "
            f"{_stats_or_error(node)}\n{node.log()}"
        ) from None


def wait_imported(node: Node, count: int, timeout: float = WAIT * 3) -> None:
    """Until ``node`` has at least ``count`` imported events, then a little
    longer, so that a duplicate arriving late is seen too."""
    try:
        wait_until(
            lambda: len(node.imported()) >= count, f"{count} events on {node.name}", timeout, POLL
        )
    except AssertionError:
        got = len(node.imported())
        raise AssertionError(
            f"node {node.name}: {got} of {count} events imported; stats "
            f"{_stats_or_error(node)}\n{node.log()}"
        ) from None
    time.sleep(SETTLE)


def _stats_or_error(node: Node) -> Any:
    try:
        return node.stats().get("cluster")
    except SaltbusError as exc:
        return repr(exc)
