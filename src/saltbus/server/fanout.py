"""Fan-out: handing numbered events to every subscriber's bounded queue.

No sockets here, only a write-transport per subscriber, so the policy (order,
bounds, what happens when a reader stalls) can be tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saltbus.control import Lagged, encode_control
from saltbus.event import TagMatcher
from saltbus.journal.records import JournalRecord
from saltbus.wire import Framing, encode_event_frame, encode_event_frames, encode_frame

log = logging.getLogger("saltbus.server")

# Once a subscriber's kernel buffer and this much in its transport are full,
# frames wait in the subscriber's own queue, where they can be counted and dropped.
TRANSPORT_HIGH_WATER = 256 * 1024
FLUSH_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class SubscriberStats:
    peer: str
    delivered: int
    dropped: int
    queued_events: int
    queued_bytes: int
    resumable: bool = False
    filtered: bool = False
    patterns: tuple[str, ...] = ()
    name: str | None = None


class Subscriber:
    """One listener: a bounded queue in front of its transport.

    While the transport accepts data, frames go straight to it. When it pauses
    (the reader is not keeping up) or a replay is being sent, frames queue
    here. Past ``max_events`` or ``max_bytes``:

    - a resumable saltbus subscriber is sent a :class:`Lagged` notice and
      disconnected, and resumes from the journal without loss;
    - a Salt subscriber, which cannot resume, is *backlogged*: with an
      ``on_backlog`` handler (the publisher's), the firing side is slowed
      until the queue is back under half its bounds, so a reader that keeps
      reading loses nothing to a burst. One that makes no progress for the
      stall timeout is *stuck*: the publisher calls :meth:`cut_loose`;
    - without a handler, it loses its oldest queued events (counted, and
      reported through ``on_dropped``).

    Either way a stalled reader costs bounded memory.
    """

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        peer: str,
        *,
        max_events: int,
        max_bytes: int,
        matcher: TagMatcher | None = None,
        framing: Framing = Framing.BARE,
        on_dropped: Callable[[Subscriber, int], None] | None = None,
        on_backlog: Callable[[Subscriber, bool], None] | None = None,
    ) -> None:
        self.transport = transport
        self.peer = peer
        self.matcher = matcher
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.framing = framing
        self.resumable = False
        # Its tag filter as text, for statistics ("startswith:salt/auth").
        self.patterns: tuple[str, ...] = ()
        self.name: str | None = None  # what a saltbus listener calls itself
        # A connection that only asks for statistics: not shown in them.
        self.inspector = False
        self.delivered = 0
        self.dropped = 0
        self.lagged_out = False
        self.closed = False
        self._on_dropped = on_dropped
        self._on_backlog = on_backlog
        self.backlogged = False
        # When the reader last took data (its transport was writable again).
        self.last_progress = time.monotonic()
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._paused = False
        self._holding = False  # a replay is being written; live frames wait
        self._lagging = False
        self._writable = asyncio.Event()
        self._writable.set()
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)

    # -- live frames ---------------------------------------------------------

    def offer(self, frames: list[bytes], blob: bytes | None = None) -> None:
        """Deliver frames (``blob`` is their concatenation, when already made)."""
        if self.closed:
            return
        if not self._queue and not self._paused and not self._holding:
            self.transport.write(blob if blob is not None else b"".join(frames))
            self.delivered += len(frames)
            return
        self._queue.extend(frames)
        self._queued_bytes += sum(len(f) for f in frames)
        self._trim()

    def _trim(self) -> None:
        if len(self._queue) <= self.max_events and self._queued_bytes <= self.max_bytes:
            return
        if self.resumable:
            self.disconnect_lagged()
            return
        if self._on_backlog is not None:
            # Memory stays bounded: the publisher stops reading what is fired,
            # so what still comes is what it had read already.
            if not self.backlogged:
                self.backlogged = True
                self._on_backlog(self, True)
            return
        dropped = 0
        while len(self._queue) > self.max_events or self._queued_bytes > self.max_bytes:
            self._queued_bytes -= len(self._queue.popleft())
            dropped += 1
        self.dropped += dropped
        if not self._lagging:
            self._lagging = True
            log.warning(
                "subscriber %s is not reading; dropping its oldest events (queue full: "
                "%d events or %d bytes)",
                self.peer,
                self.max_events,
                self.max_bytes,
            )
        if self._on_dropped is not None:
            self._on_dropped(self, dropped)

    def disconnect_lagged(self) -> None:
        """Tell a resumable subscriber it fell behind, and close its connection."""
        log.warning(
            "subscriber %s fell behind (%d events queued); disconnecting it to resume "
            "from the journal",
            self.peer,
            len(self._queue),
        )
        self._queue.clear()
        self._queued_bytes = 0
        self.closed = True
        self.lagged_out = True
        self.transport.write(encode_control(Lagged(self.delivered), self.framing))
        self.transport.close()

    # -- flow control ----------------------------------------------------------

    def pause(self) -> None:
        self._paused = True
        self._writable.clear()

    def resume(self) -> None:
        self._paused = False
        self.last_progress = time.monotonic()
        self._writable.set()
        if not self._holding:
            self._flush()

    async def writable(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        """The connection is gone: deliver nothing more, and end a replay
        waiting in :meth:`writable` (it would wait forever, holding its events)."""
        self.closed = True
        self._writable.set()
        self._end_backlog()

    def cut_loose(self, stalled_for: float) -> None:
        """A backlogged Salt reader made no progress for ``stalled_for``
        seconds: its queued events are dropped (counted and reported) and its
        connection closed, so that the firing side goes on."""
        dropped = len(self._queue)
        log.warning(
            "subscriber %s took nothing for %.1f s with %d events queued; closing it "
            "(stuck; see subscriber_stall_timeout)",
            self.peer,
            stalled_for,
            dropped,
        )
        self._queue.clear()
        self._queued_bytes = 0
        self.dropped += dropped
        self.closed = True
        # abort, not close: close would wait for the reader to take what the
        # transport buffers, which a stuck reader never does.
        self.transport.abort()
        self._end_backlog()
        if self._on_dropped is not None and dropped:
            self._on_dropped(self, dropped)

    def _end_backlog(self) -> None:
        if self.backlogged:
            self.backlogged = False
            if self._on_backlog is not None:
                self._on_backlog(self, False)

    def _flush(self) -> None:
        queue = self._queue
        while queue and not self._paused and not self.closed:
            chunk: list[bytes] = []
            size = 0
            while queue and size < FLUSH_CHUNK:
                frame = queue.popleft()
                chunk.append(frame)
                size += len(frame)
            self._queued_bytes -= size
            self.delivered += len(chunk)
            # write() may call pause() synchronously, which ends the loop.
            self.transport.write(b"".join(chunk))
        if (
            self.backlogged
            and len(queue) <= self.max_events // 2
            and self._queued_bytes <= self.max_bytes // 2
        ):
            self._end_backlog()
        if not queue and self._lagging:
            self._lagging = False
            log.warning(
                "subscriber %s caught up; %d events dropped so far", self.peer, self.dropped
            )

    # -- replay ----------------------------------------------------------------

    def hold(self) -> None:
        """Queue live frames from now on (a replay is about to be written)."""
        self._holding = True

    def write_direct(self, data: bytes, count: int = 0) -> None:
        """Write ahead of the queue: a control frame, or replayed events."""
        if not self.closed:
            self.transport.write(data)
            self.delivered += count

    def release(self) -> None:
        """The replay is written: send what queued meanwhile, then go live."""
        self._holding = False
        self._flush()

    def stats(self) -> SubscriberStats:
        return SubscriberStats(
            self.peer,
            self.delivered,
            self.dropped,
            len(self._queue),
            self._queued_bytes,
            self.resumable,
            self.matcher is not None,
            self.patterns,
            self.name,
        )


def event_frame(record: JournalRecord, framing: Framing) -> bytes:
    return encode_frame(record.body, {"seq": record.seq, "time": record.time}, framing)


class FanOut:
    """Offers numbered events to every subscriber, in the order given.

    It numbers nothing: the intake gives seqs, and hands over what the
    journal committed."""

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self.subscribers: set[Subscriber] = set()
        # What subscribers that have gone delivered and dropped, and how many
        # were disconnected for lagging: the totals since the start (metrics).
        self.departed_delivered = 0
        self.departed_dropped = 0
        self.lagged_disconnects = 0

    def add(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            self.departed_delivered += subscriber.delivered
            self.departed_dropped += subscriber.dropped
            self.lagged_disconnects += subscriber.lagged_out

    def totals(self) -> tuple[int, int, int]:
        """Events delivered and dropped, and lagged disconnections, over every
        subscriber since the start (the metrics' counters)."""
        live = self.subscribers
        return (
            self.departed_delivered + sum(s.delivered for s in live),
            self.departed_dropped + sum(s.dropped for s in live),
            self.lagged_disconnects + sum(s.lagged_out for s in live),
        )

    def deliver(self, records: Sequence[JournalRecord]) -> None:
        """Offer numbered records to every subscriber."""
        if not records or not self.subscribers:
            return  # nobody to encode frames for (an exporting node's bus, often)
        if len(records) == 1:  # an idle bus's every batch
            record = records[0]
            frame = encode_event_frame(record.seq, record.time, record.body, self.framing)
            self.offer([frame], (record.tag,))
            return
        frames = encode_event_frames(((r.seq, r.time, r.body) for r in records), self.framing)
        self.offer(frames, [r.tag for r in records])

    def offer(self, frames: list[bytes], tags: Sequence[str]) -> None:
        """Each frame is encoded once and shared by every subscriber's queue;
        a subscriber that wants the whole batch gets it in one write."""
        blob: bytes | None = frames[0] if len(frames) == 1 else None
        for subscriber in list(self.subscribers):
            matcher = subscriber.matcher
            if matcher is None:
                wanted = frames
            else:
                wanted = [f for f, t in zip(frames, tags, strict=True) if matcher(t)]
                if not wanted:
                    continue
            if len(wanted) == len(frames):
                if blob is None:
                    blob = b"".join(frames)
                subscriber.offer(wanted, blob)
            else:
                subscriber.offer(wanted)
