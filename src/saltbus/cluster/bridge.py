"""One node's bridge between its local bus and the JetStream stream.

    bridge = Bridge(config)          # config.cluster: servers, node_name, ...
    await bridge.start()             # in the loop that runs the bus's Server
    ...
    await bridge.stop()

It is a client of the local bus (it needs saltbus's publisher with its
journal: the exporter resumes from it and the importer's acknowledged fires
are journaled) and of NATS. Run in the daemon's loop (``saltbus serve``), it
is given the daemon's intake: imported events go straight to it, and the
export reads the journal in this process, woken by the daemon after each
commit (:meth:`attach`) instead of listening to the bus.
Neither being away stops the other: while NATS is unreachable the local bus
goes on and the exporter catches up from the journal later; while the local
bus is away NATS keeps the node's messages.
:meth:`stats` is what ``saltbus stats`` shows under ``cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import nats.errors

from saltbus.cluster.exporter import Exporter
from saltbus.cluster.feed import JournalFeed
from saltbus.cluster.importer import Importer
from saltbus.cluster.link import Link
from saltbus.cluster.settings import ClusterSettings
from saltbus.config import Config
from saltbus.errors import ConfigError
from saltbus.journal.paths import default_data_dir, journal_path
from saltbus.journal.store import Journal
from saltbus.server.intake import Intake

if TYPE_CHECKING:
    from saltbus.server.app import Server

log = logging.getLogger("saltbus.cluster")

STATS_INTERVAL: Final = 2.0
STOP_TIMEOUT: Final = 5.0


class Bridge:
    def __init__(
        self,
        config: Config,
        settings: ClusterSettings | None = None,
        *,
        intake: Intake | None = None,
    ) -> None:
        """``intake``: the bus's own, when this runs in the loop of its Server
        (then :meth:`attach` the bridge to that Server)."""
        if config.journal == "none":
            raise ConfigError(
                "cluster: needs the journal (journal: batch or fsync): the export "
                "resumes from it and imported events are checked against it"
            )
        self.config = config
        self.settings = settings or ClusterSettings.from_config(config)
        self.journal: Path = journal_path(
            config.data_dir or default_data_dir(), config.sock_dir, config.socket_prefix
        )
        self.link = Link(self.settings)
        self._feed = None if intake is None else JournalFeed(self.journal)
        self.exporter = Exporter(config, self.settings, self.link, self.journal, self._feed)
        self.importer = Importer(config, self.settings, self.link, self.journal, intake)
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: dict[str, Any] = {}
        self._stream: dict[str, Any] = {}
        self._local_last_seq: int | None = None
        self._started = time.monotonic()

    @property
    def ready(self) -> bool:
        """Connected, with the node's consumer bound: events fired elsewhere from now on arrive."""
        return self.link.connected and self.importer.bound.is_set()

    async def wait_ready(self, timeout: float) -> None:
        """Wait until :attr:`ready` (:class:`TimeoutError` after ``timeout`` s)."""
        async with asyncio.timeout(timeout):
            while not self.ready:
                await asyncio.sleep(0.05)

    def attach(self, server: Server) -> None:
        """Have ``server`` (whose intake this bridge was given) tell the
        export of each commit: its records as soon as they are journaled
        (the export reads them from memory while it keeps up), and how far
        SQLite shows them (what a read of the journal may find)."""
        if self._feed is not None:
            server.commit_listeners.append(self._feed.committed)
            server.index_listeners.append(self._feed.indexed)

    def journal_position(self) -> int | None:
        """The last local seq exported (the journal must keep what follows it)."""
        return self.exporter.position

    async def start(self) -> None:
        """Load the positions and start; returns at once (NATS may still be away)."""
        await self.exporter.start()
        await self.importer.start()
        self._started = time.monotonic()
        self._spawn(self.link.run(), "cluster-link")
        self._spawn(self.exporter.run(), "cluster-export")
        self._spawn(self.importer.run(), "cluster-import")
        self._spawn(self._watch(), "cluster-stats")
        log.info(
            "cluster: node %s, stream %s on %s; export %s; import %s",
            self.settings.node_name,
            self.settings.stream,
            ",".join(self.settings.servers),
            _patterns(self.settings.export),
            _patterns(self.settings.import_),
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

    async def stop(self) -> None:
        """Stop reading and writing, save the positions and close.

        Cancelling anywhere is safe: an export not acknowledged is sent again
        after a restart (and dropped as a duplicate if it had arrived); an
        import fired and not acknowledged to NATS is found in the journal."""
        tasks, self._tasks = self._tasks, []
        self.exporter.stopping = self.importer.stopping = True
        for task in tasks:
            task.cancel()
        pending: set[asyncio.Task[None]] = set(tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=STOP_TIMEOUT)
        await self.link.close()  # whatever still waits on NATS fails now
        if pending:
            _, pending = await asyncio.wait(pending, timeout=STOP_TIMEOUT)
            for task in pending:
                log.error("cluster task %s did not stop", task.get_name())
        with contextlib.suppress(OSError):
            self.exporter.save()
        await self.importer.close()
        if self._feed is not None:
            await self._feed.close()

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- statistics ----------------------------------------------------------

    async def _watch(self) -> None:
        """Refresh what :meth:`stats` cannot compute without waiting."""
        while True:
            with contextlib.suppress(Exception):
                self._local_last_seq = await asyncio.to_thread(_last_seq, self.journal)
            if self.ready:
                try:
                    info = await self.link.consumer_info()
                    self._consumer = {
                        "pending": info.num_pending or 0,
                        "ack_pending": info.num_ack_pending or 0,
                        "redelivered": info.num_redelivered or 0,
                        "filter": info.config.filter_subject,
                    }
                except (nats.errors.Error, TimeoutError, OSError):
                    self._consumer = {}
                try:
                    self._stream = await self.link.stream_state()
                except (nats.errors.Error, TimeoutError, OSError):
                    self._stream = {}
            await asyncio.sleep(STATS_INTERVAL)

    def waiting_for(self) -> str | None:
        """What the node waits for before it is linked; None once it is."""
        if self.ready:
            return None
        if not self.link.connected:
            return "a connection to NATS"
        now = time.monotonic()
        asking = self.link.asking
        if asking is not None:
            what, since = asking
            return f"NATS to answer {what} (asked {now - since:.1f} s ago)"
        retry = self.importer.retry.until
        if retry is not None:
            return f"the next try to bind the consumer (in {max(retry - now, 0.0):.1f} s)"
        return "the consumer to be bound"

    def stats(self) -> dict[str, Any]:
        exporter, importer = self.exporter, self.importer
        position = exporter.position
        last = self._local_last_seq
        lag = None if last is None or position is None else max(0, last - position)
        errors = [e for e in (self.link.last_error, exporter.last_error, importer.last_error) if e]
        return {
            "node": self.settings.node_name,
            "stream": self.settings.stream,
            "servers": list(self.settings.servers),
            "connected": self.link.server,
            "state": "linked" if self.ready else "connecting",
            "waiting_for": self.waiting_for(),
            "stream_state": dict(self._stream),
            "export": {
                "patterns": _patterns(self.settings.export),
                "exported": exporter.exported,
                "not_exported": exporter.not_exported,
                "dropped": exporter.dropped,
                "resent": exporter.resent,
                "position": position,
                "lag": lag,
                "in_flight": exporter.in_flight,
                "failures": exporter.failures,
                # Records the export read from the commits kept in memory, and from SQLite.
                "read_from_memory": 0 if self._feed is None else self._feed.from_memory,
                "read_from_journal": 0 if self._feed is None else self._feed.from_journal,
            },
            "import": {
                "patterns": _patterns(self.settings.import_),
                "filter_subject": importer.filter.subject,
                "imported": importer.imported,
                "duplicates": importer.duplicates,
                "own": importer.own,
                "filtered": importer.filtered,
                "rejected": importer.rejected,
                "failures": importer.failures,
                "rewinds": importer.rewinds,
                "start": str(self.settings.import_start),
                "consumer": dict(self._consumer),
            },
            "last_error": errors[-1] if errors else None,
            "uptime": round(time.monotonic() - self._started, 3),
        }


def _patterns(patterns: Any) -> list[str]:
    return [str(p) for p in patterns] or ["(all)"]


def _last_seq(journal: Path) -> int:
    with Journal.open(journal, readonly=True) as store:
        return store.last_seq()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cluster task %s stopped: %r", task.get_name(), task.exception())
