"""``saltbus health``: one line and a Nagios exit code, from a real publisher."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from saltbus.client import Sender
from saltbus.config import Config
from saltbus.server import EmbeddedPublisher
from tests.disk_support import fill, fire_until_refused, small_disk
from tests.interop.salt_peer_client import salt_publisher
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env


def health(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SALTBUS), "health", "--sock-dir", str(config.sock_dir), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )


def test_ok_from_a_ready_publisher(bus_config: Config) -> None:
    with EmbeddedPublisher(bus_config):
        result = health(bus_config)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "SALTBUS OK - sockets: bound; journal: commits\n"
        answer = json.loads(health(bus_config, "--json").stdout)
        assert answer["ready"] is True and answer["status"] == "ok"


def test_critical_when_nothing_serves_the_bus(bus_config: Config) -> None:
    result = health(bus_config)
    assert result.returncode == 2
    assert result.stdout.startswith("SALTBUS CRITICAL - sockets: no publisher listening")
    assert result.stderr == ""


def test_unknown_when_what_serves_it_keeps_no_statistics(bus_config: Config) -> None:
    # Salt's own publisher: it accepts, and never answers a statistics request.
    bus_config.sock_dir.mkdir(mode=0o700)
    with salt_publisher("3007", bus_config.sock_dir, node="master"):
        result = health(bus_config, "--timeout", "0.5")
    assert result.returncode == 3, result.stdout
    assert result.stdout.startswith("SALTBUS UNKNOWN - sockets: no statistics")


def test_critical_while_the_journal_cannot_commit(
    serves: Callable[..., ServeProcess], sock_dir: Path
) -> None:
    with small_disk(sock_dir, 8) as disk:
        config = Config.load(env={}, overrides={"sock_dir": sock_dir / "bus", "data_dir": disk})
        serves(config, *bus_flags(config))
        filler = fill(disk, leave=300_000)
        with Sender(config) as sender:
            fire_until_refused(sender, "test/fill")
            result = health(config)
            assert result.returncode == 2, result.stdout
            assert result.stdout.startswith("SALTBUS CRITICAL - journal: cannot commit (disk full)")
            filler.unlink()
