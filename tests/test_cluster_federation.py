"""Three buses (`saltbus serve --config` processes) federated through one
nats-server: each event reaches every other node exactly once, with its
origin, never its own node again, and the export and import filters hold."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from saltbus import Listener
from saltbus.cli.main import main as saltbus_main
from tests.cluster_support import (
    NatsServer,
    Node,
    running,
    wait_imported,
)

pytestmark = pytest.mark.timeout(600)


def test_each_event_reaches_the_other_nodes_once_with_origin_and_filters_hold(
    root: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
):
    url = [nats_server.url]
    a = Node(root, "a", url)  # exports and imports everything
    b = Node(root, "b", url, export=["app/", "fnmatch:svc/*/up"])
    c = Node(root, "c", url, **{"import": ["app/"]})
    with running([a, b, c]):
        listener = Listener(b.config, "app/")
        listener.connect(10.0)
        fired: list[tuple[str, int, str, int]] = []  # (origin, seq, tag, n)
        for node in (a, b, c):
            for n in range(20):
                for tag in (f"app/{node.name}/{n}", f"private/{node.name}/{n}"):
                    fired.append((node.name, node.fire(tag, {"n": n}), tag, n))
        for tag in ("svc/web/up", "svc/web/down"):
            fired.append(("b", b.fire(tag, {"n": 0}), tag, 0))

        def exported(origin: str, tag: str) -> bool:
            return origin != "b" or tag.startswith("app/") or tag == "svc/web/up"

        expected = {
            node.name: sorted(
                event
                for event in fired
                if event[0] != node.name
                and exported(event[0], event[2])
                and (node is not c or event[2].startswith("app/"))
            )
            for node in (a, b, c)
        }
        for node in (a, b, c):
            wait_imported(node, len(expected[node.name]))

        for node in (a, b, c):
            imported = node.imported()
            origins = Counter((origin, seq) for origin, seq, _, _ in imported)
            assert max(origins.values()) == 1, f"{node.name} got duplicates"
            # Each event as fired (origin, origin seq, tag, data), and none of
            # its own: an event never comes back to its node, and an imported
            # event is not exported again (or a's events would reach b twice, via c).
            got = sorted((origin, seq, tag, data["n"]) for origin, seq, tag, data in imported)
            assert got == expected[node.name], node.name
            for *_, data in imported:
                assert data["_saltbus_origin"]["epoch"] > 0
                assert "stamp" in data["_saltbus_origin"]

        # A live listener on b heard a's and c's app/ events, marked with their origin.
        heard = []
        while (event := listener.receive(timeout=1.0)) is not None:
            heard.append(event)
        listener.close()
        from_others = [e for e in heard if "_saltbus_origin" in e.data]
        assert len(from_others) == 40
        assert {e.data["_saltbus_origin"]["node"] for e in from_others} == {"a", "c"}

        # saltbus stats shows the link.
        stats = b.stats()["cluster"]
        assert stats["state"] == "linked"
        assert stats["connected"] == nats_server.url
        assert stats["export"]["exported"] == 21
        assert stats["import"]["imported"] == 80
        assert stats["import"]["own"] == 21
        capsys.readouterr()
        assert saltbus_main(["stats", "--config", str(b.config_file)]) == 0
        out = capsys.readouterr().out
        assert f"cluster: node b linked {nats_server.url} stream SALTBUS" in out
        assert "export app/, fnmatch:svc/*/up: exported 21" in out
        assert "imported 80" in out
        # c's consumer is filtered by NATS itself: app/ maps to one subject.
        assert c.stats()["cluster"]["import"]["filter_subject"] == "saltbus.ev.app.>"
        assert c.stats()["cluster"]["import"]["filtered"] == 0
