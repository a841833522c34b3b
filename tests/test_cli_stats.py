"""`saltbus stats` against a real `saltbus serve`: what it lists, and what it leaves out."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from saltbus.client import Listener
from saltbus.config import Config
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env


def stats(config: Config) -> str:
    result = subprocess.run(
        [str(SALTBUS), "stats", "--sock-dir", str(config.sock_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    return result.stdout


def test_stats_list_listeners_with_their_filter_and_name_but_not_the_asker(
    serves: Callable[..., ServeProcess], bus_config: Config
) -> None:
    serves(bus_config, *bus_flags(bus_config))
    with (
        Listener(bus_config, tag="salt/auth") as filtered,
        Listener(bus_config, tag="app/", name="dashboard") as named,
    ):
        filtered.connect(timeout=10)
        named.connect(timeout=10)
        text = stats(bus_config)
    assert "subscribers: 2" in text, text
    assert "filter: startswith:salt/auth" in text, text
    assert "saltbus dashboard" in text and "filter: startswith:app/" in text, text
    assert " salt " not in text, "the stats connection listed itself"
