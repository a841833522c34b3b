"""reactor_scope leader: three `saltbus serve` nodes, each running the reactor,
federated through a real nats-server. One node, elected through a JetStream
key-value lease, reacts to every event of the cluster: each event's reaction
runs exactly once; killed mid-stream, another node takes over and every event is
reacted to at least once (the duplicates are counted and bounded)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from saltbus import Config
from saltbus.event import Event
from saltbus.reactor.leader import MARK_INTERVAL, Leadership
from tests.cluster_support import (
    WAIT,
    Hits,
    NatsServer,
    Node,
    hit_server,
    running,
    wait_app_events,
    with_post_reaction,
)
from tests.serve_support import SALTBUS, bus_flags, clean_env
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(600)
TTL = 2.0
EVENTS = 500
KILL_AT = 300  # the leader is killed before the event of this number is fired
MARGIN = 3.0  # seconds: a shared 2-core machine delays processes and timers


def leader_nodes(root: Path, nats_server: NatsServer, url: str) -> list[Node]:
    nodes = [Node(root, name, [nats_server.url]) for name in ("a", "b", "c")]
    for node in nodes:
        with_post_reaction(node, url, reactor_scope="leader", reactor_leader_ttl=TTL)
    return nodes


def wait_tags(hits: Hits, tags: set[str], nodes: list[Node]) -> None:
    try:
        wait_until(lambda: tags <= hits.tags(), "the reactions", WAIT * 2)
    except AssertionError:
        missing = sorted(tags - hits.tags())
        logs = "\n".join(f"--- {node.name}:\n{node.log()}" for node in nodes)
        raise AssertionError(f"no reaction to {len(missing)}: {missing[:20]}\n{logs}") from None


def test_one_node_reacts_to_every_event_once(root: Path, nats_server: NatsServer) -> None:
    with hit_server() as hits:
        nodes = leader_nodes(root, nats_server, hits.url)
        with running(nodes):
            tags = set()
            for n in range(EVENTS):
                node = nodes[n % len(nodes)]
                tag = f"app/{node.name}/{n}"
                node.fire(tag, {"n": n})
                tags.add(tag)
            wait_tags(hits, tags, nodes)
            time.sleep(TTL)  # long enough for a second reaction to show up
            for node in nodes:
                node.stop()
    counts = Counter(tag for tag, _, _ in hits.seen)
    assert counts == Counter({tag: 1 for tag in tags})
    assert len({node for _, node, _ in hits.seen}) == 1  # all by the leader


def test_a_new_leader_takes_over_and_catches_up(root: Path, nats_server: NatsServer) -> None:
    with hit_server() as hits:
        nodes = leader_nodes(root, nats_server, hits.url)
        with running(nodes):
            nodes[0].fire("app/first", {})
            wait_tags(hits, {"app/first"}, nodes)
            leader = next(node for node in nodes if node.name == hits.seen[0][1])
            others = [node for node in nodes if node is not leader]
            tags = {"app/first"}
            # The first part on every node, the leader's own included; its events
            # reach the others before it dies (what a node journaled and had not
            # exported when killed is the federation's loss, not the reactor's).
            for n in range(KILL_AT // 2):
                node = nodes[n % len(nodes)]
                tag = f"app/{node.name}/{n}"
                node.fire(tag, {"n": n})
                tags.add(tag)
            for node in others:
                wait_app_events(node, len(tags))
            # Then on the survivors only, the leader killed in the middle of it.
            killed_at = 0.0
            for n in range(KILL_AT // 2, EVENTS):
                if n == KILL_AT:
                    leader.kill()  # SIGKILL
                    killed_at = time.monotonic()
                node = others[n % 2]
                tag = f"app/{node.name}/{n}"
                node.fire(tag, {"n": n})
                tags.add(tag)
            wait_tags(hits, tags, nodes)
            time.sleep(TTL)
            for node in others:
                node.stop()
    seen = hits.seen
    counts = Counter(tag for tag, _, _ in seen)
    assert set(counts) == tags  # every event reacted to at least once
    assert max(counts.values()) <= 2  # by the dead leader, then again by its successor
    survivors = {node for _, node, _ in seen} - {leader.name}
    assert len(survivors) == 1  # one new leader
    new_leader = next(node for node in others if node.name in survivors)
    assert "reactor leadership taken by" in new_leader.log()
    # The new leader reacts within the lease: the old one's lapses at most TTL
    # after its last renewal, a follower tries to take it every TTL/3, and it
    # runs what was not marked done at once; MARGIN is for the shared machine.
    takeover = min(t for _, node, t in seen if node == new_leader.name) - killed_at
    # Duplicates are the reactions the dead leader ran after the last marks it
    # published (every MARK_INTERVAL while they advance): each ran in that last
    # interval before the kill (MARGIN again for a busy machine), never an older one.
    last_by_dead = {tag: t for tag, node, t in seen if node == leader.name}
    duplicates = sorted(tag for tag, n in counts.items() if n == 2)
    window = [killed_at - last_by_dead[tag] for tag in duplicates]
    print(
        f"leader takeover after {takeover:.2f} s (ttl {TTL:g} s); {len(duplicates)} duplicate "
        f"reactions of {len(tags)} events, run by the dead leader up to "
        f"{max(window, default=0.0):.2f} s before the kill"
    )
    assert takeover <= TTL + TTL / 3 + MARGIN, takeover
    assert all(tag in last_by_dead for tag in duplicates)
    assert max(window, default=0.0) <= MARK_INTERVAL + MARGIN, (window, duplicates)


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
