"""reactor_scope with federation: two `saltbus serve` nodes, each running the
reactor in-process, linked through a real nats-server. With `local` (the
default) each event's reaction runs once across the cluster, on the node it was
fired on; with `all` every node reacts to every event, imported ones too."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from saltbus import Config
from saltbus.errors import ConfigError
from tests.cluster_support import (
    SETTLE,
    NatsServer,
    Node,
    running,
    wait_imported,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)
EVENTS = 15


def with_reactor(node: Node, out: Path, scope: str | None) -> None:
    """The node's config gets a reactor: appending "<tag> <node>" to ``out``."""
    reaction = node.dir / "mark.sls"
    reaction.write_text(
        f"mark:\n  cmd.run:\n    - cmd: [sh, -c, 'echo {{{{ tag }}}} {node.name} >> {out}']\n"
    )
    settings = yaml.safe_load(node.config_file.read_text())
    settings["reactor"] = [{"app/*": [str(reaction)]}]
    if scope is not None:
        settings["reactor_scope"] = scope
    node.config_file.write_text(yaml.safe_dump(settings))


@pytest.mark.parametrize("scope", [None, "all"])
def test_each_event_reacted_to_once_across_the_cluster_unless_scope_all(
    root: Path, nats_server: NatsServer, scope: str | None
) -> None:
    out = root / "reactions"
    out.touch()
    a = Node(root, "a", [nats_server.url])
    b = Node(root, "b", [nats_server.url])
    for node in (a, b):
        with_reactor(node, out, scope)
    expected_lines = 2 * EVENTS * (2 if scope == "all" else 1)
    with running([a, b]):
        for n in range(EVENTS):
            for node in (a, b):
                node.fire(f"app/{node.name}/{n}", {"n": n})
        for node in (a, b):
            wait_imported(node, EVENTS)

        def reactions() -> list[str]:
            return out.read_text().splitlines()

        wait_until(lambda: len(reactions()) >= expected_lines, f"{expected_lines} reactions")
        # Long enough for a reaction to an imported event to have shown up.
        time.sleep(SETTLE)
        for node in (a, b):
            node.stop()  # SIGTERM: each reactor logs its statistics
    lines = Counter(reactions())
    fired = {f"app/{name}/{n}" for name in "ab" for n in range(EVENTS)}
    if scope == "all":
        assert lines == Counter({f"{tag} {name}": 1 for tag in fired for name in "ab"})
    else:
        # Each event once, by the reactor of the node it was fired on.
        assert lines == Counter({f"{tag} {tag.split('/')[1]}": 1 for tag in fired})
        # Each ret event names the node whose reactor ran it.
        rets = [
            data
            for _, tag, data in a.events()
            if tag == "saltbus/reactor/mark/ret" and "_saltbus_origin" not in data
        ]
        assert len(rets) == EVENTS and {r["node"] for r in rets} == {"a"}
        # Counted, in the statistics each reactor logs when it stops.
        for node in (a, b):
            assert f"other_nodes {EVENTS}," in node.log()


def test_reactor_scope_is_checked() -> None:
    assert Config.load(env={}, overrides={"sock_dir": "/x"}).reactor_scope == "local"
    with pytest.raises(ConfigError, match=r"reactor_scope must be local .* or leader"):
        Config.load(env={}, overrides={"sock_dir": "/x", "reactor_scope": "planet"})
