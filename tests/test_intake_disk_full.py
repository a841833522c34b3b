"""A full disk under a real `saltbus serve`: nothing is delivered that the
journal does not hold, acked fires are refused at once and say why, held
events are journaled when space comes back, and numbering has no gap.

The journal lives on a small tmpfs the test mounts (tests/disk_support.py).
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from saltbus.client import Listener, Sender
from saltbus.config import Config
from saltbus.event import Event
from saltbus.http import create_app
from saltbus.journal.paths import journal_path
from saltbus.journal.store import Journal
from saltbus.wire import unpack_body
from tests.disk_support import fill, fire_until_refused, small_disk
from tests.http_support import serve, sse
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env
from tests.waiting import wait_until

END = "test/end"
WAIT = 30.0
POLL = 0.1  # seconds between two looks: `saltbus stats` runs as a process


class Collector:
    """A listener connected throughout, reading in a thread until ``END``."""

    def __init__(self, config: Config, **options: Any) -> None:
        self.listener = Listener(config, **options)
        self.listener.connect(timeout=10)
        self.events: list[Event] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            event = self.listener.receive(timeout=1)
            if event is None:
                continue
            self.events.append(event)
            if event.tag == END:
                return

    def join(self) -> list[Event]:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"no {END} after {len(self.events)} events"
        self.listener.close()
        return self.events


def stats(config: Config) -> str:
    return cli("stats", *sock_flag(config)).stdout


def sock_flag(config: Config) -> list[str]:
    return ["--sock-dir", str(config.sock_dir)]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SALTBUS), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=clean_env(),
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def journaled(config: Config) -> list[tuple[int, str, dict[str, Any]]]:
    assert config.data_dir is not None
    path = journal_path(config.data_dir, config.sock_dir, config.socket_prefix)
    with Journal.open(path, readonly=True) as journal:
        return [(r.seq, *unpack_body(r.body)) for r in journal.read(since=0)]


def as_rows(events: list[Event]) -> list[tuple[int | None, str, dict[str, Any]]]:
    return [(e.seq, e.tag, e.data) for e in events]


def test_a_full_disk_delays_events_and_loses_none(
    serves: Callable[..., ServeProcess], sock_dir: Path
) -> None:
    with small_disk(sock_dir, 16) as disk:
        config = Config.load(env={}, overrides={"sock_dir": sock_dir / "bus", "data_dir": disk})
        daemon = serves(config, *bus_flags(config))
        live = Collector(config)
        filler = fill(disk, leave=600_000)

        # Acked fires until the journal is full: each returns its seq or is refused.
        sender = Sender(config)
        acked, refused = fire_until_refused(sender, "test/acked", refusals=20)
        assert all("disk full" in message for message in refused), refused[0]

        # Unacked fires are taken and held: a second sender, and the CLI.
        Sender(config).fire("test/plain", {"n": "plain"}, timeout=5)
        cli("fire", "test/cli", "n=cli", *sock_flag(config))
        failed_ack = cli(
            "fire", "--ack", "test/cli-ack", "n=cli-ack", *sock_flag(config), check=False
        )
        assert failed_ack.returncode != 0
        assert "disk full" in failed_ack.stderr
        assert len(failed_ack.stderr.strip().splitlines()) == 1, failed_ack.stderr

        failing = stats(config)
        assert "FAILING" in failing and "disk full" in failing, failing
        assert "journal cannot commit (disk full)" in daemon.log

        filler.unlink()
        wait_until(lambda: "FAILING" not in stats(config), "the journal to recover", WAIT, POLL)
        assert "journal commits again" in daemon.log
        after = sender.fire("test/after", {"n": "after"}, 5, ack=True)
        sender.fire(END, {}, 5, ack=True)
        sender.close()
        received = live.join()

        history = journaled(config)
        seqs = [seq for seq, _, _ in history]
        assert seqs == list(range(1, len(history) + 1)), "numbering has a gap"
        # The listener connected throughout got exactly the journal, in order.
        assert as_rows(received) == history
        by_seq = {seq: (tag, data) for seq, tag, data in history}
        for n, seq in acked.items():
            assert by_seq[seq][1]["n"] == n
        assert by_seq[after.seq or 0][1]["n"] == "after"
        tags = [tag for _, tag, _ in history]
        order = {
            tag: tags.index(tag)
            for tag in (
                "saltbus/journal/failed",
                "test/plain",
                "test/cli",
                "saltbus/journal/recovered",
            )
        }
        assert order["saltbus/journal/failed"] < order["test/plain"] < order["test/cli"]
        assert order["test/cli"] < order["saltbus/journal/recovered"]
        assert "test/cli-ack" not in tags
        failed_notice = by_seq[tags.index("saltbus/journal/failed") + 1][1]
        assert failed_notice["reason"] == "disk full"
        assert failed_notice["last_seq"] == max(acked.values())

        # Resuming readers see exactly the journal: a listener from seq 0 and
        # an SSE client with Last-Event-ID: 0.
        resumed = Collector(config, since=0, epoch=None)
        assert as_rows(resumed.join()) == history
        with (
            serve(create_app(config)) as url,
            httpx.Client() as client,
            sse(client, f"{url}/events", headers={"Last-Event-ID": "0"}) as stream,
        ):
            messages = stream.until(END)
        assert [(int(m.id or 0), m.json()["tag"]) for m in messages] == [
            (seq, tag) for seq, tag, _ in history
        ]
        daemon.stop()


def test_journal_on_error_deliver_delivers_and_tells_resuming_readers_of_the_gap(
    serves: Callable[..., ServeProcess], sock_dir: Path
) -> None:
    with small_disk(sock_dir, 16) as disk:
        config = Config.load(env={}, overrides={"sock_dir": sock_dir / "bus", "data_dir": disk})
        daemon = serves(config, *bus_flags(config), "--journal-on-error", "deliver")
        live = Collector(config)
        filler = fill(disk, leave=600_000)
        sender = Sender(config)
        fire_until_refused(sender, "test/acked", refusals=5)
        for n in range(20):
            sender.fire("test/plain", {"n": n}, timeout=5)
        filler.unlink()
        plain = itertools.count(20)

        def gap_closed() -> bool:
            # The first batch that commits closes the gap: fire until one does.
            sender.fire("test/plain", {"n": next(plain)}, timeout=5)
            return "saltbus/journal/gap" in [e.tag for e in live.events]

        wait_until(gap_closed, "the gap event", WAIT, POLL)
        sender.fire(END, {}, 5, ack=True)
        sender.close()
        received = live.join()

        # Everything was delivered live, numbered without a break.
        assert [e.seq for e in received] == list(range(1, len(received) + 1))
        assert [e.data["n"] for e in received if e.tag == "test/plain"] == list(range(next(plain)))

        # The journal has everything but the gaps, which the gap events name.
        # (On a disk this full, the journal's tail and SQLite compete for its
        # last pages: the journal may fail again after it recovered, and say so
        # once it commits again.)
        def accounted() -> bool:
            history = journaled(config)
            missing = set(range(1, len(received) + 1)) - {seq for seq, _, _ in history}
            gaps = [data for _, tag, data in history if tag == "saltbus/journal/gap"]
            named = {seq for g in gaps for seq in range(g["first"], g["last"] + 1)}
            return missing == named

        wait_until(accounted, "gap events naming every seq missing from the journal", WAIT, POLL)
        history = journaled(config)
        missing = set(range(1, len(received) + 1)) - {seq for seq, _, _ in history}
        gap = next(data for _, tag, data in history if tag == "saltbus/journal/gap")
        assert "delivered but not journaled" in daemon.log
        # A reader resuming from before the gaps is told how much it missed.
        resumed = Listener(config, since=gap["first"] - 3, epoch=None)
        resumed.connect(timeout=10)
        replayed = [e.seq for e in iter(lambda: resumed.receive(timeout=2), None)]
        assert resumed.session.lost == len(missing)
        assert not set(replayed) & missing
        resumed.close()
        daemon.stop()
