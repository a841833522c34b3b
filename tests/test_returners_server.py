"""Returners in the publisher: started with it, notified by its commits,
shown by `saltbus stats`, and a returner that fails while `saltbus serve`
runs (and restarts) loses no event and duplicates none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saltbus import Config, Sender
from saltbus.client.admin import fetch_stats
from saltbus.errors import ConfigError
from saltbus.journal import Journal
from saltbus.journal.paths import journal_path
from saltbus.server import EmbeddedPublisher
from tests.returners_support import WAIT, install_plugin, write_config
from tests.serve_support import SALTBUS, ServeProcess
from tests.waiting import wait_until


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    where = install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(where))
    yield where
    sys.modules.pop("sbtest_returner", None)


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_publisher_feeds_its_returners_and_reports_them(
    bus_config: Config, plugin_dir: Path, tmp_path: Path
):
    out = tmp_path / "events.jsonl"
    config = bus_config.replace(
        id="bus1",
        event_return="jsonfile",
        event_return_blacklist=["skip/*"],
        returner_options={"jsonfile": {"path": str(out)}},
    )
    with EmbeddedPublisher(config), Sender(config) as sender:
        fired = [sender.fire("app/evt", {"n": n}, timeout=5, ack=True).seq for n in range(20)]
        sender.fire("skip/me", {}, timeout=5, ack=True)
        wait_until(lambda: len(lines(out)) == 20, "the returner", WAIT)
        returners = fetch_stats(config)["returners"]
    got = lines(out)
    assert [e["seq"] for e in got] == fired
    assert [e["data"]["n"] for e in got] == list(range(20))
    assert all(e["master_id"] == "bus1" and "_stamp" in e["data"] for e in got)
    (stats,) = returners
    assert stats["name"] == "jsonfile" and stats["returned"] == 20
    assert Path(f"{out}.closed").exists(), "the returner was not closed at shutdown"


def down_returner(bus_config: Config, tmp_path: Path) -> tuple[Config, Path, Path]:
    """A bus whose events expire after 0.5 s, with the jsonfile returner failing
    while the returned flag file exists (it does: the "database" is down);
    also the file it writes events to."""
    out, flag = tmp_path / "events.jsonl", tmp_path / "down"
    flag.touch()
    config = bus_config.replace(
        journal_max_age=0.5,
        event_return="jsonfile",
        event_return_retry_max_seconds=0.2,
        returner_options={"jsonfile": {"path": str(out), "fail_while": str(flag)}},
    )
    return config, flag, out


def test_journal_keeps_what_a_failing_returner_has_not_taken(
    bus_config: Config, plugin_dir: Path, tmp_path: Path
):
    config, flag, out = down_returner(bus_config, tmp_path)
    path = journal_path(config.data_dir, config.sock_dir, config.socket_prefix)

    def first_seq() -> int | None:
        with Journal.open(path, readonly=True) as journal:
            return journal.first_seq()

    with EmbeddedPublisher(config), Sender(config) as sender:
        fired = [sender.fire("app/evt", {"n": n}, timeout=5, ack=True).seq for n in range(20)]
        assert fetch_stats(config)["journal_holds"] == {"returner:jsonfile": 0}
    time.sleep(1.0)  # every event is now older than journal_max_age
    # A restart applies retention at once (before the next event is journaled);
    # the returner's cursor holds it.
    with EmbeddedPublisher(config), Sender(config) as sender:
        fired.append(sender.fire("app/evt", {"n": 20}, timeout=5, ack=True).seq)
        assert first_seq() == fired[0]
        flag.unlink()  # the database is back
        wait_until(lambda: len(lines(out)) == 21, "the held events", WAIT)
        assert fetch_stats(config)["journal_holds"] == {"returner:jsonfile": fired[-1]}
    assert [e["seq"] for e in lines(out)] == fired
    # Returned, they expire as usual: a restart takes them.
    time.sleep(1.0)
    with EmbeddedPublisher(config):
        wait_until(lambda: first_seq() is None, "retention after the returner caught up", WAIT)


def test_a_removed_returner_holds_nothing(bus_config: Config, plugin_dir: Path, tmp_path: Path):
    config, _, _ = down_returner(bus_config, tmp_path)
    with EmbeddedPublisher(config), Sender(config) as sender:
        for n in range(5):
            sender.fire("app/evt", {"n": n}, timeout=5, ack=True)
    time.sleep(1.0)
    # Its cursor is still in the journal, but it is no longer configured.
    plain = config.replace(event_return=())
    path = journal_path(config.data_dir, config.sock_dir, config.socket_prefix)
    with EmbeddedPublisher(plain):
        assert fetch_stats(plain)["journal_holds"] == {}
        with Journal.open(path, readonly=True) as journal:
            wait_until(lambda: journal.first_seq() is None, "retention", WAIT)
            assert journal.cursors() == {"returner:jsonfile": 0}


def test_returners_need_the_journal(bus_config: Config, plugin_dir: Path):
    config = bus_config.replace(journal="none", event_return="jsonfile")
    with pytest.raises(ConfigError, match="event_return needs the journal"):
        EmbeddedPublisher(config).start()


def test_unknown_returner_stops_the_start_and_frees_the_bus(bus_config: Config):
    with pytest.raises(ConfigError, match="no returner named 'nosuch'"):
        EmbeddedPublisher(bus_config.replace(event_return="nosuch")).start()
    with EmbeddedPublisher(bus_config), Sender(bus_config) as sender:
        assert sender.fire("a/b", {}, timeout=5, ack=True).seq is not None


def test_failing_returner_under_saltbus_serve_loses_nothing(
    bus_config: Config, plugin_dir: Path, tmp_path: Path
):
    out, flag = tmp_path / "events.jsonl", tmp_path / "down"
    config_file = write_config(
        tmp_path / "master",
        {
            "sock_dir": str(bus_config.sock_dir),
            "data_dir": str(bus_config.data_dir),
            "event_return": ["jsonfile"],
            "event_return_queue": 7,
            "event_return_queue_max_seconds": 0.2,
            "event_return_retry_max_seconds": 0.5,
            "returner.jsonfile.path": str(out),
            "returner.jsonfile.fail_while": str(flag),
        },
    )
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_dir), *sys.path])}
    fired: list[int] = []

    def fire(count: int) -> None:
        with Sender(bus_config) as sender:
            fired.extend(
                sender.fire("app/evt", {"n": len(fired)}, timeout=5, ack=True).seq  # type: ignore[misc]
                for _ in range(count)
            )

    with ServeProcess(bus_config, "--config", str(config_file), env=env):
        fire(30)
        wait_until(lambda: len(lines(out)) == 30, "the first events", WAIT)
        flag.touch()  # the "database" goes down
        fire(25)
        wait_until(
            lambda: fetch_stats(bus_config)["returners"][0]["failures"] >= 2, "failures", WAIT
        )
        shown = subprocess.run(
            [str(SALTBUS), "stats", "--sock-dir", str(bus_config.sock_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert "returners: 1" in shown and "jsonfile" in shown and "retrying" in shown
        assert "lag      25" in shown and "fail_while file exists" in shown
        assert f"kept for: returner:jsonfile at seq {fired[29]}" in shown
    # Stopped while failing, started again while still failing, then it comes back.
    with ServeProcess(bus_config, "--config", str(config_file), env=env):
        fire(10)
        wait_until(
            lambda: fetch_stats(bus_config)["returners"][0]["failures"] >= 1, "a failure", WAIT
        )
        flag.unlink()
        wait_until(lambda: len(lines(out)) >= 65, "the backlog", WAIT)
        stats = fetch_stats(bus_config)["returners"][0]
        assert stats["lag"] == 0 and stats["state"] == "running"
    got = lines(out)
    assert [e["seq"] for e in got] == fired, "events lost, duplicated or reordered"
    assert max(e["batch"] for e in got) <= 7
