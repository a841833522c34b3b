"""The publisher daemon: ``startup → serve → shutdown``, as uvicorn's Server."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from saltbus.config import Address, Config
from saltbus.control import Subscribe, Subscribed, encode_control
from saltbus.errors import ConfigError
from saltbus.event import MatchType, tag_matcher
from saltbus.journal.paths import default_data_dir, journal_path
from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Journal
from saltbus.journal.tailed import TailedWriter
from saltbus.journal.writer import JournalWriter
from saltbus.returners import ReturnerRunner, redactor_for
from saltbus.server.access import AccessPolicy
from saltbus.server.busypoll import BusyPoll, RunnableTasks
from saltbus.server.commits import JournalSink, NoJournal
from saltbus.server.connections import PullConnection, SubscriberConnection
from saltbus.server.fanout import FanOut, Subscriber, SubscriberStats
from saltbus.server.holds import RetentionHolds
from saltbus.server.intake import Intake
from saltbus.server.laggards import Laggards
from saltbus.server.replay import first_available, gaps_in, replay, wait_indexed
from saltbus.server.sockets import BusLock, bind_listener, ensure_sock_dir, remove_socket_file
from saltbus.server.state import PullPeer, ServerState, SubscriberPeer

log = logging.getLogger("saltbus.server")

# How long shutdown waits for listeners to read what was already published to them.
DRAIN_TIMEOUT: Final = 2.0
SHUTDOWN_GRACE: Final = 0.05
# The retention hold the publisher keeps while its returners load their cursors.
_STARTING: Final = "saltbus:starting"


class Server:
    """One bus: a pull socket in, a publish socket out, and the journal between.

    Use ``await server.serve()`` (until :meth:`request_exit`), or
    ``async with Server(config) as server:`` to run it alongside other tasks.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.fanout = FanOut(config.generation.pub_framing)
        self.pull_connections: set[PullPeer] = set()
        self.subscriber_connections: set[SubscriberPeer] = set()
        self.journal_path: Path | None = None
        if config.journal != "none":
            data_dir = config.data_dir or default_data_dir()
            self.journal_path = journal_path(data_dir, config.sock_dir, config.socket_prefix)
        self._writer: JournalWriter | TailedWriter | None = None
        self.returners: ReturnerRunner | None = None
        # Made by startup(), once the journal says where numbering goes on.
        self._intake: Intake | None = None
        self.epoch = secrets.randbits(63)
        # The lock file also marks the bus as saltbus's, in tcp mode too.
        self._lock = BusLock(config)
        self.access = AccessPolicy(config)
        self._sweeper: asyncio.Task[None] | None = None
        self._listeners: list[asyncio.Server] = []
        self._exit: asyncio.Event | None = None
        self._replays: set[asyncio.Task[None]] = set()
        self._laggards: Laggards | None = None
        self._busy_poll: BusyPoll | None = None
        self._runnable: RunnableTasks | None = None
        self._state: ServerState | None = None
        self._started = time.monotonic()
        self.pub_address: Address = config.pub_address
        self.pull_address: Address = config.pull_address
        # Parts run beside the server in its loop (the federation bridge) add
        # their statistics here, under their name, without the server knowing them.
        self.stats_sources: dict[str, Callable[[], Any]] = {}
        # Called on SIGHUP (after the returners reopen their files), by parts
        # run beside the server that reload on it (the in-process reactor).
        self.sighup_handlers: list[Callable[[], None]] = []
        # Consumers in this process that must not miss journaled events
        # (returners; the federation export and the reactor register too).
        self.retention_holds = RetentionHolds()
        # Told each commit's records (in seq order, on the loop's thread) as
        # soon as they are journaled and delivered, in the tail as a rule,
        # before SQLite shows them; and told the last seq SQLite shows after
        # each index step. For parts run beside the server that read the
        # journal (the federation export: cluster.Bridge.attach).
        self.commit_listeners: list[Callable[[Sequence[JournalRecord]], None]] = []
        self.index_listeners: list[Callable[[int], None]] = []
        # Told the seconds each journal commit took (the metrics' histogram);
        # set before startup(). Called on the journal's thread or the loop's.
        self.commit_observer: Callable[[float], None] | None = None

    @property
    def intake(self) -> Intake:
        if self._intake is None:
            raise RuntimeError("the server is not started: startup() first")
        return self._intake

    # -- lifecycle ---------------------------------------------------------

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        cfg = self.config
        if cfg.event_return and self.journal_path is None:
            raise ConfigError("event_return needs the journal: returners read it (journal: none)")
        created = ensure_sock_dir(cfg.sock_dir)
        self.access.prepare_sock_dir(created)
        self._lock.acquire()
        try:
            self.access.secure_file(self._lock.path)
            self.access.write_secret()
            journal: JournalSink = NoJournal()
            if self.journal_path is not None:
                # Until the returners know their cursors, retention keeps everything.
                self.retention_holds.hold(_STARTING)
                journal = await asyncio.to_thread(self._open_journal, self.journal_path)
                if cfg.event_return:
                    await asyncio.to_thread(self._start_returners, self.journal_path)
                self.retention_holds.release(_STARTING)
            busy = None
            if cfg.busy_poll_us:
                self._runnable = RunnableTasks()
                busy = BusyPoll(loop, cfg.busy_poll_us / 1e6, runnable=self._runnable)
            self._busy_poll = busy
            self._intake = Intake(
                self.fanout,
                journal,
                self.pull_connections,
                on_journaled=self._notify_journaled,
                on_indexed=self._notify_indexed,
                stamp_has_offset=cfg.generation.stamp_has_offset,
                on_error=cfg.journal_on_error,
                epoch=self.epoch,
                redact_body=_body_redactor(cfg),
                on_delivered=busy.poke if busy is not None else None,
            )
            self._laggards = laggards = Laggards(cfg, self._intake)
            self._state = state = ServerState(
                cfg,
                self.access,
                self.fanout,
                self._intake,
                subscribe=self.subscribe,
                stats=self.stats,
                report_dropped=laggards.report_dropped,
                report_backlog=laggards.report_backlog,
                pull_connections=self.pull_connections,
                subscriber_connections=self.subscriber_connections,
            )
            pull_sock = bind_listener(cfg.pull_address)
            try:
                pub_sock = bind_listener(cfg.pub_address)
            except BaseException:
                pull_sock.close()
                remove_socket_file(cfg.pull_address)
                raise
            self._listeners.append(
                await _serve(loop, lambda: SubscriberConnection(state), pub_sock)
            )
            self._listeners.append(await _serve(loop, lambda: PullConnection(state), pull_sock))
            self.access.secure_address(cfg.pub_address)
            self.access.secure_address(cfg.pull_address)
            self.pub_address = _bound_address(pub_sock, cfg.pub_address)
            self.pull_address = _bound_address(pull_sock, cfg.pull_address)
            self._sweeper = asyncio.create_task(self._sweep_stalled())
        except BaseException:
            self.access.remove_secret()
            await self._close_listeners()
            self._close_returners()
            self._close_journal()
            self._lock.release()
            raise
        self._started = time.monotonic()
        log.debug(
            "saltbus publisher (%s node, Salt %s framing, journal %s) serving %s and %s",
            cfg.node,
            cfg.salt_version,
            self.journal_path or "off",
            self.pub_address,
            self.pull_address,
        )

    def _open_journal(self, path: Path) -> JournalWriter | TailedWriter:
        with Journal.open(path, check=True, sock_dir=self.config.sock_dir) as journal:
            self.epoch = journal.claim_epoch()
        cfg = self.config
        writer: JournalWriter | TailedWriter
        if cfg.journal == "fsync":
            # On disk before the ack: every commit syncs SQLite's WAL, so a
            # tail in front (never synced) would only add a write.
            writer = JournalWriter(
                path,
                durability="fsync",
                max_age=cfg.journal_max_age,
                max_bytes=cfg.journal_max_bytes,
                holds=self.retention_holds.positions,
            )
        else:
            writer = TailedWriter(
                path,
                max_age=cfg.journal_max_age,
                max_bytes=cfg.journal_max_bytes,
                holds=self.retention_holds.positions,
            )
        writer.commit_observer = self.commit_observer
        writer.start()
        self._writer = writer
        self.retention_holds.on_change = writer.retain_now
        return writer

    def _start_returners(self, path: Path) -> None:
        runner = ReturnerRunner(self.config, path)
        runner.start()
        self.returners = runner
        for worker in runner.workers:
            self.retention_holds.hold(worker.cursor_name, worker.journal_position)

    def _notify_journaled(self, records: Sequence[JournalRecord]) -> None:
        for listener in self.commit_listeners:
            listener(records)

    def _notify_indexed(self, records: Sequence[JournalRecord]) -> None:
        last_seq = records[-1].seq
        if self.returners is not None:
            self.returners.notify(last_seq)
        for listener in self.index_listeners:
            listener(last_seq)

    def _close_returners(self) -> None:
        runner, self.returners = self.returners, None
        # Their holds stay: retention must not take what they left behind
        # while the journal is closing (they resume from it at the next start).
        if runner is not None:
            runner.close()

    def _close_journal(self) -> None:
        writer, self._writer = self._writer, None
        self.retention_holds.on_change = None
        if writer is not None:
            writer.close()

    async def serve(self) -> None:
        await self.startup()
        try:
            await self.wait_for_exit()
        finally:
            await self.shutdown()

    async def wait_for_exit(self) -> None:
        assert self._exit is not None, "startup() first"
        await self._exit.wait()

    def request_exit(self) -> None:
        """Ask the server to stop. Safe from a signal handler: it only sets a flag."""
        if self._exit is not None:
            self._exit.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_exit)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)

    def _hangup(self) -> None:
        # logrotate's postrotate: returners writing files open them again;
        # then what else runs in this process asked for (the reactor reloads).
        if self.returners is not None:
            self.returners.reopen()
        for handler in self.sighup_handlers:
            handler()

    async def shutdown(self) -> None:
        # Let connections already in the backlog be accepted (closing a listening
        # socket discards them, and their clients' writes vanish without an
        # error); stop taking connections; let what firing clients sent be read
        # and committed; give listeners a moment to read it; then close.
        await asyncio.sleep(SHUTDOWN_GRACE)
        await self._close_listeners()
        await asyncio.sleep(SHUTDOWN_GRACE)
        for pull in list(self.pull_connections):
            pull.close()
        intake = self._intake
        if intake is not None:
            try:
                await asyncio.wait_for(intake.drained(), DRAIN_TIMEOUT)
            except TimeoutError:
                log.error("journal did not finish committing within %s s", DRAIN_TIMEOUT)
            intake.close()
        if self._busy_poll is not None:
            self._busy_poll.close()
        if self._runnable is not None:
            self._runnable.close()
            self._runnable = None
        for task in list(self._replays):
            task.cancel()
        await self._drain_subscribers()
        for sub in list(self.subscriber_connections):
            sub.close()
        if self._laggards is not None:
            self._laggards.close()
        await asyncio.to_thread(self._close_returners)
        await asyncio.to_thread(self._close_journal)
        remove_socket_file(self.config.pub_address)
        remove_socket_file(self.config.pull_address)
        self.access.remove_secret()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._lock.release()
        await asyncio.sleep(0)  # let the transports run their connection_lost
        log.debug("saltbus publisher stopped; last seq %d", intake.last_seq if intake else 0)

    async def __aenter__(self) -> Server:
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # -- subscribers -------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, request: Subscribe) -> None:
        """Apply a saltbus listener's filter and, when asked, replay from the journal."""
        subscriber.resumable = True
        subscriber.patterns = tuple(f"{m}:{p}" for p, m in request.patterns)
        subscriber.name = request.name
        matchers = [tag_matcher(p, m) for p, m in request.patterns]
        subscriber.matcher = (
            None
            if not matchers
            else matchers[0]
            if len(matchers) == 1
            else (lambda tag: any(m(tag) for m in matchers))
        )
        since = request.since
        can_replay = (
            since is not None
            and self.journal_path is not None
            and request.epoch in (None, self.epoch)
            and since < self.intake.last_seq
        )
        if not can_replay or since is None:
            subscriber.write_direct(
                encode_control(Subscribed(self.intake.last_seq, self.epoch), subscriber.framing)
            )
            return
        # Everything up to `until` was delivered live before the hold: the
        # replay covers it, and live events after it wait in the queue.
        until = self.intake.last_seq
        subscriber.hold()
        pattern = request.patterns[0] if len(request.patterns) == 1 else None
        task = asyncio.create_task(self._replay(subscriber, since, until, pattern))
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def _replay(
        self, subscriber: Subscriber, since: int, until: int, pattern: tuple[str, MatchType] | None
    ) -> None:
        assert self.journal_path is not None
        path = self.journal_path
        try:
            if self._writer is not None:
                await wait_indexed(self._writer, until)
            first = await asyncio.to_thread(first_available, path)
            gaps = await asyncio.to_thread(gaps_in, path, since, until)
            subscriber.write_direct(
                encode_control(Subscribed(until, self.epoch, True, first, gaps), subscriber.framing)
            )
            sent = await replay(subscriber, path, since, until, pattern)
            log.debug("replayed %d events to %s", sent, subscriber.peer)
        except Exception as exc:
            log.error("replay to %s failed: %s", subscriber.peer, exc)
            subscriber.transport.close()
            return
        subscriber.release()

    @property
    def connection_count(self) -> int:
        return len(self.pull_connections) + len(self.subscriber_connections)

    async def _sweep_stalled(self) -> None:
        """Drop firing clients that sent part of a frame and then nothing for
        ``partial_frame_timeout``: each holds a buffer, and a few thousand such
        connections would otherwise hold the publisher's memory."""
        timeout = self.config.partial_frame_timeout
        interval = min(1.0, timeout / 2, self.config.subscriber_stall_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if self._laggards is not None:
                self._laggards.cut_loose_stuck(now)
            for pull in list(self.pull_connections):
                if pull.stalled_since(now) > timeout:
                    log.warning(
                        "closing pull connection from %s: half a frame and no data for %.0f s",
                        pull.peer,
                        timeout,
                    )
                    pull.close()

    # -- inspection --------------------------------------------------------

    def subscriber_stats(self) -> list[SubscriberStats]:
        return [s.stats() for s in self.fanout.subscribers if not s.inspector]

    def stats(self) -> dict[str, Any]:
        uptime = time.monotonic() - self._started
        delivered, dropped, lagged = self.fanout.totals()
        return self._source_stats() | {
            "node": self.config.node,
            "sock_dir": str(self.config.sock_dir),
            "salt_version": self.config.salt_version,
            "epoch": self.epoch,
            "last_seq": self.intake.last_seq,
            "received": self.intake.received,
            "delivered": delivered,
            "dropped": dropped,
            "lagged": lagged,
            "uptime": round(uptime, 3),
            "events_per_second": round(self.intake.received / uptime, 1) if uptime else 0.0,
            # The CPU the busy poll cost (busy_poll_us), since the start.
            "busy_poll_seconds": round(self._busy_poll.spent, 6) if self._busy_poll else 0.0,
            "journal": str(self.journal_path) if self.journal_path else None,
            "journal_in_flight": self.intake.in_flight,
            "journal_failures": self.intake.commit_failures,
            "journal_error": _failure_stats(self.intake),
            "journal_refused": self.intake.refused,
            # Events refused, by reason (acked fires the journal could not take,
            # and frames refused on the pull socket).
            "refused": {
                "journal_unavailable": self.intake.refused,
                **(self._state.refused if self._state is not None else {}),
            },
            "journal_holds": self.retention_holds.positions(),
            "pull_connections": len(self.pull_connections),
            "returners": self.returners.stats() if self.returners is not None else [],
            "subscribers": [
                {
                    "peer": s.peer,
                    "delivered": s.delivered,
                    "dropped": s.dropped,
                    "queued_events": s.queued_events,
                    "queued_bytes": s.queued_bytes,
                    "resumable": s.resumable,
                    "filtered": s.filtered,
                    "patterns": list(s.patterns),
                    "name": s.name,
                }
                for s in self.subscriber_stats()
            ],
        }

    def _source_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        for name, source in self.stats_sources.items():
            try:
                stats[name] = source()
            except Exception as exc:  # one part's bug must not cost all the statistics
                log.error("statistics of %s failed: %r", name, exc)
        return stats

    # -- helpers -----------------------------------------------------------

    async def _close_listeners(self) -> None:
        # close() stops accepting at once; wait_closed() is not awaited because
        # from Python 3.12 on it also waits for every open connection to end.
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        await asyncio.sleep(0)

    async def _drain_subscribers(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        while loop.time() < deadline and any(s.pending_bytes for s in self.subscriber_connections):
            await asyncio.sleep(0.01)


async def _serve(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    sock: socket.socket,
) -> asyncio.Server:
    if sock.family == socket.AF_UNIX:
        return await loop.create_unix_server(factory, sock=sock)
    return await loop.create_server(factory, sock=sock)


def _failure_stats(intake: Intake) -> dict[str, Any] | None:
    """Why the journal cannot commit now, since when, and what waits for it."""
    failure = intake.journal_failure
    if failure is None:
        return None
    return {
        "reason": failure.reason,
        "error": str(failure),
        "since": intake.failing_since,
        "held": intake.held,
    }


def _bound_address(sock: socket.socket, configured: Address) -> Address:
    if isinstance(configured, tuple):
        host, port = sock.getsockname()[:2]
        return (str(host), int(port))
    return configured


def _body_redactor(cfg: Config) -> Callable[[bytes], bytes] | None:
    redactor = redactor_for(cfg.redact) if cfg.redact_journal else None
    return None if redactor is None else redactor.redact_body
