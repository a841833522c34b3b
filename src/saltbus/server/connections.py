"""The asyncio protocols: thin wrappers that feed the codec, the intake and the fan-out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import assert_never, cast

from saltbus.control import (
    Ack,
    Auth,
    ControlMessage,
    Lagged,
    Nack,
    Refused,
    Stats,
    StatsRequest,
    Subscribe,
    Subscribed,
    Welcome,
    ack_request_id,
    decode_control,
    encode_control,
)
from saltbus.errors import RemoteProtocolError
from saltbus.server.fanout import Subscriber
from saltbus.server.sockets import peer_label
from saltbus.server.state import ServerState
from saltbus.wire import Frame, FrameDecoder, Framing, tag_and_data_size

log = logging.getLogger("saltbus.server")

# How long a tcp connection has to present the bus's secret.
AUTH_TIMEOUT = 5.0


class _TooLargeError(RemoteProtocolError):
    """An event over max_event_size: refused, as any bad frame, but counted apart."""


class Admission:
    """The checks every new connection passes before it is used: peer
    credentials and the connection limit at once, the secret over TCP."""

    def __init__(self, state: ServerState, kind: str, framing: Framing) -> None:
        self.state = state
        self.kind = kind
        self.framing = framing
        self.authenticated = False
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self.peer = "unknown peer"

    def open(self, transport: asyncio.Transport) -> bool:
        """False when the connection was refused (and is being closed)."""
        self._transport = transport
        sock = transport.get_extra_info("socket")
        self.peer = peer_label(sock)
        state = self.state
        reason = state.access.refusal(sock)
        if reason is None and state.connection_count >= state.config.max_connections:
            reason = f"too many connections (max_connections is {state.config.max_connections})"
        if reason is not None:
            self.refuse(reason)
            return False
        self.authenticated = not state.access.tcp_needs_secret
        if not self.authenticated:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(AUTH_TIMEOUT, self.refuse, "no secret presented")
        return True

    def authenticate(self, frame: Frame) -> bool:
        """Check a tcp connection's first frame; False when refused."""
        message = decode_control(frame) if not frame.body else None
        if not isinstance(message, Auth) or not self.state.access.secret_ok(message.secret):
            what = "a wrong secret" if isinstance(message, Auth) else "no secret"
            self.refuse(f"{what} for this bus (saltbus clients read it from sock_dir)")
            return False
        self.authenticated = True
        self.cancel()
        assert self._transport is not None
        self._transport.write(encode_control(Welcome(), self.framing))
        return True

    def refuse(self, reason: str) -> None:
        self.cancel()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        log.warning("refused %s connection from %s: %s", self.kind, self.peer, reason)
        transport.write(encode_control(Refused(reason), self.framing))
        transport.close()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _checked_tag(body: bytes, limit: int) -> str:
    """The tag of a fired body. Raises RemoteProtocolError for a body Salt's
    listeners could not split, and for data over ``limit`` (max_event_size:
    the same bound saltbus's own senders apply before sending)."""
    tag, size = tag_and_data_size(body)
    if size > limit:
        raise _TooLargeError(f"event data of {size} bytes is over max_event_size ({limit})")
    return tag


class PullConnection(asyncio.Protocol):
    """A firing client: frames in, events to the intake. A bad frame closes
    this connection only, after the good frames before it were taken."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._decoder = FrameDecoder(max_frame_size=state.config.max_frame_size)
        self._transport: asyncio.Transport | None = None
        self._admission = Admission(state, "pull", state.config.generation.pull_framing)
        self._progress = time.monotonic()
        self.peer = "unknown peer"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self._admission.open(self._transport):
            return
        self.peer = self._admission.peer
        self._state.pull_connections.add(self)
        if self._state.intake.paused:
            self._transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        if self._admission.authenticated and (body := decoder.plain_body(data)) is not None:
            # One whole plain frame (an idle publisher's every read): the
            # checks below, without the lists and the frame object.
            self._progress = time.monotonic()
            try:
                tag = _checked_tag(body, self._state.config.max_event_size)
            except RemoteProtocolError as exc:
                self._refuse(exc)
                return
            self._state.intake.accept((body,), (tag,), (), self)
            return
        bodies: list[bytes] = []
        tags: list[str] = []
        acks: list[tuple[int, int]] = []
        admission = self._admission
        try:
            decoder.receive_data(data)
            limit = self._state.config.max_event_size
            while (frame := decoder.next_frame()) is not None:
                if not admission.authenticated:
                    if not admission.authenticate(frame):
                        return
                    continue
                tags.append(_checked_tag(frame.body, limit))
                bodies.append(frame.body)
                if frame.head and (request_id := ack_request_id(frame)) is not None:
                    acks.append((len(bodies) - 1, request_id))
        except RemoteProtocolError as exc:
            self._refuse(exc)
        finally:
            self._progress = time.monotonic()
            if bodies:
                self._state.intake.accept(bodies, tags, acks, self)

    def _refuse(self, exc: RemoteProtocolError) -> None:
        reason = "too_large" if isinstance(exc, _TooLargeError) else "malformed"
        self._state.refused[reason] += 1
        log.warning("closing pull connection from %s: %s", self.peer, exc)
        self.close()

    def stalled_since(self, now: float) -> float:
        """Seconds this connection has held part of a frame without new data."""
        return now - self._progress if self._decoder.buffered else 0.0

    def send_acks(self, acks: Sequence[tuple[int, int]]) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        framing = self._decoder.framing or Framing.BARE
        transport.write(b"".join(encode_control(Ack(i, s), framing) for i, s in acks))

    def send_nacks(self, request_ids: Sequence[int], reason: str) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        framing = self._decoder.framing or Framing.BARE
        transport.write(b"".join(encode_control(Nack(i, reason), framing) for i in request_ids))

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._admission.cancel()
        self._state.pull_connections.discard(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class SubscriberConnection(asyncio.Protocol):
    """A listener on the publish socket. A Salt listener writes nothing (and
    whatever it writes is ignored, as Salt's publisher does); a saltbus
    listener sends control frames: its filter, where to resume, a stats request."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._decoder: FrameDecoder | None = FrameDecoder(max_frame_size=64 * 1024)
        self.subscriber: Subscriber | None = None
        self._transport: asyncio.Transport | None = None
        self._admission: Admission | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        state = self._state
        self._admission = admission = Admission(state, "publish", state.fanout.framing)
        if not admission.open(self._transport):
            self._decoder = None
            return
        config = state.config
        self.subscriber = Subscriber(
            self._transport,
            admission.peer,
            max_events=config.subscriber_queue_events,
            max_bytes=config.subscriber_queue_bytes,
            framing=state.fanout.framing,
            on_dropped=state.report_dropped,
            on_backlog=state.report_backlog,
        )
        state.subscriber_connections.add(self)
        if admission.authenticated:
            state.fanout.add(self.subscriber)

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is None or self.subscriber is None:
            return
        try:
            decoder.receive_data(data)
            while (frame := decoder.next_frame()) is not None:
                admission = self._admission
                if admission is not None and not admission.authenticated:
                    if not admission.authenticate(frame):
                        return
                    self._state.fanout.add(self.subscriber)
                    continue
                self._dispatch(decode_control(frame) if not frame.body else None)
        except RemoteProtocolError:
            # Not a saltbus listener: ignore what it writes from now on.
            self._decoder = None

    def _dispatch(self, message: ControlMessage | None) -> None:
        assert self.subscriber is not None
        match message:
            case Subscribe():
                self._state.subscribe(self.subscriber, message)
            case StatsRequest():
                self.subscriber.inspector = True
                stats = encode_control(Stats(self._state.stats()), self.subscriber.framing)
                self.subscriber.write_direct(stats)
            case (
                None
                | Auth()
                | Subscribed()
                | Lagged()
                | Ack()
                | Nack()
                | Stats()
                | Welcome()
                | Refused()
            ):
                pass  # an event frame, or nothing a listener sends: ignored, as Salt does
            case _:
                assert_never(message)

    def pause_writing(self) -> None:
        if self.subscriber is not None:
            self.subscriber.pause()
        # Requests a listener writes (stats) are answered on this connection,
        # past its queue bounds: while it does not read, do not read it either,
        # or a listener that only asks would grow the publisher without bound.
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
        if self.subscriber is not None:
            self.subscriber.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admission is not None:
            self._admission.cancel()
        if self.subscriber is not None:
            self.subscriber.close()
            self._state.fanout.remove(self.subscriber)
        self._state.subscriber_connections.discard(self)

    @property
    def pending_bytes(self) -> int:
        if self._transport is None or self._transport.is_closing():
            return 0
        queued = self.subscriber.stats().queued_bytes if self.subscriber else 0
        return self._transport.get_write_buffer_size() + queued

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
