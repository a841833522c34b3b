"""Salt 3007's own clients against `saltbus serve` on a full disk (issue 13):
a Salt firer's ``fire_event`` either returned True and its event is journaled
once space comes back, or returned False; a Salt listener connected throughout
gets exactly what the journal holds; nothing reaches anyone unjournaled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from saltbus.client import Sender
from saltbus.config import Config
from tests.disk_support import PAD, fill, fire_until_refused, small_disk
from tests.interop.buses import strip_stamp
from tests.interop.salt_driver_client import SaltDriver
from tests.serve_support import ServeProcess, bus_flags
from tests.test_intake_disk_full import (
    END,
    POLL,
    WAIT,
    Collector,
    as_rows,
    journaled,
    stats,
)
from tests.waiting import wait_until

VERSION = "3007"


@pytest.fixture
def salt() -> Iterator[SaltDriver]:
    driver = SaltDriver(VERSION)
    try:
        yield driver
    finally:
        driver.close()


def test_salt_clients_on_a_full_disk_lose_nothing(
    serves: Callable[..., ServeProcess], sock_dir: Path, salt: SaltDriver
) -> None:
    with small_disk(sock_dir, 16) as disk:
        config = Config.load(
            env={},
            overrides={"sock_dir": sock_dir / "bus", "data_dir": disk, "salt_version": VERSION},
        )
        serves(config, *bus_flags(config), "--salt-version", VERSION)
        live = Collector(config)
        salt_listener = salt.listener(config.sock_dir, "master", sync_tag="sync/salt")
        filler = fill(disk, leave=600_000)
        with Sender(config) as sender:
            fire_until_refused(sender, "test/acked")
            assert "FAILING" in stats(config)

            firer = salt.open(config.sock_dir, "master", listen=False)
            results = salt.fire(firer, [("test/salt", {"n": n, "pad": PAD}) for n in range(40)])
            assert True in results, results  # the first ones are taken (and held)

            filler.unlink()
            wait_until(lambda: "FAILING" not in stats(config), "the journal to recover", WAIT, POLL)
            sender.fire(END, {}, 5, ack=True)
        received = live.join()

        history = journaled(config)
        assert [seq for seq, _, _ in history] == list(range(1, len(history) + 1))
        assert as_rows(received) == history
        salt_fired = [d["n"] for _, tag, d in history if tag == "test/salt"]
        taken = [n for n, ok in enumerate(results) if ok]
        assert set(taken) <= set(salt_fired), "a fire_event that returned True was lost"
        assert salt_fired == sorted(salt_fired)

        # Salt's own listener, connected throughout, got the journal's events in its order.
        after_sync = [(tag, d) for _, tag, d in history if not tag.startswith("sync/")]
        events, _ = salt.get(salt_listener, count=len(after_sync), wait=10)
        got = [(e["tag"], strip_stamp(VERSION, e["data"])) for e in events]
        got = [(tag, d) for tag, d in got if not tag.startswith("sync/")]
        # saltbus's own events (saltbus/journal/*) are stamped as Salt's clients stamp.
        assert got == [(tag, strip_stamp(VERSION, d)) for tag, d in after_sync]
        salt.close_event(firer)
        salt.close_event(salt_listener)
