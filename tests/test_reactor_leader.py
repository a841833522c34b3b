"""reactor_scope leader: three `saltbus serve` nodes, each running the reactor,
federated through a real nats-server. One node, elected through a JetStream
key-value lease, reacts to every event of the cluster: each event's reaction
runs exactly once; killed mid-stream, another node takes over and every event is
reacted to at least once (the duplicates are counted and bounded)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from saltbus import Config
from saltbus.event import Event
from saltbus.reactor.leader import Leadership
from tests.cluster_support import (
    WAIT,
    NatsServer,
    Node,
    running,
)
from tests.serve_support import SALTBUS, bus_flags, clean_env
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(600)
TTL = 2.0


class Hits(BaseHTTPRequestHandler):
    """Records each reaction's POST: (tag, node that ran it)."""

    seen: ClassVar[list[tuple[str, str]]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.seen.append((body["tag"], body["node"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hits() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    Hits.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", Hits.seen
    finally:
        server.shutdown()
        server.server_close()


def leader_nodes(root: Path, nats_server: NatsServer, url: str) -> list[Node]:
    nodes = [Node(root, name, [nats_server.url]) for name in ("a", "b", "c")]
    for node in nodes:
        reaction = node.dir / "post.sls"
        reaction.write_text(
            "post:\n  http.post:\n"
            f"    - url: {url}\n"
            f"    - json: {{tag: '{{{{ tag }}}}', node: {node.name}}}\n"
        )
        settings = yaml.safe_load(node.config_file.read_text())
        settings.update(
            reactor=[{"app/*": [str(reaction)]}],
            reactor_scope="leader",
            reactor_leader_ttl=TTL,
        )
        node.config_file.write_text(yaml.safe_dump(settings))
    return nodes


def wait_tags(seen: list[tuple[str, str]], tags: set[str], nodes: list[Node]) -> None:
    try:
        wait_until(lambda: tags <= {tag for tag, _ in list(seen)}, "the reactions", WAIT * 2)
    except AssertionError:
        missing = sorted(tags - {tag for tag, _ in seen})
        logs = "\n".join(f"--- {node.name}:\n{node.log()}" for node in nodes)
        raise AssertionError(f"no reaction to {missing}\n{logs}") from None


def test_one_node_reacts_to_every_event_once(
    root: Path, nats_server: NatsServer, hits: tuple[str, list[tuple[str, str]]]
) -> None:
    url, seen = hits
    nodes = leader_nodes(root, nats_server, url)
    with running(nodes):
        tags = set()
        for n in range(60):
            for node in nodes:
                tag = f"app/{node.name}/{n}"
                node.fire(tag, {"n": n})
                tags.add(tag)
        wait_tags(seen, tags, nodes)
        time.sleep(TTL)  # long enough for a second reaction to show up
        for node in nodes:
            node.stop()
    counts = Counter(tag for tag, _ in seen)
    assert counts == Counter({tag: 1 for tag in tags})
    assert len({node for _, node in seen}) == 1  # all by the leader


def test_a_new_leader_takes_over_and_catches_up(
    root: Path, nats_server: NatsServer, hits: tuple[str, list[tuple[str, str]]]
) -> None:
    url, seen = hits
    nodes = leader_nodes(root, nats_server, url)
    with running(nodes):
        nodes[0].fire("app/first", {})
        wait_tags(seen, {"app/first"}, nodes)
        leader = next(node for node in nodes if node.name == seen[0][1])
        others = [node for node in nodes if node is not leader]
        tags = {"app/first"}
        for n in range(100):
            if n == 50:
                leader.kill()
            node = others[n % 2]
            tag = f"app/{node.name}/{n}"
            node.fire(tag, {"n": n})
            tags.add(tag)
        wait_tags(seen, tags, nodes)
        time.sleep(TTL)
        for node in others:
            node.stop()
    counts = Counter(tag for tag, _ in seen)
    assert set(counts) == tags  # every event reacted to at least once
    duplicates = sum(counts.values()) - len(counts)
    print(f"leader takeover: {duplicates} duplicate reactions of {len(tags)} events")
    # At least once across the crash: what the dead leader ran after its last
    # published mark runs again; never more than the events fired before it died.
    assert duplicates <= 51, counts
    survivors = {node for _, node in seen} - {leader.name}
    assert len(survivors) == 1  # one new leader
    new_leader = next(node for node in others if node.name in survivors)
    assert "reactor leadership taken by" in new_leader.log()


@pytest.mark.usefixtures("publisher")
def test_without_nats_it_says_so_in_one_line(bus_config: Config, tmp_path: Path) -> None:
    (tmp_path / "r.sls").write_text("r:\n  event.send:\n    - tag: x\n")
    conf = tmp_path / "reactor.conf"
    base = {"reactor": [{"app/*": [str(tmp_path / "r.sls")]}], "reactor_scope": "leader"}
    conf.write_text(yaml.safe_dump(base))
    done = react(conf, bus_config)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "saltbus: error: reactor_scope leader needs a cluster: section (the NATS servers "
        "the leader is elected through)"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf.write_text(yaml.safe_dump({**base, "cluster": {"servers": [f"nats://127.0.0.1:{port}"]}}))
    done = react(conf, bus_config)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith(
        f"saltbus: error: reactor_scope leader: cannot use NATS at nats://127.0.0.1:{port} "
        "for the lease: "
    ), done.stderr


def react(conf: Path, config: Config) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SALTBUS), "react", "--config", str(conf), *bus_flags(config)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=clean_env(),
        check=False,
    )


def test_the_lease_is_renewed_and_handed_over(nats_server: NatsServer) -> None:
    """Leadership itself: the leader keeps its lease past the TTL; a clean stop
    hands it (and the marks) to the other at once."""

    async def main() -> None:
        first = Leadership([nats_server.url], {}, "a", "lease-test", 3.0, 10)
        second = Leadership([nats_server.url], {}, "b", "lease-test", 3.0, 10)
        taken: list[str] = []
        await first.start(lambda events: taken.append("a"))
        await second.start(lambda events: taken.append("b"))
        try:
            first.seen(("a", 7), 0)
            await asyncio.sleep(4.0)  # past the TTL: renewed, not lost
            assert (first.is_leader, second.is_leader, taken) == (True, False, ["a"])
            second.keep(("a", 8), Event("app/x", {}, 8))
            await first.close()
            deadline = time.monotonic() + WAIT
            while not second.is_leader:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert taken == ["a", "b"]
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())
