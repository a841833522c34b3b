"""Fan-out: numbering events and handing them to every subscriber's bounded queue.

No sockets here, only a write-transport per subscriber, so the policy (order,
bounds, what is dropped when a reader stalls) can be tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from saltbus.event import TagMatcher
from saltbus.wire import Framing, body_tag, encode_frame

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


class Subscriber:
    """One listener: a bounded queue in front of its transport.

    While the transport accepts data, frames go straight to it. When it pauses
    (the reader is not keeping up), frames queue here; past ``max_events`` or
    ``max_bytes`` the oldest are dropped and counted, so a stalled reader costs
    a bounded amount of memory and never delays anyone else.
    """

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        peer: str,
        *,
        max_events: int,
        max_bytes: int,
        matcher: TagMatcher | None = None,
    ) -> None:
        self.transport = transport
        self.peer = peer
        self.matcher = matcher
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.delivered = 0
        self.dropped = 0
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._paused = False
        self._lagging = False
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)

    def offer(self, frames: list[bytes], blob: bytes | None = None) -> None:
        """Deliver frames (``blob`` is their concatenation, when already made)."""
        if not self._queue and not self._paused:
            self.transport.write(blob if blob is not None else b"".join(frames))
            self.delivered += len(frames)
            return
        self._queue.extend(frames)
        self._queued_bytes += sum(len(f) for f in frames)
        self._trim()

    def _trim(self) -> None:
        dropped = 0
        while len(self._queue) > self.max_events or self._queued_bytes > self.max_bytes:
            self._queued_bytes -= len(self._queue.popleft())
            dropped += 1
        if dropped:
            self.dropped += dropped
            if not self._lagging:
                self._lagging = True
                log.warning(
                    "subscriber %s is not reading; dropping its oldest events (queue full: "
                    "%d events, %d bytes)",
                    self.peer,
                    self.max_events,
                    self.max_bytes,
                )

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._flush()

    def _flush(self) -> None:
        queue = self._queue
        while queue and not self._paused:
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
        if not queue and self._lagging:
            self._lagging = False
            log.warning(
                "subscriber %s caught up; %d events dropped so far", self.peer, self.dropped
            )

    def stats(self) -> SubscriberStats:
        return SubscriberStats(
            self.peer, self.delivered, self.dropped, len(self._queue), self._queued_bytes
        )


class FanOut:
    """Numbers each event and offers it to every subscriber, in arrival order."""

    def __init__(self, framing: Framing, *, first_seq: int = 1) -> None:
        self.framing = framing
        self.next_seq = first_seq
        self.subscribers: set[Subscriber] = set()

    def add(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def publish(self, bodies: list[bytes]) -> int:
        """Frame and fan out a batch of bodies; returns the last sequence number used.

        Each frame is encoded once and shared by every subscriber's queue; an
        unfiltered subscriber gets the whole batch in one write.
        """
        seq = self.next_seq
        framing = self.framing
        frames = [encode_frame(body, {"seq": seq + i}, framing) for i, body in enumerate(bodies)]
        self.next_seq = seq + len(frames)
        if not frames:
            return seq - 1
        blob: bytes | None = None
        tags: list[str] | None = None
        for subscriber in self.subscribers:
            matcher = subscriber.matcher
            if matcher is None:
                if blob is None:
                    blob = b"".join(frames)
                subscriber.offer(frames, blob)
                continue
            if tags is None:
                tags = [body_tag(body) for body in bodies]
            wanted = [f for f, t in zip(frames, tags, strict=True) if matcher(t)]
            if wanted:
                subscriber.offer(wanted)
        return self.next_seq - 1
