"""Federation into a tcp-mode bus: the import fires what it fetched through
the asyncio client, which must present the bus's secret (two `saltbus serve
--config` nodes and one nats-server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from saltbus import Config
from tests.cluster_support import (
    NatsServer,
    Node,
    free_port,
    running,
    wait_imported,
)

pytestmark = pytest.mark.timeout(300)


def tcp_node(root: Path, name: str, servers: list[str]) -> Node:
    """A cluster node whose bus is in tcp mode, with its secret (the default)."""
    node = Node(root, name, servers)
    settings = yaml.safe_load(node.config_file.read_text())
    settings |= {
        "ipc_mode": "tcp",
        "tcp_master_pub_port": free_port(),
        "tcp_master_pull_port": free_port(),
    }
    node.config_file.write_text(yaml.safe_dump(settings))
    node.config = Config.load(node.config_file, env={})
    return node


def test_events_are_imported_into_a_tcp_mode_bus(root: Path, nats_server: NatsServer):
    url = [nats_server.url]
    a, b = tcp_node(root, "a", url), tcp_node(root, "b", url)
    with running([a, b]):
        assert a.config.secret_path.exists() and b.config.secret_path.exists()
        fired = [("a", a.fire(f"app/{n}", {"n": n}), f"app/{n}") for n in range(3)]
        wait_imported(b, len(fired))
        got = [(origin, seq, tag) for origin, seq, tag, _ in b.imported()]
    assert got == fired
    assert "refused" not in b.log()
