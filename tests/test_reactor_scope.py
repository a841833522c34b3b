"""reactor_scope with federation: three `saltbus serve` nodes, each running the
reactor in-process, linked through a real nats-server. With `local` (the
default) each event's reaction runs once across the cluster, on the node it was
fired on; with `all` every node reacts to every event, imported ones too."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from saltbus import Config
from saltbus.errors import ConfigError
from tests.cluster_support import (
    SETTLE,
    WAIT,
    NatsServer,
    Node,
    hit_server,
    running,
    wait_app_events,
    with_post_reaction,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)
NODES = ("a", "b", "c")


@pytest.mark.parametrize(("scope", "events"), [(None, 500), ("all", 30)])
def test_each_event_reacted_to_once_across_the_cluster_unless_scope_all(
    root: Path, nats_server: NatsServer, scope: str | None, events: int
) -> None:
    settings = {"reactor_scope": scope} if scope else {}
    copies = len(NODES) if scope == "all" else 1
    with hit_server() as hits:
        nodes = [Node(root, name, [nats_server.url]) for name in NODES]
        for node in nodes:
            with_post_reaction(node, hits.url, **settings)
        with running(nodes):
            fired = []
            for n in range(events):
                node = nodes[n % len(nodes)]
                tag = f"app/{node.name}/{n}"
                node.fire(tag, {"n": n})
                fired.append(tag)
            for node in nodes:
                wait_app_events(node, len(fired))
            wait_until(
                lambda: len(hits.seen) >= copies * events,
                f"{copies * events} reactions",
                WAIT * 2,
            )
            # Long enough for a reaction to an imported event to have shown up.
            time.sleep(SETTLE)
            for node in nodes:
                node.stop()  # SIGTERM: each reactor logs its statistics
    lines = Counter((tag, node) for tag, node, _ in hits.seen)
    if scope == "all":
        assert lines == Counter({(tag, name): 1 for tag in fired for name in NODES})
        return
    # Each event once, by the reactor of the node it was fired on.
    assert lines == Counter({(tag, tag.split("/")[1]): 1 for tag in fired})
    for node in nodes:
        own = sum(1 for tag in fired if tag.split("/")[1] == node.name)
        # Each ret event names the node whose reactor ran it.
        rets = [
            data
            for _, tag, data in node.events()
            if tag == "saltbus/reactor/post/ret" and "_saltbus_origin" not in data
        ]
        assert len(rets) == own and {r["node"] for r in rets} == {node.name}
        # Counted, in the statistics each reactor logs when it stops.
        assert f"other_nodes {events - own}," in node.log()


def test_reactor_scope_is_checked() -> None:
    assert Config.load(env={}, overrides={"sock_dir": "/x"}).reactor_scope == "local"
    with pytest.raises(ConfigError, match=r"reactor_scope must be local .* or leader"):
        Config.load(env={}, overrides={"sock_dir": "/x", "reactor_scope": "planet"})
