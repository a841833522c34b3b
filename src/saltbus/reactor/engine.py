"""The reactor: events in, reactions out, through a bounded pool.

One asyncio task reads every event of the bus and dispatches it: the tag is
matched against the ``reactor:`` globs (fnmatch, as Salt), each matching
file is rendered for the event, and each of its reactions passes its
``when:``, the loop guard and ``once_within`` before it is queued to the
bounded worker pool (:mod:`.pool`), so a burst costs a bounded amount of
memory and a full queue is reported, never silent. Every outcome is fired as
``saltbus/reactor/<name>/ret`` (:mod:`.outbox`). Rules over several events
(``reactor_rules:``, :mod:`.multi`) see every event too; one that fires is
handled as the event ``saltbus/rule/<name>``. The reactor also owns its
lifecycle: the pid file, catch-up from its saved position, leadership, reload.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from saltbus.client.aio import AsyncClient, Subscription
from saltbus.config import Config
from saltbus.errors import (
    BusClosedError,
    BusError,
    NoPublisherError,
    SaltbusError,
    SlowConsumerError,
)
from saltbus.event import Event
from saltbus.reactor import reports
from saltbus.reactor.actions import Trigger
from saltbus.reactor.causes import cause_of, origin_node
from saltbus.reactor.errors import ReactionFileError
from saltbus.reactor.gates import Gates
from saltbus.reactor.leader import Leadership, Origin, origin_of
from saltbus.reactor.missing_watch import MissedReturns
from saltbus.reactor.multi.runner import TICK, Fired, RuleRunner
from saltbus.reactor.outbox import Outbox, about
from saltbus.reactor.pool import Job, WorkerPool
from saltbus.reactor.progress import (
    Backlog,
    PidFile,
    Progress,
    backlog,
    bus_journal,
    pid_path,
    position_store,
)
from saltbus.reactor.reports import Stats
from saltbus.reactor.rules import Rules
from saltbus.reactor.templates import ReactionTemplate
from saltbus.reactor.watchdog import SubscriptionWatchdog

log = logging.getLogger("saltbus.reactor")

DRAIN_TIMEOUT: Final = 30.0
CONNECT_RETRY: Final = 1.0
YIELD_EVERY: Final = 64

Loader = Callable[[], tuple[Config, Rules]]


class Reactor:
    """Runs ``rules`` against the bus of ``config`` until :meth:`stop`.

    ``loader`` gives a fresh ``(config, rules)`` on :meth:`request_reload`
    (SIGHUP); when it raises, the running configuration stays.
    """

    def __init__(
        self,
        config: Config,
        rules: Rules,
        *,
        loader: Loader | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.config = config
        self.rules = rules
        self.max_depth = config.reactor_max_depth
        self.stats = Stats()
        self._loader = loader
        self._leadership = leadership
        # With federation, ret events name the node (as the cluster's settings
        # default it: the bus's id, else the short host name).
        node: str | None = None
        if config.cluster:
            name = config.cluster.get("node_name") or config.id
            node = str(name or socket.gethostname().split(".", 1)[0])
        self._outbox = Outbox(self.stats, node)
        self._pool = WorkerPool(config, self.stats, self._outbox, self._release)
        self._gates = Gates(self.stats, lambda r, t, o: self._outbox.finished(r, t, o, 0.0))
        self._multi = RuleRunner(rules.multi)  # reactor_rules: several events at once
        self._missing: MissedReturns | None = None
        if config.reactor_missing_returns:
            self._missing = MissedReturns(config, self._outbox.report)
        self._client: AsyncClient | None = None
        self.watchdog: SubscriptionWatchdog | None = None
        self._progress = Progress(None)
        self._pidfile: PidFile | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._stopping = False
        self.caught_up_from: int | None = None
        # What it found to catch up on at start (None: nothing saved, or no journal).
        self.backlog: Backlog | None = None
        # Why the reactor stopped by itself (a task of its own ended): see _supervise.
        self.failure: str | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Take the pid file, connect (waiting for a publisher) and start."""
        config = self.config
        self._pidfile = PidFile(pid_path(config))
        self._pidfile.acquire()
        try:
            store = position_store(config) if bus_journal(config).exists() else None
            self._progress = Progress(store)
            saved = store.load() if store is not None and config.reactor_catch_up else None
            epoch, since = saved if saved else (None, None)
            journal = bus_journal(config) if store is not None else None
            self._multi.open(journal, config.reactor_name, epoch)
            self._progress.before_save = self._multi.save
            client = AsyncClient(config, since=since)
            client.session.epoch = epoch
            # Subscribe before connecting: a replay starts as soon as we connect.
            subscription = client.subscribe("")
            await self._connect(client)
        except BaseException:
            self._pidfile.release()
            raise
        self._client = client
        self._outbox.client = client
        self.caught_up_from = since
        if since is not None:
            self.backlog = await self._find_backlog(since, epoch)
            if self.backlog is not None and self.backlog.first is not None:
                self._multi.catching_up(self.backlog.last)
        if self._missing is not None:
            await self._missing.start(since)
        self._tasks = [asyncio.create_task(self._ingest(subscription), name="reactor-ingest")]
        self._tasks.append(asyncio.create_task(self._tick_rules(), name="reactor-rules"))
        self._tasks += self._pool.start()
        if config.reactor_watchdog > 0:
            self.watchdog = SubscriptionWatchdog(
                client, config.reactor_watchdog, config.reactor_name
            )
            self._tasks.append(asyncio.create_task(self.watchdog.run(), name="reactor-watchdog"))
        self._react_to_rules(self._multi.unfinished())  # a crash cut them short
        for task in self._tasks:
            task.add_done_callback(self._supervise)
        if self._leadership is not None:
            try:
                await self._leadership.start(self._take_over)
            except BaseException:
                await self.stop()
                raise

    async def _find_backlog(self, since: int, epoch: int | None) -> Backlog | None:
        """Say how far back a restarted reactor reaches: it is about to run
        reactions for events that may be minutes or days old."""
        try:
            found = await asyncio.to_thread(backlog, bus_journal(self.config), since, epoch)
        except SaltbusError as exc:
            log.warning(
                "catching up on the events after seq %d (how many is unknown: %s)", since, exc
            )
            return None
        if found is not None:
            log.info("%s", found.describe(time.time()))
        return found

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """A reactor that stopped reading or running, and said nothing, would
        look idle while events go unhandled: a task that ends other than by
        stop() is logged and stops the reactor (`saltbus react` exits 1, so a
        service manager restarts it, and catch-up handles what it missed)."""
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        self.failure = f"{task.get_name()} ended: {exc!r}" if exc else f"{task.get_name()} ended"
        log.critical("reactor stops: %s", self.failure, exc_info=exc)
        self.request_stop()

    async def _connect(self, client: AsyncClient) -> None:
        waiting = False
        while True:
            try:
                await client.connect(CONNECT_RETRY)
                return
            except NoPublisherError as exc:
                if not waiting:
                    log.warning("%s; waiting for it", exc)
                    waiting = True

    def journal_position(self) -> int | None:
        """Every event up to this seq is handled (None before the reactor
        knows): what it would catch up from if it stopped now."""
        mark = self._progress.mark
        if mark is None and self._client is not None:
            mark = self._client.session.last_seq
        return mark

    def stats_dict(self) -> dict[str, Any]:
        """Its statistics, and the reactions waiting for a worker now."""
        missing = self._missing.stats() if self._missing is not None else {}
        rules = {"rules": self._multi.counts()} if self._multi else {}
        return self.stats.as_dict() | self._pool.stats() | missing | rules

    def raise_if_failed(self) -> None:
        """Raise BusError naming the cause if the reactor stopped by itself
        (see _supervise): what `saltbus react` and `saltbus serve` exit 1 with."""
        if self.failure is not None:
            raise BusError(f"the reactor stopped: {self.failure}")

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop. Safe from a signal handler."""
        self._stop.set()

    async def wait_for_stop(self) -> None:
        await self._stop.wait()

    async def run(self) -> None:
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    async def stop(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop reading, let queued reactions finish (up to ``timeout``), save
        the position and close. Reactions still running then are cancelled;
        the saved position makes a restart run them again."""
        if not self._tasks:
            return
        self._stopping = True
        ingest, ticker = self._tasks[:2]
        for task in (ingest, ticker):
            task.cancel()
        await asyncio.gather(ingest, ticker, return_exceptions=True)  # _supervise reported
        if not await self._pool.drain(timeout):
            log.warning(
                "%d reactions not finished after %g s; cancelled, %d commands killed (they "
                "run again after a restart with catch-up)",
                self._progress.in_flight,
                timeout,
                self._pool.kill_commands(),
            )
        await self._pool.stop()
        self._tasks = []
        await self._outbox.drain()
        self._progress.save()
        self._multi.close(self._progress.epoch)
        if self._missing is not None:
            await self._missing.close()
        if self._leadership is not None:
            await self._leadership.close()
        await self._pool.close()
        if self._client is not None:
            await self._client.close()
        if self._pidfile is not None:
            self._pidfile.release()
        log.info("reactor stopped: %s", self.stats)

    # -- reading and dispatching --------------------------------------------

    async def _ingest(self, subscription: Subscription) -> None:
        since_yield = 0
        while True:
            await self._pool.room()  # backpressure: locked reactions are never dropped
            try:
                event = await subscription.next()
                if self.watchdog is not None:
                    self.watchdog.saw()
            except SlowConsumerError as exc:
                log.error("reactor fell behind the bus: %s", exc)
                self._outbox.report(reports.OVERFLOW_TAG, {"error": str(exc)})
                continue
            except BusClosedError:
                return
            try:
                self._dispatch(event)
            except Exception:  # one event must never stop the reactor
                self.stats.internal_errors += 1
                log.exception(
                    "reactor failed on %s (seq %s); going on",
                    event.tag,
                    event.seq,
                    extra=about(event.tag, event.seq),
                )
            # next() returns without yielding while events are waiting: let
            # the workers run when they have work (a loop turn costs a poll,
            # so not after every event that queued nothing).
            since_yield += 1
            if since_yield >= YIELD_EVERY or not self._pool.empty():
                since_yield = 0
                await asyncio.sleep(0)

    def _dispatch(self, event: Event) -> None:
        self.stats.events += 1
        if self._missing is not None:
            self._missing.observe(event)
        templates = self.rules.match(event.tag)
        # Its own node's reactor reacts to it: once across the cluster.
        ours = self.config.reactor_scope != "local" or not origin_node(event.data)
        if templates and not ours:
            self.stats.other_nodes += 1
            templates = []
        origin = None
        if self._leadership is not None:
            origin = origin_of(event, self._leadership.node)
            if not self._leadership.is_leader:
                if templates:
                    self._leadership.keep(origin, event)
                    self.stats.other_nodes += 1
                templates = []
                ours = False
        queued = self._react(event, templates, origin) if templates else 0
        if self._multi:
            queued += self._react_to_rules(self._multi.event(event, feed=ours))
        if self._leadership is not None and self._leadership.is_leader:
            self._leadership.seen(origin, queued)
        if self._client is not None:
            self._progress.epoch = self._client.session.epoch
        self._progress.seen(event.seq, queued)

    def _react_to_rules(self, fired: list[Fired]) -> int:
        """Rules that fired: each is an event saltbus/rule/<name> to react to."""
        queued = 0
        for tag, data, seq, firing in fired:
            templates = self.rules.match(tag)
            jobs = self._react(Event(tag, data, seq), templates, firing=firing) if templates else 0
            self._multi.queued(firing, jobs)
            queued += jobs
        return queued

    async def _tick_rules(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._react_to_rules(self._multi.tick(self._progress.epoch))

    def _take_over(self, events: list[Event]) -> None:
        """Leadership taken: run what the old leader had not marked done."""
        assert self._leadership is not None
        for event in events:
            origin = origin_of(event, self._leadership.node)
            templates = self.rules.match(event.tag)
            self._leadership.seen(origin, self._react(event, templates, origin))

    def _react(
        self,
        event: Event,
        templates: list[ReactionTemplate],
        origin: Origin | None = None,
        *,
        firing: str | None = None,
    ) -> int:
        self.stats.matched += 1
        trigger = Trigger(event.tag, event.data, event.seq, cause_of(event.data))
        queued = 0
        stopped: list[str] = []
        for template in templates:
            try:
                reactions = template.render(event.tag, event.data)
            except ReactionFileError as exc:
                self.stats.render_errors += 1
                log.error("on %s: %s", event.tag, exc, extra=about(event.tag, event.seq))
                self._outbox.report(reports.ERROR_TAG, reports.error_data(trigger, exc))
                continue
            for reaction in reactions:
                if reaction.when is not None and not self._gates.when(reaction, trigger):
                    continue
                if trigger.cause.depth >= self.max_depth:
                    stopped.append(reaction.name)
                    continue
                if reaction.once_within is not None and not self._gates.allowed(reaction, trigger):
                    continue
                if self._pool.add(Job(reaction, trigger, origin, firing=firing)):
                    queued += 1
                    self.stats.queued += 1
        if stopped:
            self._outbox.loop_stopped(trigger, stopped, self.max_depth)
        return queued

    def _release(self, job: Job) -> None:
        """A job is done with its event (the pool says so)."""
        self._progress.done(job.trigger.seq)
        if job.firing is not None:
            self._multi.finished(job.firing)
        if self._leadership is not None:
            self._leadership.done(job.origin)

    # -- reloading -------------------------------------------------------------

    def request_reload(self) -> None:
        """Re-read the configuration (SIGHUP). Safe from a signal handler."""
        if self._loader is None:
            log.warning("this reactor was not given a configuration to reload")
            return
        self._outbox.spawn(self._reload())

    async def _reload(self) -> None:
        assert self._loader is not None
        async with self._reload_lock:
            try:
                config, rules = await asyncio.to_thread(self._loader)
            except Exception as exc:  # a bad file must never stop a running reactor
                log.error("reload failed; the running configuration stays: %s", exc)
                await self._outbox.publish(
                    reports.RELOAD_TAG, {"success": False, "error": str(exc)}
                )
                return
            for name in (
                "reactor_worker_threads",
                "reactor_worker_hwm",
                "reactor_name",
                "reactor_missing_returns",
                "reactor_missing_returns_timeout",
                "reactor_missing_returns_max_jobs",
            ):
                if getattr(config, name) != getattr(self.config, name):
                    log.warning("%s changed; it takes effect at the next start", name)
            self.rules = rules
            self._multi.replace(rules.multi)
            self._react_to_rules(self._multi.unfinished())  # rules back: their state is read
            self.max_depth = config.reactor_max_depth
            self.stats.reloads += 1
            log.info(
                "reloaded: %d tag globs, %d reaction files",
                len(rules.rules),
                rules.files,
            )
            await self._outbox.publish(
                reports.RELOAD_TAG,
                {"success": True, "globs": len(rules.rules), "files": rules.files},
            )
