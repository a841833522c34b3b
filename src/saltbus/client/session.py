"""The state of one subscription across reconnects, without I/O.

Both the blocking and the asyncio listener feed it the frames they read. It
makes the ``Subscribe`` frame to send after each connect (tag filters for the
publisher, and the point to resume from), drops what a resume would deliver
twice, and remembers the last sequence number delivered. Against a Salt
publisher, which numbers nothing and ignores what listeners send, it passes
every event through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import assert_never

from saltbus.control import (
    Ack,
    Auth,
    Lagged,
    Nack,
    Refused,
    Stats,
    StatsRequest,
    Subscribe,
    Subscribed,
    Welcome,
    decode_control,
    encode_control,
    event_seq,
)
from saltbus.errors import AccessDeniedError, LaggedError, RemoteProtocolError
from saltbus.event import Event, MatchType, tag_matcher
from saltbus.wire import Frame, Framing, unpack_body

log = logging.getLogger("saltbus.client")


class SubscriberSession:
    def __init__(
        self,
        patterns: Sequence[tuple[str, MatchType]],
        framing: Framing,
        *,
        resume: bool = True,
        since: int | None = None,
        epoch: int | None = None,
        salt_version: str | None = None,
        name: str | None = None,
    ) -> None:
        self.patterns = _filter_patterns(patterns)
        self._matchers = [tag_matcher(p, m) for p, m in self.patterns]
        self.framing = framing
        self.resume = resume
        self.last_seq = since
        self.epoch = epoch
        self.salt_version = salt_version
        self.name = name
        self._mismatch_reported = False
        # saltbus's publisher takes every framing on its pull socket: nothing to warn of.
        self.publisher_is_saltbus = False
        self.lost = 0  # events known to be gone (retention, or a publisher that lost its journal)
        self.stats: Stats | None = None
        self._awaiting_subscribed = False
        self.subscribed = False  # the publisher confirmed the last hello

    def set_patterns(self, patterns: Sequence[tuple[str, MatchType]]) -> bytes:
        """Change the filter; returns the frame that tells a connected publisher."""
        self.patterns = _filter_patterns(patterns)
        self._matchers = [tag_matcher(p, m) for p, m in self.patterns]
        return encode_control(Subscribe(self.patterns, None, self.epoch, self.name), self.framing)

    def hello(self) -> bytes:
        """The frame to send right after connecting."""
        since = self.last_seq if self.resume else None
        self._awaiting_subscribed = since is not None
        self.subscribed = False
        return encode_control(Subscribe(self.patterns, since, self.epoch, self.name), self.framing)

    def handle(self, frame: Frame) -> Event | None:
        """The event a frame delivers, or None (a control frame, a duplicate,
        a non-matching or undecodable event). Raises :class:`LaggedError`."""
        if not frame.body:
            self._on_control(frame)
            return None
        seq = frame.head.get("seq")
        if seq is not None and type(seq) is not int:
            seq = event_seq(frame)  # not an int, or a bool: none
        if seq is not None:
            # Until the publisher confirms a resume, live events it sent are
            # the ones the replay is about to send again, in order.
            if self._awaiting_subscribed:
                return None
            if self.last_seq is not None and seq <= self.last_seq:
                return None
            self.last_seq = seq
        try:
            tag, data = unpack_body(frame.body)
        except RemoteProtocolError as exc:
            log.warning("skipping an event that cannot be decoded: %s", exc)
            return None
        if seq is None and not self._mismatch_reported and not self.publisher_is_saltbus:
            self._check_stamp(data)
        if self._matchers:
            for match in self._matchers:
                if match(tag):
                    break
            else:
                return None
        return Event(tag, data, seq)

    def observe_framing(self, framing: Framing | None) -> None:
        """Warn once when a Salt publisher publishes in another generation's
        framing than configured: events fired from here would be dropped by it."""
        if (
            framing is None
            or framing is self.framing
            or self._mismatch_reported
            or self.publisher_is_saltbus
        ):
            return
        seen = "3006" if framing is Framing.LENGTH_PREFIXED else "3007 or 3008"
        self._report_mismatch(f"publishes in Salt {seen}'s framing")

    def _check_stamp(self, data: dict[str, object]) -> None:
        # Only Salt 3008's clients stamp events with an offset; seen on a Salt
        # publisher's bus, it tells a 3008 bus, whose pull socket wants a length
        # prefix that 3007's framing lacks.
        stamp = data.get("_stamp")
        if (
            self.salt_version in ("3006", "3007")
            and isinstance(stamp, str)
            and stamp.endswith("+00:00")
        ):
            self._report_mismatch("carries events stamped by Salt 3008's clients")

    def _report_mismatch(self, what: str) -> None:
        self._mismatch_reported = True
        log.warning(
            "the publisher %s, but salt_version is %s: Salt drops events fired in another "
            "generation's framing; set salt_version (`saltbus doctor` tells which)",
            what,
            self.salt_version or "unset",
        )

    def _on_control(self, frame: Frame) -> None:
        message = decode_control(frame)
        match message:
            case Subscribed():
                self._on_subscribed(message)
            case Lagged():
                raise LaggedError(
                    "the publisher disconnected this listener because it fell behind "
                    f"(after {message.delivered} events); resuming catches up"
                )
            case Stats():
                self.stats = message
            case Refused():
                raise AccessDeniedError(f"the publisher refused this listener: {message.reason}")
            case None | Welcome() | Subscribe() | StatsRequest() | Auth() | Ack() | Nack():
                pass  # nothing a listener acts on (a Welcome is implied by what follows)
            case _:
                assert_never(message)

    def _on_subscribed(self, message: Subscribed) -> None:
        self._awaiting_subscribed = False
        self.subscribed = True
        if self.epoch is not None and message.epoch != self.epoch and self.last_seq is not None:
            log.warning(
                "the publisher's numbering started again (new journal, or restarted "
                "without one): events fired while this listener was away are lost"
            )
            self.last_seq = None
        elif message.replaying and self.last_seq is not None and message.first is not None:
            gone = message.first - self.last_seq - 1
            if gone > 0:
                self.lost += gone
                log.warning("%d events after seq %d are no longer journaled", gone, self.last_seq)
        if message.replaying and self.last_seq is not None:
            for first, last in message.gaps:
                missed = last - max(self.last_seq, first - 1)
                if missed > 0:
                    self.lost += missed
                    log.warning(
                        "events %d to %d were delivered while the journal could not commit "
                        "and were never journaled: this listener missed %d of them",
                        first,
                        last,
                        missed,
                    )
        self.epoch = message.epoch
        if self.last_seq is None and self.resume:
            self.last_seq = message.seq


def _filter_patterns(
    patterns: Sequence[tuple[str, MatchType]],
) -> tuple[tuple[str, MatchType], ...]:
    # An empty pattern matches everything, which makes the whole filter moot.
    if not patterns or any(not p for p, _ in patterns):
        return ()
    return tuple(dict.fromkeys(patterns))
