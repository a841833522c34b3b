"""Live fan-out of one bus connection to many HTTP clients.

The bridge holds ONE :class:`AsyncClient` subscribed to everything and copies
each event into the bounded queue of every :class:`Member` (an SSE or
WebSocket connection) whose filter accepts it. Nothing a member does can slow
the others: a member whose queue is full is marked *lagged* and dropped from
the fan-out; its connection then catches up from the journal on a client of
its own (:mod:`saltbus.http.stream`). A member's queue is complete from its
first event on, until it lags: that is what lets a catching-up connection
switch back to the fan-out without a gap or a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from saltbus.client import AsyncClient
from saltbus.config import Config
from saltbus.errors import BusClosedError, NoPublisherError, SlowConsumerError
from saltbus.event import Event
from saltbus.http.tasks import stop

log = logging.getLogger("saltbus.http")

CONNECT_RETRY: Final = 0.5
FIRE_TIMEOUT: Final = 5.0


class MemberLaggedError(SlowConsumerError):
    """The member's queue overflowed (or the fan-out lost events): what was
    queued is gone, and the connection must catch up from the journal. A
    :class:`SlowConsumerError`, as a subscription's overflow is."""


class _Renumbered:
    """Queued where the publisher's numbering started again."""


RENUMBERED: Final = _Renumbered()


class Member:
    """One connection's place in the fan-out: a filter and a bounded queue."""

    def __init__(self, accepts: Callable[[Event], bool], maxsize: int, origin: int | None) -> None:
        self.accepts = accepts
        self.maxsize = maxsize
        self.lagged = False
        # The bus position when the member joined: every accepted event after
        # it is queued (until the member lags). None until the hub knows it.
        self.origin = origin
        # Set when take() passed the point where the numbering started again:
        # the events it returned are numbered anew.
        self.renumbered = False
        self._queue: deque[Event | _Renumbered] = deque()
        self._wakeup = asyncio.Event()

    def offer(self, event: Event) -> None:
        if self.lagged or not self.accepts(event):
            return
        if len(self._queue) >= self.maxsize:
            self.mark_lagged()
            return
        self._queue.append(event)
        self._wakeup.set()

    def mark_renumbered(self) -> None:
        if not self.lagged:
            self._queue.append(RENUMBERED)

    def mark_lagged(self) -> None:
        self.lagged = True
        self._queue.clear()
        self._wakeup.set()

    def head_seq(self) -> int | None:
        """The sequence number of the oldest queued event, if any."""
        head = self._queue[0] if self._queue else None
        return head.seq if isinstance(head, Event) else None

    async def take(self, limit: int, timeout: float) -> list[Event]:
        """Up to ``limit`` queued events, waiting at most ``timeout`` seconds for
        the first; ``[]`` when none came. Raises :class:`MemberLaggedError`."""
        if not self._queue and not self.lagged:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        if self.lagged:
            raise MemberLaggedError
        events: list[Event] = []
        while self._queue and len(events) < limit:
            item = self._queue.popleft()
            if isinstance(item, Event):
                events.append(item)
            elif events:
                self._queue.appendleft(item)  # the events before it first
                break
            else:
                self.renumbered = True
        return events


class Hub:
    """The shared bus connection of one bridge: fan-out to members, and firing."""

    def __init__(
        self, config: Config, *, max_pending: int = 100_000, fire_timeout: float = FIRE_TIMEOUT
    ) -> None:
        self.config = config
        self.fire_timeout = fire_timeout
        self.client = AsyncClient(config, reconnect=True)
        self._subscription = self.client.subscribe("", max_pending=max_pending)
        self._members: set[Member] = set()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.last_seq: int | None = None  # of the last event handed to the members
        self._progress = asyncio.Event()

    def start(self) -> None:
        """Start reading (idempotent). The publisher need not be up yet: the
        hub keeps trying, and members simply wait."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="saltbus-http-hub")

    @property
    def started(self) -> bool:
        return self._task is not None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop(task)
        await self.client.close()
        for member in list(self._members):
            member.mark_lagged()
        self._members.clear()

    def join(self, accepts: Callable[[Event], bool], maxsize: int) -> Member:
        """A new member; it is offered every event dispatched from now on."""
        member = Member(accepts, maxsize, self.last_seq)
        self._members.add(member)
        return member

    def leave(self, member: Member) -> None:
        self._members.discard(member)

    @property
    def members(self) -> int:
        return len(self._members)

    async def wait_for_seq(self, seq: int, timeout: float) -> bool:
        """Wait until events up to ``seq`` were dispatched; False after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.last_seq is None or self.last_seq < seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    async def fire(self, tag: str, data: Mapping[str, Any]) -> Event:
        """Fire an event; acknowledged (so it carries its ``seq``) when the
        publisher is saltbus's, plain otherwise (Salt's never acknowledges)."""
        ack = self.config.served_by_saltbus()
        return await self.client.fire(tag, data, self.fire_timeout, ack=ack)

    async def _run(self) -> None:
        waiting = False
        while True:
            try:
                await self.client.connect()
                break
            except NoPublisherError as exc:
                if not waiting:
                    log.info("waiting for a publisher (%s); streams stay open meanwhile", exc)
                    waiting = True
                await asyncio.sleep(CONNECT_RETRY)
        self.connected.set()
        log.info("connected to the bus at %s", self.config.sock_dir)
        while True:
            try:
                event = await self._subscription.next()
            except SlowConsumerError as exc:
                # Events are gone for every member: each catches up on its own.
                log.warning("HTTP fan-out fell behind the bus (%s); members resume", exc)
                for member in self._members:
                    member.mark_lagged()
                self._members.clear()
                continue
            except BusClosedError:
                return
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        if event.seq is not None:
            if self.last_seq is None:
                # The hub reads every event, so the bus stood just before this one.
                for member in self._members:
                    if member.origin is None:
                        member.origin = event.seq - 1
            elif event.seq <= self.last_seq:
                log.warning(
                    "the publisher's numbering started again (restarted without a journal?)"
                )
                for member in self._members:
                    member.mark_renumbered()
        for member in self._members:
            member.offer(event)
        lagged = [m for m in self._members if m.lagged]
        for member in lagged:
            self._members.discard(member)
        if event.seq is not None:
            self.last_seq = event.seq
        self._progress.set()
