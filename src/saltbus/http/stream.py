"""The events one HTTP connection is sent: live from the shared fan-out, or
caught up from the journal first.

A connection that starts fresh joins the fan-out (:class:`~saltbus.http.hub.Hub`).
A connection that resumes after ``since`` (SSE's ``Last-Event-ID``), or whose
fan-out queue overflowed, reads from a client of its own opened with ``since``:
the publisher replays its journal and then goes on live, with no gap and no
duplicate. Meanwhile the connection is a member of the fan-out again, and as
soon as its own client delivers an event as new as the oldest one waiting in
its fan-out queue, the two have met: it closes its own client and goes on from
the queue, skipping what it already sent. So catching up costs one bus
connection for as long as it takes, not for the life of the HTTP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

from saltbus.client import AsyncClient, Subscription
from saltbus.config import Config
from saltbus.errors import BusTimeoutError, NoPublisherError, SlowConsumerError
from saltbus.event import Event, MatchType, tag_matcher
from saltbus.http.hub import Hub, Member, MemberLaggedError
from saltbus.returners.redact import redactor_for

log = logging.getLogger("saltbus.http")

# How long a resume point ahead of the fan-out may take to be reached before
# it is taken to be from another numbering (a publisher restarted without a
# journal): then the connection starts live instead of waiting for ever.
AHEAD_GRACE: Final = 1.0
RETRY: Final = 0.5


class EventStream:
    """``async for batch in stream``: lists of events, in order; an empty list
    when ``idle`` seconds passed without one (time for a heartbeat)."""

    def __init__(
        self,
        hub: Hub,
        config: Config,
        *,
        may_read: Callable[[str], bool],
        tag: str = "",
        match_type: MatchType | None = None,
        since: int | None = None,
        idle: float = 15.0,
        queue_size: int = 10_000,
        batch: int = 500,
    ) -> None:
        self.hub = hub
        self.config = config
        self.tag = tag
        self.match_type = MatchType.parse(match_type, config.event_match_type)
        self._matches = tag_matcher(tag, self.match_type)
        self._may_read = may_read
        self.since = since
        self.idle = idle
        self.queue_size = queue_size
        self.batch = batch
        self.last_seq: int | None = None  # of the last event yielded
        self.catch_ups = 0  # how many times this stream read from a client of its own
        self._member: Member | None = None
        self._own: AsyncClient | None = None
        self._own_sub: Subscription | None = None
        self._own_connected = False
        self._own_position: int | None = None  # the last event the own client delivered
        # The config's redact rules: no value they match leaves the host
        # through the bridge (with redact_journal the events are redacted already).
        self._redactor = redactor_for(config.redact)

    @property
    def catching_up(self) -> bool:
        """Whether this stream reads from a client of its own (not the fan-out)."""
        return self._own is not None

    def accepts(self, event: Event) -> bool:
        return self._matches(event.tag) and self._may_read(event.tag)

    async def __aiter__(self) -> AsyncIterator[list[Event]]:
        try:
            await self._start()
            while True:
                batch = await (self._read_own() if self._own_sub else self._read_member())
                yield batch if self._redactor is None else self._redacted(batch)
        finally:
            await self.close()

    def _redacted(self, batch: list[Event]) -> list[Event]:
        assert self._redactor is not None
        redact = self._redactor.redact
        return [dataclasses.replace(e, data=redact(e.data)) for e in batch]

    async def close(self) -> None:
        if self._member is not None:
            self.hub.leave(self._member)
            self._member = None
        await self._close_own()

    async def _start(self) -> None:
        saltbus = self.config.served_by_saltbus()
        since = self.since if saltbus else None
        if since is not None:
            last = self.hub.last_seq
            if (
                last is not None
                and since > last
                and not await self.hub.wait_for_seq(since, AHEAD_GRACE)
            ):
                log.warning(
                    "resume point %d is ahead of the bus (at %s): the publisher's numbering "
                    "started again; sending live events",
                    since,
                    self.hub.last_seq,
                )
                since = None
        if since is None or since == self.hub.last_seq:
            # Nothing after the resume point was dispatched yet (or there is no
            # resume point): the fan-out alone delivers everything from here.
            # last_seq marks where this stream stands, so that it can catch up
            # from there if it ever overflows.
            self.last_seq = self.hub.last_seq if saltbus else None
            self._join()
            return
        self.last_seq = since
        self._join()
        await self._open_own(since)

    def _join(self) -> None:
        if self._member is not None:
            self.hub.leave(self._member)
        self._member = self.hub.join(self.accepts, self.queue_size)

    async def _read_member(self) -> list[Event]:
        assert self._member is not None
        try:
            events = await self._member.take(self.batch, self.idle)
        except MemberLaggedError:
            log.info("an HTTP client fell behind; it catches up from the journal")
            since = self.last_seq if self.last_seq is not None else self._member.origin
            self._join()
            if since is None or not self.config.served_by_saltbus():
                return []  # nothing to resume from: it lost what overflowed
            self.last_seq = since
            await self._open_own(since)
            return []
        if self._member.renumbered:
            self._member.renumbered = False
            self.last_seq = None
        return self._fresh(events)

    async def _open_own(self, since: int) -> None:
        await self._close_own()
        self.catch_ups += 1
        client = AsyncClient(self.config, since=since, reconnect=True)
        self._own_sub = client.subscribe(self.tag, self.match_type, max_pending=self.queue_size)
        self._own = client
        self._own_connected = False
        self._own_position = since

    async def _read_own(self) -> list[Event]:
        sub, client = self._own_sub, self._own
        assert sub is not None and client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle
        while not self._own_connected:
            try:
                await client.connect()
                self._own_connected = True
            except NoPublisherError:
                if loop.time() + RETRY > deadline:
                    return []
                await asyncio.sleep(RETRY)
        events: list[Event] = []
        overflowed = False
        try:
            events.append(await sub.next(max(0.0, deadline - loop.time())))
            while sub.pending and len(events) < self.batch:
                events.append(await sub.next(0))
        except BusTimeoutError:
            return []
        except SlowConsumerError:
            # What was queued before the overflow is complete and in order:
            # send it, then start a client again after it.
            overflowed = True
            while sub.pending:
                events.append(await sub.next(0))
        for event in events:
            if event.seq is not None:
                self._own_position = event.seq
        fresh = self._fresh([e for e in events if self.accepts(e)])
        if overflowed and self._own_position is not None:
            await self._open_own(self._own_position)
        else:
            await self._maybe_hand_over()
        return fresh

    async def _maybe_hand_over(self) -> None:
        member = self._member
        if member is None or member.lagged:
            # The fan-out queue overflowed while catching up: join again.
            self._join()
            return
        head = member.head_seq()
        position = self._own_position
        if head is not None and position is not None and position >= head - 1:
            # Every accepted event before the queue's oldest was sent: go on
            # from the queue (_fresh drops the overlap).
            await self._close_own()

    async def _close_own(self) -> None:
        client, self._own, self._own_sub = self._own, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def _fresh(self, events: list[Event]) -> list[Event]:
        """Drop what was already sent (the overlap when the two sources meet)."""
        last = self.last_seq
        fresh = []
        for event in events:
            if event.seq is not None:
                if last is not None and event.seq <= last:
                    continue
                last = event.seq
            fresh.append(event)
        self.last_seq = last
        return fresh
