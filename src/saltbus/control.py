"""saltbus's extensions to Salt's protocol: control messages in a frame's head.

They ride where Salt's peers ignore them (DESIGN.md, "Protocol"): Salt's
subscribers read only ``body``, and Salt's publisher reads and ignores what a
subscriber writes. A control frame has an empty body and its message under the
head key ``"saltbus"``; an event frame from a saltbus publisher carries its
sequence number and receive time as ``head["seq"]`` and ``head["time"]``.

Messages, by direction:

- subscriber → publisher: :class:`Subscribe` (tag filters for server-side
  filtering, and ``since`` to resume after a sequence number); :class:`StatsRequest`.
- publisher → subscriber: :class:`Subscribed` (what follows is the replay, then
  live events), :class:`Lagged` (the subscriber fell too far behind and is being
  disconnected; it should resume), :class:`Stats`.
- firing client → publisher: an *event* frame whose head asks for an
  acknowledgement, ``{"saltbus": {"op": "ack", "id": N}}``.
- publisher → firing client: :class:`Ack` (the event's sequence number, once
  it is journaled), or :class:`Nack` (the event was not taken: the journal
  cannot commit, and why).
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Final, get_args

from saltbus.errors import ConfigError, RemoteProtocolError
from saltbus.event import MatchType, tag_matcher
from saltbus.wire import Frame, Framing, encode_frame

CONTROL_KEY: Final = "saltbus"


# Each message names its ``op`` and converts itself to and from the dict under
# CONTROL_KEY; the registry below is built from ControlMessage, so a message
# added there is encoded and decoded with no other edit (and tested by the
# round trip over every type in tests/test_control.py).


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Filter what this subscriber is sent, and optionally resume after ``since``.
    ``name`` is what the listener calls itself (``saltbus listen --resume NAME``),
    for statistics only."""

    op: ClassVar[str] = "subscribe"
    patterns: tuple[tuple[str, MatchType], ...] = ()
    since: int | None = None
    epoch: int | None = None  # the publisher's epoch ``since`` counts in
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "op": self.op,
            "patterns": [[p, str(m)] for p, m in self.patterns],
            "since": self.since,
            "epoch": self.epoch,
        }
        if self.name is not None:  # absent otherwise: the bytes stay what they were
            value["name"] = self.name
        return value

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> Subscribe:
        patterns = tuple((str(p), MatchType(m)) for p, m in control.get("patterns") or ())
        for pattern, match_type in patterns:
            # A regex that does not compile is refused here, as any malformed
            # message, rather than by the publisher acting on it (cached: once).
            tag_matcher(pattern, match_type)
        name = control.get("name")
        return cls(
            patterns,
            _optional_int(control.get("since")),
            _optional_int(control.get("epoch")),
            None if name is None else str(name),
        )


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Sent once a Subscribe took effect: events up to ``seq`` that the
    subscriber asked to resume come first (replayed), then live ones. ``first``
    is the oldest sequence number the publisher could still replay: when it is
    above ``since + 1``, events in between are gone for good (retention).
    ``epoch`` names the publisher's numbering: it changes when sequence numbers
    start again (a new journal, or no journal and a restart), and a ``since``
    from another epoch is not replayed. ``gaps`` are the ranges of seqs in the
    replay that were delivered live but never journaled (``journal_on_error:
    deliver`` while the journal could not commit): the replay cannot have them."""

    op: ClassVar[str] = "subscribed"
    seq: int
    epoch: int = 0
    replaying: bool = False
    first: int | None = None
    gaps: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "op": self.op,
            "seq": self.seq,
            "epoch": self.epoch,
            "replaying": self.replaying,
            "first": self.first,
        }
        if self.gaps:  # absent otherwise: the bytes stay what they were
            value["gaps"] = [list(gap) for gap in self.gaps]
        return value

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> Subscribed:
        return cls(
            _int(control["seq"]),
            _int(control.get("epoch", 0)),
            bool(control.get("replaying")),
            _optional_int(control.get("first")),
            tuple((_int(a), _int(b)) for a, b in control.get("gaps") or ()),
        )


@dataclass(frozen=True, slots=True)
class Lagged:
    """The subscriber's queue overflowed; the connection is being closed."""

    op: ClassVar[str] = "lagged"
    delivered: int

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "delivered": self.delivered}

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> Lagged:
        return cls(_int(control.get("delivered", 0)))


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledged event's sequence number (``id`` is the client's request id)."""

    op: ClassVar[str] = "acked"
    id: int
    seq: int

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "id": self.id, "seq": self.seq}

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> Ack:
        return cls(_int(control["id"]), _int(control["seq"]))


@dataclass(frozen=True, slots=True)
class Nack:
    """An event that asked for an acknowledgement was not taken (``id`` is the
    client's request id): the journal cannot commit it, for ``reason``."""

    op: ClassVar[str] = "nack"
    id: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "id": self.id, "reason": self.reason}

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> Nack:
        return cls(_int(control["id"]), str(control.get("reason", "not journaled")))


@dataclass(frozen=True, slots=True)
class StatsRequest:
    op: ClassVar[str] = "stats"

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op}

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> StatsRequest:
        return cls()


@dataclass(frozen=True, slots=True)
class Auth:
    """A saltbus client's first frame on a TCP connection: the bus's secret."""

    op: ClassVar[str] = "auth"
    secret: str

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "secret": self.secret}

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> Auth:
        return cls(str(control["secret"]))


@dataclass(frozen=True, slots=True)
class Welcome:
    """The answer to a good :class:`Auth`."""

    op: ClassVar[str] = "welcome"

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op}

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> Welcome:
        return cls()


@dataclass(frozen=True, slots=True)
class Refused:
    """The publisher refuses this connection, and says why; it closes next."""

    op: ClassVar[str] = "refused"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "reason": self.reason}

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> Refused:
        return cls(str(control.get("reason", "refused")))


@dataclass(frozen=True, slots=True)
class Stats:
    op: ClassVar[str] = "stats-reply"
    stats: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, control: Mapping[str, Any]) -> Stats:
        stats = control.get("stats")
        if not isinstance(stats, dict):
            raise TypeError("stats must be a map")
        return cls(stats)


ControlMessage = (
    Subscribe | Subscribed | Lagged | Ack | Nack | StatsRequest | Stats | Auth | Welcome | Refused
)

# The message type of each op, from the union above.
MESSAGE_TYPES: Final[Mapping[str, type[ControlMessage]]] = MappingProxyType(
    {cls.op: cls for cls in get_args(ControlMessage)}
)


def encode_control(message: ControlMessage, framing: Framing) -> bytes:
    return encode_frame(b"", {CONTROL_KEY: message.to_dict()}, framing)


def ack_request_head(request_id: int) -> dict[str, Any]:
    """The head of an event frame that asks for an :class:`Ack`."""
    return {CONTROL_KEY: {"op": "ack", "id": request_id}}


def ack_request_id(frame: Frame) -> int | None:
    """The acknowledgement id an event frame asks for, if any."""
    control = frame.head.get(CONTROL_KEY)
    if isinstance(control, dict) and control.get("op") == "ack":
        request_id = control.get("id")
        if isinstance(request_id, int):
            return request_id
    return None


def decode_control(frame: Frame) -> ControlMessage | None:
    """The control message a frame carries, or None for an event frame."""
    if frame.body:
        return None
    control = frame.head.get(CONTROL_KEY)
    if not isinstance(control, dict):
        raise RemoteProtocolError("frame with an empty body carries no saltbus control message")
    try:
        return _from_dict(control)
    except (KeyError, TypeError, ValueError, RecursionError, ConfigError) as exc:
        # RecursionError: str() of a value nested deeper than Python recurses
        # (msgpack lets a peer nest 1024 deep); reprlib bounds depth and length.
        raise RemoteProtocolError(
            f"malformed saltbus control message {reprlib.repr(control)}: {exc}"
        ) from None


def _from_dict(control: Mapping[str, Any]) -> ControlMessage:
    op = control.get("op")
    message_type = MESSAGE_TYPES.get(op) if isinstance(op, str) else None
    if message_type is None:
        raise ValueError(f"unknown op {op!r}")
    return message_type.from_dict(control)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _optional_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def event_seq(frame: Frame) -> int | None:
    """The sequence number a saltbus publisher gave an event frame (None from Salt)."""
    seq = frame.head.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
