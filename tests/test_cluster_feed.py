"""The journal read in the daemon's process: a read waits for a commit and
returns what follows the position, woken by the server's commit listeners."""

from __future__ import annotations

import asyncio
import threading

import pytest

from saltbus import Config, Sender
from saltbus.cluster.feed import JournalFeed
from saltbus.server import Server

pytestmark = pytest.mark.timeout(120)
# Far longer than the test waits: only a commit's notify() can end a read in time.
NO_POLL = 600.0
WAIT = 30.0


def fire(config: Config, tags: list[str]) -> list[int]:
    with Sender(config) as sender:
        return [
            sender.fire(tag, {"n": n}, timeout=10.0, ack=True).seq or 0
            for n, tag in enumerate(tags)
        ]


def test_a_read_waits_for_a_commit_and_returns_what_follows_the_position(bus_config: Config):
    async def main() -> None:
        async with Server(bus_config) as server:
            assert server.journal_path is not None
            feed = JournalFeed(server.journal_path, poll_interval=NO_POLL)
            server.commit_listeners.append(feed.notify)
            try:
                start = server.intake.last_seq
                waiting = asyncio.create_task(feed.read(start, 2))
                await asyncio.sleep(0.2)
                assert not waiting.done()  # nothing after the position yet
                seqs = await asyncio.to_thread(fire, bus_config, ["feed/a", "feed/b", "feed/c"])
                first = await asyncio.wait_for(waiting, WAIT)
                assert [r.seq for r in first] == seqs[: len(first)]  # what had committed
                got = list(first)
                while len(got) < len(seqs):
                    got += await asyncio.wait_for(feed.read(got[-1].seq, 10), WAIT)
                assert [(r.seq, r.tag) for r in got] == list(
                    zip(seqs, ["feed/a", "feed/b", "feed/c"], strict=True)
                )
                limited = await asyncio.wait_for(feed.read(start, 2), WAIT)
                assert [r.seq for r in limited] == seqs[:2]
                assert feed.latest >= seqs[-1]
                assert await feed.epoch() == server.epoch
            finally:
                await feed.close()

    asyncio.run(main())


def test_a_notify_from_another_thread_wakes_a_read(bus_config: Config):
    async def main() -> None:
        async with Server(bus_config) as server:
            assert server.journal_path is not None
            # Not a listener of the server: it learns of the commit from another thread only.
            feed = JournalFeed(server.journal_path, poll_interval=NO_POLL)
            try:
                start = server.intake.last_seq
                waiting = asyncio.create_task(feed.read(start, 10))
                await asyncio.sleep(0.2)
                seqs = await asyncio.to_thread(fire, bus_config, ["feed/x"])
                assert not waiting.done()
                notifier = threading.Thread(target=feed.notify, args=(seqs[-1],))
                notifier.start()
                notifier.join()
                records = await asyncio.wait_for(waiting, WAIT)
                assert [r.seq for r in records] == seqs
            finally:
                await feed.close()

    asyncio.run(main())


def test_read_announced_returns_what_commits_announced_without_waiting(bus_config: Config):
    async def main() -> None:
        async with Server(bus_config) as server:
            assert server.journal_path is not None
            feed = JournalFeed(server.journal_path, poll_interval=NO_POLL)
            unannounced = JournalFeed(server.journal_path, poll_interval=NO_POLL)
            server.commit_listeners.append(feed.notify)
            try:
                start = server.intake.last_seq
                assert await asyncio.wait_for(feed.read_announced(start, 10), WAIT) == []
                seqs = await asyncio.to_thread(fire, bus_config, ["feed/1", "feed/2", "feed/3"])
                # An acknowledged fire is announced before it is acknowledged.
                records = await asyncio.wait_for(feed.read_announced(start, 10), WAIT)
                assert [r.seq for r in records] == seqs
                limited = await asyncio.wait_for(feed.read_announced(start, 2), WAIT)
                assert [r.seq for r in limited] == seqs[:2]
                assert await asyncio.wait_for(feed.read_announced(seqs[-1], 10), WAIT) == []
                # Committed, but never announced to this one: it does not look.
                assert await asyncio.wait_for(unannounced.read_announced(start, 10), WAIT) == []
            finally:
                await feed.close()
                await unannounced.close()

    asyncio.run(main())
