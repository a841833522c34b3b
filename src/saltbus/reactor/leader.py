"""``reactor_scope: leader``: one reactor of a federated cluster reacts to
every event (fired on any node), elected through a NATS JetStream key-value
lease; another takes over when it dies.

The lease is the key ``<reactor_name>`` of the bucket ``saltbus-reactor``,
whose entries expire after ``reactor_leader_ttl`` seconds: the leader
rewrites it (compare-and-set on its revision) every third of that, a
follower tries to create it as often, so a dead leader is replaced within
about one TTL.

Events are named across nodes by their origin: ``(node, seq on that node)``
(the importer's ``_saltbus_origin`` marker, or this node's own seq). The
leader publishes, per origin, the seq up to which every reaction has run
(key ``<reactor_name>.done``), every ``MARK_INTERVAL`` while they advance
(and with every renewal of the lease). A follower keeps the
events that would react (bounded by ``reactor_worker_hwm``) until that mark
covers them; when it takes over it runs the ones the dead leader had not
marked done. So across a leader crash reactions run at least once: those
the old leader ran after its last published mark run again (duplicates
bounded by ``MARK_INTERVAL`` of reactions, plus those in flight). The marks
are published far more often than the lease is renewed because each
publication shrinks what a takeover runs twice, and costs one small put.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from saltbus.errors import BusError
from saltbus.event import Event
from saltbus.reactor.causes import ORIGIN_KEY
from saltbus.reactor.progress import Progress

log = logging.getLogger("saltbus.reactor")

BUCKET: Final = "saltbus-reactor"
CONNECT_TIMEOUT: Final = 10.0
MARK_INTERVAL: Final = 0.1
Origin = tuple[str, int]
OnTakeover = Callable[[list[Event]], None]


def origin_of(event: Event, node: str) -> Origin | None:
    marker = event.data.get(ORIGIN_KEY) if isinstance(event.data, Mapping) else None
    if isinstance(marker, Mapping) and isinstance(marker.get("seq"), int):
        return str(marker.get("node")), int(marker["seq"])
    return (node, event.seq) if event.seq is not None else None


class Leadership:
    """The lease and the per-origin marks (see the module's doc)."""

    def __init__(
        self,
        servers: list[str],
        connect_kwargs: Mapping[str, Any],
        node: str,
        name: str,
        ttl: float,
        buffer_size: int,
    ) -> None:
        self.node = node
        self.is_leader = False
        self.takeovers = 0
        self.buffer_dropped = 0
        self._servers = servers
        self._connect_kwargs = dict(connect_kwargs)
        self._key = name
        self._done_key = f"{name}.done"
        self._ttl = ttl
        self._progress: dict[str, Progress] = {}
        self._covered: dict[str, int] = {}
        self._published: dict[str, int] = {}
        self._buffer: deque[tuple[Origin, Event]] = deque()
        self._buffer_size = buffer_size
        self._nc: Any = None
        self._kv: Any = None
        self._revision = 0
        self._task: asyncio.Task[None] | None = None
        self._on_takeover: OnTakeover | None = None

    # -- what the engine tells it ------------------------------------------

    def seen(self, origin: Origin | None, jobs: int) -> None:
        if origin is not None:
            self._progress.setdefault(origin[0], Progress(None)).seen(origin[1], jobs)

    def done(self, origin: Origin | None) -> None:
        if origin is not None and origin[0] in self._progress:
            self._progress[origin[0]].done(origin[1])

    def keep(self, origin: Origin | None, event: Event) -> None:
        """A follower keeps an event that would react, until the leader marks it done."""
        if origin is None or origin[1] <= self._covered.get(origin[0], 0):
            return
        if len(self._buffer) >= self._buffer_size:
            self._buffer.popleft()
            self.buffer_dropped += 1
            if self.buffer_dropped == 1 or self.buffer_dropped % 1000 == 0:
                log.warning(
                    "reactor leadership: %d events dropped from the takeover buffer (the "
                    "leader's marks are not advancing); a takeover now would miss them",
                    self.buffer_dropped,
                )
        self._buffer.append((origin, event))

    # -- the lease -------------------------------------------------------------

    async def start(self, on_takeover: OnTakeover) -> None:
        import nats  # noqa: PLC0415
        from nats.js.api import KeyValueConfig  # noqa: PLC0415
        from nats.js.errors import BucketNotFoundError  # noqa: PLC0415

        self._on_takeover = on_takeover
        try:
            # Reconnects go on forever once connected; the first connection
            # gets CONNECT_TIMEOUT, then the reactor fails with the reason.
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=self._servers,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    error_cb=self._on_error,
                    **self._connect_kwargs,
                ),
                CONNECT_TIMEOUT,
            )
            js = self._nc.jetstream()
            try:
                self._kv = await js.key_value(BUCKET)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(
                    KeyValueConfig(bucket=BUCKET, history=1, ttl=self._ttl)
                )
            await self._round()
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            why = str(exc) or (
                f"no connection in {CONNECT_TIMEOUT:g} s" if isinstance(exc, TimeoutError) else ""
            )
            raise BusError(
                f"reactor_scope leader: cannot use NATS at {', '.join(self._servers)} for "
                f"the lease: {why or type(exc).__name__}"
            ) from None
        self._task = asyncio.create_task(self._run(), name="reactor-leadership")

    async def _on_error(self, exc: Exception) -> None:
        log.debug("reactor leadership: NATS: %r", exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time() + self._ttl / 3
        while True:
            await asyncio.sleep(min(MARK_INTERVAL, self._ttl / 3))
            try:
                if loop.time() < next_round:
                    if self.is_leader:
                        await self._publish_marks()
                    continue
                next_round = loop.time() + self._ttl / 3
                await self._round()
            except Exception as exc:  # NATS down: the lease lapses, others take over
                if self.is_leader:
                    log.error("reactor leadership lost (%s): stepping down", exc)
                    self.is_leader = False
                else:
                    log.warning("reactor leadership: %s", exc)

    async def _round(self) -> None:
        from nats.js.errors import KeyWrongLastSequenceError  # noqa: PLC0415

        if self.is_leader:
            try:
                self._revision = await self._kv.update(
                    self._key, self.node.encode(), last=self._revision
                )
            except KeyWrongLastSequenceError:
                log.error("reactor leadership lost to another node: stepping down")
                self.is_leader = False
                return
            await self._publish_marks(always=True)
            return
        await self._read_marks()
        try:
            self._revision = await self._kv.create(self._key, self.node.encode())
        except KeyWrongLastSequenceError:
            return
        await self._read_marks()
        self.is_leader = True
        self.takeovers += 1
        # The marks carry on from the old leader's.
        for node, mark in self._covered.items():
            progress = self._progress.setdefault(node, Progress(None))
            if progress.mark is None or progress.mark < mark:
                progress.seen(mark, 0)
        pending = [
            event for origin, event in self._buffer if origin[1] > self._covered.get(origin[0], 0)
        ]
        self._buffer.clear()
        log.warning(
            "reactor leadership taken by %s; %d events the old leader had not marked done "
            "are run now",
            self.node,
            len(pending),
        )
        assert self._on_takeover is not None
        self._on_takeover(pending)

    async def _publish_marks(self, *, always: bool = False) -> None:
        marks = {n: p.mark for n, p in self._progress.items() if p.mark is not None}
        if marks == self._published and not always:
            return
        await self._kv.put(self._done_key, json.dumps(marks).encode())
        self._published = marks

    async def _read_marks(self) -> None:
        from nats.js.errors import KeyNotFoundError  # noqa: PLC0415

        try:
            entry = await self._kv.get(self._done_key)
        except KeyNotFoundError:
            return
        if entry.value:
            marks = json.loads(entry.value)
            self._covered = {str(k): int(v) for k, v in marks.items()}
        while self._buffer and self._buffer[0][0][1] <= self._covered.get(self._buffer[0][0][0], 0):
            self._buffer.popleft()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.is_leader and self._kv is not None:
            # A clean stop hands over at once (marks first, then the lease).
            with contextlib.suppress(Exception):
                await self._publish_marks(always=True)
                await self._kv.delete(self._key)
        self.is_leader = False
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
